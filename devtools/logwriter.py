"""A process that appends to a MongoDB message log and can SIGKILL itself mid-append, for crash tests.

`python -m devtools.logwriter URL --thread T --sender U --prefix P --count N [--batch B]
[--kill-at K]` appends N entries with client_msg_ids P-0 … P-(N-1), B per call, and prints
`ok CLIENT_MSG_ID SEQ` for each acknowledged one (flushed: the parent reads what was
acknowledged before the kill). With `--kill-at K` it kills itself with SIGKILL at the K-th
sequence allocation, after reading the thread's last seq and before inserting: the moment a
counter-based allocator would have left a gap.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from message_svc.mongolog import MongoMessageLog
from message_svc.store import LogEntry
from natter.domain import MessageKind, User


async def _run(args: argparse.Namespace) -> None:
    allocations = 0

    async def hook(_thread_id: int, _seq: int) -> None:
        nonlocal allocations
        allocations += 1
        if allocations == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    log = MongoMessageLog(args.url, after_allocate=hook if args.kill_at else None)
    await log.open()
    sender = User(args.sender, f"u{args.sender}", f"U{args.sender}")
    try:
        for start in range(0, args.count, args.batch):
            entries = [
                LogEntry(args.thread, sender, 1, f"{args.prefix}-{i}", MessageKind.TEXT, f"m{i}")
                for i in range(start, min(start + args.batch, args.count))
            ]
            for a in await log.append(entries):
                print(f"ok {a.message.client_msg_id} {a.message.seq}", flush=True)
    finally:
        await log.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("url")
    p.add_argument("--thread", type=int, default=1)
    p.add_argument("--sender", type=int, default=1)
    p.add_argument("--prefix", default="w")
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--kill-at", type=int, default=0)
    asyncio.run(_run(p.parse_args()))
    sys.exit(0)


if __name__ == "__main__":
    main()
