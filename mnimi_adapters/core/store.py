"""Moved to :mod:`mnimi_adapters.core.stores`; kept until every import names the package."""

from .stores import (
    FORMAT_KEY,
    FORMAT_VERSION,
    DiskStore,
    MemoryStore,
    ReadThroughStore,
    SequenceStore,
    decode_sample,
    is_redis_url,
    open_store,
    printable_location,
)

__all__ = [
    "FORMAT_KEY",
    "FORMAT_VERSION",
    "DiskStore",
    "MemoryStore",
    "ReadThroughStore",
    "SequenceStore",
    "decode_sample",
    "is_redis_url",
    "open_store",
    "printable_location",
]
