"""Layers, cursors and the two extension points: ``Model`` and ``BatchedModel``.

Every layer answers ``open(request)`` with a :class:`Cursor`: a position in
that layer's stream of samples for the request. ``take(batch)`` claims the
next position atomically (so threads and tasks sharing a cursor never get the
same sample) and returns at least one sample; ``batch`` is how many samples a
refill should ask the provider for. A provider's cursor returns a whole
refill at once, so the cache layer above it stores every paid sample at once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from .errors import ProviderError
from .request import Message, Request, record_key, request_record
from .sample import Sample, new_draw_id, split_evenly

T = TypeVar("T")

logger = logging.getLogger("mnimi_adapters")

Prompt = str | list[Message] | Request


class Cursor(ABC):
    """A consumer's position in one layer's sample stream for one request.

    ``take`` is given the request of the call it serves: requests that share a
    key may still differ in how they are sent (credentials, headers, timeouts),
    and a refill must go out the way the current caller asked.
    """

    #: Whether the position matters: a provider's cursor draws fresh samples
    #: wherever it is, while a cache's cursor reads one sequence in order.
    ordered: bool = True
    #: Whether the cursor holds no state of its own, so a new one serves as well.
    stateless: bool = False

    @abstractmethod
    def take(self, request: Request, batch: int) -> list[Sample]:
        """Claim and return the next sample(s); at least one."""

    @abstractmethod
    async def atake(self, request: Request, batch: int) -> list[Sample]:
        """Async :meth:`take`."""

    def give_back(self, samples: list[Sample]) -> None:  # noqa: B027 - optional hook
        """Take back positions served to a call that failed before it delivered them."""

    def reserve(self, count: int) -> Cursor:
        """A cursor over the next ``count`` positions, claimed at once for one call.

        A cursor without positions serves as itself; a cache's claims them together, so
        that concurrent calls of several samples each get the same ones on every run.
        """
        return self


#: The most samples one call may ask for at once: a refill plans (and holds) them all,
#: so a mistyped count (``10**12``) would fill the memory rather than fail.
MOST_SAMPLES_AT_ONCE = 1_000_000


def check_batch(
    batch: Any, name: str = "batch", least: int = 1, most: int | None = MOST_SAMPLES_AT_ONCE
) -> int:
    """Validate a ``batch`` or ``max_batch`` argument (or another count, by ``name``);
    ``most`` is ``None`` for a limit, which plans nothing."""
    if isinstance(batch, bool) or not isinstance(batch, int):
        raise TypeError(f"{name} must be an int, got {type(batch).__name__}")
    if batch < least:
        raise ValueError(f"{name} must be at least {least}, got {batch}")
    if most is not None and batch > most:
        raise ValueError(
            f"{name} must be at most {most:,} (the samples of one call are planned and held "
            f"at once), got {batch:,}: draw them over several calls"
        )
    return batch


class Layer(ABC):
    """Anything with ``sample``: a provider model or a wrapper over another layer.

    Example:
        >>> from itertools import islice
        >>> from mnimi_adapters import BatchedModel, Layer, Repeatable
        >>> class Echo(BatchedModel):  # a provider: the layer at the bottom of a stack
        ...     def query(self, request, n):
        ...         return [f"{request.prompt} #{i}" for i in range(n)]
        >>> stack = Repeatable(Echo("echo", 1.0, max_batch=2))  # a layer over a layer
        >>> isinstance(stack, Layer), stack.root.model_name
        (True, 'echo')
        >>> list(islice(stack.sample("hi", batch=2), 2))  # texts, drawn in one request
        ['hi #0', 'hi #1']
        >>> [sample.text for sample in stack.draw("hi", 2)]  # whole samples, replayed
        ['hi #0', 'hi #1']
    """

    @abstractmethod
    def open(self, request: Request) -> Cursor:
        """A cursor over this layer's samples for ``request``."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """What identifies the underlying model in a cache key.

        A dict with ``model`` (the alias or name), ``params`` (default sampling
        parameters) and, for a generic endpoint without an alias, ``endpoint``.
        """

    def sample(self, prompt: Prompt, batch: int = 1) -> Iterator[str]:
        """Iterate over sample texts for ``prompt``.

        Args:
            prompt: A user message, a list of OpenAI-style messages or a Request.
            batch: How many samples to ask the provider for per refill.

        Example:
            >>> from itertools import islice
            >>> texts = list(islice(model.sample("Pick a number", batch=4), 4))  # doctest: +SKIP
        """
        samples = self.samples(prompt, batch)
        return (s.text for s in samples)

    def samples(self, prompt: Prompt, batch: int = 1) -> Iterator[Sample]:
        """Like :meth:`sample`, yielding whole :class:`Sample` records."""
        check_batch(batch)
        request = Request.of(prompt)
        cursor = self.open(request)

        def iterate() -> Iterator[Sample]:
            while True:
                yield from cursor.take(request, batch)

        return iterate()

    def draw(self, prompt: Prompt, count: int, batch: int | None = None) -> list[Sample]:
        """The first ``count`` samples of a new iterator over ``prompt``, as a list.

        What an adapter needs per call (``n`` generations) without the cost of a
        generator. ``batch`` defaults to however many samples are still missing, so
        a refill never asks the provider for more than the call needs. If the call
        fails part-way, the positions it claimed go back to the cursor, so an
        independent scope hands them to the next call.
        """
        check_batch(count, "count", least=0)
        if batch is not None:
            check_batch(batch)
        request = Request.of(prompt)
        cursor = self.open(request).reserve(count)
        drawn: list[Sample] = []
        try:
            while len(drawn) < count:
                drawn.extend(cursor.take(request, batch or count - len(drawn)))
        except BaseException:
            cursor.give_back(drawn)
            raise
        return drawn[:count]

    async def adraw(self, prompt: Prompt, count: int, batch: int | None = None) -> list[Sample]:
        """Async :meth:`draw`."""
        check_batch(count, "count", least=0)
        if batch is not None:
            check_batch(batch)
        request = Request.of(prompt)
        cursor = self.open(request).reserve(count)
        drawn: list[Sample] = []
        try:
            while len(drawn) < count:
                drawn.extend(await cursor.atake(request, batch or count - len(drawn)))
        except BaseException:
            cursor.give_back(drawn)
            raise
        return drawn[:count]

    def asample(self, prompt: Prompt, batch: int = 1) -> AsyncIterator[str]:
        """Async :meth:`sample`: ``async for text in model.asample(prompt)``."""
        samples = self.asamples(prompt, batch)

        async def iterate() -> AsyncIterator[str]:
            async for s in samples:
                yield s.text

        return iterate()

    def asamples(self, prompt: Prompt, batch: int = 1) -> AsyncIterator[Sample]:
        """Async :meth:`samples`."""
        check_batch(batch)
        request = Request.of(prompt)
        cursor = self.open(request)

        async def iterate() -> AsyncIterator[Sample]:
            while True:
                for s in await cursor.atake(request, batch):
                    yield s

        return iterate()

    def key_of(self, request: Request) -> str:
        """The cache key of ``request`` for the model at the bottom of this stack.

        Every layer of a stack computes the same key, so it is kept on the request.
        """
        root = self.root
        # The entry holds the model itself, so its id cannot be reused while it is kept.
        known = request.keys.get(id(root))
        if known is not None and known[0] is root:
            return known[1]
        key = record_key(self.record_of(request))
        request.keys[id(root)] = (root, key)
        return key

    def record_of(self, request: Request) -> dict[str, Any]:
        """The canonical record of ``request`` that :meth:`key_of` hashes, kept on the request.

        A cache layer stores it with the samples, so a miss builds it once.
        """
        root = self.root
        known = request.records.get(id(root))
        if known is not None and known[0] is root:
            return known[1]
        record = request_record(root.identity(), request)
        request.records[id(root)] = (root, record)
        return record

    @property
    def root(self) -> Model:
        """The provider model at the bottom of the layers."""
        inner = getattr(self, "inner", None)
        if isinstance(inner, Layer):
            return inner.root
        assert isinstance(self, Model)
        return self

    def total_query_time(self) -> float:
        """Seconds spent waiting for the provider (of the model at the bottom)."""
        return self.root._query_time

    def total_token_count(self) -> tuple[int, int]:
        """(input tokens, output tokens) the provider reported, in total."""
        root = self.root
        return root._prompt_tokens, root._completion_tokens


class Model(Layer):
    """Base of provider models.

    Subclass it and implement :meth:`sample` (a generator of ``str`` draws) for
    a provider of your own, or subclass :class:`BatchedModel` for one that can
    return several samples per request.

    Under a cache layer, the provider is called from the library's own refill
    threads, and async calls run on the library's own event loop, not the
    caller's: a paid answer is then stored even when its caller times out, is
    cancelled or interrupted, or its event loop closes. Create anything bound to
    an event loop (an ``aiohttp`` session) inside the call, or one per loop.

    Args:
        model_name: The provider's model name.
        temperature: Sampling temperature.
        alias: The model's name in cache keys, so one model served by two
            providers shares a cache.
        max_batch: The most samples one provider request may return.

    Example:
        >>> from itertools import count, islice
        >>> from mnimi_adapters import Repeatable
        >>> class Counter(Model):  # a provider of your own: its k-th draw answers "k"
        ...     def sample(self, prompt, batch=1):
        ...         for k in count():
        ...             yield str(k)
        >>> model = Counter("counter", 1.0)
        >>> cached = Repeatable(model)
        >>> list(islice(cached.sample("Pick a number"), 3))
        ['0', '1', '2']
        >>> next(cached.sample("Pick a number")), model.total_requests()  # replayed
        ('0', 3)
    """

    def __init__(
        self,
        model_name: str,
        temperature: float,
        alias: str | None = None,
        max_batch: int = 1,
    ) -> None:
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name must be a non-empty str, got {model_name!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise TypeError(f"temperature must be a number, got {temperature!r}")
        if not temperature >= 0 or not math.isfinite(temperature):  # NaN compares False
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        self.model_name = model_name
        self.temperature = float(temperature)
        self.alias = alias
        self.max_batch = check_batch(max_batch, "max_batch", most=None)
        self._accounting = threading.Lock()
        self._query_time = 0.0
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._requests = 0
        self._cost = 0.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_name!r}, {self.temperature})"

    def identity(self) -> dict[str, Any]:
        return {"model": self.alias or self.model_name, "params": {"temperature": self.temperature}}

    def open(self, request: Request) -> Cursor:
        if type(self).sample is Layer.sample:
            raise NotImplementedError(
                f"{type(self).__name__} must implement sample(), "
                "or subclass BatchedModel and implement query()"
            )
        return _CustomSampleCursor(self, request)

    def account(self, seconds: float, samples: list[Sample], requests: int) -> None:
        """Add one refill to the totals (thread-safe)."""
        with self._accounting:
            self._query_time += seconds
            self._requests += requests
            for s in samples:
                self._prompt_tokens += s.prompt_tokens
                self._completion_tokens += s.completion_tokens
                self._cost += s.cost or 0.0

    def total_cost(self) -> float:
        """USD spent, where the provider's price is known."""
        return self._cost

    def total_requests(self) -> int:
        """How many provider requests were sent."""
        return self._requests


