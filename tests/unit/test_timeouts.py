"""A call cut short by a timeout leaves its retry a draw of its own (laws 2, 4 and 6).

The caller gives up on a slow provider (``asyncio.wait_for``, LangGraph's
``TimeoutPolicy``). Its retry asks the provider afresh, as it would without a cache,
instead of waiting behind the draw that was given up on; that draw still lands, for a
later position.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from pathlib import Path

import pytest

from mnimi_adapters.core import (
    BatchedModel,
    Layer,
    Persistent,
    Repeatable,
    Request,
    independent,
    repeatable,
    scoped,
)
from mnimi_adapters.core.layers import wait_for_refills

PROMPT = "Pick a number"


class HeldFirst(BatchedModel):
    """Answers "0", "1", ... in the order asked; the first request waits for ``release``."""

    def __init__(self) -> None:
        super().__init__("held", 1.0)
        self.release = threading.Event()
        self.asked = 0
        self._numbers = itertools.count()

    def query(self, request: Request, n: int) -> list[str]:
        raise NotImplementedError("the tests ask asynchronously")

    async def aquery(self, request: Request, n: int) -> list[str]:
        self.asked += 1
        answers = [str(next(self._numbers)) for _ in range(n)]
        if answers[0] == "0":
            while not self.release.is_set():
                await asyncio.sleep(0.01)
        return answers


async def draw(layer: Layer) -> str:
    return (await scoped(layer).adraw(PROMPT, 1))[0].text


async def cut_short(layer: Layer) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(draw(layer), 0.1)


def settle(model: HeldFirst) -> None:
    """Let the draw given up on land."""
    model.release.set()
    assert wait_for_refills(10)


def test_the_retry_of_an_attempt_cut_short_draws_for_itself() -> None:
    model = HeldFirst()
    cache = Repeatable(model)

    async def attempts() -> str:
        with independent():
            with repeatable():
                await cut_short(cache)
            with repeatable():
                # Waiting behind the held draw would never end: bounded, it fails instead.
                return await asyncio.wait_for(draw(cache), 10)

    assert asyncio.run(attempts()) == "1"
    settle(model)

    async def later() -> list[str]:
        with independent():
            return [await draw(cache) for _ in range(2)]

    # The retry's answer is first in the sequence, the held one next (nothing lost).
    assert asyncio.run(later()) == ["1", "0"]
    assert model.asked == 2


def test_a_repeated_call_after_one_cut_short_draws_for_itself() -> None:
    model = HeldFirst()
    cache = Repeatable(model)

    async def calls() -> str:
        await cut_short(cache)
        return await asyncio.wait_for(draw(cache), 10)

    assert asyncio.run(calls()) == "1"
    settle(model)
    assert asyncio.run(draw(cache)) == "1"
    assert model.asked == 2


def test_a_slice_stays_a_prefix_of_its_cache_when_a_call_is_cut_short(tmp_path: Path) -> None:
    model = HeldFirst()
    big = Persistent(model, tmp_path / "big")
    small = Persistent(big, tmp_path / "small")

    async def attempts() -> str:
        with independent():
            with repeatable():
                await cut_short(small)
            with repeatable():
                return await asyncio.wait_for(draw(small), 10)

    assert asyncio.run(attempts()) == "1"
    settle(model)
    key = small.key_of(Request.of(PROMPT))

    def texts(layer: Persistent) -> list[str]:
        return [layer.store.get(key, index).text for index in range(layer.store.length(key))]

    assert texts(small) == ["1"]  # law 4: what the run used, a prefix of the cache's
    assert texts(big) == ["1", "0"]  # law 6: the held draw is kept
