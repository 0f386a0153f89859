"""A call of several samples claims its positions at once (law 2 under concurrency).

Concurrent calls of ``n`` samples each, claiming one position at a time, interleaved their
positions as their refills landed, and a re-run (all hits) grouped them otherwise.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from support import NumberModel

from mnimi_adapters.core import Independent, Persistent, Request, Sample
from mnimi_adapters.core.errors import ProviderError


class SlowFirst(NumberModel):
    """Its first refill answers last, so refills land out of the calls' order."""

    async def aquery(self, request: Request, n: int) -> list[str | Sample]:
        with self._lock:
            first = not self.calls
        answer = list(self.query(request, n))
        await asyncio.sleep(0.3 if first else 0.0)
        return answer


def test_concurrent_calls_of_n_get_the_same_samples_on_a_rerun(tmp_path: Path) -> None:
    async def run(model: NumberModel) -> list[list[str]]:
        scoped = Independent(Persistent(model, tmp_path))
        drawn = await asyncio.gather(*(scoped.adraw("Pick", 3) for _ in range(2)))
        return [[s.draw_id for s in samples] for samples in drawn]

    first = asyncio.run(run(SlowFirst()))
    again = asyncio.run(run(SlowFirst()))
    assert again == first
    replica = Persistent(NumberModel(), tmp_path, replication=True)
    stored = [s.draw_id for s in Independent(replica).draw("Pick", 6)]
    replica.close()
    assert first == [stored[:3], stored[3:]]  # consecutive positions, in the calls' order


def test_threads_drawing_n_each_get_consecutive_positions(tmp_path: Path) -> None:
    model = Independent(Persistent(NumberModel(), tmp_path))
    got: list[list[int]] = []
    start = threading.Barrier(4)

    def draw() -> None:
        start.wait()
        samples = model.draw("Pick", 3)
        got.append([s.origin["index"] for s in samples])  # type: ignore[index]

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(got) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]


class FailsSecond(NumberModel):
    def query(self, request: Request, n: int) -> list[str]:
        if len(self.calls) == 1:
            self.calls.append(n)
            raise ProviderError("rate limited")
        return super().query(request, n)


def test_a_call_that_fails_part_way_hands_all_its_positions_back(tmp_path: Path) -> None:
    model = Independent(Persistent(FailsSecond(), tmp_path))
    with pytest.raises(ProviderError):
        model.draw("Pick", 3, batch=1)  # #0 drawn, #1 fails, #2 never reached
    retried = model.draw("Pick", 3, batch=1)
    assert [s.origin["index"] for s in retried] == [0, 1, 2]  # type: ignore[index]
