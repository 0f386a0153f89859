"""Scopes give adapters the wrappers' semantics (docs/laws.md, "Scopes")."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import multiprocessing
import os
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import FailingModel, NumberModel

from mnimi_adapters.core import (
    BatchedModel,
    Independent,
    MnimiError,
    Persistent,
    Repeatable,
    Request,
    Sample,
    ScopeWarning,
    independent,
    no_cache,
    repeatable,
    scoped,
    scopes,
)
from mnimi_adapters.core.model import Layer

PROMPT = "Choose a number between 1 and 1000."
T = TypeVar("T")


def draw(layer: Layer) -> str:
    """What an adapter does per call: one sample from the scoped layer."""
    return next(scoped(layer).sample(PROMPT))


@pytest.fixture
def base(tmp_path: Path) -> Persistent:
    return Persistent(NumberModel(), tmp_path)


def test_outside_any_scope_calls_repeat(base: Persistent) -> None:
    assert scoped(base) is base
    assert draw(base) == draw(base) == draw(base)


def test_independent_scope_continues(base: Persistent) -> None:
    with independent():
        first = [draw(base) for _ in range(3)]
    assert len(set(first)) == 3
    # A new block is a new Independent over a persistent layer: it starts at 0 again.
    with independent():
        assert [draw(base) for _ in range(3)] == first


def test_retry_pattern(base: Persistent) -> None:
    attempts = []
    with independent():
        for _ in range(3):
            with repeatable():
                attempts.append((draw(base), draw(base)))
    assert all(a == b for a, b in attempts)
    assert len({a for a, _ in attempts}) == 3
    # The same as the wrappers: Repeatable(Independent(base)) per attempt.
    ind = Independent(base)
    expected = [next(Repeatable(ind).sample(PROMPT)) for _ in range(3)]
    assert [a for a, _ in attempts] == expected


def test_nested_independent_shares_the_cursor(base: Persistent) -> None:
    with independent():
        outer = draw(base)
        with independent():
            inner = [draw(base), draw(base)]
        after = draw(base)
    assert len({outer, *inner, after}) == 4


async def test_asyncio_gather_in_one_scope_draws_distinct(base: Persistent) -> None:
    async def adraw() -> str:
        return await anext(scoped(base).asample(PROMPT))

    async with independent():
        results = await asyncio.gather(*(adraw() for _ in range(8)))
    assert len(set(results)) == 8
    # They are exactly the first 8 samples of the stored sequence, each once.
    assert sorted(results) == sorted(islice(base.sample(PROMPT), 8))


def test_threads_with_copied_context_draw_distinct(base: Persistent) -> None:
    with independent(), ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(contextvars.copy_context().run, draw, base) for _ in range(12)]
        results = [f.result() for f in futures]
    assert len(set(results)) == 12


def test_threads_that_did_not_inherit_the_context_borrow_the_open_scope(
    base: Persistent,
) -> None:
    # A plain executor does not copy the caller's context (nor do LiteLLM's
    # batch_completion and DSPy's num_threads): its threads borrow the scope open on
    # the one thread that has scopes open, so they do not all replay sample 0.
    with independent(), ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: draw(base), range(12)))
        assert len(set(results)) == 12
        with repeatable():  # the innermost open scope is the one borrowed
            again = list(pool.map(lambda _: draw(base), range(3)))
        assert len(set(again)) == 1 and again[0] not in results
    # Once the scope is left, the threads are outside any scope again.
    with ThreadPoolExecutor(2) as pool:
        assert set(pool.map(lambda _: draw(base), range(4))) == {draw(base)}


def test_a_thread_that_carries_a_context_without_a_scope_never_borrows(
    base: Persistent,
) -> None:
    # A web framework's threadpool runs each request's sync endpoint in a copy of that
    # request's context, which has no scope: it borrowed the scope another request had
    # open on its own thread, and paid for samples where it should have replayed.
    first = draw(base)
    request_context = contextvars.copy_context()  # a request's: no scope in it
    holding, done = threading.Event(), threading.Event()

    def other_request() -> None:
        with independent():
            holding.set()
            done.wait(5)

    holder = threading.Thread(target=contextvars.copy_context().run, args=(other_request,))
    holder.start()
    try:
        holding.wait(5)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ScopeWarning)
            with ThreadPoolExecutor(1) as pool:
                answers = [pool.submit(request_context.run, draw, base).result() for _ in range(3)]
        assert answers == [first] * 3
    finally:
        done.set()
        holder.join()


@pytest.mark.parametrize("apart", ["context", "thread"])
def test_a_scope_left_in_another_context_is_closed_with_a_warning(
    base: Persistent, apart: str
) -> None:
    # FastAPI runs a sync dependency's `with independent(): yield` entry and exit in two
    # copies of a context (and threads): the scope, never left in its own context,
    # stayed open for good, and every later unscoped call on another thread borrowed it.
    first = draw(base)
    manager = independent()
    contextvars.copy_context().run(manager.__enter__)
    leave = functools.partial(contextvars.copy_context().run, manager.__exit__, None, None, None)
    with pytest.warns(ScopeWarning, match="left in another context"):
        if apart == "thread":
            _on_a_plain_thread(leave)
        else:
            leave()
    assert not scopes._open
    assert [_on_a_plain_thread(lambda: draw(base)) for _ in range(3)] == [first] * 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScopeWarning)
        manager.__exit__(None, None, None)  # nothing left to leave: no second warning


def _retries(layer: Layer, attempts: int = 3) -> list[tuple[str, str]]:
    """The retry pattern: two calls per attempt, each attempt in its own repeatable()."""
    tried = []
    for _ in range(attempts):
        with repeatable():
            tried.append((draw(layer), draw(layer)))
    return tried


def _on_a_plain_thread(work: Callable[[], T]) -> T:
    """``work``'s result, run on a threading.Thread, which copies no context."""
    result: list[T] = []
    thread = threading.Thread(target=lambda: result.append(work()))
    thread.start()
    thread.join()
    return result[0]


