"""The combinators: ``Repeatable``, ``Independent`` and ``Persistent``.

``Repeatable`` and ``Persistent`` hold, per request key, an append-only
sequence of samples; every ``sample()`` call reads it from position 0 and
extends it on demand by drawing from the inner layer. ``Independent`` keeps
one cursor per key for its lifetime, so successive calls continue.

A refill that asks a provider runs apart from its caller (see ``_Keeper``), so
what it paid for is stored whatever happens to the caller, even at exit.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import functools
import heapq
import os
import queue
import threading
import weakref
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Hashable,
    Iterable,
    Iterator,
)
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .._compat import at_interpreter_exit
from .errors import MnimiError, ProviderError, ReplicationCacheMiss
from .explain import explain_miss
from .model import Cursor, Layer, logger
from .request import Request
from .runs import RunRecorder
from .sample import Sample
from .scopes import caching_enabled, process_generation, served_first, warn_forked
from .stores import (
    Appended,
    Batched,
    DiskStore,
    MemoryStore,
    ReadThroughStore,
    SequenceStore,
    open_store,
)


def _layer_to_wrap(inner: Any) -> Layer:
    """``inner``, if it is a model or layer a wrapper can take."""
    if not isinstance(inner, Layer):
        raise TypeError(f"expected a model or layer to wrap, got {type(inner).__name__}")
    return inner


class Wrapper(Layer):
    """A layer over another layer."""

    def __init__(self, inner: Layer) -> None:
        self.inner = _layer_to_wrap(inner)

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"


@dataclass(eq=False)  # each refill is itself: a key of its key's refills in flight
class _Refill:
    """One extension in flight: its waiters block on ``done``."""

    done: Future[None]
    count: int
    #: The thread that runs it, and whether from async code: a synchronous wait
    #: on that thread for an async refill could never end.
    owner: int
    is_async: bool
    #: The sequence's length once it landed, if the store said: a position below it is
    #: stored, with no need to ask the store again.
    reached: int | None = None
    #: Whether the caller that started it gave up on it (a timeout cancelled the wait):
    #: it still lands, for later positions, but no new call waits for it (see
    #: :meth:`CacheLayer._abandon`).
    abandoned: bool = False


#: What a cursor's read of a missing position found: the sequence's length then, and
#: :attr:`CacheLayer.refills_ended` just before the read.
_Read = tuple[int, int]
#: No read to go by: the length is read under the lock.
_UNREAD: _Read = (0, -1)


@dataclass
class _InFlight:
    """A key's refills in flight, oldest first, and how many samples they will add.

    Kept as a running total: concurrent calls of one key (a burst of 200 in an
    ``independent()`` scope) each plan against all the refills in flight.
    """

    refills: dict[_Refill, None] = field(default_factory=dict)
    #: Samples the refills not abandoned will add.
    pending: int = 0
    #: The sequence's length when last read or landed. While refills are in flight, a
    #: position at or past it is a miss without asking the store: every call of a burst
    #: would otherwise read the store (and hand the GIL around) to learn just that.
    #: ``None`` once a refill landed where its store did not say: the store is asked.
    stored: int | None = 0


class _Landings:
    """The appends of one turn of the library's event loop, written in one transaction.

    Concurrent misses land their refills within moments of each other, and each append
    alone is a SQLite transaction that runs with the processor's caches full of the
    provider client's work since the last one: written together, all but the first run
    warm. Only the library's loop lands through here (see :meth:`CacheLayer.aextend`),
    so the pending list is never shared between threads.
    """

    def __init__(self, store: SequenceStore) -> None:
        self._store = store
        self._pending: list[tuple[Batched, asyncio.Future[Appended]]] = []
        #: The loop the pending batch is written on.
        self._loop: asyncio.AbstractEventLoop | None = None

    def land(self, key: str, samples: list[Sample], record: dict[str, Any]) -> Awaitable[Appended]:
        """Append at the end of this turn of the loop; the outcome when it is written."""
        loop = asyncio.get_running_loop()
        # A batch of another loop is one a forked child inherited mid-turn: its loop (and
        # the refills waiting on it) stayed with the parent, which writes it.
        if not self._pending or self._loop is not loop:
            self._pending, self._loop = [], loop
            loop.call_soon(self._write)
        future: asyncio.Future[Appended] = loop.create_future()
        self._pending.append(((key, samples, record), future))
        return future

    def _write(self) -> None:
        # Written whoever still waits: a paid sample is stored even if its caller is gone.
        batch, self._pending = self._pending, []
        try:
            outcomes = self._store.append_many([appended for appended, _ in batch])
            if len(outcomes) != len(batch):  # a store's bug must not leave callers waiting
                raise MnimiError(f"{self._store!r} answered {len(batch)} appends with {outcomes}")
        except Exception as error:  # the store failed: every append of the batch did
            outcomes = [error] * len(batch)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.cancelled():
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


class CacheLayer(Wrapper):
    """A sequence store over an inner layer: the machinery of Repeatable and Persistent."""

    def __init__(
        self,
        inner: Layer,
        store: SequenceStore,
        replication: bool = False,
        record: str | os.PathLike[str] | RunRecorder | None = None,
    ) -> None:
        super().__init__(inner)
        self.store = store
        self.replication = replication
        #: Where each consumed sample's key and position is written, if anywhere.
        self.recorder = RunRecorder(record) if isinstance(record, str | os.PathLike) else record
        self._lock = threading.Lock()
        self._refills: dict[str, _InFlight] = {}
        self._inner_cursors: dict[str, Cursor] = {}
        self._ordered_locks: dict[str, threading.Lock] = {}
        self._stats: Counter[str] = Counter()
        self._cost = 0.0
        #: Positions this layer's refills stored and nobody was served yet: a batch's
        #: extra samples, paid in this run, are misses when served (at most
        #: _FRESH_MEMORY of them are remembered; older ones then count as hits).
        self._fresh: collections.OrderedDict[str, set[int]] = collections.OrderedDict()
        self._fresh_count = 0
        self._landings = _Landings(store)
        #: Refills ended so far: a length read before the latest one may be stale.
        self.refills_ended = 0
        _CACHE_LAYERS.add(self)

    def sequences(self) -> Hashable:
        """What names the stored sequences this layer reads: the same for every layer
        over one cache directory or Redis namespace, this layer's own in memory."""
        location = getattr(self.store, "location", None)
        return location if isinstance(location, str) else id(self.store)

    def _forget_the_parents_refills(self) -> None:
        """In a forked child: the refills in flight at the fork belong to the parent's
        threads, which alone end them (and store what they paid for); waited for here,
        they would never end. A lock such a thread held stays held for good: new ones."""
        self._lock = threading.Lock()
        self._refills = {}
        self._ordered_locks = {key: threading.Lock() for key in self._ordered_locks}

    def open(self, request: Request) -> Cursor:
        if not caching_enabled():
            if self.replication:
                raise MnimiError("no_cache() cannot be used with a replication cache")
            return self.inner.open(request)
        key = self.key_of(request)
        if not self.replication:  # a replication run only reads
            self.store.touch(key)
        return _ReplayCursor(self, key)

    def stats(self) -> dict[str, int | float]:
        """What this layer did: ``hits`` (samples replayed from the store),
        ``misses`` (samples served that it drew, a refill's extra ones included, whoever
        asked first), ``requests`` (provider
        responses behind the stored samples), ``samples_stored``,
        ``prompt_tokens``, ``completion_tokens`` and ``cost`` of stored samples."""
        with self._lock:
            stats: dict[str, int | float] = {
                name: self._stats[name] for name in ("hits", "misses", "requests", "samples_stored")
            }
            stats["prompt_tokens"] = self._stats["prompt_tokens"]
            stats["completion_tokens"] = self._stats["completion_tokens"]
            stats["cost"] = self._cost
            return stats

    # -- extension ---------------------------------------------------------
    #
    # No lock is held while a provider is asked for samples, so threads and
    # tasks wanting *different* positions draw concurrently, while those
    # wanting positions an extension in flight will fill just wait for it.

    def _plan(
        self, request: Request, key: str, index: int, batch: int, is_async: bool, read: _Read
    ) -> tuple[_Refill, bool] | None:
        """Decide, atomically, how position ``index`` of ``key`` gets filled.

        ``read`` is the length the caller's read of the position found, if any, and
        the count of refills ended before it: unless one ended since, this process has
        not appended to the store since, and the length is not read again.

        Returns ``None`` when it is stored, else a refill and whether it is the
        caller's to run (True) or one in flight to wait for (False).
        """
        with self._lock:
            length, ended = read
            stored = length if ended == self.refills_ended else self.store.length(key)
            if stored > index:
                return None
            in_flight = self._refills.get(key)
            pending = 0 if in_flight is None else in_flight.pending
            if in_flight is not None:
                in_flight.stored = stored
                if stored + pending > index:
                    live = (refill for refill in in_flight.refills if not refill.abandoned)
                    return next(live), False
            if not self.replication:
                # Before anything is drawn: samples a store cannot keep would be paid
                # for and thrown away (law 6), on every retry of the caller.
                self.store.check_writable(f"store samples of key {key}, so none was requested")
                count = max(batch, index + 1 - stored - pending)
                refill = _Refill(Future(), count, threading.get_ident(), is_async)
                in_flight = self._refills.setdefault(key, _InFlight(stored=stored))
                in_flight.refills[refill] = None
                in_flight.pending += count
                return refill, True
        # Raised outside the lock: explaining a miss reads every stored record.
        raise self._miss(request, key, stored, index)

    def _miss(self, request: Request, key: str, stored: int, index: int) -> ReplicationCacheMiss:
        """The error for a replication run's miss, explained when the key is unknown."""
        identity = self.identity()
        nearest = None
        # A key with samples stored matched its request exactly; it only ran short.
        if stored == 0:
            nearest = explain_miss(self.record_of(request), self.store.summaries())
        key_near, explanation = nearest or (None, None)
        return ReplicationCacheMiss(
            key, request.describe(identity), stored, index, explanation, key_near
        )

    def _inner_cursor(self, request: Request, key: str) -> Cursor:
        with self._lock:
            cursor = self._inner_cursors.get(key)
            if cursor is None:
                cursor = self.inner.open(request)
                # A provider's cursor holds no position: made per refill, it leaves
                # nothing behind per key, so filling millions of keys stays bounded.
                if not cursor.stateless:
                    self._inner_cursors[key] = cursor
                    self._ordered_locks[key] = threading.Lock()
            return cursor

    def keep(self, request: Request, samples: list[Sample]) -> Appended:
        """Append samples paid for outside this layer's refills to ``request``'s sequence.

        For an adapter whose caller drew an answer itself (LangChain's cache interface
        hands the model's answer to ``update``) and found the position it missed filled
        by then (another process stored there first): the answer is kept for a later
        position rather than thrown away (law 6). Counted as stored, as a refill's are.
        """
        added = self.store.append(self.key_of(request), samples, self.record_of(request))
        self._count_stored(added)
        return added

    def _land(self, request: Request, key: str, cursor: Cursor, drawn: list[Sample]) -> Appended:
        """Store what a refill drew."""
        # Law 3: a draw already in the sequence (slicing over a partly filled
        # cache re-reads the inner one from 0) is never stored twice; the store's
        # append skips it in the same transaction that reads the draw index.
        added = self.store.append(key, drawn, self.record_of(request))
        return self._landed(key, cursor, added)

    async def _aland(
        self, request: Request, key: str, cursor: Cursor, drawn: list[Sample]
    ) -> Appended:
        """Async :meth:`_land`: a provider's samples land with the others of this loop turn."""
        if cursor.ordered:  # a cache's refills land in order, under its lock (law 4)
            return self._land(request, key, cursor, drawn)
        record = self.record_of(request)
        return self._landed(key, cursor, await self._landings.land(key, drawn, record))

    def _landed(self, key: str, cursor: Cursor, added: Appended) -> Appended:
        if added:
            self._count_stored(added)
            if added.start is not None:
                self._remember_fresh(key, range(added.start, added.start + len(added)))
        elif not cursor.ordered:
            # A cache's cursor moves on by itself; a provider that only repeats
            # draw ids would have this loop pay for refills forever.
            raise ProviderError(f"{self.inner!r} returned only draws already stored for {key}")
        return added

    def _count_stored(self, samples: list[Sample]) -> None:
        with self._lock:
            self._stats["samples_stored"] += len(samples)
            self._stats["requests"] += len({s.response_id or s.draw_id for s in samples})
            for s in samples:
                self._stats["prompt_tokens"] += s.prompt_tokens
                self._stats["completion_tokens"] += s.completion_tokens
                # Summed as it is: rounded per sample, a cheap model's cost (a share of
                # well under a micro-dollar each) summed to 0.
                self._cost += s.cost or 0.0

    def _release(self, key: str, refill: _Refill) -> None:
        """End a refill, landed or failed, and wake whoever waits for it."""
        with self._lock:
            in_flight = self._refills[key]
            del in_flight.refills[refill]
            if not refill.abandoned:
                in_flight.pending -= refill.count
            if refill.reached is None or in_flight.stored is None:
                in_flight.stored = None
            else:
                in_flight.stored = max(in_flight.stored, refill.reached)
            if not in_flight.refills:
                del self._refills[key]
            self.refills_ended += 1
        if not refill.done.done():
            refill.done.set_result(None)

    def _abandon(self, key: str, refill: _Refill) -> None:
        """Say that the caller who started ``refill`` gave up waiting for it.

        A caller cut short by a timeout (``asyncio.wait_for``, LangGraph's
        ``TimeoutPolicy``) leaves its position to its retry. Had the retry waited for the
        abandoned draw, it would be cut short by the same slow provider, and in a
        ``repeatable()`` attempt nested in ``independent()`` it would wait for a draw that
        is not even its own. So the retry asks afresh, as it would without a cache, and
        the abandoned draw still lands, for a later position (law 6).
        """
        with self._lock:
            in_flight = self._refills.get(key)
            if in_flight is None or refill not in in_flight.refills or refill.abandoned:
                return
            refill.abandoned = True
            in_flight.pending -= refill.count

    def _start(self, request: Request, key: str, refill: _Refill) -> Cursor:
        """The inner cursor ``refill`` draws from; a refill that cannot start ends at once."""
        try:
            return self._inner_cursor(request, key)
        except BaseException:
            self._release(key, refill)
            raise

    def _steps(
        self, request: Request, key: str, index: int, batch: int, is_async: bool, read: _Read
    ) -> Iterator[tuple[_Refill, Cursor | None]]:
        """What to do, in turn, until position ``index`` of ``key`` is stored.

        Yields a refill in flight to wait for (with no cursor), or one of the caller's own
        to run with the inner cursor it draws from. Written once for :meth:`extend` and
        :meth:`aextend`, which only wait and run.
        """
        while (plan := self._plan(request, key, index, batch, is_async, read)) is not None:
            read = _UNREAD
            refill, mine = plan
            if mine:
                yield refill, self._start(request, key, refill)
            elif not is_async and refill.is_async and refill.owner == threading.get_ident():
                raise MnimiError(
                    "a synchronous call waits for an async call on the same event loop "
                    "to draw this request's samples; use the async API in async code"
                )
            else:
                yield refill, None
            if refill.reached is not None and refill.reached > index:
                return  # stored: planning again would only read the length once more

    def extend(
        self, request: Request, key: str, index: int, batch: int, read: _Read = _UNREAD
    ) -> None:
        """Make sure position ``index`` of ``key``'s sequence is stored."""
        for refill, cursor in self._steps(request, key, index, batch, False, read):
            if cursor is None:
                refill.done.result()
            elif cursor.ordered:
                self._fill(request, key, cursor, refill)
            else:
                _KEEPER.call(functools.partial(self._fill, request, key, cursor, refill))

    async def aextend(
        self, request: Request, key: str, index: int, batch: int, read: _Read = _UNREAD
    ) -> None:
        """Async :meth:`extend`."""
        # A provider's refill is shielded: a caller that times out must neither cancel a
        # refill others wait for nor throw away samples already paid for (law 6).
        for refill, cursor in self._steps(request, key, index, batch, True, read):
            if cursor is None:
                await asyncio.shield(_seen(refill.done))
            elif cursor.ordered:
                # A cache's refill is not: the layer it reads shields its own provider
                # refills, and a cancelled take hands its position back there, so the
                # caller's retry is served it (or its own fresh draw) and not the next one.
                await self._afill(request, key, cursor, refill)
            else:
                fill = self._afill(request, key, cursor, refill)
                try:
                    await asyncio.shield(_seen(_KEEPER.submit(fill)))
                except asyncio.CancelledError:
                    self._abandon(key, refill)
                    raise

    def _order_lock(self, key: str, cursor: Cursor) -> threading.Lock | None:
        """The lock a refill from ``cursor`` lands under, if any.

        Refills from an ordered (cached) inner sequence must land in the order they
        were taken, or a slice would not be a prefix (law 4).
        """
        return self._ordered_locks[key] if cursor.ordered else None

    def _fill(self, request: Request, key: str, cursor: Cursor, refill: _Refill) -> None:
        """Run ``refill`` to its end: draw, store, and wake whoever waits for it."""
        try:
            with self._order_lock(key, cursor) or contextlib.nullcontext():
                drawn = cursor.take(request, refill.count)
                refill.reached = self._land(request, key, cursor, drawn).end
        finally:
            self._release(key, refill)

    async def _afill(self, request: Request, key: str, cursor: Cursor, refill: _Refill) -> None:
        """Async :meth:`_fill`."""
        try:
            async with _polled(self._order_lock(key, cursor)):
                drawn = await cursor.atake(request, refill.count)
                refill.reached = (await self._aland(request, key, cursor, drawn)).end
        finally:
            self._release(key, refill)

    def read(self, key: str, index: int) -> Sample | int:
        """Sample ``index`` of ``key`` or, past the sequence's end, its length (see
        :meth:`SequenceStore.read`); the store is not asked while refills of ``key`` are
        in flight and ``index`` lies past the length they started from."""
        in_flight = self._refills.get(key)
        stored = None if in_flight is None else in_flight.stored
        if stored is not None and index >= stored:
            # Another process may have appended meanwhile, as it may while the refills
            # run: such a sample is found when this position is read after planning.
            return stored
        return self.store.read(key, index)

    def _remember_fresh(self, key: str, positions: range) -> None:
        with self._lock:
            fresh = self._fresh.setdefault(key, set())
            before = len(fresh)
            fresh.update(positions)
            self._fresh_count += len(fresh) - before
            self._fresh.move_to_end(key)
            while self._fresh_count > _FRESH_MEMORY:
                _, dropped = self._fresh.popitem(last=False)
                self._fresh_count -= len(dropped)

    def _note(self, key: str, index: int, hit: bool) -> bool:
        """Count a served sample, and say whether it is a hit: a sample found stored is
        one unless this layer's refills drew it in this run and it was not served since.

        Whichever call's refill drew it (this call's own of several samples, a concurrent
        call's, a batch's extras, a call cut short before it read its answer), the call
        served it first reports it as the miss it was: the costs a run's calls report add
        up to what it paid, and agree with :meth:`stats`.
        """
        with self._lock:
            fresh = self._fresh.get(key)
            if fresh is not None and index in fresh:
                hit = False
                fresh.discard(index)
                self._fresh_count -= 1
                if not fresh:
                    del self._fresh[key]
            self._stats["hits" if hit else "misses"] += 1
        return hit


