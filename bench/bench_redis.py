"""Redis store versus disk store: read latency, append latency, appends per second.

Run by hand from the repository root (needs ``redis-server`` on PATH and the
``redis`` extra installed)::

    python bench/bench_redis.py

It starts its own redis-servers on free ports of 127.0.0.1, in a temporary
directory: one in memory only (``--appendonly no``) and one with the usual
durable setting (``--appendonly yes --appendfsync everysec``). Every
comparison is measured side by side in the same run; the output is Markdown
for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench_core import appends_per_second

from mnimi_adapters.core import DiskStore, Sample
from mnimi_adapters.core.stores import RedisStore, SequenceStore

DEPTHS = (1, 100, 1000)
READS = 2000
APPENDS = 2000
SECONDS = 3.0  # the appends_per_second default, for the table heading
PROCESSES = (1, 4, 8)
RECORD = {"model": "bench", "messages": [{"role": "user", "content": "bench"}], "params": {}}


def sample(i: int) -> Sample:
    text = f"answer {i}: " + "lorem ipsum " * 20
    return Sample(text=text, message={"role": "assistant", "content": text}, model="bench")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def redis_server(directory: Path, *options: str) -> Iterator[str]:
    """A private redis-server on 127.0.0.1; yields its URL."""
    import redis

    directory.mkdir(parents=True)
    port = _free_port()
    command = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory)]
    command += ["--save", "", "--logfile", "redis.log", *options]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        process.terminate()
        process.wait(10)


def _median(action: Callable[[], object], runs: int) -> float:
    """Median seconds of one ``action()``."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def read_latency(store: SequenceStore, depth: int) -> float:
    """Median time to read sample ``depth - 1`` of a sequence of length ``depth``."""
    key = f"m1-depth-{depth}"
    for i in range(depth):
        store.append(key, [sample(i)], RECORD)
    return _median(lambda: store.get(key, depth - 1), READS)


def append_latency(store: SequenceStore) -> float:
    """Median time of a one-sample append to a growing sequence."""
    count = iter(range(APPENDS))
    return _median(lambda: store.append("m1-latency", [sample(next(count))], RECORD), APPENDS)


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs"


def main(argv: list[str] | None = None) -> None:
    # No options yet: the parser makes --help describe the run instead of starting it, and
    # it comes first so that --help works without redis-server.
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args(argv)
    if shutil.which("redis-server") is None:
        sys.exit("bench_redis: redis-server is not on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with (
            redis_server(root / "memory", "--appendonly", "no") as memory,
            redis_server(root / "aof", "--appendonly", "yes", "--appendfsync", "everysec") as aof,
        ):
            stores: dict[str, SequenceStore] = {
                "disk": DiskStore(root / "disk"),
                "redis": RedisStore(f"{memory}?namespace=bench"),
            }
            print("Command: `python bench/bench_redis.py`\n")
            print("### Reading sample i of a sequence of length i (median of 2,000 reads)\n")
            print("| depth i | disk (diskcache) | Redis (localhost) | Redis / disk |")
            print("|---|---|---|---|")
            for depth in DEPTHS:
                disk, redis = (read_latency(stores[name], depth) for name in ("disk", "redis"))
                print(f"| {depth} | {_us(disk)} | {_us(redis)} | {redis / disk:.1f}x |")

            print("\n### One-sample append, one process (median of 2,000)\n")
            print("| disk (diskcache) | Redis (localhost) | Redis / disk |")
            print("|---|---|---|")
            disk, redis = (append_latency(stores[name]) for name in ("disk", "redis"))
            print(f"| {_us(disk)} | {_us(redis)} | {redis / disk:.1f}x |")
            for store in stores.values():
                store.close()

            print(
                f"\n### Appends per second to one key (single-sample appends, "
                f"{SECONDS:.0f} s, total of all processes)\n"
            )
            print(
                "| processes | disk (diskcache) | Redis, in memory | Redis, AOF everysec "
                "| Redis (memory) / disk |"
            )
            print("|---|---|---|---|---|")
            for processes in PROCESSES:
                namespace = f"?namespace=append-{processes}"
                disk_rate = appends_per_second(str(root / f"append-{processes}"), processes)
                memory_rate = appends_per_second(memory + namespace, processes)
                aof_rate = appends_per_second(aof + namespace, processes)
                print(
                    f"| {processes} | {disk_rate:,.0f} | {memory_rate:,.0f} | {aof_rate:,.0f} "
                    f"| {memory_rate / disk_rate:.1f}x |"
                )


if __name__ == "__main__":
    main()
