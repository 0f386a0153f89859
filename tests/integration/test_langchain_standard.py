"""LangChain's standard chat-model test suites, run on MnimiChatModel.

The integration suite talks real HTTP to the local sampling server (127.0.0.1 only).
Every test gets its own cache directory: within a test, identical requests replay their
sample (the repeatable default, which several tests rely on, e.g. ``invoke`` then
``stream`` of one tool-calling query), while no test sees another test's samples.
"""

from __future__ import annotations

import os

# Must precede any litellm import: otherwise litellm fetches its cost map over the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from pydantic import SecretStr

from mnimi_adapters.langchain import MnimiChatModel
from mnimi_adapters.testing import SamplingServer


@pytest.fixture(scope="module")
def sampling_server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=5) as server:
        yield server


class TestMnimiChatModelUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return MnimiChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # No request is sent in the unit suite and the layer is built on the first call,
        # so this directory is never created.
        return {"model": "openai/mock-model", "cache_dir": "unused-llm-cache"}

    @property
    def supports_json_mode(self) -> bool:
        return True

    # Skipped by the suite itself ("init_from_env_params not specified"), on purpose:
    # MnimiChatModel reads nothing from the environment at construction. LiteLLM reads the
    # provider's key variable (FIREWORKS_API_KEY, ...) when the first request is sent
    # (docs/laws.md, "Storage and credentials"), so there is no environment-initialised
    # attribute to check.
    #
    @pytest.mark.xfail(
        reason="langchain-core 1.x load(allowed_objects='all') admits only the classes in its "
        "own mapping (langchain_core.load.mapping), so no third-party chat model can pass "
        "the round trip; dumpd() matches the snapshot in tests/integration/__snapshots__/ and "
        "load(..., allowed_objects=[MnimiChatModel]) works (tests/test_langchain.py)",
        strict=True,
    )
    def test_serdes(self, model: BaseChatModel, snapshot: Any) -> None:
        super().test_serdes(model, snapshot)


class TestMnimiChatModelIntegration(ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _per_test_cache(self, sampling_server: SamplingServer, tmp_path: Path) -> None:
        self._server_url = sampling_server.url
        self._cache_dir = str(tmp_path / "llm_cache")

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return MnimiChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "model": "openai/mock-model",
            "api_base": self._server_url,
            "api_key": "sk-test",
            "cache_dir": self._cache_dir,
        }

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        return "openai/mock-model-b"

    # Skipped by the suite itself ("VCR not set up"), on purpose: test_stream_time
    # benchmarks replaying recorded HTTP cassettes, while this suite talks to a live local
    # server, and a cache hit sends no HTTP at all, so a cassette would measure nothing of
    # MnimiChatModel. Multimodal tests (image, audio, PDF, Anthropic-style inputs) skip
    # because the local sampling server does not interpret such inputs.


def wrapped_openai(**params: Any) -> ChatOpenAI:
    """The ChatOpenAI a wrapper test wraps, with the suites' standard settings: they are the
    wrapped model's to hold (MnimiChatModel refuses them beside a model instance)."""
    return ChatOpenAI(
        model="mock-model",
        api_key=SecretStr("sk-test"),
        temperature=0,
        max_tokens=100,  # type: ignore[call-arg]
        timeout=60,
        max_retries=2,
        stream_usage=True,
        **params,
    )


class TestWrappedChatOpenAIUnit(TestMnimiChatModelUnit):
    """The suites again on ``MnimiChatModel(model=ChatOpenAI(...))``."""

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        return {}

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": wrapped_openai(), "cache_dir": "unused-llm-cache"}


class TestWrappedChatOpenAIIntegration(TestMnimiChatModelIntegration):
    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        return {}

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": wrapped_openai(base_url=self._server_url), "cache_dir": self._cache_dir}

    @property
    def model_override_value(self) -> str | None:
        return None  # a wrapped model is one model: a per-call model= is refused