#: How many positions a cache layer's refills stored and nobody was served yet it keeps
#: telling apart from hits (a batch's extra samples), over all keys.
_FRESH_MEMORY = 4096

#: How many recent draws a cursor can take back: more than one call's ``n``.
_SERVED_MEMORY = 1024

#: Seconds an exiting interpreter waits for provider refills in flight to be stored:
#: room for a slow generation; a second Ctrl-C gives up the wait.
EXIT_WAIT = 300.0


T = TypeVar("T")

#: Synchronous work for a refill thread: the caller's context, the work, its outcome.
_Job = tuple[contextvars.Context, Callable[[], Any], Future[Any]]


class _Keeper:
    """Runs each provider refill apart from its caller, so a paid sample is always stored.

    A provider call cut short is a sample paid for and thrown away (law 6), and a
    caller may time out, be cancelled, be interrupted (Ctrl-C) or see its event loop
    closed: ``asyncio.run`` cancels every task still running when its coroutine
    returns, a shielded one too. So a refill that asks a provider runs to its end
    elsewhere: a synchronous one on a refill thread, an async one on an event loop
    this library owns (started on first use). Both are daemon threads, and the
    interpreter waits for the refills in flight at exit (see :data:`EXIT_WAIT`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._in_flight: set[Future[Any]] = set()
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        #: Refill threads done with a job and not promised another: kept, not ended,
        #: since each holds its own store connection, which takes a while to open.
        self._idle = 0
        #: Set on the refill threads: work already there is already kept.
        self._here = threading.local()

    def call(self, fill: Callable[[], None]) -> None:
        """Run ``fill`` on a refill thread, in the caller's context, and wait for it."""
        if getattr(self._here, "kept", False):
            # Work started apart (see start) runs to its end like any refill, so a
            # refill within it needs no second hand-off, which would cost a thread wake-up.
            contextvars.copy_context().run(fill)
            return
        self.start(fill).result()

    def start(self, work: Callable[[], T]) -> Future[T]:
        """Start ``work`` on a refill thread, in the caller's context, without waiting.

        The work then runs to its end whatever happens to the caller, and is waited for
        at exit like any refill; the refills it runs stay on its thread.
        """
        future: Future[T] = Future()
        self._track(future)
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        self._jobs.put((contextvars.copy_context(), work, future))
        if spawn:
            threading.Thread(target=self._work, name="mnimi-refill", daemon=True).start()
        return future

    def _work(self) -> None:
        self._here.kept = True
        while True:
            context, work, future = self._jobs.get()
            try:
                result = context.run(work)
            except BaseException as error:
                future.set_exception(error)
            else:
                future.set_result(result)
            with self._lock:
                self._idle += 1

    def submit(self, fill: Coroutine[Any, Any, None]) -> Future[None]:
        """Start ``fill`` on the library's event loop, in the caller's context."""
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(
                    target=self._loop.run_forever, name="mnimi-refills", daemon=True
                ).start()
            loop = self._loop
        # The task runs in a copy of the context current here (asyncio copies it
        # when the call is scheduled), so scopes and MnimiCache's call travel along.
        future = asyncio.run_coroutine_threadsafe(fill, loop)
        self._track(future)
        return future

    def _track(self, future: Future[Any]) -> None:
        with self._lock:
            self._in_flight.add(future)
        future.add_done_callback(self._untrack)

    def _untrack(self, future: Future[Any]) -> None:
        with self._lock:
            self._in_flight.discard(future)

    def in_flight(self) -> list[Future[Any]]:
        """The refills not finished yet."""
        with self._lock:
            return list(self._in_flight)

    def close_loop(self) -> None:
        """Stop the library's event loop after cancelling what is left on it.

        Libraries called from refills start tasks of their own there (LiteLLM's logging
        worker): left pending at exit, each prints "Task was destroyed but it is
        pending!" into the user's terminal.
        """
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is None:
            return

        async def cancel_the_rest() -> None:
            rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cancel_the_rest(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)