def as_sample(item: str | Sample, response_id: str | None = None) -> Sample:
    """Turn what a custom model returned into a sample with its own draw id."""
    if isinstance(item, Sample):
        return item
    if isinstance(item, str):
        return Sample.of_text(item, response_id)
    raise TypeError(f"a model must produce str or Sample, got {type(item).__name__}")


def usable(sample: Sample) -> bool:
    """Empty or filtered answers are failures, never samples (law 8)."""
    if sample.finish_reason == "content_filter":
        return False
    return bool(sample.text) or bool(sample.message.get("tool_calls"))


class _CustomSampleCursor(Cursor):
    """Draws from a custom ``Model.sample`` generator, one draw per ``take``."""

    ordered = False

    def __init__(self, model: Model, request: Request) -> None:
        self._model = model
        self._request = request
        self._iterator: Iterator[str | Sample] | None = None
        self._lock = threading.Lock()

    def take(self, request: Request, batch: int) -> list[Sample]:
        # A generator cannot be advanced from two threads at once.
        with self._lock:
            if self._iterator is None:
                source = self._request.source
                prompt = self._request if source is None else source
                self._iterator = iter(self._model.sample(prompt, batch))
            start = time.perf_counter()
            try:
                item = next(self._iterator)
            except StopIteration:
                raise ProviderError(f"{self._model!r}.sample() stopped yielding") from None
            sample = as_sample(item)
            self._model.account(time.perf_counter() - start, [sample], 1)
        if not usable(sample):
            raise ProviderError(f"{self._model!r}.sample() yielded an empty or filtered answer")
        return [sample]

    async def atake(self, request: Request, batch: int) -> list[Sample]:
        return await asyncio.to_thread(self.take, request, batch)


