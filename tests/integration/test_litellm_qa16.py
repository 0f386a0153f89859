"""MnimiCache with LiteLLM's helpers and less common call shapes.

Real LiteLLM against local servers: the ``*_with_retries`` helpers, ``fallbacks``, text
completions of a prompt list, ``atext_completion`` in ``asyncio.gather``, the Anthropic
Messages API and credentials in ``extra_query``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

# LiteLLM downloads its price map at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm

from mnimi_adapters import MnimiError, ProviderError, ReplicationCacheMiss, independent
from mnimi_adapters.core.stores import open_store
from mnimi_adapters.litellm import MnimiCache
from mnimi_adapters.testing import SamplingServer

pytestmark = pytest.mark.integration

API_KEY = "sk-test"
MODEL = "openai/mock-model"


@pytest.fixture
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=16) as running:
        yield running


class CompletionsServer:
    """A local ``/v1/completions`` endpoint (the sampling server serves chat only).

    It answers ``n`` choices per prompt, each naming its prompt and a new number, plus
    ``extra`` choices more than a correct endpoint would.
    """

    def __init__(self, extra: int = 0) -> None:
        self.extra = extra
        self.bodies: list[dict[str, Any]] = []
        self._numbers = itertools.count(1)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                """Quiet."""

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.bodies.append(body)
                answer = json.dumps(owner.answer(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}/v1"

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        count = (body.get("n") or 1) * len(prompts) + self.extra
        choices = [
            {
                "index": i,
                "text": f"{prompts[i % len(prompts)]}: {next(self._numbers)}",
                "finish_reason": "stop",
                "logprobs": None,
            }
            for i in range(count)
        ]
        usage = {"prompt_tokens": 2, "completion_tokens": count, "total_tokens": 2 + count}
        return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": body["model"],
                "choices": choices, "usage": usage}  # fmt: skip

    def __enter__(self) -> CompletionsServer:
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()


def stored_keys(path: Path) -> list[str]:
    store = open_store(path)
    try:
        return list(store.keys())
    finally:
        store.close()


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


#: A model LiteLLM sends text completions of to ``/v1/completions`` (not a chat model).
INSTRUCT = "openai/mock-instruct"


def test_a_prompt_list_to_a_completions_endpoint_is_sent_as_it_is_and_never_stored(
    tmp_path: Path,
) -> None:
    with CompletionsServer() as server:
        options = {"model": INSTRUCT, "prompt": ["A1", "B1"], "api_base": server.url}
        with MnimiCache(str(tmp_path)) as cache:
            first = litellm.text_completion(**options, api_key=API_KEY)
            again = litellm.text_completion(**options, api_key=API_KEY)
        cache.close()
        assert [c.text.split(":")[0] for c in first.choices] == ["A1", "B1"]
        assert [c.text for c in again.choices] != [c.text for c in first.choices]
        assert len(server.bodies) == 2
        assert stored_keys(tmp_path) == []
        with (
            MnimiCache(str(tmp_path), replication=True) as replica,
            pytest.raises(MnimiError, match="once per prompt"),
        ):
            litellm.text_completion(**options)
        replica.close()
        assert len(server.bodies) == 2


def test_more_choices_than_asked_for_are_refused_and_not_stored(tmp_path: Path) -> None:
    with (
        CompletionsServer(extra=1) as server,
        MnimiCache(str(tmp_path)) as cache,
        pytest.raises(ProviderError, match="2 choices to a request for 1"),
    ):
        litellm.text_completion(model=INSTRUCT, prompt="A1", api_base=server.url, api_key=API_KEY)
    cache.close()
    assert stored_keys(tmp_path) == []


#: A model whose text completions LiteLLM sends as chat completions (to the sampling server).
TEXT_MODEL = "openai/gpt-4o-mini"


def test_gathered_atext_completions_get_the_same_samples_on_a_rerun(
    server: SamplingServer, tmp_path: Path
) -> None:
    options = {"model": TEXT_MODEL, "prompt": "Pick", "api_base": server.url, "api_key": API_KEY}

    async def run() -> list[str]:
        with independent():
            answers = await asyncio.gather(
                *(litellm.atext_completion(**options) for _ in range(24))
            )
        return [answer.choices[0].text for answer in answers]

    with MnimiCache(str(tmp_path)) as cache:
        first = asyncio.run(run())
        again = asyncio.run(run())
    cache.close()
    assert len(set(first)) == 24
    assert again == first


@pytest.mark.parametrize("query", [{"code": "SECRET-CODE-16"}, {"sig": "SECRET-SIG-16"}])
def test_query_string_credentials_are_never_stored(
    server: SamplingServer, tmp_path: Path, query: dict[str, str]
) -> None:
    messages = [{"role": "user", "content": "Pick a number."}]
    with MnimiCache(str(tmp_path)) as cache:
        litellm.completion(
            model=MODEL, messages=messages, api_base=server.url, api_key=API_KEY, extra_query=query
        )
    cache.close()
    secret = next(iter(query.values())).encode()
    stored = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert stored
    assert not [path for path in stored if secret in path.read_bytes()]


def test_a_router_groups_text_completion_is_keyed_apart_from_its_chat_call(
    tmp_path: Path,
) -> None:
    # Keyed by the group alone, a chat call of the same words replayed the raw text a
    # completions endpoint had answered (outside a Router the provider keys them apart).
    prompt = "Pick a number between 1 and 1000."
    with CompletionsServer() as server:
        deployment = {"model": INSTRUCT, "api_base": server.url, "api_key": API_KEY}
        router = litellm.Router(
            model_list=[{"model_name": "g", "litellm_params": deployment}],
            cache_responses=True,
            num_retries=0,
        )
        with MnimiCache(str(tmp_path)) as cache:
            text = asyncio.run(router.atext_completion(model="g", prompt=prompt))
        cache.close()
        assert "api" not in server.bodies[0]  # keyed, never sent
        with MnimiCache(str(tmp_path), replication=True) as replica:
            again = asyncio.run(router.atext_completion(model="g", prompt=prompt))
            with pytest.raises(ReplicationCacheMiss):
                router.completion(model="g", messages=[{"role": "user", "content": prompt}])
        replica.close()
        assert again.choices[0].text == text.choices[0].text
        assert len(server.bodies) == 1