_KEEPER = _Keeper()


def _new_keeper() -> None:
    """Start afresh in a forked child, which has neither the loop's thread nor the refills."""
    global _KEEPER
    _KEEPER = _Keeper()


os.register_at_fork(after_in_child=_new_keeper)

#: Every cache layer of the process, for a forked child to reset.
_CACHE_LAYERS: weakref.WeakSet[CacheLayer] = weakref.WeakSet()


def _forget_refills_after_fork() -> None:
    for layer in list(_CACHE_LAYERS):
        layer._forget_the_parents_refills()


os.register_at_fork(after_in_child=_forget_refills_after_fork)


def start_apart(work: Callable[[], T]) -> Future[T]:
    """Start ``work`` on a refill thread and return its future at once.

    For a caller that reads what ``work`` produces while it runs (a live stream): the
    work runs to its end whatever happens to the caller and is waited for at exit, so
    what it pays for is stored (law 6), and the provider refills it runs stay on its
    thread rather than being handed off again.

    Args:
        work: What to run, in a copy of the caller's context (its scopes travel along).

    Returns:
        The outcome of ``work``.
    """
    return _KEEPER.start(work)


def wait_for_refills(timeout: float | None = None) -> bool:
    """Wait until every provider refill in flight is stored (or has failed).

    A refill outlives a caller that timed out, was cancelled or whose event loop
    closed; this waits for such refills, e.g. before copying a cache directory.

    Args:
        timeout: The most seconds to wait; ``None`` waits as long as it takes.

    Returns:
        Whether none is left in flight.
    """
    _, pending = concurrent.futures.wait(_KEEPER.in_flight(), timeout)
    return not pending


