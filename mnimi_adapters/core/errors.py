"""Exceptions raised by mnimi_adapters.

The hierarchy is small on purpose::

    MnimiError
    ├── ReplicationCacheMiss      a replication run needed a sample the cache lacks
    │                             (also a LookupError)
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

from typing import Any, TypeVar

_SUFFIXES = {1: "st", 2: "nd", 3: "rd"}


def _ordinal(number: int) -> str:
    """``1`` -> ``1st``, ``2`` -> ``2nd``, ``11`` -> ``11th``, ``23`` -> ``23rd``."""
    suffix = "th" if number % 100 in (11, 12, 13) else _SUFFIXES.get(number % 10, "th")
    return f"{number}{suffix}"


class MnimiError(Exception):
    """Base class of every exception this library raises on purpose.

    Example:
        >>> import tempfile
        >>> from mnimi_adapters import BatchedModel, MnimiError, Persistent
        >>> class Echo(BatchedModel):
        ...     def query(self, request, n):
        ...         return ["hi"] * n
        >>> with tempfile.TemporaryDirectory() as empty:
        ...     try:  # a replication run over a folder that holds no cache
        ...         Persistent(Echo("echo", 1.0), empty, replication=True)
        ...     except MnimiError as error:  # catches every error below it
        ...         print(type(error).__name__)
        StoreError
    """

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt without __init__, whose arguments ``args`` does not hold: a process
        # pool sends a worker's error to its parent pickled.
        return (rebuilt, (type(self), self.args, self.__dict__))


E = TypeVar("E", bound=BaseException)


def rebuilt(kind: type[E], args: tuple[Any, ...], state: dict[str, Any]) -> E:
    """An exception of class ``kind`` with ``args`` and attributes ``state``, built
    without calling its ``__init__``."""
    error = kind.__new__(kind)
    error.args = args
    error.__dict__.update(state)
    return error


class ReplicationCacheMiss(MnimiError, LookupError):
    """A replication run needed a sample that the cache does not hold.

    Also a ``LookupError``, so that retry helpers that never retry one (LangGraph's
    ``RetryPolicy`` by default) give up at once: retrying cannot find what is not stored.

    Attributes:
        key: The cache key of the request.
        summary: A short human-readable description of the request.
        cached: How many samples the cache holds for that key.
        index: The 0-based position that was asked for.
        nearest_key: When nothing is stored for the key, the stored request of the
            same model nearest to it (``None`` if there is none).
        explanation: The first field in which that request differs, in words, e.g.
            ``temperature: stored 0.7, requested 0.8``.

    Example:
        >>> import tempfile
        >>> from itertools import islice
        >>> from mnimi_adapters import BatchedModel, Persistent
        >>> class Echo(BatchedModel):
        ...     def query(self, request, n):
        ...         return ["hi"] * n
        >>> with tempfile.TemporaryDirectory() as cache:
        ...     recorded = Persistent(Echo("echo", 1.0), cache)
        ...     first = next(recorded.sample("Say hi"))  # one sample drawn and stored
        ...     recorded.close()
        ...     replay = Persistent(Echo("echo", 1.0), cache, replication=True)
        ...     try:
        ...         texts = list(islice(replay.sample("Say hi"), 2))  # asks for a 2nd
        ...     except ReplicationCacheMiss as miss:
        ...         print(f"index {miss.index}, {miss.cached} cached")
        ...     replay.close()
        index 1, 1 cached
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
    """The cache store cannot be opened, read or written.

    The message names the store and says what to do; the subclasses below say why.

    Example:
        >>> import tempfile
        >>> from mnimi_adapters import BatchedModel, Persistent
        >>> class Echo(BatchedModel):
        ...     def query(self, request, n):
        ...         return ["hi"] * n
        >>> with tempfile.TemporaryDirectory() as empty:
        ...     try:  # nothing to replay there: no store is created for it
        ...         Persistent(Echo("echo", 1.0), empty, replication=True)
        ...     except StoreError as error:
        ...         print(str(error).startswith("no cache at"))
        True
    """


class UnsupportedStoreVersion(StoreError):
    """The store was written by a format version this library does not read.

    Example:
        >>> try:  # doctest: +SKIP
        ...     model = Persistent(provider, "cache-from-a-newer-release")
        ... except UnsupportedStoreVersion:
        ...     model = Persistent(provider, "another-directory")  # or upgrade the library
    """


class CorruptStoreError(StoreError):
    """A stored value is damaged or is not JSON written by this library.

    ``mnimi verify PATH`` lists every damaged sequence of a store.

    Example:
        >>> from mnimi_adapters import Sample
        >>> try:
        ...     Sample.from_dict({"not": "a sample"})
        ... except CorruptStoreError as error:
        ...     print(error)
        not a stored sample: "{'not': 'a sample'}"
    """


class StoreFull(StoreError):
    """The store has no room for a write: its disk is full, or Redis is at maxmemory.

    Replays still read from it; only storing a new sample fails, before it is paid for.

    Example:
        >>> try:  # doctest: +SKIP
        ...     answer = next(model.sample("A prompt not cached yet"))
        ... except StoreFull:
        ...     ...  # free some space (mnimi prune PATH --max-size 1GB), then run again
    """


class StoreReadOnly(StoreError):
    """The store cannot be written: read-only media, or it was opened read-only.

    Replays still read from it; a miss raises this before any request is sent.

    Example:
        >>> model = Persistent(provider, "/mnt/read-only/cache")  # doctest: +SKIP
        >>> next(model.sample("A prompt not cached yet"))  # doctest: +SKIP
        Traceback (most recent call last):
        ...
        mnimi_adapters.core.errors.StoreReadOnly: ...
    """


class StoreUnreachable(StoreError):
    """The store's server cannot be reached, or went away while in use.

    Example:
        >>> try:  # doctest: +SKIP
        ...     model = Persistent(provider, "redis://cache-host:6379/0")
        ... except StoreUnreachable as error:  # a password in the URL is never shown
        ...     print(error)
    """


class ProviderError(MnimiError):
    """A provider call failed or returned a response that holds no usable sample.

    Nothing of a failed call is stored: the next call asks the provider again.

    Example:
        >>> from mnimi_adapters import BatchedModel
        >>> class Silent(BatchedModel):
        ...     def query(self, request, n):
        ...         return [""] * n  # empty answers are no samples
        >>> try:
        ...     next(Silent("silent", 1.0).sample("Say something"))
        ... except ProviderError as error:
        ...     print(error)
        Silent('silent', 1.0) returned no usable sample (empty or filtered answers)
    """


class ProviderRequestError(ProviderError):
    """A provider request failed (after any retries) or its answer was unusable.

    The LiteLLM exception, if any, is the ``__cause__`` (unless the provider echoed a
    credential into it: then no traceback shows it).

    Attributes:
        status_code: The HTTP status the provider answered, when there was one.
        attempts: How many times the request was sent.
        retryable: Whether the failure was of a kind that is retried (rate limit, server
            error, timeout, connection error, malformed body), i.e. the retries ran out.

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

    Example:
        >>> from mnimi_adapters.structured_output import Tag, parse
        >>> try:
        ...     parse(Tag("answer"), "I think it is 42.")
        ... except ValueError as error:  # an LLMOutputError is a ValueError too
        ...     print(type(error).__name__, error.expected, error.position)
        LLMOutputError <answer>...</answer> 0
    """

    def __init__(self, message: str, *, expected: str, position: int) -> None:
        super().__init__(message)
        self.expected = expected
        self.position = position
