"""Attachment figures: upload and download throughput of a large file over the HTTP listener
(next to `cp` on the same disk, measured in the same run), and thumbnail time for a
12-megapixel JPEG.

    python -m bench.media                 # a 50 MB file, a 4000x3000 JPEG
    python -m bench.media --megabytes 5   # small, as the test suite runs it
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import BenchServer, append_result, print_table
from media_svc import images
from natter.sdk import Client, Media

PASSWORD = "correct horse battery"


def _random_file(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, 4 << 20)
            fh.write(os.urandom(n))
            left -= n


def _cp_seconds(src: Path, dest: Path) -> float:
    """`cp` of the file and an fsync of the copy, like the server's durable store."""
    t0 = time.perf_counter()
    subprocess.run(["cp", str(src), str(dest)], check=True)
    with open(dest, "rb") as fh:
        os.fsync(fh.fileno())
    return time.perf_counter() - t0


def _photo(path: Path, width: int, height: int) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (90, 140, 200))
    draw = ImageDraw.Draw(img)
    for i in range(0, width, 40):  # detail, so the JPEG is photo-sized
        draw.line([(i, 0), (width - i, height)], fill=((i * 7) % 255, (i * 3) % 255, 120), width=9)
    img.save(path, "JPEG", quality=90)


async def measure(args: argparse.Namespace) -> list[tuple[str, str]]:
    folder = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="natter-media-"))
    size = args.megabytes * 1_000_000
    src = folder / "big.bin"
    await asyncio.to_thread(_random_file, src, size)
    rows: list[tuple[str, str]] = []
    try:
        cps = [await asyncio.to_thread(_cp_seconds, src, folder / f"copy{i}.bin") for i in range(3)]
        cp = statistics.median(cps)
        # `natter serve` in a process of its own (on the same disk), as a client would meet it.
        server = await asyncio.to_thread(BenchServer.start, count_fsyncs=False)
        try:
            client = Client(server.address, timeout=120.0)
            await client.register("bench", PASSWORD)
            await client.login("bench", PASSWORD)
            ups, downs = [], []
            async with Media(client) as media:
                for i in range(args.rounds):
                    data = src if i == 0 else folder / f"copy{i % 3}.bin"
                    if i:
                        await asyncio.to_thread(_tweak, data)  # new content: no dedup shortcut
                    t0 = time.perf_counter()
                    att = await media.upload(data, name="big.bin")
                    ups.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    out = await media.download(att.attachment_id, folder / "back.bin")
                    downs.append(time.perf_counter() - t0)
                    assert att.sha256 == await asyncio.to_thread(_sha, out)
                chunk = media.chunk
            await client.close()
        finally:
            await asyncio.to_thread(server.cleanup)
        up, down = statistics.median(ups), statistics.median(downs)
        mb = size / 1e6
        rows += [
            (
                "file",
                f"{mb:g} MB, random bytes, chunks of {chunk >> 20} MiB, server in its own process",
            ),
            ("cp (+fsync) on the same disk", f"{mb / cp:,.0f} MB/s ({cp * 1e3:.0f} ms)"),
            (
                "upload: create, PATCH chunks, complete",
                f"{mb / up:,.0f} MB/s ({up * 1e3:.0f} ms), {up / cp:.1f}x cp",
            ),
            ("download: GET", f"{mb / down:,.0f} MB/s ({down * 1e3:.0f} ms), {down / cp:.1f}x cp"),
        ]
        photo = folder / "photo.jpg"
        await asyncio.to_thread(_photo, photo, 4000, 3000)
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            info = await asyncio.to_thread(images.probe, photo, 64_000_000)
            times.append(time.perf_counter() - t0)
        psize = (await asyncio.to_thread(photo.stat)).st_size
        rows += [
            ("12 MP JPEG", f"4000x3000, {psize / 1e6:.1f} MB"),
            (
                "thumbnail + BlurHash",
                f"median {statistics.median(times) * 1e3:.0f} ms, best {min(times) * 1e3:.0f} ms "
                f"({len(info.thumbnail) / 1e3:.0f} KB thumbnail, hash {info.blurhash[:8]}…)",
            ),
        ]
        return rows
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, True)


def _tweak(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.write(os.urandom(16))


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.media", description=__doc__.splitlines()[0])
    p.add_argument("--megabytes", type=int, default=50, help="file size in MB (default 50)")
    p.add_argument(
        "--rounds", type=int, default=3, help="uploads, downloads, thumbnails (default 3)"
    )
    p.add_argument("--no-record", action="store_true", help="do not append to bench-results.md")
    args = p.parse_args(argv)
    rows = asyncio.run(measure(args))
    print_table(f"natter attachments: {args.megabytes} MB file, 12 MP photo", rows)
    if not args.no_record:
        append_result(
            "media",
            f"{args.megabytes} MB random file, {args.rounds} rounds, natter serve (embedded) in its own process, file blob store",
            "; ".join(f"{k}: {v}" for k, v in rows),
            "cp on the same disk (in the figures)",
            "n/a",
        )


if __name__ == "__main__":
    main()