def _store_refills_at_exit() -> None:
    pending = len(_KEEPER.in_flight())
    if pending:
        logger.warning(
            "waiting up to %.0f s for %d provider refill%s in flight to be stored",
            EXIT_WAIT,
            pending,
            "" if pending == 1 else "s",
        )
        wait_for_refills(EXIT_WAIT)
    _KEEPER.close_loop()


at_interpreter_exit(_store_refills_at_exit)


@contextlib.asynccontextmanager
async def _polled(lock: threading.Lock | None) -> AsyncIterator[None]:
    """Hold ``lock`` (if any) in async code.

    Polled rather than awaited in a thread: a cancelled wait must not leave the
    lock taken by nobody.
    """
    if lock is None:
        yield
        return
    while not lock.acquire(blocking=False):
        await asyncio.sleep(0.001)
    try:
        yield
    finally:
        lock.release()


def _retrieve(task: asyncio.Future[None]) -> None:
    """Mark a shielded refill's outcome as seen; its caller may be gone."""
    if not task.cancelled():
        task.exception()


def _seen(future: Future[None]) -> asyncio.Future[None]:
    """``future`` on this loop, its outcome marked seen: a caller that timed out leaves a
    failed refill behind, which asyncio would report as "never retrieved"."""
    wrapped = asyncio.wrap_future(future)
    wrapped.add_done_callback(_retrieve)
    return wrapped