@pytest.mark.parametrize("thread", ["executor", "threading.Thread"])
def test_a_scope_opened_on_a_thread_that_did_not_inherit_the_context_nests_in_the_borrowed_one(
    base: Persistent, thread: str
) -> None:
    # A worker retrying with `with repeatable():` replayed sample 0 on every attempt: its
    # block did not nest in the independent() its calls borrow. It nests now, exactly as
    # on the thread that opened the independent(), or in a copied context.
    def run(work: Callable[[], T]) -> T:
        if thread == "executor":
            with ThreadPoolExecutor(1) as pool:
                return pool.submit(work).result()
        return _on_a_plain_thread(work)

    with warnings.catch_warnings():
        warnings.simplefilter("error", ScopeWarning)
        with independent():
            tried = run(lambda: _retries(base))
            after = draw(base)  # the worker's attempts moved the scope's cursor
    assert all(a == b for a, b in tried)
    # The wrappers' answer: Repeatable(Independent(base)) per attempt, positions 0, 1, 2.
    assert [a for a, _ in tried] == list(islice(base.sample(PROMPT), 3))
    assert after == list(islice(base.sample(PROMPT), 4))[3]


def test_borrowers_retrying_side_by_side_each_get_fresh_attempts(base: Persistent) -> None:
    # Every worker's repeatable() nests in the main thread's independent(): a scope one
    # worker opened is no second holder for the others, so none of them warns.
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScopeWarning)
        with independent(), ThreadPoolExecutor(4) as pool:
            tried = [
                pair for pairs in pool.map(lambda _: _retries(base), range(4)) for pair in pairs
            ]
    assert all(a == b for a, b in tried)
    assert sorted(a for a, _ in tried) == sorted(islice(base.sample(PROMPT), 12))


def test_leaving_a_scope_opened_on_a_borrowing_thread_borrows_afresh(base: Persistent) -> None:
    # Leaving the block must not leave the borrowed independent() in the worker's
    # context: the worker's later tasks borrow whatever is open then, or nothing.
    with ThreadPoolExecutor(1) as pool:  # one worker, so each task runs on the same thread
        with independent():
            with repeatable():
                in_repeatable = draw(base)  # position 0, for the main thread's attempt
            tried = pool.submit(_retries, base, 1).result()  # position 1
            assert pool.submit(lambda: scoped(base)).result() is not base
            next_one = pool.submit(draw, base).result()  # borrowed: position 2
        assert pool.submit(lambda: scoped(base)).result() is base
        outside = pool.submit(draw, base).result()
    first_four = list(islice(base.sample(PROMPT), 3))
    assert [in_repeatable, tried[0][0], next_one] == first_four
    assert outside == draw(base) == first_four[0]  # outside any scope: position 0


