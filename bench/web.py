"""The web app in Chromium: Enter → own bubble painted and keystroke → character painted in a long chat.

Starts an embedded server serving web/dist, fills one direct chat with messages from both
people, and runs web/bench/run.mjs (playwright-core, Debian's chromium) on a 360x640 phone
viewport with and without 4x CPU throttling. A benchmark, not a test: it prints figures.

    python -m bench.web                       # 2,000 messages, 30 sends and 60 keys per rate
    python -m bench.web --messages 200 --sends 5 --keys 10 --no-record   # small
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import BENCH_SETTINGS, PASSWORD, REPO, append_result, print_table
from natter.sdk import Client, Connection

WEB = REPO / "web"
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "we", "talk")


def built_app() -> Path:
    """web/dist, built when it is missing (run `npm run build` in web/ after changing the app)."""
    index = WEB / "dist" / "index.html"
    if not index.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("npm not found: install Node.js to build the web app")
        subprocess.run([npm, "run", "build"], cwd=WEB, check=True)
    return WEB / "dist"


async def fill(address: str, messages: int) -> tuple[str, str]:
    """Two people and one chat holding `messages` messages; returns who logs in and the chat's title."""
    alice, bob = Client(address), Client(address)
    try:
        await alice.register("benchalice", PASSWORD, "Alice Bench")
        await bob.register("benchbob", PASSWORD, "Bob Bench")
        await alice.login("benchalice", PASSWORD, "filler")
        await bob.login("benchbob", PASSWORD, "filler")
        async with Connection(alice) as a, Connection(bob) as b:
            thread = (await alice.direct_thread("benchbob")).thread_id
            words = WORDS
            sent = 0
            while sent < messages:
                batch = []
                for i in range(sent, min(messages, sent + 100)):
                    conn = a if i % 3 else b
                    text = " ".join(words[(i + k) % len(words)] for k in range(3 + i % 12))
                    batch.append(conn.send(f"{i + 1}: {text}", thread_id=thread))
                await asyncio.gather(*batch)
                sent += len(batch)
    finally:
        for c in (alice, bob):
            await c.close()
    return "benchalice", "Bob Bench"


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    from app.embedded import EmbeddedServer
    from natter.settings import Settings

    node = shutil.which("node")
    if node is None:
        raise SystemExit("node not found: install Node.js")
    with tempfile.TemporaryDirectory(prefix="natter-bench-web-") as tmp:
        settings = Settings(
            data_dir=Path(tmp), grpc_addr="127.0.0.1:0", http_addr="127.0.0.1:0"
        ).replace(**BENCH_SETTINGS, web_dir=built_app())
        async with EmbeddedServer(settings) as server:
            user, peer = await fill(server.grpc_address, args.messages)
            env = {
                **os.environ,
                "NATTER_URL": f"http://127.0.0.1:{server.http_port}",
                "NATTER_BENCH_USER": user,
                "NATTER_BENCH_PEER": peer,
                "NATTER_BENCH_PASSWORD": PASSWORD,
                "NATTER_BENCH_SENDS": str(args.sends),
                "NATTER_BENCH_KEYS": str(args.keys),
                "NATTER_BENCH_RATES": args.rates,
                "CHROMIUM": os.environ.get("CHROMIUM", "/usr/bin/chromium"),
            }
            proc = await asyncio.create_subprocess_exec(
                node,
                "bench/run.mjs",
                cwd=WEB,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"web/bench/run.mjs failed ({proc.returncode}):\n{text}")
    result: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    return result


def rows_of(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("messages loaded in the chat", f"{result['loaded']:,}")]
    for r in result["runs"]:
        e, k, dom = r["enter"], r["key"], r["dom"]
        rows += [
            (f"CPU {r['rate']}x: Enter → bubble p50 / p95", f"{e['p50']:.1f} / {e['p95']:.1f} ms"),
            (f"CPU {r['rate']}x: key → character p50 / p95", f"{k['p50']:.1f} / {k['p95']:.1f} ms"),
            (f"CPU {r['rate']}x: message-list items in the DOM", str(dom["elements"])),
        ]
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.web", description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=2000, help="messages in the chat (default 2000)")
    p.add_argument("--sends", type=int, default=30, help="timed sends per CPU rate (default 30)")
    p.add_argument(
        "--keys", type=int, default=60, help="timed keystrokes per CPU rate (default 60)"
    )
    p.add_argument("--rates", default="1,4", help="CPU throttling rates (default 1,4)")
    p.add_argument("--no-record", action="store_true", help="do not append to bench-results.md")
    args = p.parse_args(argv)
    result = asyncio.run(measure(args))
    rows = rows_of(result)
    print_table("natter web app in Chromium, 360x640", rows)
    if not args.no_record:
        append_result(
            "web",
            f"{args.messages:,} messages, {args.sends} sends and {args.keys} keys per rate, "
            "Debian chromium headless, 360x640",
            "; ".join(f"{k}: {v}" for k, v in rows[1:]),
            "≤ 100 ms Enter p95, ≤ 50 ms key p95 at 4x",
            "n/a",
        )


if __name__ == "__main__":
    main()