@dataclass
class _Positions:
    """Where a cursor stands in a sequence, and what it handed out."""

    next: int = 0
    #: Positions handed back by failed calls, served again first (law 2: a failure must
    #: not make the rest of a run skip a sample).
    returned: list[int] = field(default_factory=list)
    #: Where recently served draws sit, so a failed call can give them back.
    served: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class PositionBook:
    """The positions of one scope's cursors, per stored sequence, whichever layer reads it.

    Two layers may read one stored sequence: ``MnimiCache`` and a ``MnimiChatModel`` over
    one cache directory. Each has its own cursors; in one ``independent()`` scope, they
    claim their positions here, so a request made through both is handed a new sample
    each time, as through one (law 2).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._positions: dict[tuple[Hashable, str], _Positions] = {}

    def of(self, sequences: Hashable, key: str, mine: _Positions) -> _Positions:
        """The positions of ``key`` in ``sequences``, ``mine`` if none were claimed yet."""
        with self._lock:
            return self._positions.setdefault((sequences, key), mine)


class _ReplayCursor(Cursor):
    """Reads a cache layer's sequence from position 0, extending it when needed."""

    def __init__(self, layer: CacheLayer, key: str) -> None:
        self._layer = layer
        self._key = key
        self._at = _Positions()

    def share(self, book: PositionBook) -> None:
        """Claim positions from ``book``, with every cursor of its scope over this sequence."""
        self._at = book.of(self._layer.sequences(), self._key, self._at)

    def _claim(self) -> int:
        at = self._at
        with at.lock:
            if at.returned:
                return heapq.heappop(at.returned)
            index = at.next
            at.next += 1
            return index

    def reserve(self, count: int) -> Cursor:
        """The next ``count`` positions, claimed at once for one call (see :class:`_Reserved`)."""
        if count <= 1:
            return self  # a take claims its one position atomically already
        at = self._at
        with at.lock:
            returned = min(count, len(at.returned))
            indices = [heapq.heappop(at.returned) for _ in range(returned)]
            fresh = count - returned
            indices += range(at.next, at.next + fresh)
            at.next += fresh
        return _Reserved(self, indices)

    def give_back(self, samples: list[Sample]) -> None:
        at = self._at
        with at.lock:
            for sample in samples:
                index = at.served.pop(sample.draw_id, None)
                if index is not None:
                    heapq.heappush(at.returned, index)

    def hand_back(self, indices: Iterable[int]) -> None:
        """Positions claimed and never served: the next calls get them first (law 2)."""
        at = self._at
        with at.lock:
            for index in indices:
                heapq.heappush(at.returned, index)

    @contextlib.contextmanager
    def _claimed(self, index: int | None = None) -> Iterator[int]:
        """The next position (or ``index``, reserved before), handed back if serving it fails."""
        index = self._claim() if index is None else index
        try:
            yield index
        except BaseException:
            self.hand_back([index])
            raise

    def take(self, request: Request, batch: int, index: int | None = None) -> list[Sample]:
        with self._claimed(index) as index:
            ended = self._layer.refills_ended  # before the read: a refill may end during it
            found = self._layer.read(self._key, index)
            hit = isinstance(found, Sample)
            if not isinstance(found, Sample):
                self._layer.extend(request, self._key, index, batch, (found, ended))
                found = self._read(index)
        return [self._serve(found, index, hit)]

    async def atake(self, request: Request, batch: int, index: int | None = None) -> list[Sample]:
        with self._claimed(index) as index:
            ended = self._layer.refills_ended
            found = self._layer.read(self._key, index)
            hit = isinstance(found, Sample)
            if not isinstance(found, Sample):
                await self._layer.aextend(request, self._key, index, batch, (found, ended))
                found = self._read(index)
        return [self._serve(found, index, hit)]

    def _serve(self, sample: Sample, index: int, hit: bool) -> Sample:
        hit = self._layer._note(self._key, index, hit)
        if self._layer.recorder is not None:
            self._layer.recorder.consumed(self._key, index, sample.draw_id)
        at = self._at
        with at.lock:
            at.served[sample.draw_id] = index
            if len(at.served) > _SERVED_MEMORY:
                del at.served[next(iter(at.served))]
        if index == 0:  # a worker process warns if it replays a request (scopes.py)
            served_first(self._layer, self._key)
        return sample.served(self._key, index, hit)

    def _read(self, index: int) -> Sample:
        sample = self._layer.store.get(self._key, index)
        if sample is None:  # the store lost a sample that was just written
            raise MnimiError(f"sample #{index} of key {self._key} vanished from the store")
        return sample


