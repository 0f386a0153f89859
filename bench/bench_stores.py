"""Store benchmarks at scale: listings, checks, first reads, memory and fill rate.

Run by hand from the repository root (about 10 minutes; the stores it builds are
kept under bench/.work/ and reused by the next run)::

    python bench/bench_stores.py            # 100k and 1M keys
    python bench/bench_stores.py --small    # 10k and 100k keys, for a quick look

Prints a Markdown table for bench/RESULTS.md; every ratio in it comes from
figures measured side by side in the same run.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import struct
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from mnimi_adapters.cli import main
from mnimi_adapters.core import BatchedModel, Persistent, Request, Sample
from mnimi_adapters.core.request import request_key, request_record
from mnimi_adapters.core.stores import DiskStore

WORK = Path(__file__).parent / ".work"


class BenchModel(BatchedModel):
    """A provider stand-in that answers at once."""

    def query(self, request: Request, n: int) -> list[str | Sample]:
        return [str(i) for i in range(n)]


def model() -> BenchModel:
    return BenchModel("bench-model", 1.0)


def prompt(i: int) -> str:
    return f"Benchmark prompt number {i}"


def build_keys(count: int) -> Path:
    """A store of ``count`` keys, one sample each (built once, then reused)."""
    path = WORK / f"keys-{count}"
    if (path / "built").exists():
        return path
    identity = model().identity()
    with DiskStore(path) as store:
        cache = store._cache
        assert cache is not None
        for start in range(0, count, 10_000):
            with cache.transact():  # appends nest: one commit per 10k keys
                for i in range(start, min(start + 10_000, count)):
                    request = Request.of(prompt(i))
                    record = request_record(identity, request)
                    store.append(request_key(identity, request), [Sample(text=str(i))], record)
    (path / "built").touch()
    return path


def build_one_key(samples: int) -> Path:
    """A store of one key holding ``samples`` samples."""
    path = WORK / f"samples-{samples}"
    if (path / "built").exists():
        return path
    identity = model().identity()
    request = Request.of(prompt(0))
    key, record = request_key(identity, request), request_record(identity, request)
    with DiskStore(path) as store:
        for start in range(0, samples, 1000):
            store.append(key, [Sample(text=str(i)) for i in range(start, start + 1000)], record)
    (path / "built").touch()
    return path


def wal_pages(path: Path) -> list[int]:
    """The page number of each frame of the WAL's current generation."""
    data = (path / "cache.db-wal").read_bytes()
    salt, pages, offset = data[16:24], [], 32
    while offset + 24 <= len(data) and data[offset + 8 : offset + 16] == salt:
        pages.append(struct.unpack(">I", data[offset : offset + 4])[0])
        offset += 24 + 4096  # a frame header and a page (diskcache's 4 KiB pages)
    return pages


def checkpoints(path: Path, first: int, rounds: int = 5, per_round: int = 100) -> list[float]:
    """Medians over rounds of ``per_round`` appends (one transaction each, one sample):
    WAL frames, distinct pages among them, ms of the checkpoint that writes them back.

    SQLite checkpoints on its own every 1,000 frames (about 100 such appends); here it
    is held off and run by hand, so its cost is measured apart from the appends'.
    """
    identity = model().identity()
    figures: list[tuple[int, int, float]] = []
    with DiskStore(path) as store:
        cache = store._cache
        assert cache is not None
        connection = cache._con
        connection.execute("PRAGMA wal_autocheckpoint = 0")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        key = first
        for _ in range(rounds):
            for _ in range(per_round):
                request = Request.of(prompt(key))
                record = request_record(identity, request)
                store.append(request_key(identity, request), [Sample(text=str(key))], record)
                key += 1
            pages = wal_pages(path)
            start = time.perf_counter()
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            figures.append((len(pages), len(set(pages)), (time.perf_counter() - start) * 1e3))
    return [statistics.median(column) for column in zip(*figures, strict=True)]


def checkpoint_row(keys: int, built: Path) -> tuple[str, str]:
    """Checkpoint costs at about 2,500 keys (the fill's first window) and at ``keys``
    (a copy of the built store: its last window)."""
    small = WORK / f"checkpoints-{os.getpid()}-small"
    large = WORK / f"checkpoints-{os.getpid()}-large"
    try:
        with DiskStore(small) as store:  # an append per transaction, as a fill makes
            identity = model().identity()
            for i in range(2_500):
                request = Request.of(prompt(i))
                record = request_record(identity, request)
                store.append(request_key(identity, request), [Sample(text=str(i))], record)
        shutil.copytree(built, large)
        at_small = checkpoints(small, 2_500)
        at_large = checkpoints(large, keys)
    finally:
        shutil.rmtree(small, ignore_errors=True)
        shutil.rmtree(large, ignore_errors=True)
    return (
        f"per 100 appends at 2,500 / {keys:,} keys: WAL frames, distinct pages, "
        "checkpoint ms (median of 5)",
        f"{at_small[0]:.0f}, {at_small[1]:.0f}, {at_small[2]:.1f} ms / "
        f"{at_large[0]:.0f}, {at_large[1]:.0f}, {at_large[2]:.1f} ms "
        f"({at_large[2] / at_small[2]:.1f}x the checkpoint time)",
    )


def command(*argv: object) -> float:
    """Seconds one `mnimi` command takes, run in this process, output discarded."""
    start = time.perf_counter()
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        code = main([str(a) for a in argv])
    seconds = time.perf_counter() - start
    assert code == 0, (argv, code)
    return seconds