def chunk_sizes(batch: int, max_batch: int) -> list[int]:
    """Split a refill of ``batch`` into ``ceil(batch / max_batch)`` near-equal requests.

    Example:
        >>> chunk_sizes(20, 10), chunk_sizes(7, 3)
        ([10, 10], [3, 2, 2])
    """
    return split_evenly(batch, math.ceil(batch / max_batch))


#: The provider requests the current call may have in flight at once, shared by all its
#: refills on every thread and loop (``None``: no limit); see :func:`requests_at_most`.
_REQUEST_SLOTS: ContextVar[threading.BoundedSemaphore | None] = ContextVar(
    "mnimi_request_slots", default=None
)
#: How often a request waiting for a slot in async code looks again.
_SLOT_POLL_SECONDS = 0.005


@contextmanager
def requests_at_most(limit: int | None) -> Iterator[None]:
    """Send at most ``limit`` provider requests at once inside the block (``None``: as many
    as the refills ask for), whatever the refills and requests it is split into.

    LangChain's ``max_concurrency`` is a rate limit: a ``batch`` of 6 identical inputs with
    ``max_batch=1`` is one refill of 6 single requests, which would otherwise all go at once.

    Example:
        >>> with requests_at_most(2):  # doctest: +SKIP
        ...     samples = layer.draw(request, 6)  # 6 single requests, 2 in flight at most
    """
    if limit is None:
        yield
        return
    token = _REQUEST_SLOTS.set(threading.BoundedSemaphore(limit))
    try:
        yield
    finally:
        _REQUEST_SLOTS.reset(token)


