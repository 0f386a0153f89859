"""A call's provider requests in flight at once, as LangChain's ``max_concurrency`` asks."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from mnimi_adapters.core import Persistent, Request
from mnimi_adapters.core.model import BatchedModel, fan_out, requests_at_most

PROMPT = "Pick a number."


class Counting(BatchedModel):
    """One sample a request, each taking a moment; counts the requests in flight."""

    def __init__(self) -> None:
        super().__init__("counting", 1.0, max_batch=1)
        self.lock = threading.Lock()
        self.flying = self.most = 0
        self.drawn = 0

    def query(self, request: Request, n: int) -> list[str]:
        with self.lock:
            self.flying += 1
            self.most = max(self.most, self.flying)
            self.drawn += 1
            number = self.drawn
        time.sleep(0.05)
        with self.lock:
            self.flying -= 1
        return [str(number)]


def test_a_refill_of_single_requests_keeps_to_the_limit(tmp_path: Path) -> None:
    model = Counting()
    with requests_at_most(2):
        assert len(Persistent(model, tmp_path / "a").draw(Request.of(PROMPT), 6)) == 6
    assert model.most == 2
    unlimited = Counting()
    Persistent(unlimited, tmp_path / "b").draw(Request.of(PROMPT), 6)
    assert unlimited.most == 6


def test_an_async_refill_keeps_to_the_limit(tmp_path: Path) -> None:
    model = Counting()

    async def draw() -> int:
        with requests_at_most(3):
            return len(await Persistent(model, tmp_path).adraw(Request.of(PROMPT), 6))

    assert asyncio.run(draw()) == 6
    assert model.most == 3


def test_a_request_that_fans_out_itself_does_not_wait_for_its_own_slot() -> None:
    # A provider emulating n with single requests fans out inside its own request: under a
    # limit of 1 it must not wait for the slot it holds.
    def one(_: int) -> str:
        return "sample"

    def emulated(n: int) -> list[str | BaseException]:
        return fan_out(one, [1] * n)

    with requests_at_most(1):
        assert fan_out(emulated, [3]) == [["sample"] * 3]
