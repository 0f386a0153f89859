"""Failures, cancellation and concurrency at the edges of the laws."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

import pytest
from support import NumberModel

from mnimi_adapters.core import (
    BatchedModel,
    Independent,
    MnimiError,
    Model,
    Persistent,
    ProviderError,
    Repeatable,
    Request,
    Sample,
    independent,
    scoped,
)

PROMPT = "Choose a number between 1 and 1000."


class Slow(BatchedModel):
    """Answers "d1", "d2", ... after a delay; can fail on chosen calls."""

    def __init__(self, delay: float = 0.0, fail_on: tuple[int, ...] = ()) -> None:
        super().__init__("slow", 1.0)
        self.delay = delay
        self.fail_on = fail_on
        self.calls = 0
        self.headers: list[object] = []
        self._lock = threading.Lock()

    def query(self, request: Request, n: int) -> list[str | Sample]:
        with self._lock:
            self.calls += 1
            call = self.calls
        self.headers.append(request.params.get("extra_headers"))
        time.sleep(self.delay)
        if call in self.fail_on:
            raise ProviderError(f"call {call} failed")
        return [f"d{call}.{i}" for i in range(n)]


async def test_a_cancelled_waiter_does_not_cancel_the_refill_it_waits_for(
    tmp_path: Path,
) -> None:
    model = Independent(Persistent(Slow(delay=0.3, fail_on=()), tmp_path))
    model_batch = 3  # one refill fills the positions all three tasks want

    async def take() -> str:
        return (await model.adraw(PROMPT, 1, batch=model_batch))[0].text

    owner = asyncio.create_task(take())
    await asyncio.sleep(0.05)
    impatient = asyncio.create_task(asyncio.wait_for(take(), 0.05))
    patient = asyncio.create_task(take())
    results = await asyncio.gather(owner, impatient, patient, return_exceptions=True)
    assert isinstance(results[1], TimeoutError)
    assert isinstance(results[0], str) and isinstance(results[2], str)
    assert results[0] != results[2]


async def test_a_cancelled_caller_still_stores_what_was_paid_for(tmp_path: Path) -> None:
    provider = Slow(delay=0.2)
    model = Persistent(provider, tmp_path)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(model.adraw(PROMPT, 1, batch=4), 0.05)
    await asyncio.sleep(0.4)
    assert provider.calls == 4  # max_batch=1: four single requests
    assert model.stats()["samples_stored"] == 4  # law 6: nothing paid is thrown away


def test_a_refill_goes_out_with_the_current_callers_transport_settings(tmp_path: Path) -> None:
    provider = Slow()
    model = Persistent(provider, tmp_path)
    messages = ({"role": "user", "content": PROMPT},)
    for tenant, draws in (("alice", 2), ("bob", 4)):
        # Same key (headers are not sampling parameters), different senders: bob's
        # block replays alice's two samples, then draws two more as bob.
        request = Request(messages, {"extra_headers": {"x-tenant": tenant}})
        with independent():
            for _ in range(draws):
                next(scoped(model).samples(request))
    assert [h["x-tenant"] for h in provider.headers] == ["alice", "alice", "bob", "bob"]  # type: ignore[index]


def test_slicing_stays_a_prefix_under_threads(tmp_path: Path) -> None:
    original = Persistent(Slow(delay=0.01), tmp_path / "A")
    sliced = Independent(Persistent(original, tmp_path / "B"))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: next(sliced.sample(PROMPT)), range(24)))
    a = list(islice(Persistent(Slow(), tmp_path / "A").sample(PROMPT), 24))
    b = list(islice(Persistent(Slow(), tmp_path / "B").sample(PROMPT), 24))
    assert b == a[: len(b)]


def test_a_failed_draw_does_not_make_the_run_skip_a_sample(tmp_path: Path) -> None:
    def run(provider: Slow) -> list[str]:
        model = Independent(Persistent(provider, tmp_path))
        seen = []
        for _ in range(3):
            try:
                seen.append(next(model.sample(PROMPT)))
            except ProviderError:
                seen.append("error")
        return seen

    first = run(Slow(fail_on=(2,)))
    assert first == ["d1.0", "error", "d3.0"]
    # A re-run replays the samples in the order the first run received them.
    assert run(Slow(fail_on=(1, 2, 3)))[:2] == ["d1.0", "d3.0"]


def test_a_call_failing_part_way_gives_its_positions_back(tmp_path: Path) -> None:
    provider = Slow(fail_on=(3,))
    model = Independent(Persistent(provider, tmp_path))
    with pytest.raises(ProviderError):
        model.draw(PROMPT, 3, batch=1)
    # The two samples the failed call had taken are the next ones served.
    assert [s.text for s in model.draw(PROMPT, 2, batch=1)] == ["d1.0", "d2.0"]


async def test_a_sync_wait_for_an_async_refill_on_the_same_loop_raises(tmp_path: Path) -> None:
    model = Independent(Persistent(Slow(delay=0.2), tmp_path))
    pending = asyncio.create_task(model.adraw(PROMPT, 1, batch=2))
    await asyncio.sleep(0.05)
    with pytest.raises(MnimiError, match="use the async API"):
        model.draw(PROMPT, 1)
    assert (await pending)[0].text == "d1.0"


def test_a_provider_repeating_draw_ids_is_an_error_not_a_loop(tmp_path: Path) -> None:
    class Stuck(BatchedModel):
        def query(self, request: Request, n: int) -> list[str | Sample]:
            return [Sample(text="same", draw_id="fixed")]

    model = Persistent(Stuck("stuck", 1.0), tmp_path)
    assert next(model.sample(PROMPT)) == "same"
    with pytest.raises(ProviderError, match="only draws already stored"):
        list(islice(model.sample(PROMPT), 2))


def test_one_scope_object_serves_many_threads_and_tasks(tmp_path: Path) -> None:
    base = Persistent(NumberModel(), tmp_path)
    shared = independent()

    def work() -> list[str]:
        with shared:
            return [next(scoped(base).sample(PROMPT)) for _ in range(2)]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: work(), range(4)))
    assert all(len(set(r)) == 2 for r in results)

    async def awork() -> list[str]:
        async with shared:
            return [next(scoped(base).sample(PROMPT)) for _ in range(2)]

    async def main() -> list[list[str]]:
        return await asyncio.gather(*(awork() for _ in range(4)))

    assert all(len(set(r)) == 2 for r in asyncio.run(main()))


def test_scopes_refuse_to_decorate_generators() -> None:
    with pytest.raises(TypeError, match="cannot decorate the generator"):

        @independent()
        def numbers() -> Iterator[int]:
            yield 1


def test_custom_models_failures_are_not_samples(tmp_path: Path) -> None:
    class Empty(Model):
        def sample(self, prompt: object, batch: int = 1) -> Iterator[str]:
            yield from ("", "real")

    model = Persistent(Empty("empty", 1.0), tmp_path)
    with pytest.raises(ProviderError, match="empty or filtered"):
        next(model.sample(PROMPT))
    assert next(model.sample(PROMPT)) == "real"
    assert model.stats()["samples_stored"] == 1

    class Bare(BatchedModel):
        def query(self, request: Request, n: int) -> list[str | Sample]:
            return "42"  # type: ignore[return-value]

    with pytest.raises(TypeError, match="must return a list"):
        next(Repeatable(Bare("bare", 1.0)).sample(PROMPT))


def test_the_samples_a_call_drew_are_misses_and_only_those(tmp_path: Path) -> None:
    # A call of 3 samples drawn in one request was reported as one miss and two hits (its
    # own refill had stored the others before they were read): LiteLLM then priced one of
    # the three and logged a cached answer besides the real one.
    def hits(samples: list[Sample]) -> list[bool]:
        return [bool(sample.origin and sample.origin["cache_hit"]) for sample in samples]

    provider = Slow()
    model = Persistent(provider, tmp_path)
    assert hits(model.draw(PROMPT, 3, batch=3)) == [False, False, False]
    assert hits(model.draw(PROMPT, 5)) == [True, True, True, False, False]
    assert hits(model.draw(PROMPT, 5)) == [True] * 5
    assert provider.calls == 5  # one request a sample: Slow answers one at a time
    assert (model.stats()["misses"], model.stats()["hits"]) == (5, 8)


def test_a_refill_failing_after_its_caller_timed_out_is_not_reported_unretrieved(
    tmp_path: Path,
) -> None:
    # The caller is gone and a failure is no sample: asyncio printed "Future exception was
    # never retrieved" with the provider's traceback.
    reported: list[str] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _, context: reported.append(str(context.get("message")))
        )
        model = Persistent(Slow(delay=0.2, fail_on=(1,)), tmp_path)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(model.adraw(PROMPT, 1), 0.05)
        await asyncio.sleep(0.4)  # the refill fails meanwhile
        gc.collect()
        await asyncio.sleep(0)

    asyncio.run(main())
    assert reported == []
