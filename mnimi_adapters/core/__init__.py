"""The Mnimi core: requests, samples, stores, layers and scopes.

Every layer obeys the eight laws numbered in ``docs/laws.md`` (code and tests cite them
as "law N"); ``layers.py`` is the module that implements them.
"""

from .errors import (
    CorruptStoreError,
    LLMOutputError,
    MnimiError,
    ProviderError,
    ProviderRequestError,
    ReplicationCacheMiss,
    StoreError,
    StoreFull,
    StoreReadOnly,
    StoreUnreachable,
    UnsupportedStoreVersion,
)
from .layers import CacheLayer, Independent, Persistent, Repeatable, Wrapper
from .model import BatchedModel, Cursor, Layer, Model
from .request import Request, request_key
from .sample import Sample
from .scopes import ScopeWarning, independent, no_cache, repeatable, scoped
from .stores import DiskStore, MemoryStore, SequenceStore

__all__ = [
    "BatchedModel",
    "CacheLayer",
    "CorruptStoreError",
    "Cursor",
    "DiskStore",
    "Independent",
    "LLMOutputError",
    "Layer",
    "MemoryStore",
    "MnimiError",
    "Model",
    "Persistent",
    "ProviderError",
    "ProviderRequestError",
    "Repeatable",
    "ReplicationCacheMiss",
    "Request",
    "Sample",
    "ScopeWarning",
    "SequenceStore",
    "StoreError",
    "StoreFull",
    "StoreReadOnly",
    "StoreUnreachable",
    "UnsupportedStoreVersion",
    "Wrapper",
    "independent",
    "no_cache",
    "repeatable",
    "request_key",
    "scoped",
]
