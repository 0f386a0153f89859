"""Scopes: the wrappers' semantics for adapters that cannot be re-wrapped per call.

An adapter (a LangChain chat model, the LiteLLM cache) holds one cache layer.
Before each call it asks :func:`scoped` for the layer to draw from, which is
the layer wrapped the way the enclosing ``with`` blocks say::

    with independent():        # like Independent(layer) for the block
        for attempt in range(3):
            with repeatable():  # like Repeatable(Independent(layer)) for the attempt
                chain.invoke(...)

The current scope lives in a ContextVar, so it follows asyncio tasks and
LangChain's context-copying executors. Threads that do not copy their starter's
context (a plain ``ThreadPoolExecutor``, LiteLLM's ``batch_completion``, DSPy's
``num_threads``) borrow the scope open on the one thread that has scopes open:
without it, every call of ``with independent(): pool.map(...)`` would replay the
same sample. A ``with`` block such a thread opens nests in the scope it borrows, as
it would in one it inherited (a worker's ``repeatable()`` retry then draws afresh per
attempt); with none to borrow, the block is the worker's own, never lent to the
pool's other workers. With scopes open on several threads such a call cannot tell
which is its own: it runs outside any scope, with a :class:`ScopeWarning`.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Hashable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from .model import Layer

if TYPE_CHECKING:  # the layers import this module
    from .layers import CacheLayer, PositionBook

Kind = Literal["independent", "repeatable", "no_cache"]
F = TypeVar("F", bound=Callable[..., Any])


class Scope:
    """One entered ``with`` block: the wrappers it put around each layer."""

    def __init__(
        self, kind: Kind, parent: Scope | None, borrowed: bool = False, bare: bool = False
    ) -> None:
        self.kind = kind
        self.parent = parent
        #: Whether ``parent`` was borrowed from another thread (see ``_borrowed``), not
        #: found in the context: leaving it restores an empty context, not the parent.
        self.borrowed = borrowed
        #: Whether threads that borrow never borrow it: it nests in a borrowed scope, or
        #: was opened on a thread that itself would borrow (a plain pool's worker). It is
        #: that thread's business: the pool's other workers are its siblings, not its
        #: children, and would otherwise continue its cursors whenever their blocks
        #: happened to overlap in time.
        self.lent: bool = borrowed or bare or (parent is not None and parent.lent)
        self._wrapped: dict[Layer, Layer] = {}
        self._lock = threading.Lock()
        self._book: PositionBook | None = None
        #: The process generation it was entered in (see ``_after_fork``).
        self.generation = _generation
        self.warned = False

    def chain(self) -> Iterator[Scope]:
        """This scope, then the ones around it, innermost first."""
        scope: Scope | None = self
        while scope is not None:
            yield scope
            scope = scope.parent

    def continues(self) -> bool:
        """Whether its calls continue cursors: an ``independent()`` in it or around it."""
        return self.caching() and any(scope.kind == "independent" for scope in self.chain())

    def wrap(self, layer: Layer) -> Layer:
        # Imported here because the layers import this module for no_cache().
        from .layers import Independent, PositionBook, Repeatable

        base = self.parent.wrap(layer) if self.parent else layer
        if self.kind == "no_cache":
            return base
        with self._lock:
            wrapped = self._wrapped.get(layer)
            if wrapped is None:
                if self.kind == "independent":
                    # One book for the scope: its layers over one cache share positions.
                    self._book = self._book or PositionBook()
                    wrapped = Independent(base, self._book)
                else:
                    wrapped = Repeatable(base)
                self._wrapped[layer] = wrapped
            return wrapped

    def caching(self) -> bool:
        return all(scope.kind != "no_cache" for scope in self.chain())


class ScopeWarning(UserWarning):
    """A call's scope is not what the code around it suggests.

    Either a thread that did not inherit a scope (a plain ``ThreadPoolExecutor``'s,
    LiteLLM's ``batch_completion``'s) found scopes open on several threads, and runs
    outside any (with exactly one candidate it borrows that one); or a process was
    forked inside an ``independent()`` scope, whose cursors do not cross processes;
    or a ``multiprocessing`` worker outside any scope (a spawned one starts outside
    any) was served a request's first sample twice: identical calls there repeat.

    Example:
        >>> import warnings
        >>> warnings.filterwarnings("error", category=ScopeWarning)  # doctest: +SKIP
    """


_current: ContextVar[Scope | None] = ContextVar("mnimi_scope", default=None)
#: Whether this context descends from the one this module was imported in (an asyncio
#: task's, ``asyncio.to_thread``'s, a web framework's threadpool's, LangChain's
#: executors'): its ``_current`` says its scope, none included, and it never borrows
#: another thread's. A thread that starts with an empty context (a plain executor's,
#: ``threading.Thread``'s) has not inherited its starter's scope: that one borrows.
_inherited: ContextVar[bool] = ContextVar("mnimi_scope_inherited", default=False)
_inherited.set(True)

#: The scopes entered and not yet left, per thread (by ident), in the order entered.
_open: dict[int, list[Scope]] = {}
_open_lock = threading.Lock()
#: Which process this is: a forked child counts one more than its parent.
_generation = 0


#: Whether this process watches for a request served its first sample twice outside
#: any scope: only a ``multiprocessing`` worker does, until it has warned once (``None``:
#: not known yet). Elsewhere, the watch costs one comparison per call.
_watching: bool | None = None
#: The layers adapters drew from outside any scope in this worker (the wrappers a
#: program uses itself replay on purpose, law 1).
_unscoped: weakref.WeakSet[Layer] = weakref.WeakSet()
#: Which requests (stored sequence, key) had their first sample served outside any
#: scope, the most recent :data:`_SERVED_FIRST_MEMORY` of them.
_served_first: dict[tuple[Hashable, str], None] = {}
_SERVED_FIRST_MEMORY = 1024
_watch_lock = threading.Lock()


def _after_fork() -> None:
    """In a forked child: a new generation, and only the forking thread's open scopes."""
    global _generation, _open_lock, _watching, _watch_lock
    _generation += 1
    _open_lock = threading.Lock()  # another thread may have held it at the fork
    _watching = None  # a worker of a pool is told so only once it runs
    _watch_lock = threading.Lock()
    _unscoped.clear()
    _served_first.clear()
    mine = _open.get(threading.get_ident())
    _open.clear()
    if mine:
        _open[threading.get_ident()] = mine