def test_a_scope_opened_on_a_borrowing_thread_does_not_leak_to_other_threads(
    base: Persistent,
) -> None:
    inside, release = threading.Event(), threading.Event()

    def retry_and_hold() -> tuple[str, str]:
        with repeatable():
            first = draw(base)
            inside.set()
            release.wait(10)
            return first, draw(base)

    with warnings.catch_warnings():
        warnings.simplefilter("error", ScopeWarning)
        with independent(), ThreadPoolExecutor(2) as pool:
            held = pool.submit(retry_and_hold)
            assert inside.wait(10)
            # Another borrower, a new thread and the main thread still see the
            # independent(), not the worker's repeatable(): each gets a fresh sample.
            others = [
                pool.submit(draw, base).result(),
                _on_a_plain_thread(lambda: draw(base)),
                draw(base),
                draw(base),
            ]
            release.set()
            first, again = held.result()
    assert first == again
    assert len({first, *others}) == 5


def test_workers_that_open_their_own_blocks_never_borrow_each_others(base: Persistent) -> None:
    # A pool's workers each voting in their own independent() (a DSPy module under
    # Evaluate(num_threads=...)): a worker whose block overlapped another's in time nested
    # in it and continued its cursor, so a re-run paid again and a replica missed.
    inside, release = threading.Event(), threading.Event()

    def votes(hold: bool) -> list[str]:
        with independent():
            drawn = [draw(base) for _ in range(3)]
            if hold:
                inside.set()
                release.wait(10)
            return drawn

    with warnings.catch_warnings():
        warnings.simplefilter("error", ScopeWarning)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(votes, True)
            assert inside.wait(10)
            second = pool.submit(votes, False).result()  # while the first block is open
            release.set()
            assert first.result() == second == list(islice(base.sample(PROMPT), 3))
        # A main-thread scope is still lent to the pool's workers.
        with independent(), ThreadPoolExecutor(2) as pool:
            assert len(set(pool.map(lambda _: draw(base), range(4)))) == 4


def test_a_scope_opened_on_a_thread_that_cannot_tell_which_to_borrow_warns(
    base: Persistent,
) -> None:
    with (
        _scopes_open_on_three_threads(),
        ThreadPoolExecutor(1) as pool,
        pytest.warns(ScopeWarning, match="several threads"),
    ):
        tried = pool.submit(_retries, base).result()
    # Outside any scope, as the warning says: every attempt replays position 0.
    assert len(set(tried)) == 1


