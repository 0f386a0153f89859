"""Work started apart on a refill thread (``start_apart``): what a live stream draws with.

It returns at once, runs to its end whatever its caller does, is waited for like any
refill, and the refills it runs stay on its thread (law 6 with one hand-off, not two).
"""

from __future__ import annotations

import contextvars
import threading
from pathlib import Path

import pytest
from support import NumberModel

from mnimi_adapters.core import Persistent, Request
from mnimi_adapters.core.layers import start_apart, wait_for_refills

PROMPT = "Choose a number between 1 and 1000."

_MARK: contextvars.ContextVar[str] = contextvars.ContextVar("mark", default="unset")


class ThreadNoting(NumberModel):
    """A NumberModel that notes the thread each request is sent from."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def query(self, request: Request, n: int) -> list[str]:
        self.threads.append(threading.get_ident())
        return super().query(request, n)


def test_started_work_returns_at_once_and_runs_in_the_callers_context() -> None:
    release = threading.Event()

    def work() -> tuple[str, str]:
        assert release.wait(10)
        return _MARK.get(), threading.current_thread().name

    token = _MARK.set("the caller's")
    try:
        future = start_apart(work)
    finally:
        _MARK.reset(token)
    assert not future.done()  # the caller did not wait
    release.set()
    assert future.result(10) == ("the caller's", "mnimi-refill")


def test_a_refill_within_started_work_runs_on_its_thread(tmp_path: Path) -> None:
    model = ThreadNoting()
    cached = Persistent(model, tmp_path / "cache")

    def work() -> tuple[int, str]:
        return threading.get_ident(), cached.draw(PROMPT, 1)[0].text

    thread, text = start_apart(work).result(10)
    assert model.threads == [thread]
    assert next(cached.sample(PROMPT)) == text


def test_started_work_is_waited_for_and_stores_what_it_paid_for(tmp_path: Path) -> None:
    """Law 6: nobody reads the future, and the sample is stored all the same."""
    release = threading.Event()
    model = NumberModel()
    cached = Persistent(model, tmp_path / "cache")

    def work() -> None:
        assert release.wait(10)
        cached.draw(PROMPT, 1)

    start_apart(work)
    assert not wait_for_refills(0.05)  # in flight until it ends
    release.set()
    assert wait_for_refills(10)
    assert cached.store.length(cached.key_of(Request.of(PROMPT))) == 1
    assert model.calls == [1]


def test_a_failure_of_started_work_reaches_its_future() -> None:
    def work() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        start_apart(work).result(10)
