"""Scopes: the wrappers' semantics for adapters that cannot be re-wrapped per call.

An adapter (a LangChain chat model, the LiteLLM cache) holds one cache layer.
Before each call it asks :func:`scoped` for the layer to draw from, which is
the layer wrapped the way the enclosing ``with`` blocks say::

    with independent():        # like Independent(layer) for the block
        for attempt in range(3):
            with repeatable():  # like Repeatable(Independent(layer)) for the attempt
                chain.invoke(...)

The current scope lives in a ContextVar, so it follows asyncio tasks and
LangChain's context-copying executors.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Literal, TypeVar

from .model import Layer

Kind = Literal["independent", "repeatable", "no_cache"]
F = TypeVar("F", bound=Callable[..., Any])


class _Scope:
    """One entered ``with`` block: the wrappers it put around each layer."""

    def __init__(self, kind: Kind, parent: _Scope | None) -> None:
        self.kind = kind
        self.parent = parent
        self._wrapped: dict[Layer, Layer] = {}
        self._lock = threading.Lock()

    def wrap(self, layer: Layer) -> Layer:
        # Imported here because the layers import this module for no_cache().
        from .layers import Independent, Repeatable

        base = self.parent.wrap(layer) if self.parent else layer
        if self.kind == "no_cache":
            return base
        with self._lock:
            wrapped = self._wrapped.get(layer)
            if wrapped is None:
                wrapped = Independent(base) if self.kind == "independent" else Repeatable(base)
                self._wrapped[layer] = wrapped
            return wrapped

    def caching(self) -> bool:
        scope: _Scope | None = self
        while scope is not None:
            if scope.kind == "no_cache":
                return False
            scope = scope.parent
        return True


_current: ContextVar[_Scope | None] = ContextVar("mnimi_scope", default=None)


def scoped(layer: Layer) -> Layer:
    """The layer an adapter should draw from now: ``layer`` wrapped by the open scopes.

    Outside any scope that is ``layer`` itself, which for a cache layer means
    repeatable: identical requests replay samples 0, 1, ... of their sequence.
    """
    scope = _current.get()
    return layer if scope is None else scope.wrap(layer)


def caching_enabled() -> bool:
    """False inside a :func:`no_cache` block."""
    scope = _current.get()
    return scope is None or scope.caching()


class ScopeManager:
    """A scope usable as ``with`` block (sync or async code) and as a decorator.

    Each entry opens a fresh scope: a new ``with independent():`` block (or a
    new call of a decorated function) starts its own cursors.
    """

    def __init__(self, kind: Kind) -> None:
        self.kind = kind

    def __repr__(self) -> str:
        return f"{self.kind}()"

    def __enter__(self) -> ScopeManager:
        _current.set(_Scope(self.kind, _current.get()))
        return self

    def __exit__(self, *exc: object) -> None:
        # The block being left is the current scope of *this* context, so one
        # manager object can serve many threads and tasks at once.
        scope = _current.get()
        _current.set(scope.parent if scope is not None else None)

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
    """
    return ScopeManager("repeatable")


def no_cache() -> ScopeManager:
    """Calls inside go straight to the provider; nothing is read or stored.

    A replication cache refuses to work inside this scope, since it may never
    call the provider.
    """
    return ScopeManager("no_cache")
