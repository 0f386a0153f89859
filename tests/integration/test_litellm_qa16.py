"""MnimiCache with LiteLLM's helpers and less common call shapes.

Real LiteLLM against local servers: the ``*_with_retries`` helpers, ``fallbacks``, text
completions of a prompt list, ``atext_completion`` in ``asyncio.gather``, the Anthropic
Messages API and credentials in ``extra_query``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# LiteLLM downloads its price map at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm

from mnimi_adapters.litellm import MnimiCache
from mnimi_adapters.testing import SamplingServer

pytestmark = pytest.mark.integration

API_KEY = "sk-test"
MODEL = "openai/mock-model"


@pytest.fixture
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=16) as running:
        yield running


def sent(server: SamplingServer, endpoint: str) -> int:
    return sum(1 for r in server.requests if r.path.endswith(endpoint))


def test_responses_with_retries_is_answered_as_responses_is(
    server: SamplingServer, tmp_path: Path
) -> None:
    options = {"model": MODEL, "input": "Pick a number.", "api_base": server.url}
    with MnimiCache(str(tmp_path)) as cache:
        plain = litellm.responses(**options, api_key=API_KEY).output_text
        retried = litellm.responses_with_retries(**options, api_key=API_KEY).output_text
        aretried = asyncio.run(litellm.aresponses_with_retries(**options, api_key=API_KEY))
    cache.close()
    assert retried == aretried.output_text == plain
    assert sent(server, "/responses") == 1
    server.reset()
    with MnimiCache(str(tmp_path), replication=True) as replica:
        assert litellm.responses_with_retries(**options).output_text == plain
    replica.close()
    assert server.requests == []


def test_completion_fallbacks_are_tried_and_keyed_as_the_fallback_models_calls(
    tmp_path: Path,
) -> None:
    messages = [{"role": "user", "content": "Pick a number."}]
    with SamplingServer(seed=1) as primary, SamplingServer(seed=2) as backup:
        backup_call = {"model": "openai/backup", "api_base": backup.url, "messages": messages}
        options = {
            "model": MODEL,
            "api_base": primary.url,
            "messages": messages,
            "num_retries": 0,
            "fallbacks": [{"model": "openai/backup", "api_base": backup.url}],
        }
        primary.fail_next(500, 10)
        with MnimiCache(str(tmp_path)) as cache:
            answer = litellm.completion(**options, api_key=API_KEY).choices[0].message.content
            again = asyncio.run(litellm.acompletion(**options, api_key=API_KEY))
        cache.close()
        assert again.choices[0].message.content == answer
        assert sent(backup, "/chat/completions") == 1
        primary.reset()
        with MnimiCache(str(tmp_path), replication=True) as replica:
            replayed = litellm.completion(**options)
            direct = litellm.completion(**backup_call)
        replica.close()
        assert replayed.choices[0].message.content == answer
        assert direct.choices[0].message.content == answer
        assert primary.requests == []
        assert sent(backup, "/chat/completions") == 1
