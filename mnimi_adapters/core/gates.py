"""Per request key, a live stream draws alone, so its sample lands where it reads.

A cache layer stores the concurrent refills of one key in the order they complete. A live
stream has shown its chunks before its sample lands: were another draw of the key in
flight, the stream's sample could land at the position that other call reads, and two
calls would show one sample. So a live stream starts only when no other draw of its key
is running in this process, and the key's other draws wait until it is done (stored or
failed). Both adapters gate their draws here, under ``(stored sequence, key)``: the
cache's location (``CacheLayer.sequences``), so that the draws of two adapters over one
cache meet too. Here too is what a live stream's reader leaving means
(:class:`Abandonment`).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import TypeVar

from .errors import MnimiError
from .sample import Sample

_T = TypeVar("_T")


class _Ticket(threading.Event):
    """A queued draw's word that its turn came, and the thread whose event loop waits for
    it if the draw is an async one (that loop must run for the draw to go on)."""

    def __init__(self, loop_thread: int | None) -> None:
        super().__init__()
        self.loop_thread = loop_thread


@dataclass
class _Key:
    """One key's gate: its ordinary draws in flight, its live stream, and who waits."""

    drawing: int = 0
    live: bool = False
    #: The thread whose event loop runs the live stream, if it is an async one.
    live_owner: int | None = None
    #: Draws that came while a stream was live, in the order they came: let in one at a
    #: time, each after the one before it is done, so they claim positions in that order
    #: on every run (woken all at once, they would claim them as the threads ran).
    waiting: deque[_Ticket] = field(default_factory=deque)