os.register_at_fork(after_in_child=_after_fork)


def _warn_if_inherited(scope: Scope) -> None:
    """Warn, once, of an ``independent()`` scope a forked worker inherited from its parent.

    Its cursors are copies: every worker continues the sequences from where the parent
    stood, so the workers hand out the same samples as each other.
    """
    if scope.generation == _generation or scope.warned or not scope.continues():
        return
    scope.warned = True
    warn_forked("inside an independent() scope", 3)


def process_generation() -> int:
    """Which process this is: a forked child counts one more than its parent."""
    return _generation


def warn_forked(when: str, stacklevel: int) -> None:
    """Warn that this process was forked ``when`` it copied cursors in use."""
    warnings.warn(
        f"this process was forked {when}: cursors do not cross processes, so "
        "each worker continues the sequences from the same position and the workers "
        "repeat each other's samples; give each worker its own requests, draw n samples "
        "in one process, or use threads or asyncio tasks",
        ScopeWarning,
        stacklevel=stacklevel + 1,
    )


def _borrowed() -> Scope | None:
    """The scope a thread outside any scope borrows: the innermost one open elsewhere.

    Only when every open scope is on one other thread, nested in each other (so the
    innermost is not in doubt); else ``None``, with a :class:`ScopeWarning` when some
    are open, once per thread (a call looks its scope up several times, and a pool's
    thread makes call after call), at the program's line that made the call. Scopes
    opened in a borrowed one do not count: a thread borrows what its starter has open,
    not what another borrower opened in it.
    """
    me = threading.get_ident()
    with _open_lock:
        if _open.get(me):  # this thread has its own: a task that was not given them
            return None
        holders = [
            owned
            for scopes in _open.values()
            if (owned := [scope for scope in scopes if not scope.lent])
        ]
    if len(holders) == 1:
        innermost = holders[0][-1]
        nested = {id(scope) for scope in innermost.chain()}
        if all(id(open_scope) in nested for open_scope in holders[0]):
            return innermost
    if holders and not getattr(_undecided, "warned", False):
        _undecided.warned = True
        warnings.warn(
            "a call on a thread that did not inherit a scope found scopes open on "
            f"{'several threads' if len(holders) > 1 else 'another thread, side by side'}, "
            "and cannot tell which is its own: it runs outside any scope (repeatable). "
            "Submit the work as contextvars.copy_context().run(fn, ...) to carry the scope.",
            ScopeWarning,
            stacklevel=_callers_level(),
        )
    return None


#: Per thread: whether it has warned that it cannot tell which open scope is its own.
_undecided = threading.local()