def fan_out(send: Callable[[int], T], sizes: list[int]) -> list[T | BaseException]:
    """``send(n)`` for each size, concurrently when there are several (LiteLLM's sync API
    blocks, so threads), the outcomes in order, a failure as its exception.

    The one place that fans a refill out into requests, for every provider: a lone
    request's failure propagates as it is.
    """
    slots = _REQUEST_SLOTS.get()
    if slots is not None:
        send = _in_slot(slots, send)
    if len(sizes) == 1:
        return [send(sizes[0])]
    with ThreadPoolExecutor(max_workers=len(sizes)) as pool:
        futures = [pool.submit(send, n) for n in sizes]
        return [future.exception() or future.result() for future in futures]


async def afan_out(
    send: Callable[[int], Awaitable[T]], sizes: list[int]
) -> list[T | BaseException]:
    """Async :func:`fan_out`: the requests run as concurrent tasks."""
    slots = _REQUEST_SLOTS.get()
    if slots is not None:
        send = _ain_slot(slots, send)
    if len(sizes) == 1:
        return [await send(sizes[0])]
    return list(await asyncio.gather(*(send(n) for n in sizes), return_exceptions=True))


def _in_slot(slots: threading.BoundedSemaphore, send: Callable[[int], T]) -> Callable[[int], T]:
    def held(n: int) -> T:
        with slots:
            # A request in a slot that fans out itself (n emulated by single requests)
            # takes no more: under a limit of 1 it would wait for its own slot for good.
            token = _REQUEST_SLOTS.set(None)
            try:
                return send(n)
            finally:
                _REQUEST_SLOTS.reset(token)

    return held


