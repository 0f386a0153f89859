"""No credential leaves the adapters through what a provider sends back or what a URL
carries: response headers, a URL's password, user-name token or query credentials, and
credentials nested in the objects a request passes on (QA round 16).

Real LiteLLM and real ChatOpenAI against the local sampling server (127.0.0.1).
"""

from __future__ import annotations

import os

# Must precede any litellm import: otherwise litellm fetches its cost map over the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import base64
import json
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import litellm
import openai
import pytest
from langchain_core.caches import BaseCache
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.globals import set_llm_cache
from langchain_core.load import dumps, loads
from langchain_openai import ChatOpenAI

from mnimi_adapters import ProviderRequestError
from mnimi_adapters.core.request import sent_secrets
from mnimi_adapters.core.stores import open_store
from mnimi_adapters.langchain import MnimiChatModel, MnimiLLMCache, wrapped_identity
from mnimi_adapters.litellm import MnimiCache
from mnimi_adapters.providers import LiteLLMModel, keyed_endpoint
from mnimi_adapters.testing import SamplingServer

pytestmark = pytest.mark.integration

HI = [{"role": "user", "content": "hi"}]


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


# -- what a provider may echo back: secrets of URLs and nested objects --------------------

URL_TOKEN = "url-token-4a7c1e9b"


def test_a_token_given_as_the_urls_user_name_is_scrubbed_from_a_litellm_error(
    server: SamplingServer, tmp_path: Path
) -> None:
    server.reset()
    server.fail_next(401, echo=True)  # the refusal repeats the Basic credentials it got
    base = server.url.replace("http://", f"http://{URL_TOKEN}@")
    with MnimiCache(tmp_path / "cache"), pytest.raises(ProviderRequestError) as caught:
        litellm.completion(model="openai/mock-model", api_base=base, api_key="sk-x", messages=HI)
    text = str(caught.value)
    basic = base64.b64encode(f"{URL_TOKEN}:".encode()).decode()
    assert "Basic ***" in text and basic not in text and URL_TOKEN not in text


@pytest.mark.parametrize(
    ("params", "secret"),
    [
        ({"extra_body": {"session_token": "body-secret-1"}}, "body-secret-1"),
        ({"extra_query": {"key": "query-secret-2"}}, "query-secret-2"),
        ({"extra_query": {"code": "func-key-3"}}, "func-key-3"),
        ({"api_base": "http://h/v1?key=url-key-4&api-version=1"}, "url-key-4"),
        ({"api_base": "http://h/v1?sig=a%2Bb%3D%3D"}, "a+b=="),
        (
            {"model_kwargs": {"extra_headers": {"X-Api-Token": "header-secret-5"}}},
            "header-secret-5",
        ),
        ({"default_query": {"sig": "sas-sig-6"}}, "sas-sig-6"),
    ],
)
def test_credentials_inside_objects_and_urls_are_scrubbed(
    params: dict[str, Any], secret: str
) -> None:
    assert secret in sent_secrets(params)


def test_ordinary_values_are_not_taken_for_secrets() -> None:
    params = {
        "api_base": "http://127.0.0.1:8000/v1?api-version=2024",
        "extra_body": {"top_k": 5, "mode": "fast"},
        "extra_headers": {"X-Flag": "true"},
        "messages": [{"role": "user", "content": "see http://host/?q=1"}],
    }
    assert sent_secrets(params) == []


# -- a string-form chat model's endpoint and nested keywords ------------------------------

URL_PASSWORD = "url-pw-6d2f9a1c"
BODY_TOKEN = "body-token-3e8b5c7a"


