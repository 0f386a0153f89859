"""Process entry points for the concurrency and crash tests (importable under spawn)."""

from __future__ import annotations

import sys
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from support import NumberModel

from mnimi_adapters.core import Independent, Persistent, Sample
from mnimi_adapters.core.stores import open_store

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
    """Append single samples until killed (``path``: a directory or a Redis URL)."""
    store = open_store(path)
    i = 0
    while True:
        store.append(key, [Sample(text=f"sample {i} " + "x" * 2000)], {"model": "crash"})
        i += 1


def append_contested(
    path: str, key: str, worker: int, rounds: int, contested: list[str], start_at: float
) -> list[str]:
    """Append ``rounds`` two-sample batches to ``key``; return the draw ids that were added.

    Each batch holds a draw of this worker's own and one of the ``contested`` draws
    that every worker submits too: exactly one append may store each of those.
    """
    import time

    store = open_store(path)
    record = {"model": "contest", "messages": [{"role": "user", "content": "go"}], "params": {}}
    while time.time() < start_at:  # start together, so the appends really interleave
        time.sleep(0.001)
    added: list[str] = []
    for round_ in range(rounds):
        shared = contested[(round_ + worker) % len(contested)]
        batch = [
            Sample(text=f"worker {worker} round {round_}", draw_id=f"w{worker}-{round_}"),
            Sample(text=f"contested {shared}", draw_id=shared, created=0.0),
        ]
        if round_ % 2:
            batch.reverse()
        added += [sample.draw_id for sample in store.append(key, batch, record)]
    store.close()
    return added


def replicate_missing(path: str) -> None:
    """Replicate a sample ``path`` lacks: the miss goes back to the parent pickled."""
    replay = Persistent(NumberModel(), path, replication=True)
    next(replay.sample(PROMPT))