class _Reserved(Cursor):
    """Positions of a cache's cursor that one call of several samples claimed at once.

    Claimed one at a time, concurrent calls of ``n`` samples each would interleave their
    positions as their refills happen to land (0, 4 and 5 for the first call of two), and a
    re-run, whose hits land at once, would group them otherwise: each call would get other
    samples (law 2). Claimed at once, the calls get consecutive positions in the order
    they were made, on every run.
    """

    def __init__(self, cursor: _ReplayCursor, indices: list[int]) -> None:
        self._cursor = cursor
        self._indices = collections.deque(indices)

    def _next_index(self) -> int:
        if not self._indices:
            raise MnimiError("a call took more samples than it reserved")
        return self._indices.popleft()

    def take(self, request: Request, batch: int) -> list[Sample]:
        return self._cursor.take(request, batch, self._next_index())

    async def atake(self, request: Request, batch: int) -> list[Sample]:
        return await self._cursor.atake(request, batch, self._next_index())

    def give_back(self, samples: list[Sample]) -> None:
        self._cursor.give_back(samples)
        self._cursor.hand_back(self._indices)
        self._indices.clear()


class Repeatable(CacheLayer):
    """Every ``sample()`` call replays the same sequence, kept in memory.

    Example:
        >>> model = Repeatable(model)  # doctest: +SKIP
        >>> next(model.sample(prompt)) == next(model.sample(prompt))  # doctest: +SKIP
        True
    """

    def __init__(self, model: Layer) -> None:
        super().__init__(model, MemoryStore())