class _Tracer(BaseCallbackHandler):
    """What a tracer (LangSmith's) receives when a chat model starts."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self.seen.append(json.dumps([serialized, kwargs], default=str))


@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")
def test_an_endpoint_password_and_a_nested_token_are_never_shown_traced_or_dumped(
    server: SamplingServer, tmp_path: Path
) -> None:
    server.reset()
    base = server.url.replace("http://", f"http://user:{URL_PASSWORD}@")
    chat = MnimiChatModel(
        model="openai/mock-model",
        api_base=base,
        api_key="sk-x",
        model_kwargs={"extra_body": {"session_token": BODY_TOKEN, "top_k": 3}},
        cache_dir=str(tmp_path / "cache"),
    )
    tracer = _Tracer()
    chat.invoke("hi", config={"callbacks": [tracer]})
    # Sent all the same: the body field, and the password as Basic credentials.
    assert server.chat_requests()[-1].body["session_token"] == BODY_TOKEN
    shown = {
        "repr": repr(chat),
        "model_dump_json": chat.model_dump_json(),
        "dumps": dumps(chat),
        "invocation params": json.dumps(chat._get_invocation_params(), default=str),
        "trace": "\n".join(tracer.seen),
    }
    for where, text in shown.items():
        assert URL_PASSWORD not in text and BODY_TOKEN not in text, where
    assert '"top_k": 3' in shown["dumps"] and server.url in shown["model_dump_json"]
    loaded = loads(
        shown["dumps"],
        allowed_objects=[MnimiChatModel],
        valid_namespaces=["mnimi_adapters"],
        secrets_map={"MNIMI_API_BASE": base, "MNIMI_API_KEY": "k"},
    )
    assert loaded.api_base == base and loaded.model_kwargs == {"extra_body": {"top_k": 3}}


# -- a wrapped model's errors ---------------------------------------------------------------

WRAPPED_PASSWORD = "wrapped-pw-9c3e5a1f"
QUERY_KEY = "query-key-2b6d8f0a"
KWARGS_HEADER = "kwargs-header-7e1a3c5b"


def test_a_wrapped_models_error_loses_its_url_and_nested_credentials(
    server: SamplingServer, tmp_path: Path
) -> None:
    server.reset()
    server.fail_next(401, echo=True)  # the refusal repeats every header it got
    chat = ChatOpenAI(
        model="mock-model",
        base_url=server.url.replace("http://", f"http://user:{WRAPPED_PASSWORD}@"),
        api_key="sk-wrapped-1d3f5a7c",
        default_query={"key": QUERY_KEY},
        model_kwargs={"extra_headers": {"X-Api-Token": KWARGS_HEADER}},
        max_retries=0,
    )
    wrapper = MnimiChatModel(model=chat, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(openai.AuthenticationError) as caught:
        wrapper.invoke("hi")
    error = caught.value
    basic = base64.b64encode(f"user:{WRAPPED_PASSWORD}".encode()).decode()
    shown = "".join(traceback.format_exception(error)) + repr(vars(error))
    shown += str(error.request.url) + repr(dict(error.request.headers))
    for secret in (WRAPPED_PASSWORD, basic, QUERY_KEY, KWARGS_HEADER, "sk-wrapped-1d3f5a7c"):
        assert secret not in shown, secret
    assert "Basic ***" in str(error) and "key=***" in str(error.request.url)


# -- query credentials in a base URL --------------------------------------------------------

FUNCTION_KEY = "function-key-5f1b3d7e"


def test_code_and_sig_in_a_base_url_are_never_keyed() -> None:
    plain = "https://fn.example/api/v1?deployment=d&api-version=1"
    assert keyed_endpoint(plain) == plain  # a URL without them keys as before
    assert keyed_endpoint(f"{plain}&code=c&sig=s") == plain
    base = f"https://fn.example/api/v1?code={FUNCTION_KEY}&sig={FUNCTION_KEY}"
    litellm_model = LiteLLMModel("openai/mock-model", api_base=base)
    chat = ChatOpenAI(model="mock-model", base_url=base, api_key="k")
    for identity in (litellm_model.identity(), wrapped_identity(chat)):
        assert FUNCTION_KEY not in json.dumps(identity) and "fn.example" in json.dumps(identity)


def test_a_wrapped_models_object_of_credentials_alone_keys_as_if_not_given() -> None:
    headers = ChatOpenAI(model="m", api_key="k", default_headers={"X-Session-Token": "t1"})
    body = ChatOpenAI(model="m", api_key="k", extra_body={"session_token": "t1"})
    assert wrapped_identity(body) == wrapped_identity(headers)
    # An object that keeps a sampling field is keyed with it, and an empty one as before.
    kept = wrapped_identity(ChatOpenAI(model="m", api_key="k", extra_body={"top_k": 5, "key": "t"}))
    assert kept["params"]["extra_body"] == {"top_k": 5}
    for unchanged in ({}, {"timeout": 5}):  # keyed as before: no credential dropped
        identity = wrapped_identity(ChatOpenAI(model="m", api_key="k", extra_body=unchanged))
        assert identity["params"]["extra_body"] == {}


def test_a_query_credential_of_the_provider_keywords_is_never_shown(tmp_path: Path) -> None:
    # extra_query's code and sig are credentials (never keyed or stored), but the model's
    # repr, dumps and invocation params showed them: only names like api-key were hidden.
    chat = MnimiChatModel(
        model="openai/mock-model",
        model_kwargs={"extra_query": {"code": "func-code-51aa", "sig": "sas-sig-77bb", "v": 2}},
        cache_dir=str(tmp_path / "cache"),
    )
    for text in (
        repr(chat),
        chat.model_dump_json(),
        dumps(chat),
        json.dumps(chat._get_invocation_params(), default=str),
    ):
        assert "func-code-51aa" not in text and "sas-sig-77bb" not in text
    assert chat.model_kwargs["extra_query"]["code"] == "func-code-51aa"  # still sent
