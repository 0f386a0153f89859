"""What LiteLLM's callbacks see of calls a MnimiCache answers, against the real LiteLLM.

A user call is logged once, as LiteLLM's own cache logs it: as a hit only when all its
samples are hits, with the cost of its fresh samples, under the caller's
``litellm_call_id``; a provider retry that ends in a success logs no failure.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

pytest.importorskip("litellm")

import litellm
from litellm.integrations.custom_logger import CustomLogger
from litellm_support import listening

from mnimi_adapters import independent
from mnimi_adapters.litellm import MnimiCache
from mnimi_adapters.testing import SamplingServer

#: LiteLLM before 1.110 (the declared floor is 1.105) does not hand the success event of
#: a replayed hit to these callbacks: counted here, a hit's event is missing there. Open.
_HIT_EVENTS_REACH_CALLBACKS = pytest.mark.skipif(
    Version(version("litellm")) < Version("1.110"),
    reason="LiteLLM before 1.110 does not hand a replayed hit's success event to callbacks",
)


pytestmark = pytest.mark.integration

API_KEY = "sk-test"
MODEL = "openai/gpt-4o-mini"


class Events(CustomLogger):
    """Every success and failure LiteLLM reports for calls whose last message is ``prompt``."""

    def __init__(self, prompt: str) -> None:
        super().__init__()
        self.prompt = prompt
        self.successes: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []

    def _note(self, into: list[dict[str, Any]], kwargs: Any) -> None:
        messages = kwargs.get("messages") or [{}]
        if messages[-1].get("content") != self.prompt:
            return
        logged = kwargs.get("standard_logging_object") or {}
        into.append(
            {
                "call_id": kwargs.get("litellm_call_id"),
                "cache_hit": logged.get("cache_hit"),
                "cost": logged.get("response_cost"),
                "deployment": ((kwargs.get("litellm_params") or {}).get("model_info") or {}).get(
                    "id"
                ),
            }
        )

    def log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._note(self.successes, kwargs)

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._note(self.successes, kwargs)

    def log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._note(self.failures, kwargs)

    async def async_log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._note(self.failures, kwargs)

    def calls(self) -> dict[str, dict[str, Any]]:
        """The logged successes by call id (LiteLLM may report one call to both hooks)."""
        return {event["call_id"]: event for event in self.successes}

    def settle(self, calls: int) -> dict[str, dict[str, Any]]:
        """The logged calls, once ``calls`` of them were and LiteLLM had time for more:
        it logs in the background."""
        deadline = time.monotonic() + 10
        while len(self.calls()) < calls and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)
        return self.calls()


@pytest.fixture(scope="module")
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=14) as running:
        yield running


@pytest.fixture
def cache(server: SamplingServer, tmp_path: Path) -> Iterator[MnimiCache]:
    server.reset()
    with MnimiCache(str(tmp_path / "llm_cache")) as installed:
        yield installed
    installed.close()


def call(server: SamplingServer, prompt: str, **kwargs: Any) -> Any:
    messages = [{"role": "user", "content": prompt}]
    return litellm.completion(
        model=MODEL, api_base=server.url, api_key=API_KEY, messages=messages, **kwargs
    )


async def acall(server: SamplingServer, prompt: str, **kwargs: Any) -> Any:
    messages = [{"role": "user", "content": prompt}]
    return await litellm.acompletion(
        model=MODEL, api_base=server.url, api_key=API_KEY, messages=messages, **kwargs
    )


# -- defect: a call logged twice, the second time as a free hit -----------------------


def test_a_streamed_miss_of_several_samples_is_logged_once_as_a_miss(
    server: SamplingServer, cache: MnimiCache
) -> None:
    events = Events("stream three")
    with listening(events):
        chunks = list(call(server, "stream three", n=3, stream=True, temperature=1.0))
        logged = events.settle(1)
    assert chunks
    assert len(logged) == 1, logged  # not also as LiteLLM's replay of a hit
    (event,) = logged.values()
    assert not event["cache_hit"]
    assert event["cost"] and event["cost"] > 0


def test_an_async_streamed_miss_of_several_samples_is_logged_once_as_a_miss(
    server: SamplingServer, cache: MnimiCache
) -> None:
    events = Events("astream three")

    async def run() -> None:
        stream = await acall(server, "astream three", n=3, stream=True, temperature=1.0)
        async for _ in stream:
            pass
        for _ in range(100):  # LiteLLM logs an async call on its caller's loop
            if events.successes:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)

    with listening(events):
        asyncio.run(run())
        logged = events.settle(1)
    assert len(logged) == 1, logged
    (event,) = logged.values()
    assert not event["cache_hit"]
    assert event["cost"] and event["cost"] > 0


def test_a_partly_stored_call_is_logged_once_with_the_cost_of_its_fresh_samples(
    server: SamplingServer, cache: MnimiCache
) -> None:
    events = Events("partly stored")
    with listening(events):
        first = call(server, "partly stored", n=1, temperature=1.0)
        second = call(server, "partly stored", n=3, temperature=1.0)
        logged = events.settle(2)
    assert [r.body.get("n") or 1 for r in server.chat_requests()] == [1, 2]
    assert second._hidden_params["mnimi"]["cache_hits"] == [True, False, False]
    assert second._hidden_params["cache_hit"] is False
    assert len(logged) == 2, logged  # one event per user call
    assert all(not event["cache_hit"] for event in logged.values())
    costs = sorted(event["cost"] for event in logged.values())
    assert costs == pytest.approx(
        sorted([first._hidden_params["response_cost"], second._hidden_params["response_cost"]])
    )
    assert second._hidden_params["response_cost"] > 0


@_HIT_EVENTS_REACH_CALLBACKS
def test_a_call_of_hits_only_is_still_logged_as_a_hit(
    server: SamplingServer, cache: MnimiCache
) -> None:
    events = Events("all hits")
    filling = Events("all hits")
    with listening(filling):  # LiteLLM logs in the background: the fill's event lands here
        call(server, "all hits", n=2, temperature=1.0)
        filling.settle(1)
    with listening(events):
        again = call(server, "all hits", n=2, temperature=1.0)
        streamed = list(call(server, "all hits", n=2, stream=True, temperature=1.0))
        logged = events.settle(2)
    assert streamed and again._hidden_params["cache_hit"] is True
    assert len(logged) == 2, logged
    assert all(event["cache_hit"] for event in logged.values())
    assert all(not event["cost"] for event in logged.values())


def test_a_router_miss_is_logged_with_its_deployments_model_info(
    server: SamplingServer, cache: MnimiCache
) -> None:
    # The cache re-sent the call without it: a logger keyed by deployment saw None.
    events = Events("which deployment")
    deployment = {"model": MODEL, "api_base": server.url, "api_key": API_KEY}
    router = litellm.Router(
        model_list=[
            {"model_name": "g", "litellm_params": deployment, "model_info": {"id": "dep-a"}}
        ],
        cache_responses=True,
    )
    with listening(events):
        router.completion(
            model="g", messages=[{"role": "user", "content": "which deployment"}], temperature=1.0
        )
        logged = events.settle(1)
    assert [event["deployment"] for event in logged.values()] == ["dep-a"]


# -- defect: a miss logged under an id the caller never sees --------------------------


@_HIT_EVENTS_REACH_CALLBACKS
def test_a_miss_is_logged_under_the_callers_call_id(
    server: SamplingServer, cache: MnimiCache
) -> None:
    events = Events("whose id")
    with listening(events):
        miss = call(server, "whose id", temperature=1.0, litellm_call_id="caller-1")
        hit = call(server, "whose id", temperature=1.0, litellm_call_id="caller-2")
        streamed = list(
            call(server, "whose id", temperature=0.5, stream=True, litellm_call_id="caller-3")
        )
        logged = events.settle(3)
    assert streamed
    assert miss._hidden_params["litellm_call_id"] == "caller-1"
    assert hit._hidden_params["litellm_call_id"] == "caller-2"
    assert set(logged) == {"caller-1", "caller-2", "caller-3"}
    assert not logged["caller-1"]["cache_hit"] and logged["caller-2"]["cache_hit"]
    assert not logged["caller-3"]["cache_hit"]  # a live stream: the provider's own


def test_a_miss_without_an_id_is_logged_under_the_id_its_answer_carries(
    server: SamplingServer, cache: MnimiCache
) -> None:
    events = Events("no id given")
    with listening(events):
        first = call(server, "no id given", n=1, temperature=1.0)
        partly = call(server, "no id given", n=2, temperature=1.0)  # a built answer
        logged = events.settle(2)
    assert set(logged) == {
        first._hidden_params["litellm_call_id"],
        partly._hidden_params["litellm_call_id"],
    }


async def test_a_refill_serving_several_calls_carries_the_id_of_the_call_that_drew_it(
    server: SamplingServer, cache: MnimiCache
) -> None:
    # Concurrent calls of one request share the refills of its sequence: each refill is
    # sent under the id of the call that drew it, which may be served to another call.
    # Still one event per call, and every event under the id of one of the calls.
    events = Events("drawn together")
    with listening(events):
        with independent():
            answers = await asyncio.gather(
                *(
                    acall(server, "drawn together", temperature=1.0, litellm_call_id=f"c{i}")
                    for i in range(4)
                )
            )
        for _ in range(200):
            if len(events.calls()) >= 4:
                break
            await asyncio.sleep(0.02)
    assert len({a.choices[0].message.content for a in answers}) == 4
    assert set(events.calls()) == {"c0", "c1", "c2", "c3"}
    assert {a._hidden_params["litellm_call_id"] for a in answers} == {"c0", "c1", "c2", "c3"}


# -- defect: a failure logged for each provider retry ---------------------------------

#: How LiteLLM is told an attempt will be sent again (see _compat.attempt_sent_again_on):
#: without it (LiteLLM before 1.110) every failed attempt is logged, as it always was.
_MARKS_RESENT = pytest.mark.skipif(
    importlib.util.find_spec("litellm._internal_context") is None
    or not hasattr(importlib.import_module("litellm._internal_context"), "resent_on"),
    reason="this LiteLLM cannot be told an attempt is sent again: each failure is logged",
)


@_MARKS_RESENT
@pytest.mark.parametrize("run", [call, acall], ids=["sync", "async"])
def test_a_call_that_succeeds_after_retries_logs_no_failure(
    server: SamplingServer, cache: MnimiCache, run: Any
) -> None:
    # As LiteLLM's own num_retries (measured without a cache: one success, no failure).
    prompt = f"retried {run.__name__}"
    events = Events(prompt)

    async def called() -> Any:
        answer = await run(server, prompt, temperature=1.0, num_retries=3, litellm_call_id="r")
        await asyncio.sleep(0.5)  # LiteLLM logs an async call on its caller's loop
        return answer

    server.fail_next(429, count=2, retry_after=0.05)
    with listening(events):
        answer = (
            asyncio.run(called())
            if run is acall
            else run(server, prompt, temperature=1.0, num_retries=3, litellm_call_id="r")
        )
        logged = events.settle(1)
    assert answer.choices[0].message.content
    assert len(server.chat_requests()) == 3
    assert events.failures == []
    assert set(logged) == {"r"}


@_MARKS_RESENT
def test_a_call_that_fails_after_its_retries_logs_one_failure(
    server: SamplingServer, cache: MnimiCache
) -> None:
    events = Events("failing")
    server.fail_next(500, count=5)
    with listening(events), pytest.raises(litellm.InternalServerError):
        call(server, "failing", temperature=1.0, num_retries=1, litellm_call_id="f")
    time.sleep(0.5)
    assert len(server.chat_requests()) == 2
    assert [event["call_id"] for event in events.failures] == ["f"]