class Persistent(CacheLayer):
    """Like :class:`Repeatable`, with the sequences kept on disk across runs.

    Args:
        model: The layer to draw missing samples from.
        path: The cache directory (``~`` expanded; created with mode 0700), or a
            Redis URL (``redis://host:6379/0``, optionally ``?namespace=project``)
            for a cache shared by many machines.
        replication: Never call ``model``; a read past the cached sequence
            raises :class:`ReplicationCacheMiss`. Needs no API key.
        record: A run record (JSON Lines, appended to) of the key and position of
            every sample this layer hands out, in order; compare two with
            ``mnimi diff-runs``.

    Example:
        >>> model = Persistent(AI302("gpt-4o", 1.0), "~/.llm_cache")  # doctest: +SKIP
        >>> sliced = Persistent(model, "/tmp/slice")  # keeps just what a run used  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Layer,
        path: str | os.PathLike[str],
        replication: bool = False,
        record: str | os.PathLike[str] | None = None,
    ) -> None:
        # Every argument is checked before the store opens: a refused call leaves no
        # store behind.
        _layer_to_wrap(model)
        if not isinstance(replication, bool):
            # "no" or "false" is truthy: it would silently make a replication cache.
            raise TypeError(f"replication must be True or False, got {replication!r}")
        recorder = None if record is None else RunRecorder(record)
        # A replication run only reads: it opens an existing store read-only, so
        # read-only media and a full disk replay like any other, and a path that holds
        # no store (a typo) is an error, not a new empty store that misses every call.
        store = open_store(path, create=not replication, read_only=replication)
        super().__init__(model, ReadThroughStore(store), replication=replication, record=recorder)
        self.path = store.path if isinstance(store, DiskStore) else store.location

    def __repr__(self) -> str:
        mode = ", replication=True" if self.replication else ""
        return f"Persistent({self.inner!r}, {self.store.location!r}{mode})"

    def close(self) -> None:
        """Close the store (it reopens on its own if used again); write out the run record.

        The record stays open: a store that reopens keeps recording.
        """
        self.store.close()
        if self.recorder is not None:
            self.recorder.flush()


class Independent(Wrapper):
    """Successive ``sample()`` calls continue each request's sequence.

    ``Independent(Independent(m))`` shares the inner cursor; a new
    ``Independent`` over a persistent layer starts at position 0 again, so a
    whole run replays identically across runs.

    Example:
        >>> from itertools import count
        >>> from mnimi_adapters import BatchedModel, Repeatable
        >>> class Counter(BatchedModel):  # a stand-in provider: its k-th answer is "k"
        ...     drawn = count()
        ...     def query(self, request, n):
        ...         return [str(next(self.drawn)) for _ in range(n)]
        >>> cache = Repeatable(Counter("counter", 1.0))
        >>> retries = Independent(cache)
        >>> next(retries.sample("Pick a number")), next(retries.sample("Pick a number"))
        ('0', '1')
        >>> next(Independent(cache).sample("Pick a number"))  # a new one starts over
        '0'
    """

    def __init__(self, model: Layer, book: PositionBook | None = None) -> None:
        super().__init__(model)
        self._cursors: dict[str, Cursor] = {}
        self._lock = threading.Lock()
        self._generation = process_generation()
        #: Where a scope's cursors over one stored sequence claim their positions.
        self._book = book

    def open(self, request: Request) -> Cursor:
        if not caching_enabled():
            return self.inner.open(request)
        key = self.key_of(request)
        if self._generation != process_generation():
            # Each worker continues from where the layer stood at the fork, position 0
            # or further on: all of them the same, as an independent() scope's would.
            self._generation = process_generation()
            warn_forked("with an Independent layer made before the fork", 3)
        with self._lock:
            cursor = self._cursors.get(key)
            if cursor is None:
                # Cursors claim positions atomically, so one serves every consumer.
                cursor = self._cursors[key] = self.inner.open(request)
                if self._book is not None and isinstance(cursor, _ReplayCursor):
                    cursor.share(self._book)
            return cursor
