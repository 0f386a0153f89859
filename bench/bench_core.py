"""Core benchmarks: import time, read latency by depth, appends per second.

Run by hand from the repository root::

    python bench/bench_core.py

Prints Markdown tables for bench/RESULTS.md. Every comparison is measured
side by side in the same run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mnimi_adapters.core import DiskStore, Sample
from mnimi_adapters.core.stores import open_store

DEPTHS = (1, 100, 1000)
READS = 2000


def import_time(runs: int = 15) -> tuple[float, float, bool]:
    """Median wall time of `python -c "import mnimi_adapters"` and of bare `python -c pass`."""
    code = "import sys, mnimi_adapters; print('litellm' in sys.modules)"

    def timed(args: list[str]) -> tuple[float, str]:
        start = time.perf_counter()
        out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
        return time.perf_counter() - start, out

    package, bare, loaded = [], [], False
    for _ in range(runs):
        seconds, out = timed([sys.executable, "-c", code])
        package.append(seconds)
        loaded = loaded or out.strip() == "True"
        bare.append(timed([sys.executable, "-c", "pass"])[0])
    return statistics.median(package), statistics.median(bare), loaded


class FilePerSample:
    """The reference layout: one file per sample; every read lists the directory
    and reads every file of the sequence (what the reference `_load` does)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def append(self, key: str, sample: Sample) -> None:
        directory = self.root / key
        directory.mkdir(parents=True, exist_ok=True)
        index = len(list(directory.glob("*.json")))
        (directory / f"{index}.json").write_text(json.dumps(sample.to_dict()))

    def get(self, key: str, index: int) -> Sample | None:
        files = sorted((self.root / key).glob("*.json"), key=lambda f: int(f.stem))
        texts = [f.read_text() for f in files]
        return Sample.from_dict(json.loads(texts[index])) if index < len(texts) else None


def sample(i: int) -> Sample:
    text = f"answer {i}: " + "lorem ipsum " * 20
    return Sample(text=text, message={"role": "assistant", "content": text}, model="bench")


def _timed(read: Callable[[str, int], Sample | None], key: str, index: int, reads: int) -> float:
    """Median seconds of one ``read(key, index)``."""
    times = []
    for _ in range(reads):
        start = time.perf_counter()
        assert read(key, index) is not None
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def read_latency(root: Path) -> list[tuple[int, float, float]]:
    """Median time to read sample i of a sequence of length i, both layouts."""
    store = DiskStore(root / "mnimi")
    reference = FilePerSample(root / "reference")
    rows = []
    for depth in DEPTHS:
        key = f"m1-depth-{depth}"
        for i in range(depth):
            store.append(key, [sample(i)], {"model": "bench"})
            reference.append(key, sample(i))
        # Timed in separate blocks: a reference read touches a thousand files, which
        # would evict the caches of an interleaved diskcache read and time that instead.
        ours = _timed(store.get, key, depth - 1, READS)
        theirs = _timed(reference.get, key, depth - 1, READS if depth < 1000 else 200)
        rows.append((depth, ours, theirs))
    store.close()
    return rows


def _append_worker(
    location: str, seconds: float, start_at: float, queue: multiprocessing.Queue
) -> None:
    store = open_store(location)
    while time.time() < start_at:
        time.sleep(0.001)
    count = 0
    end = start_at + seconds
    while time.time() < end:
        store.append("m1-shared", [sample(count)], {"model": "bench"})
        count += 1
    queue.put(count)


def appends_per_second(location: str, processes: int, seconds: float = 3.0) -> float:
    """Total single-sample appends per second of ``processes`` writers to one key."""
    open_store(location).close()
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = context.Queue()
    start_at = time.time() + 2.0  # let every process finish importing first
    workers = [
        context.Process(target=_append_worker, args=(location, seconds, start_at, queue))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    total = sum(queue.get() for _ in workers)
    for worker in workers:
        worker.join()
    store = open_store(location)
    assert store.length("m1-shared") == total, "an append was lost"
    store.close()
    return total / seconds


def main(argv: list[str] | None = None) -> None:
    # No options yet: the parser makes --help describe the run instead of starting it.
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args(argv)
    package, bare, loaded = import_time()
    print("## Import time\n")
    print("| command | median wall time |")
    print("|---|---|")
    print(f'| `python -c "import mnimi_adapters"` | {package * 1e3:.0f} ms |')
    print(f"| `python -c pass` (interpreter start) | {bare * 1e3:.0f} ms |")
    print(f"| import alone (difference) | {(package - bare) * 1e3:.0f} ms |")
    print(f"\nLiteLLM imported by `import mnimi_adapters`: {loaded}\n")

    with tempfile.TemporaryDirectory() as tmp:
        rows = read_latency(Path(tmp))
        print("## Reading sample i of a persisted sequence of length i (median)\n")
        print("| depth i | mnimi_adapters (diskcache) | file per sample (reference) | speed-up |")
        print("|---|---|---|---|")
        for depth, ours, theirs in rows:
            print(
                f"| {depth} | {ours * 1e6:.1f} µs | {theirs * 1e6:.1f} µs | {theirs / ours:.0f}x |"
            )

        print("\n## Appends to one key of one store (single-sample appends, 3 s)\n")
        print("| processes | appends per second (total) |")
        print("|---|---|")
        for processes in (1, 4, 8):
            rate = appends_per_second(f"{tmp}/append-{processes}", processes)
            print(f"| {processes} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