class Gates:
    """The draws in flight per key, and the live stream, if any, of each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[Hashable, _Key] = {}

    def _admit(self, key: Hashable, state: _Key) -> None:
        """Under the lock: let the next waiter in once nothing of ``key`` is running."""
        if not state.live and not state.drawing and state.waiting:
            state.drawing += 1
            state.waiting.popleft().set()
        elif not state.live and not state.drawing:
            del self._keys[key]

    def _enter(self, key: Hashable, on_loop: bool) -> _Ticket | None:
        """Start an ordinary draw of ``key`` at once, or queue it (its ticket returned).

        A sync draw is refused, instead of queued, when what it would wait for needs this
        thread's event loop to run: the async live stream or an async waiter of the loop.
        """
        me = threading.get_ident()
        with self._lock:
            state = self._keys.setdefault(key, _Key())
            if not state.live and not state.waiting:
                state.drawing += 1
                return None
            if not on_loop and (
                (state.live and state.live_owner == me)
                or any(ahead.loop_thread == me for ahead in state.waiting)
            ):
                raise MnimiError(
                    "a synchronous call waits for an async call on the same event loop "
                    "to draw this request's samples; use the async API in async code"
                )
            ticket = _Ticket(me if on_loop else None)
            state.waiting.append(ticket)
            return ticket

    def _give_up(self, key: Hashable, ticket: _Ticket) -> None:
        """A waiter stopped waiting (an interrupt, a cancelled task): out of the queue."""
        with self._lock:
            state = self._keys[key]
            if ticket.is_set():  # let in meanwhile: its turn ends unused
                state.drawing -= 1
            else:
                state.waiting.remove(ticket)
            self._admit(key, state)

    def leave(self, key: Hashable) -> None:
        """End an ordinary draw of ``key`` started with :meth:`enter`."""
        with self._lock:
            state = self._keys[key]
            state.drawing -= 1
            self._admit(key, state)

    def enter(self, key: Hashable) -> None:
        """Start an ordinary draw of ``key`` (waiting for a live stream of it to end).

        Raises:
            MnimiError: The wait is for the async live stream, or an async waiter, of
                this thread's event loop, which the wait would block for good.
        """
        ticket = self._enter(key, on_loop=False)
        if ticket is None:
            return
        try:
            ticket.wait()
        except BaseException:
            self._give_up(key, ticket)
            raise

    async def aenter(self, key: Hashable) -> None:
        """Async :meth:`enter`: waits without blocking the event loop."""
        ticket = self._enter(key, on_loop=True)
        if ticket is None:
            return
        try:
            while not ticket.is_set():
                await asyncio.sleep(0.002)
        except BaseException:
            self._give_up(key, ticket)
            raise

    def start_live(self, key: Hashable, on_loop: bool = False) -> bool:
        """Whether a live stream of ``key`` may start now (then :meth:`end_live` follows).

        Args:
            key: The request's key.
            on_loop: The stream is drawn on this thread's event loop (an async stream).
        """
        with self._lock:
            state = self._keys.setdefault(key, _Key())
            if state.drawing or state.live or state.waiting:
                return False
            state.live = True
            state.live_owner = threading.get_ident() if on_loop else None
            return True

    def end_live(self, key: Hashable) -> None:
        """End the live stream of ``key``: its other draws go on, in the order they came."""
        with self._lock:
            state = self._keys[key]
            state.live = False
            self._admit(key, state)

    def through(self, key: Hashable, draw: Callable[[], _T]) -> _T:
        """``draw()`` as an ordinary draw of ``key``."""
        self.enter(key)
        try:
            return draw()
        finally:
            self.leave(key)

    async def athrough(self, key: Hashable, draw: Callable[[], Awaitable[_T]]) -> _T:
        """Async :meth:`through`."""
        await self.aenter(key)
        try:
            return await draw()
        finally:
            self.leave(key)

    def forget_after_fork(self) -> None:
        """In a forked child: the draws and streams in flight are the parent's threads',
        which alone end them; waited for here, they never would."""
        self._lock = threading.Lock()
        self._keys = {}


#: Seconds a live stream is read on after its reader left: enough to take in what has
#: arrived already, far less than a model takes to produce more.
FINISHING = 0.02


class Abandonment:
    """A live stream's reader's word that nobody reads any more, and when it came.

    The stream is then read on, unforwarded, for :data:`FINISHING` seconds: one the
    provider had already sent whole (its chunks received, not yet all parsed) ends in
    that time and is a paid sample, stored (law 6); one still being produced is stopped.

    What the draw stored goes on to the next call if the reader left before the end of
    the answer, whichever of the two comes second handing it on (see :meth:`ended` and
    :meth:`leave`), exactly once.
    """

    def __init__(self) -> None:
        self._said = threading.Event()
        self._at = 0.0
        #: What the draw stored, once it has ended (``None`` before, or if it stored none).
        self._drawn: list[Sample] | None = None
        self._handing = threading.Lock()

    def ended(self, samples: list[Sample] | None, hand_on: Callable[[list[Sample]], None]) -> None:
        """The draw's word that it has ended, having stored ``samples`` (``None``: none):
        if the reader had left, their positions go on now, by ``hand_on``."""
        with self._handing:
            self._drawn = samples
            left = self._said.is_set()
        if left and samples:
            hand_on(samples)

    def leave(self, hand_on: Callable[[list[Sample]], None]) -> None:
        """The reader's word that it has left: what the draw stored, if it has ended, goes
        on now by ``hand_on``; else the draw hands it on when it ends. Never waits: a
        reader that stops (a stop button, a timeout, a collected stream) is not held until
        the provider's next chunk, nor, on the draw's own thread, for good."""
        with self._handing:
            self.set()
            samples = self._drawn
        if samples:
            hand_on(samples)

    def set(self) -> None:
        """Say that nobody reads the stream any more."""
        if not self._said.is_set():
            self._at = time.monotonic()
            self._said.set()

    def is_set(self) -> bool:
        """Whether the reader left."""
        return self._said.is_set()

    def expired(self) -> bool:
        """Whether the reader left more than :data:`FINISHING` seconds ago: stop reading."""
        return self._said.is_set() and time.monotonic() - self._at > FINISHING


#: The gates of every adapter in the process: a key's draws meet here whichever made them.
GATES = Gates()
os.register_at_fork(after_in_child=GATES.forget_after_fork)
