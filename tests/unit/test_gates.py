"""Per key, a live stream draws alone and the draws that wait for it go in arrival order."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time

import pytest

from mnimi_adapters.core.errors import MnimiError
from mnimi_adapters.core.gates import GATES, Gates


def test_ordinary_draws_run_together_and_keep_a_stream_from_going_live() -> None:
    gates = Gates()
    gates.enter("k")
    gates.enter("k")
    assert not gates.start_live("k")
    assert gates.start_live("other")
    gates.leave("k")
    gates.leave("k")
    assert gates.start_live("k")
    assert not gates.start_live("k")  # one live stream at a time
    gates.end_live("k")
    gates.end_live("other")
    assert not gates._keys  # nothing kept per key once idle


def test_draws_that_wait_for_a_live_stream_go_one_at_a_time_in_arrival_order() -> None:
    gates = Gates()
    assert gates.start_live("k")
    order: list[int] = []
    running: list[int] = []
    overlaps: list[list[int]] = []

    def draw(i: int) -> None:
        def work() -> None:
            running.append(i)
            if running != [i]:
                overlaps.append(list(running))
            time.sleep(0.01)
            order.append(i)
            running.remove(i)

        gates.through("k", work)

    threads = []
    for i in range(5):
        threads.append(threading.Thread(target=draw, args=(i,)))
        threads[-1].start()
        time.sleep(0.02)  # each queued before the next comes
    assert order == []
    # A draw that comes while others wait queues behind them, live stream or not.
    assert not gates.start_live("k")
    gates.end_live("k")
    for thread in threads:
        thread.join()
    assert order == [0, 1, 2, 3, 4] and not overlaps
    assert not gates._keys


def test_a_waiter_that_gives_up_leaves_the_queue_and_the_rest_go_on() -> None:
    gates = Gates()
    assert gates.start_live("k")

    async def main() -> list[str]:
        done: list[str] = []

        async def draw(name: str) -> None:
            async def work() -> None:
                done.append(name)

            await gates.athrough("k", work)

        first = asyncio.ensure_future(draw("first"))
        quitter = asyncio.ensure_future(draw("quitter"))
        last = asyncio.ensure_future(draw("last"))
        await asyncio.sleep(0.01)
        quitter.cancel()
        await asyncio.sleep(0.01)
        gates.end_live("k")
        await asyncio.gather(first, last)
        with pytest.raises(asyncio.CancelledError):
            await quitter
        return done

    assert asyncio.run(main()) == ["first", "last"]
    assert not gates._keys


def test_a_sync_wait_behind_an_async_stream_of_its_own_loop_is_refused() -> None:
    # The stream's draw runs on this thread's event loop, which the wait would block for
    # good: async code that calls the sync API gets the error, not a hang.
    gates = Gates()
    assert gates.start_live("k", on_loop=True)
    with pytest.raises(MnimiError, match="use the async API in async code"):
        gates.enter("k")
    gates.end_live("k")
    assert not gates._keys
    # Behind a stream drawn elsewhere (a thread), a sync call waits its turn.
    assert gates.start_live("k")
    waiter = threading.Thread(target=gates.through, args=("k", lambda: None))
    waiter.start()
    time.sleep(0.02)
    assert waiter.is_alive()
    gates.end_live("k")
    waiter.join(1)
    assert not waiter.is_alive() and not gates._keys


def test_a_sync_wait_behind_an_async_waiter_of_its_own_loop_is_refused() -> None:
    # Queued behind an async call of this loop (itself waiting for a stream drawn
    # elsewhere), a sync wait would keep that call, and so itself, from ever going on.
    gates = Gates()
    assert gates.start_live("k")

    async def main() -> list[str]:
        done: list[str] = []

        async def work() -> None:
            done.append("async")

        queued = asyncio.ensure_future(gates.athrough("k", work))
        await asyncio.sleep(0.01)
        with pytest.raises(MnimiError, match="use the async API in async code"):
            gates.through("k", lambda: done.append("sync"))
        gates.end_live("k")
        await queued
        return done

    assert asyncio.run(main()) == ["async"]
    assert not gates._keys


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_wait_for_a_stream_of_its_parent() -> None:
    # The stream is drawn by a thread of the parent, which alone would end it.
    assert GATES.start_live("k")
    try:
        with multiprocessing.get_context("fork").Pool(1) as pool:
            assert pool.apply_async(_draw_k).get(timeout=10) == "drawn"
    finally:
        GATES.end_live("k")


def _draw_k() -> str:
    return GATES.through("k", lambda: "drawn")