def _bare() -> bool:
    """Whether this thread started with an empty context: one that borrows a scope.

    The main thread never does, even where this module was first imported elsewhere.
    """
    return not _inherited.get() and threading.current_thread() is not threading.main_thread()


def current_scope() -> Scope | None:
    """The scope of the current call: its context's, else one borrowed (see ``_borrowed``)."""
    scope = _current.get()
    if scope is not None or not _open or not _bare():
        return scope
    return _borrowed()


def _is_worker() -> bool:
    """Whether this process is a ``multiprocessing`` child (spawned, forked or forkserver's)."""
    # Not imported here: a process that never imported it is nobody's worker.
    process = sys.modules.get("multiprocessing.process")
    return process is not None and process.parent_process() is not None


def _watch(layer: Layer) -> None:
    """In a worker process, note that an adapter draws from ``layer`` outside any scope."""
    global _watching
    if _watching is None:
        _watching = _is_worker()
    if _watching:
        with _watch_lock:
            _unscoped.add(layer)


def served_first(layer: CacheLayer, key: str) -> None:
    """Note that ``layer`` served position 0 of ``key``: in a ``multiprocessing`` worker,
    outside any scope, the second time for one request warns (once per process).

    A pass@k over a process pool, ``with independent():`` open in the parent, otherwise
    hands out one sample k times and says nothing: scopes do not cross processes, and a
    spawned worker starts outside any.
    """
    global _watching
    if not _watching or layer not in _unscoped or _current.get() is not None or _open:
        return
    served = (layer.sequences(), key)
    with _watch_lock:
        if not _watching:
            return
        if served not in _served_first:
            _served_first[served] = None
            if len(_served_first) > _SERVED_FIRST_MEMORY:
                del _served_first[next(iter(_served_first))]
            return
        _watching = False  # once per process: the rest would say the same
        _served_first.clear()
    warnings.warn(
        "this multiprocessing worker was served the same request's first sample again: "
        "outside any scope identical calls replay a request's sequence from its start, and "
        "scopes do not cross process boundaries (an independent() open in the parent does "
        "not reach its workers). For distinct samples, open independent() inside the "
        "worker function, around all the calls that should differ; each worker's cursors "
        "start at position 0, so give each worker its own requests, or draw n samples "
        "in one call",
        ScopeWarning,
        stacklevel=_callers_level(),
    )


#: The packages between a program and :func:`served_first`: a warning names the
#: program's line that made the call, not one of theirs.
_CALLED_THROUGH = ("mnimi_adapters", "litellm", "langchain", "langgraph", "dspy")


def _callers_level() -> int:
    """The ``stacklevel`` of the first frame, above the warning's, outside those packages."""
    frame = sys._getframe(2)  # the caller of the function that warns
    level = 2
    while frame.f_back is not None and str(frame.f_globals.get("__name__", "")).startswith(
        _CALLED_THROUGH
    ):
        frame = frame.f_back
        level += 1
    return level


def scoped(layer: Layer) -> Layer:
    """The layer an adapter should draw from now: ``layer`` wrapped by the open scopes.

    Outside any scope that is ``layer`` itself, which for a cache layer means
    repeatable: identical requests replay samples 0, 1, ... of their sequence.
    """
    scope = current_scope()
    if scope is None:
        if _watching is not False:
            _watch(layer)
        return layer
    _warn_if_inherited(scope)
    return scope.wrap(layer)


def caching_enabled() -> bool:
    """False inside a :func:`no_cache` block."""
    scope = current_scope()
    return scope is None or scope.caching()