def test_a_thread_that_cannot_tell_its_scope_warns_once_at_the_programs_line(
    base: Persistent,
) -> None:
    # It warned at every lookup (several a call), at lines inside the library.
    def calls() -> list[str]:
        return [draw(base) for _ in range(3)]  # the program's line

    with (
        _scopes_open_on_three_threads(),
        ThreadPoolExecutor(1) as pool,
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        pool.submit(calls).result()
        pool.submit(calls).result()
    shown = [w for w in caught if issubclass(w.category, ScopeWarning)]
    assert len(shown) == 1
    assert shown[0].filename == __file__


@contextlib.contextmanager
def _scopes_open_on_three_threads() -> Iterator[None]:
    """An independent() here and one on each of two threads that carry this context (as a
    LangChain executor's do): a thread that inherited none cannot tell which is its own.

    (A thread that carries no scope and opens one while another thread has one open nests
    it in that one, as it borrows it for its calls: its scope makes no second holder.)
    """
    opened, release = threading.Barrier(3), threading.Event()

    def hold_a_scope() -> None:
        with independent():
            opened.wait()
            release.wait()

    with independent():
        holders = [
            threading.Thread(target=contextvars.copy_context().run, args=(hold_a_scope,))
            for _ in range(2)
        ]
        for holder in holders:
            holder.start()
        opened.wait()
        try:
            yield
        finally:
            release.set()
            for holder in holders:
                holder.join()


def test_with_scopes_open_on_several_threads_a_thread_without_one_warns_and_repeats(
    base: Persistent,
) -> None:
    with (
        _scopes_open_on_three_threads(),
        ThreadPoolExecutor(1) as pool,
        pytest.warns(ScopeWarning, match="several threads"),
    ):
        results = list(pool.map(lambda _: draw(base), range(3)))
    assert len(set(results)) == 1


def test_decorators(base: Persistent) -> None:
    @independent()
    def three() -> list[str]:
        return [draw(base) for _ in range(3)]

    @independent()
    async def athree() -> list[str]:
        return [draw(base) for _ in range(3)]

    first = three()
    assert len(set(first)) == 3
    assert three() == first  # each call is a fresh scope
    assert asyncio.run(athree()) == first


def test_no_cache_goes_to_the_provider_and_stores_nothing(tmp_path: Path) -> None:
    provider = NumberModel()
    model = Persistent(provider, tmp_path)
    with no_cache():
        draw(model)
        draw(model)
    assert provider.calls == [1, 1]
    assert model.stats()["samples_stored"] == 0
    assert next(model.sample(PROMPT)) and provider.calls == [1, 1, 1]


def test_no_cache_refuses_a_replication_cache(tmp_path: Path) -> None:
    Persistent(FailingModel("gpt-4o", 1.0), tmp_path).close()
    model = Persistent(FailingModel("gpt-4o", 1.0), tmp_path, replication=True)
    with no_cache(), pytest.raises(MnimiError, match="replication"):
        draw(model)


def test_stats(tmp_path: Path) -> None:
    model = Persistent(NumberModel(max_batch=5), tmp_path)
    list(islice(model.sample(PROMPT, batch=10), 12))
    stats = model.stats()
    assert stats["samples_stored"] == 20
    assert stats["requests"] == 4
    # A refill's extra samples were paid in this run: served, they are misses, not hits.
    assert stats["misses"] == 12 and stats["hits"] == 0
    list(islice(model.sample(PROMPT), 14))  # replayed from 0, then two drawn earlier
    assert model.stats()["hits"] == 12 and model.stats()["misses"] == 14
    model.close()
    again = Persistent(NumberModel(max_batch=5), tmp_path)
    list(islice(again.sample(PROMPT), 20))  # another run: all 20 stored ones are hits
    assert again.stats()["hits"] == 20 and again.stats()["misses"] == 0


class Cheap(BatchedModel):
    """Each answer costs $0.0000004: a cheap model's share of a batched request."""

    def query(self, request: Request, n: int) -> list[str | Sample]:
        return [Sample(text=str(i), cost=4e-7) for i in range(n)]


def test_stats_sum_the_cost_of_cheap_samples(tmp_path: Path) -> None:
    # Each sample's cost was rounded to whole micro-dollars before it was summed: ten
    # samples of $0.0000004 reported a cost of 0.
    model = Persistent(Cheap("nano", 1.0, max_batch=10), tmp_path)
    list(islice(model.sample(PROMPT, batch=10), 10))
    assert model.stats()["cost"] == pytest.approx(4e-6)


class Counting(BatchedModel):
    """The k-th draw is the text "k": two runs agree iff they drew the same positions."""

    def __init__(self) -> None:
        super().__init__("counting", 1.0)
        self.drawn = 0

    def query(self, request: Request, n: int) -> list[str]:
        self.drawn += n
        return [str(self.drawn - n + i) for i in range(n)]


scope_op = st.sampled_from(["draw", "draw", "draw", "independent", "repeatable", "exit"])


@settings(max_examples=150, deadline=None)
@given(st.lists(scope_op, max_size=30), st.sampled_from(["memory", "disk"]))
def test_scopes_nest_exactly_like_the_wrappers(program: list[str], base_kind: str) -> None:
    """Any nesting of scopes draws what the same nesting of wrappers draws."""
    with tempfile.TemporaryDirectory() as tmp:

        def base() -> Layer:
            if base_kind == "memory":
                return Repeatable(Counting())
            return Persistent(Counting(), Path(tmp) / str(len(list(Path(tmp).iterdir()))))

        scoped_base, wrapped_base = base(), base()
        wrappers: list[Layer] = [wrapped_base]
        with contextlib.ExitStack() as blocks:
            depth = [blocks.enter_context(contextlib.ExitStack())]
            for step in program:
                if step == "draw":
                    assert draw(scoped_base) == next(wrappers[-1].sample(PROMPT))
                elif step == "exit":
                    if len(depth) > 1:
                        depth.pop().close()
                        wrappers.pop()
                else:
                    block = contextlib.ExitStack()
                    block.enter_context(independent() if step == "independent" else repeatable())
                    depth.append(block)
                    wrapper = Independent if step == "independent" else Repeatable
                    wrappers.append(wrapper(wrappers[-1]))
            while len(depth) > 1:
                depth.pop().close()


def test_a_process_that_is_no_worker_replays_without_a_word_and_stops_watching(
    base: Persistent,
) -> None:
    # Outside any scope identical calls replay by design; only a multiprocessing worker,
    # whose parent's scope did not reach it, is told. Elsewhere the watch ends at once.
    assert multiprocessing.parent_process() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScopeWarning)
        assert draw(base) == draw(base) == draw(base)
    assert scopes._watching is False


