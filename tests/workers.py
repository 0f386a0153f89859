"""Process entry points for the concurrency and crash tests (importable under spawn)."""

from __future__ import annotations

import sys
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest import NumberModel

from mnimi_adapters.core import DiskStore, Independent, Persistent, Sample

PROMPT = "Choose a number between 1 and 1000."


def draw_independently(path: str, count: int, threads: int) -> list[tuple[int, str]]:
    """Draw ``count`` samples per thread through one shared Independent cursor.

    Returns (sequence index, draw id) for every sample served.
    """
    from concurrent.futures import ThreadPoolExecutor

    model = Independent(Persistent(NumberModel(), path))

    def worker(_: int) -> list[tuple[int, str]]:
        served = []
        for _ in range(count):
            sample = next(model.samples(PROMPT, batch=2))
            assert sample.origin is not None
            served.append((sample.origin["index"], sample.draw_id))
        return served

    with ThreadPoolExecutor(threads) as pool:
        return [item for chunk in pool.map(worker, range(threads)) for item in chunk]


def replay(path: str, count: int) -> list[str]:
    """Read the first ``count`` draw ids of the sequence through a fresh Persistent."""
    return [s.draw_id for s in islice(Persistent(NumberModel(), path).samples(PROMPT), count)]


def append_forever(path: str, key: str) -> None:
    """Append single samples until killed."""
    store = DiskStore(path)
    i = 0
    while True:
        store.append(key, [Sample(text=f"sample {i} " + "x" * 2000)], {"model": "crash"})
        i += 1
