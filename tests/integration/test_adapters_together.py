"""MnimiCache and MnimiChatModel over one cache: one scope, one cursor per stored sequence.

Real LiteLLM and langchain-openai against the local sampling server: a request made through
both adapters in one ``independent()`` block gets a new sample each time (law 2), as it
would through one adapter, and a live stream of it draws alone across both.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from langchain_core.callbacks import get_usage_metadata_callback
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, convert_to_openai_messages
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_openai import ChatOpenAI

from mnimi_adapters import independent
from mnimi_adapters.langchain import MnimiChatModel
from mnimi_adapters.litellm import MnimiCache
from mnimi_adapters.testing import SamplingServer

pytestmark = pytest.mark.integration

PROMPT = "Tell me about cats"


@pytest.fixture
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=5) as running:
        yield running


def completion(server: SamplingServer, **extra: object) -> str:
    messages = [{"role": "user", "content": PROMPT}]
    response = litellm.completion(
        model="openai/mock-model", api_base=server.url, api_key="sk-x", messages=messages, **extra
    )
    return str(response.choices[0].message.content)


def test_a_request_through_both_adapters_in_one_scope_gets_a_new_sample_each_time(
    server: SamplingServer, tmp_path: Path
) -> None:
    # Each adapter kept its own cursor over the shared sequence: the chat model's call was
    # handed the sample the completion before it had been handed.
    def run() -> list[str]:
        with MnimiCache(str(tmp_path)) as cache:
            string_form = MnimiChatModel(
                model="openai/mock-model",
                api_base=server.url,
                api_key="sk-x",
                cache_dir=str(tmp_path),
            )
            with independent():
                answers = [
                    completion(server),
                    str(string_form.invoke(PROMPT).content),
                    completion(server),
                    str(string_form.invoke(PROMPT).content),
                ]
        cache.close()
        return answers

    first = run()
    assert len(set(first)) == 4
    assert len(server.chat_requests()) == 4
    assert run() == first
    assert len(server.chat_requests()) == 4


@pytest.mark.parametrize("seed", range(3))
def test_a_live_stream_draws_alone_across_both_adapters(tmp_path: Path, seed: int) -> None:
    # While MnimiCache streamed a request live, the chat model drew it too: its sample
    # landed where the stream's was to land, and an n=3 call was handed the stream's.
    messages = [{"role": "user", "content": PROMPT}]
    with SamplingServer(seed=seed, latency=0.05) as server, MnimiCache(str(tmp_path)):
        chat = MnimiChatModel(
            model="openai/mock-model", api_base=server.url, api_key="sk-x", cache_dir=str(tmp_path)
        )
        sent = {"model": "openai/mock-model", "api_base": server.url, "api_key": "sk-x"}
        answers: dict[str, str] = {}

        def streamed() -> None:
            chunks = litellm.completion(**sent, messages=messages, stream=True)
            answers["stream"] = "".join(
                c.choices[0].delta.content or "" for c in chunks if c.choices
            )

        def invoked() -> None:
            answers["chat"] = str(chat.invoke(PROMPT).content)

        async def several() -> list[str]:
            response = await litellm.acompletion(**sent, messages=messages, n=3)
            return [str(choice.message.content) for choice in response.choices]

        with independent():
            threads = [
                threading.Thread(target=contextvars.copy_context().run, args=(work,))
                for work in (streamed, invoked)
            ]
            for thread in threads:
                thread.start()
            three = asyncio.run(several())
            for thread in threads:
                thread.join(30)
    everything = [answers["stream"], answers["chat"], *three]
    assert len(set(everything)) == 5, everything


class LiteLLMChat(BaseChatModel):
    """A user's LangChain chat model over ``litellm.completion`` (as ``ChatLiteLLM`` is)."""

    base_url: str

    @property
    def _llm_type(self) -> str:
        return "users-litellm-chat"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        response: Any = litellm.completion(
            model="openai/mock-model",
            messages=convert_to_openai_messages(messages),
            api_base=self.base_url,
            api_key="sk-x",
        )
        answer = AIMessage(response.choices[0].message.content)
        return ChatResult(generations=[ChatGeneration(message=answer)])


@pytest.mark.parametrize("same_cache", [False, True], ids=["two-caches", "one-cache"])
def test_a_wrapped_litellm_model_under_an_installed_mnimi_cache_draws_fresh(
    server: SamplingServer, tmp_path: Path, same_cache: bool
) -> None:
    """A wrapped model that calls LiteLLM while a MnimiCache is installed: the wrapper's
    misses were answered by the installed cache from a cursor of its own, at position 0,
    so a retry in ``independent()`` got the sample the call before it had, and the
    wrapper stored it again at the next position."""
    chat = MnimiChatModel(model=LiteLLMChat(base_url=server.url), cache_dir=str(tmp_path))
    installed = tmp_path if same_cache else tmp_path / "litellm"
    with MnimiCache(str(installed)) as cache:
        first = str(chat.invoke(PROMPT).content)
        with independent():
            tries = [str(chat.invoke(PROMPT).content) for _ in range(3)]
    cache.close()
    assert tries[0] == first and len(set(tries)) == 3
    assert len(server.chat_requests()) == 3


@pytest.mark.parametrize("is_async", [False, True], ids=["invoke", "ainvoke"])
def test_callbacks_from_context_count_a_wrapped_miss_once(
    server: SamplingServer, tmp_path: Path, is_async: bool
) -> None:
    """``get_usage_metadata_callback()`` (and ``get_openai_callback()``) add their handler
    to every run started in their block: the wrapped model's own run counted each paid
    call a second time."""
    wrapped = MnimiChatModel(
        model=ChatOpenAI(model="mock-model", base_url=server.url, api_key="sk-x"),
        cache_dir=str(tmp_path),
    )
    with get_usage_metadata_callback() as counted:
        for _ in range(2):  # a miss, then a hit of it: each call counted once
            message = asyncio.run(wrapped.ainvoke(PROMPT)) if is_async else wrapped.invoke(PROMPT)
    assert len(server.chat_requests()) == 1 and message.usage_metadata is not None
    tokens = [usage["total_tokens"] for usage in counted.usage_metadata.values()]
    assert sum(tokens) == 2 * message.usage_metadata["total_tokens"]
