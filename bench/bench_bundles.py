"""Replication package benchmarks: bundle export and verify time, and the overhead of
recording a run on a hit-only replay.

Run by hand from the repository root::

    python bench/bench_bundles.py

Prints Markdown tables for bench/RESULTS.md. Every comparison is measured side by side
in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench_stores import command  # run from the repository root, bench/ is on the path

from mnimi_adapters.core import Independent, Persistent, Sample
from mnimi_adapters.core.explain import explain_miss
from mnimi_adapters.core.model import BatchedModel
from mnimi_adapters.core.request import Request, request_key, request_record
from mnimi_adapters.core.stores import DiskStore, open_store

#: Samples per key in the stores bundled: a run's retries and votes.
PER_KEY = 10


class Numbered(BatchedModel):
    """Instant answers: the replay reads only the cache."""

    def query(self, request: Request, n: int) -> list[str | Sample]:
        return [f"{request.prompt} answer {i}" for i in range(n)]


def replay(cache: Path, prompts: list[str], per_prompt: int, record: Path | None) -> float:
    """Seconds a hit-only replay of ``prompts`` takes, optionally recording the run."""
    model = Persistent(Numbered("m", 1.0), cache, record=record)
    sampler = Independent(model)
    start = time.perf_counter()
    for prompt in prompts:
        for _ in range(per_prompt):
            next(sampler.samples(prompt))
    seconds = time.perf_counter() - start
    model.close()
    return seconds


def recording_overhead(keys: int, per_key: int, repeats: int) -> tuple[float, float]:
    """Median seconds of a hit-only replay without and with a run record, interleaved."""
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        prompts = [f"prompt {i}" for i in range(keys)]
        fill = Persistent(Numbered("m", 1.0), cache)
        for prompt in prompts:
            fill.draw(prompt, per_key, batch=per_key)
        fill.close()
        plain, recorded = [], []
        replay(cache, prompts, per_key, None)  # warms the page cache for both
        for run in range(repeats):
            # Alternating which goes first: neither gains from the other's warm-up.
            record = Path(tmp) / f"run{run}.jsonl"
            if run % 2:
                recorded.append(replay(cache, prompts, per_key, record))
                plain.append(replay(cache, prompts, per_key, None))
            else:
                plain.append(replay(cache, prompts, per_key, None))
                recorded.append(replay(cache, prompts, per_key, record))
        return statistics.median(plain), statistics.median(recorded)


def build_store(path: Path, samples: int) -> None:
    """A store of ``samples`` samples, :data:`PER_KEY` per key."""
    identity = Numbered("m", 0.7).identity()
    with DiskStore(path) as store:
        for k in range(samples // PER_KEY):
            request = Request.of(f"prompt {k}")
            key, record = request_key(identity, request), request_record(identity, request)
            texts = [f"answer {k}.{i} " + "x" * 200 for i in range(PER_KEY)]
            store.append(key, [Sample.of_text(text) for text in texts], record)


def explain_time(cache: Path, keys: int) -> float:
    """Seconds to explain a miss (a changed temperature) among ``keys`` stored requests."""
    identity = Numbered("m", 0.8).identity()
    requested = request_record(identity, Request.of(f"prompt {keys // 2}"))
    with open_store(cache, create=False, read_only=True) as store:
        start = time.perf_counter()
        found = explain_miss(requested, store.summaries())
        seconds = time.perf_counter() - start
    assert found is not None and found[1] == "temperature: stored 0.7, requested 0.8", found
    return seconds


def bundle_times(sizes: tuple[int, ...]) -> dict[int, dict[str, float]]:
    """Seconds of bundle export and verify, JSONL export and import, and explaining a
    miss, per size."""
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            work = Path(tmp) / str(size)
            build_store(work / "cache", size)
            times[size] = {
                "export --bundle": command("export", work / "cache", work / "bundle", "--bundle"),
                "verify (bundle)": command("verify", work / "bundle"),
                "export --jsonl": command("export", work / "cache", work / "c.jsonl", "--jsonl"),
                "import": command("import", work / "c.jsonl", work / "imported"),
                "explaining a miss": explain_time(work / "cache", size // PER_KEY),
            }
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    sizes = tuple(args.sizes)
    times = bundle_times(sizes)
    print(f"### Bundles ({PER_KEY} samples per key, 200-character samples)\n")
    small, large = sizes[0], sizes[-1]
    print(
        f"| command | {' | '.join(f'{n:,} samples' for n in sizes)} | per sample at {large:,} "
        f"| ratio {large:,}/{small:,} |"
    )
    print("|---|" + "---|" * (len(sizes) + 2))
    for name in list(times[small])[:-1]:
        cells = " | ".join(f"{times[n][name]:.2f} s" for n in sizes)
        per = times[large][name] / large * 1e6
        ratio = times[large][name] / times[small][name]
        print(f"| `{name}` | {cells} | {per:.0f} µs | {ratio:.1f}x |")
    print("\n### Explaining a replication miss (a changed temperature)\n")
    print("| stored keys | time to name the nearest request and the field |")
    print("|---|---|")
    for n in sizes:
        print(f"| {n // PER_KEY:,} | {times[n]['explaining a miss'] * 1e3:.0f} ms |")
    print()
    keys, per_key = 1000, 10
    plain, recorded = recording_overhead(keys, per_key, args.repeats)
    samples = keys * per_key
    print(f"### Recording a run on a hit-only replay ({samples:,} samples, {keys:,} keys)\n")
    print("| replay | median time | per sample | ratio |")
    print("|---|---|---|---|")
    print(f"| no record | {plain * 1e3:.0f} ms | {plain / samples * 1e6:.1f} µs | 1.00x |")
    print(
        f"| record=run.jsonl | {recorded * 1e3:.0f} ms | {recorded / samples * 1e6:.1f} µs | "
        f"{recorded / plain:.2f}x |"
    )


if __name__ == "__main__":
    main()