def _ain_slot(
    slots: threading.BoundedSemaphore, send: Callable[[int], Awaitable[T]]
) -> Callable[[int], Awaitable[T]]:
    async def held(n: int) -> T:
        # Polled, not awaited: the slots are shared with threads and other loops.
        while not slots.acquire(blocking=False):
            await asyncio.sleep(_SLOT_POLL_SECONDS)
        token = _REQUEST_SLOTS.set(None)  # as in _in_slot
        try:
            return await send(n)
        finally:
            _REQUEST_SLOTS.reset(token)
            slots.release()

    return held


class BatchedModel(Model):
    """A provider that can return several samples per request.

    Implement :meth:`query`; the base splits refills by ``max_batch``, sends
    the requests of one refill concurrently, drops failed and empty answers
    and keeps the accounts.

    Example:
        >>> class Echo(BatchedModel):
        ...     def query(self, request, n):
        ...         return [f"{request.prompt} #{i}" for i in range(n)]
        >>> next(Echo("echo", 1.0).sample("hi"))
        'hi #0'
    """

    @abstractmethod
    def query(self, request: Request, n: int) -> list[str | Sample]:
        """Send one request for ``n`` samples and return them."""

    async def aquery(self, request: Request, n: int) -> list[str | Sample]:
        """Async :meth:`query`; by default runs it in a worker thread.

        Under a cache layer it runs on the library's event loop (see :class:`Model`).
        """
        return await asyncio.to_thread(self.query, request, n)

    def open(self, request: Request) -> Cursor:
        return _RefillCursor(self)

    def _collect(
        self, outcomes: list[list[str | Sample] | BaseException], seconds: float
    ) -> list[Sample]:
        samples: list[Sample] = []
        errors: list[BaseException] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                errors.append(outcome)
            elif not isinstance(outcome, list | tuple):
                # A bare str would otherwise be split into one sample per character.
                raise TypeError(
                    f"{type(self).__name__}.query() must return a list of str or Sample, "
                    f"got {type(outcome).__name__}"
                )
            else:
                response_id = new_draw_id()
                samples.extend(as_sample(item, response_id) for item in outcome)
        self.account(seconds, samples, len(outcomes))
        kept = [s for s in samples if usable(s)]
        if kept:
            if errors:
                # What was paid for is kept; the failed part is simply drawn again later.
                logger.warning(
                    "%d of %d requests failed: %s", len(errors), len(outcomes), errors[0]
                )
            return kept
        if errors:
            raise errors[0]
        raise ProviderError(f"{self!r} returned no usable sample (empty or filtered answers)")

    def batch_limit(self, request: Request) -> int:
        """The most samples one request for ``request`` may ask for (``max_batch``)."""
        return self.max_batch

    def refill(self, request: Request, batch: int) -> list[Sample]:
        """Draw ``batch`` fresh samples, in ``ceil(batch / max_batch)`` concurrent requests."""
        sizes = chunk_sizes(batch, self.batch_limit(request))
        start = time.perf_counter()
        outcomes = fan_out(functools.partial(self.query, request), sizes)
        return self._collect(outcomes, time.perf_counter() - start)

    async def arefill(self, request: Request, batch: int) -> list[Sample]:
        """Async :meth:`refill`."""
        sizes = chunk_sizes(batch, self.batch_limit(request))
        start = time.perf_counter()
        outcomes = await afan_out(functools.partial(self.aquery, request), sizes)
        return self._collect(outcomes, time.perf_counter() - start)


class _RefillCursor(Cursor):
    """A provider never repeats itself: every take is a fresh refill."""

    ordered = False
    stateless = True

    def __init__(self, model: BatchedModel) -> None:
        self._model = model

    def take(self, request: Request, batch: int) -> list[Sample]:
        return self._model.refill(request, batch)

    async def atake(self, request: Request, batch: int) -> list[Sample]:
        return await self._model.arefill(request, batch)
