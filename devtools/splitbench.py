"""The split store's end-to-end benches on FerretDB's PostgreSQL handler: a documented command.

`python -m devtools.splitbench [--messages N] [--seconds S]` starts PostgreSQL (FerretDB's
backend) and FerretDB with `--handler=pg` over it, then runs `bench.chat` and `bench.sync`
with `NATTER_MESSAGE_LOG` naming a fresh database there: the server each bench starts runs
SQLite beside that message log. Everything lives in a temporary folder and is removed at
the end. docs/benchmarks.md records its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from devtools.dbservers import server_class
from devtools.ferretdb import FerretDbPgServer

REPO = Path(__file__).resolve().parent.parent


async def run(messages: int, seconds: float, pairs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="natter-splitbench-") as tmp:
        pg = server_class("postgresql")()
        await pg.start()
        try:
            mongo = FerretDbPgServer(await pg.create_database(), Path(tmp) / "ferretdb")
            await mongo.start()
            try:
                for argv in (
                    ["bench.chat", "--pairs", str(pairs), "--seconds", str(seconds),
                     "--ceiling-seconds", "0", "--no-strace"],
                    ["bench.sync", "--messages", str(messages), "--no-ceiling"],
                ):  # fmt: skip
                    env = {**os.environ, "NATTER_MESSAGE_LOG": await mongo.create_database()}
                    proc = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", *argv, "--no-record", cwd=REPO, env=env
                    )
                    if await proc.wait():
                        raise SystemExit(f"{argv[0]} exited {proc.returncode}")
            finally:
                mongo.remove()
        finally:
            pg.remove()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m devtools.splitbench", description=__doc__)
    p.add_argument("--messages", type=int, default=10_000, help="bench.sync: how far behind")
    p.add_argument("--seconds", type=float, default=10.0, help="bench.chat: measured window")
    p.add_argument("--pairs", type=int, default=10, help="bench.chat: sender/recipient pairs")
    args = p.parse_args(argv)
    asyncio.run(run(args.messages, args.seconds, args.pairs))


if __name__ == "__main__":
    main()
