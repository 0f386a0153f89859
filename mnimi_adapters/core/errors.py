"""Exceptions raised by mnimi_adapters.

The hierarchy is small on purpose::

    MnimiError
    ├── ReplicationCacheMiss      a replication run needed a sample the cache lacks
    ├── StoreError                the store cannot be opened or used
    │   ├── UnsupportedStoreVersion
    │   ├── CorruptStoreError
    │   ├── StoreFull             no room left: a full disk, a Redis at maxmemory
    │   ├── StoreReadOnly         read-only media, or a store opened read-only
    │   └── StoreUnreachable      the server cannot be reached or went away
    ├── ProviderError             a provider failed or answered nonsense
    │   └── ProviderRequestError  a provider request failed, with its HTTP status
    └── LLMOutputError            an output does not fit its spec (also a ValueError)

Every class is exported from ``mnimi_adapters``; the README's "Errors" section says what
each means to a user.
"""

from __future__ import annotations

_SUFFIXES = {1: "st", 2: "nd", 3: "rd"}


def _ordinal(number: int) -> str:
    """``1`` -> ``1st``, ``2`` -> ``2nd``, ``11`` -> ``11th``, ``23`` -> ``23rd``."""
    suffix = "th" if number % 100 in (11, 12, 13) else _SUFFIXES.get(number % 10, "th")
    return f"{number}{suffix}"


class MnimiError(Exception):
    """Base class of every exception this library raises on purpose."""


class ReplicationCacheMiss(MnimiError):
    """A replication run needed a sample that the cache does not hold.

    Attributes:
        key: The cache key of the request.
        summary: A short human-readable description of the request.
        cached: How many samples the cache holds for that key.
        index: The 0-based position that was asked for.
        nearest_key: When nothing is stored for the key, the stored request of the
            same model nearest to it (``None`` if there is none).
        explanation: The first field in which that request differs, in words, e.g.
            ``temperature: stored 0.7, requested 0.8``.
    """

    def __init__(
        self,
        key: str,
        summary: str,
        cached: int,
        index: int,
        explanation: str | None = None,
        nearest_key: str | None = None,
    ) -> None:
        self.key = key
        self.summary = summary
        self.cached = cached
        self.index = index
        self.explanation = explanation
        self.nearest_key = nearest_key
        # People count from 1 and indices from 0: the message gives both, so that
        # "index 3" next to "3 are cached" never reads as off by one.
        message = (
            f"replication mode: the {_ordinal(index + 1)} sample (index {index}) of key {key} "
            f"is not cached; {cached} {'is' if cached == 1 else 'are'} cached "
            f"for request {summary}"
        )
        if explanation is not None:
            message += f"; the nearest stored request, {nearest_key}, differs in {explanation}"
        super().__init__(message)


class StoreError(MnimiError):
    """The cache store cannot be opened, read or written."""


class UnsupportedStoreVersion(StoreError):
    """The store was written by a format version this library does not read."""


class CorruptStoreError(StoreError):
    """A stored value is damaged or is not JSON written by this library."""


class StoreFull(StoreError):
    """The store has no room for a write: its disk is full, or Redis is at maxmemory."""


class StoreReadOnly(StoreError):
    """The store cannot be written: read-only media, or it was opened read-only."""


class StoreUnreachable(StoreError):
    """The store's server cannot be reached, or went away while in use."""


class ProviderError(MnimiError):
    """A provider call failed or returned a response that holds no usable sample."""


class ProviderRequestError(ProviderError):
    """A provider request failed (after any retries) or its answer was unusable.

    The LiteLLM exception, if any, is the ``__cause__`` (unless the provider echoed a
    credential into it: then no traceback shows it).

    Attributes:
        status_code: The HTTP status the provider answered, when there was one.
        attempts: How many times the request was sent.
        retryable: Whether the failure was of a kind that is retried (rate limit, server
            error, timeout, connection error), i.e. the retries ran out.

    Example:
        >>> error = ProviderRequestError("rate limited", status_code=429, attempts=4,
        ...                              retryable=True)
        >>> error.status_code, error.attempts, isinstance(error, MnimiError)
        (429, 4, True)
    """

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        attempts: int = 1,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.attempts = attempts
        self.retryable = retryable


class LLMOutputError(MnimiError, ValueError):
    """An LLM output that does not fit the expected structure or fails validation.

    Raised by :mod:`mnimi_adapters.structured_output`. A ``MnimiError`` like every error
    this library raises on purpose, and a ``ValueError`` so that code retrying on
    ``ValueError`` (LangGraph's ``retry_on``, tenacity) retries it too.

    Attributes:
        expected: What was expected, e.g. ``"<algorithm>...</algorithm>"``.
        position: Character offset in the output where the mismatch was found
            (0 when a validator rejected the output as a whole).
    """

    def __init__(self, message: str, *, expected: str, position: int) -> None:
        super().__init__(message)
        self.expected = expected
        self.position = position
