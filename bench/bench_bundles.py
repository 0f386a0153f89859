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

from mnimi_adapters.core import Independent, Persistent, Sample
from mnimi_adapters.core.model import BatchedModel
from mnimi_adapters.core.request import Request


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
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
