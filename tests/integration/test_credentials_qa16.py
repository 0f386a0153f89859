"""No credential leaves the adapters through what a provider sends back or what a URL
carries: response headers, a URL's password, user-name token or query credentials, and
credentials nested in the objects a request passes on (QA round 16).

Real LiteLLM and real ChatOpenAI against the local sampling server (127.0.0.1).
"""

from __future__ import annotations

import os

# Must precede any litellm import: otherwise litellm fetches its cost map over the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.caches import BaseCache
from langchain_core.globals import set_llm_cache
from langchain_openai import ChatOpenAI

from mnimi_adapters.core.stores import open_store
from mnimi_adapters.langchain import MnimiChatModel, MnimiLLMCache
from mnimi_adapters.testing import SamplingServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=16) as running:
        yield running


def stored_text(location: Path) -> str:
    """The record and samples of the one request stored at ``location``, as JSON text."""
    with open_store(str(location), create=False, read_only=True) as store:
        (key,) = store.keys()
        samples = [store.get(key, index) for index in range(store.length(key))]
        return json.dumps([store.info(key), [s and s.message for s in samples]])


# -- response headers ---------------------------------------------------------------------


def test_response_headers_of_a_wrapped_model_are_neither_stored_nor_replayed(
    server: SamplingServer, tmp_path: Path
) -> None:
    chat = ChatOpenAI(
        model="mock-model", base_url=server.url, api_key="sk-x", include_response_headers=True
    )
    wrapper = MnimiChatModel(model=chat, cache_dir=str(tmp_path / "cache"))
    missed, hit = wrapper.invoke("hi"), wrapper.invoke("hi")
    assert hit.response_metadata["cache_hit"] and hit.content == missed.content
    assert "headers" not in missed.response_metadata and "headers" not in hit.response_metadata
    text = stored_text(tmp_path / "cache")
    assert "content-type" not in text.lower() and '"headers"' not in text


def test_response_headers_are_not_stored_by_the_llm_cache(
    server: SamplingServer, tmp_path: Path
) -> None:
    chat = ChatOpenAI(
        model="mock-model", base_url=server.url, api_key="sk-x", include_response_headers=True
    )
    cache: BaseCache = MnimiLLMCache(tmp_path / "llm")
    set_llm_cache(cache)
    try:
        missed, hit = chat.invoke("hi"), chat.invoke("hi")
    finally:
        set_llm_cache(None)
    assert hit.content == missed.content and "headers" not in hit.response_metadata
    assert "content-type" not in stored_text(tmp_path / "llm").lower()