class ScopeManager:
    """A scope usable as ``with`` block (sync or async code) and as a decorator.

    Each entry opens a fresh scope: a new ``with independent():`` block (or a
    new call of a decorated function) starts its own cursors.
    """

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        #: The scopes this object entered and has not left, the last entered last.
        self._entered: list[Scope] = []
        self._entered_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{self.kind}()"

    def __enter__(self) -> ScopeManager:
        parent = _current.get()
        borrowed = False
        bare = parent is None and _bare()
        if bare and _open:
            # A thread that did not inherit its starter's context nests the block in the
            # scope its calls borrow, as it would in the scope it inherited: a
            # repeatable() retry in an independent() then draws afresh per attempt.
            parent = _borrowed()
            borrowed = parent is not None
        scope = Scope(self.kind, parent, borrowed, bare)
        _current.set(scope)
        with _open_lock:
            _open.setdefault(threading.get_ident(), []).append(scope)
        with self._entered_lock:
            self._entered.append(scope)
        return self

    def __exit__(self, *exc: object) -> None:
        # The block being left is the current scope of *this* context, so one
        # manager object can serve many threads and tasks at once.
        current = _current.get()
        with self._entered_lock:
            if current is not None and current in self._entered:
                self._entered.remove(current)
                scope, left_here = current, True
            elif self._entered:
                scope, left_here = self._entered.pop(), False
            else:
                return
        if left_here:
            # A borrowed parent is not put in the context: the thread borrows afresh.
            _current.set(scope.parent if not scope.borrowed else None)
        else:
            self._warn_left_elsewhere()  # this context's scope, if any, is another's
        with _open_lock:
            me = threading.get_ident()
            for thread in (me, *(ident for ident in _open if ident != me)):
                scopes = _open.get(thread, [])
                if scope in scopes:
                    scopes.remove(scope)
                    if not scopes:
                        del _open[thread]
                    break

    def _warn_left_elsewhere(self) -> None:
        """Warn of a scope left in another context than the one it was entered in.

        A framework may run a block's entry and exit in two copies of a context (FastAPI
        runs a sync dependency's ``with`` around its ``yield`` so): the calls made between
        ran outside the scope, and the scope, never left in its own context, stayed open
        for good, lent to every thread that borrows one. :meth:`__exit__` closes it.
        """
        warnings.warn(
            f"{self.kind}() was left in another context than the one it was entered in (a "
            "FastAPI dependency with `yield`, or a sync generator Starlette streams, runs "
            "its steps in copies of the context): the calls made in between did not run in "
            "it. Open the scope where the calls are made, in async code (an async "
            "dependency, or an async generator for a StreamingResponse)",
            ScopeWarning,
            stacklevel=4,
        )

    async def __aenter__(self) -> ScopeManager:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()

    def __call__(self, function: F) -> F:
        kind = self.kind
        if inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function):
            # A generator runs in its caller's context between items: a scope set
            # around it would leak into the caller, or be gone before the body runs.
            raise TypeError(
                f"{kind}() cannot decorate the generator {function.__name__}(); "
                f"use `with {kind}():` inside it"
            )
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with ScopeManager(kind):
                    return await function(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            with ScopeManager(kind):
                return function(*args, **kwargs)

        return run  # type: ignore[return-value]


def independent() -> ScopeManager:
    """Calls inside continue each request's sequence, like ``Independent(model)``.

    Example:
        >>> with independent():  # doctest: +SKIP
        ...     answers = [chat.invoke("Pick a number") for _ in range(3)]  # 3 distinct samples
    """
    return ScopeManager("independent")


def repeatable() -> ScopeManager:
    """Calls inside replay each request's sequence from its start, like ``Repeatable(model)``.

    Nested in :func:`independent`, every ``repeatable()`` block gets fresh samples
    that then repeat within the block: the retry pattern.

    Example:
        >>> from itertools import count
        >>> from mnimi_adapters import BatchedModel, Repeatable
        >>> class Counter(BatchedModel):  # a stand-in provider: its k-th answer is "k"
        ...     drawn = count()
        ...     def query(self, request, n):
        ...         return [str(next(self.drawn)) for _ in range(n)]
        >>> cache = Repeatable(Counter("counter", 1.0))
        >>> def ask():  # what an adapter does per call: draw from the scoped layer
        ...     return next(scoped(cache).sample("Pick a number"))
        >>> with independent():
        ...     for attempt in range(2):
        ...         with repeatable():  # a fresh sample per attempt, the same within one
        ...             print(f"attempt {attempt}: {ask()} {ask()}")
        attempt 0: 0 0
        attempt 1: 1 1
        >>> ask()  # outside any scope: repeatable, from the start of the sequence
        '0'
    """
    return ScopeManager("repeatable")


def no_cache() -> ScopeManager:
    """Calls inside go straight to the provider; nothing is read or stored.

    A replication cache refuses to work inside this scope, since it may never
    call the provider.

    Example:
        >>> from itertools import count
        >>> from mnimi_adapters import BatchedModel, Repeatable
        >>> class Counter(BatchedModel):  # a stand-in provider: its k-th answer is "k"
        ...     drawn = count()
        ...     def query(self, request, n):
        ...         return [str(next(self.drawn)) for _ in range(n)]
        >>> cache = Repeatable(Counter("counter", 1.0))
        >>> next(cache.sample("Pick a number"))
        '0'
        >>> with no_cache():  # sent to the provider, and not stored
        ...     next(cache.sample("Pick a number"))
        '1'
        >>> next(cache.sample("Pick a number"))  # the cache still holds only the first
        '0'
    """
    return ScopeManager("no_cache")