def first_reads(
    path: Path, keys: int, rounds: int = 15, per_round: int = 2000
) -> dict[bool, float]:
    """Median over rounds of the mean µs of a first read, default mode and replication.

    Alternated round by round, so drift in the machine's load touches both alike.
    """
    times: dict[bool, list[float]] = {False: [], True: []}
    offset = 0
    for _ in range(rounds):
        for replication in (False, True):
            layer = Persistent(model(), path, replication=replication)
            prompts = [prompt((offset + i) % keys) for i in range(per_round)]
            offset += per_round
            start = time.perf_counter()
            for text in prompts:
                next(layer.samples(text))
            times[replication].append((time.perf_counter() - start) / per_round * 1e6)
            layer.close()
    return {mode: statistics.median(values) for mode, values in times.items()}


_REPLAY = """
import sys, time
sys.path.insert(0, {bench!r})
from bench_stores import model, prompt, rss
from mnimi_adapters.core import Persistent
layer = Persistent(model(), {path!r})
count = {count}
for i in range(10_000):  # the read copy fills up (4,096 samples)
    next(layer.samples(prompt(i)))
base = rss()
for i in range(10_000, count):
    next(layer.samples(prompt(i)))
print(base, rss())
"""

_FILL = """
import sys, time
sys.path.insert(0, {bench!r})
from bench_stores import model, prompt, rss
from mnimi_adapters.core import Persistent
layer = Persistent(model(), {path!r})
count, window = {count}, 5000
marks = {{}}
start = time.perf_counter()
for i in range(count):
    if i in (0, count - window):
        start = time.perf_counter()
    next(layer.samples(prompt(i)))
    if i in (window - 1, count - 1):
        marks[i] = window / (time.perf_counter() - start)
    if i == count // 10:
        base = rss()
print(marks[window - 1], marks[count - 1], base, rss())
"""


def rss() -> int:
    """This process's resident set size, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def run(script: str, **values: object) -> list[float]:
    code = script.format(bench=str(Path(__file__).parent), **values)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [float(x) for x in out.stdout.split()]


def main_(small: bool) -> None:
    sizes = (10_000, 100_000) if small else (100_000, 1_000_000)
    WORK.mkdir(exist_ok=True)
    rows: list[tuple[str, str]] = []
    stores = {size: build_keys(size) for size in sizes}
    for name, argv in (
        ("stats", ("stats",)),
        ("prune --dry-run --max-size 0", ("prune", "{}", "--max-size", "0", "--dry-run")),
        ("show --limit 20", ("show", "{}", "--limit", "20")),
        ("verify", ("verify",)),
    ):
        figures = []
        for size in sizes:
            args = [a.replace("{}", str(stores[size])) for a in argv]
            if len(args) == 1:
                args.append(str(stores[size]))
            figures.append(command(*args))
        ratio = f"{figures[1] / figures[0]:.1f}x for {sizes[1] // sizes[0]}x"
        rows.append(
            (
                f"`mnimi {name}` at {sizes[0]:,} / {sizes[1]:,} keys",
                f"{figures[0]:.2f} s / {figures[1]:.2f} s ({ratio})",
            )
        )
    samples = sizes[1]
    one = build_one_key(samples)
    stats_one = command("stats", one)
    rows.append((f"`mnimi stats` on one key of {samples:,} samples", f"{stats_one:.2f} s"))
    reads = first_reads(stores[sizes[0]], sizes[0])
    rows.append(
        (
            "first read of a key: default mode / replication (median µs)",
            f"{reads[False]:.0f} µs / {reads[True]:.0f} µs ({reads[False] / reads[True]:.2f}x)",
        )
    )
    base, end = run(_REPLAY, path=str(stores[sizes[1]]), count=sizes[1])
    rows.append(
        (
            f"RSS growth replaying {sizes[1]:,} distinct keys (after the read copy filled)",
            f"{(end - base) / 2**20:.1f} MiB",
        )
    )
    fill_keys = sizes[0]
    # One fill is too noisy for a ratio (0.67x-1.15x seen): the median of three.
    fills = []
    for attempt in range(3):
        fill_path = WORK / f"fill-{os.getpid()}-{attempt}"
        fills.append(run(_FILL, path=str(fill_path), count=fill_keys))
        subprocess.run(["rm", "-rf", str(fill_path)], check=True)
    first, last, base, end = sorted(fills, key=lambda f: f[1] / f[0])[1]
    ratios = ", ".join(f"{f[1] / f[0]:.2f}x" for f in fills)
    rows.append(
        (
            f"fill rate: keys 1-5,000 / the last 5,000 of {fill_keys:,} (keys/s), "
            "median of 3 fills",
            f"{first:,.0f} / {last:,.0f} ({last / first:.2f}x; all three: {ratios})",
        )
    )
    rows.append(
        (
            f"RSS growth filling keys {fill_keys // 10:,}-{fill_keys:,}",
            f"{(end - base) / 2**20:.1f} MiB",
        )
    )
    # Where the fill's extra time at scale goes: the pages each checkpoint writes back.
    rows.append(checkpoint_row(fill_keys, stores[fill_keys]))
    print("| figure | measured |")
    print("|---|---|")
    for figure, value in rows:
        print(f"| {figure} | {value} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", action="store_true", help="10k and 100k keys")
    main_(parser.parse_args().small)
