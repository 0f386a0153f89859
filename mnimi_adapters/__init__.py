"""mnimi_adapters: caching of LLM samples that keeps their statistical independence.

A cache holds, per request, an append-only sequence of independent samples.
``Repeatable`` replays a sequence from its start, ``Independent`` continues it,
``Persistent`` keeps it on disk across runs, and ``replication=True`` forbids
any provider call.

Example:
    >>> from itertools import islice
    >>> from mnimi_adapters import AI302, Independent, Persistent  # doctest: +SKIP
    >>> model = Persistent(AI302("gpt-4o", 1.0), "~/.llm_cache")  # doctest: +SKIP
    >>> ind = Independent(model)  # doctest: +SKIP
    >>> a, b = next(ind.sample("Pick one")), next(ind.sample("Pick one"))  # doctest: +SKIP

Providers live in :mod:`mnimi_adapters.providers` and are imported on first
use, so that ``import mnimi_adapters`` does not pay for importing LiteLLM.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .core import (
    BatchedModel,
    CorruptStoreError,
    Independent,
    Layer,
    LLMOutputError,
    MnimiError,
    Model,
    Persistent,
    ProviderError,
    ProviderRequestError,
    Repeatable,
    ReplicationCacheMiss,
    Request,
    Sample,
    ScopeWarning,
    StoreError,
    StoreFull,
    StoreReadOnly,
    StoreUnreachable,
    UnsupportedStoreVersion,
    independent,
    no_cache,
    repeatable,
)

if TYPE_CHECKING:
    from .providers import (
        AI302,
        XMCP,
        CloseAI,
        FireworksAI,
        LiteLLMModel,
        OpenAICompatible,
    )

_PROVIDERS = {
    "AI302",
    "CloseAI",
    "FireworksAI",
    "XMCP",
    "OpenAICompatible",
    "LiteLLMModel",
}

__all__ = [
    "AI302",
    "XMCP",
    "BatchedModel",
    "CloseAI",
    "CorruptStoreError",
    "FireworksAI",
    "Independent",
    "LLMOutputError",
    "Layer",
    "LiteLLMModel",
    "MnimiError",
    "Model",
    "OpenAICompatible",
    "Persistent",
    "ProviderError",
    "ProviderRequestError",
    "Repeatable",
    "ReplicationCacheMiss",
    "Request",
    "Sample",
    "ScopeWarning",
    "StoreError",
    "StoreFull",
    "StoreReadOnly",
    "StoreUnreachable",
    "UnsupportedStoreVersion",
    "independent",
    "no_cache",
    "repeatable",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _PROVIDERS:
        return getattr(importlib.import_module(".providers", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