@pytest.fixture
def as_a_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as a multiprocessing worker would see itself (the real ones are
    tested in tests/integration/test_scopes_processes.py)."""
    monkeypatch.setattr(multiprocessing.process, "parent_process", lambda: object())
    monkeypatch.setattr(scopes, "_watching", None)
    monkeypatch.setattr(scopes, "_unscoped", weakref.WeakSet())
    monkeypatch.setattr(scopes, "_served_first", {})


@pytest.mark.usefixtures("as_a_worker")
def test_a_worker_warns_once_when_it_replays_a_request_outside_any_scope(
    base: Persistent, tmp_path: Path
) -> None:
    own = Persistent(NumberModel(), tmp_path / "own")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScopeWarning)
        first = draw(base)
        with independent():  # its own scope: fresh samples, as asked
            assert len({draw(base), draw(base), draw(base)}) == 3
        # A program's own wrappers replay on purpose (law 1), and are not watched.
        assert next(own.sample(PROMPT)) == next(own.sample(PROMPT))
    with pytest.warns(ScopeWarning, match="scopes do not cross process boundaries"):
        assert draw(base) == first
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScopeWarning)
        assert draw(base) == first  # once per process
    assert scopes._watching is False and not scopes._served_first


@pytest.mark.usefixtures("as_a_worker")
def test_a_worker_remembers_a_bounded_number_of_requests(tmp_path: Path) -> None:
    layer = Repeatable(Counting())
    requests = scopes._SERVED_FIRST_MEMORY + 50
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScopeWarning)
        for i in range(requests):
            next(scoped(layer).sample(f"{PROMPT} ({i})"))
    assert len(scopes._served_first) == scopes._SERVED_FIRST_MEMORY
    with pytest.warns(ScopeWarning):  # the most recent ones are remembered
        next(scoped(layer).sample(f"{PROMPT} ({requests - 1})"))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_worker_forked_inside_independent_warns_that_scopes_do_not_cross_processes(
    base: Persistent,
) -> None:
    _FORKED.append(base)  # the worker has it as the parent had it: a fork copies memory
    try:
        with independent(), multiprocessing.get_context("fork").Pool(1) as pool:
            warned = pool.apply(_draws_warned)
    finally:
        _FORKED.clear()
    assert warned == ["this process was forked inside an independent() scope"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_worker_forked_with_an_independent_layer_warns_too(base: Persistent) -> None:
    # An Independent wrapper's cursors are copied by a fork as a scope's are: four
    # workers of a pass@k each drew the same first sample, and nothing said so.
    model = Independent(base)  # nothing drawn yet: the workers still start alike
    _FORKED.append(model)
    try:
        with multiprocessing.get_context("fork").Pool(1) as pool:
            warned = pool.apply(_draws_warned)
    finally:
        _FORKED.clear()
    assert warned == ["this process was forked with an Independent layer made before the fork"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_a_refill_is_in_flight_draws_on_its_own(tmp_path: Path) -> None:
    # The refill belongs to a thread of the parent, which alone ends it: the child waited
    # for it for good.
    layer = Persistent(SlowNumbers(), tmp_path)
    filling = threading.Thread(target=draw, args=(layer,))
    filling.start()
    time.sleep(0.1)  # the thread's refill is in flight
    _FORKED.append(layer)
    try:
        with multiprocessing.get_context("fork").Pool(1) as pool:
            child = pool.apply_async(_draw_forked).get(timeout=20)
    finally:
        _FORKED.clear()
        filling.join()
    assert child == draw(layer)  # position 0, whichever process stored it first


#: The layer a forked worker draws from.
_FORKED: list[Layer] = []


class SlowNumbers(NumberModel):
    def query(self, request: Request, n: int) -> list[str]:
        time.sleep(0.5)
        return super().query(request, n)


def _draw_forked() -> str:
    return draw(_FORKED[0])


def _draws_warned() -> list[str]:
    """In a forked worker: two draws, and the start of each ScopeWarning they gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        draw(_FORKED[0])
        draw(_FORKED[0])  # warned once per scope
    return [str(w.message).split(":")[0] for w in caught if w.category is ScopeWarning]
