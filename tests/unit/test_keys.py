"""Keys: canonical, order-insensitive, and never holding a credential."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnimi_adapters.core import Request, request_key
from mnimi_adapters.core.request import is_credential, keyed_params, request_record
from mnimi_adapters.providers import LiteLLMRequest

IDENTITY = {"model": "gpt-4o", "params": {"temperature": 1.0}}
MESSAGES = ({"role": "user", "content": "Pick a number"},)


def key(params: dict[str, object], identity: dict[str, object] = IDENTITY) -> str:
    return request_key(identity, Request(MESSAGES, params))


def test_canonical_forms_share_a_key() -> None:
    assert key({"max_tokens": 5, "top_p": 1}) == key({"top_p": 1.0, "max_tokens": 5})
    assert key({"seed": None}) == key({})
    # Per-call temperature equal to the model's default is the same request.
    assert key({"temperature": 1}) == key({})


def test_transport_parameters_are_not_keyed() -> None:
    base = key({})
    for name, value in [
        ("n", 5),
        ("timeout", 3),
        ("num_retries", 2),
        ("metadata", {"run": 1}),
        ("stream", True),
        ("api_key", "sk-secret"),
    ]:
        assert key({name: value}) == base, name


def test_sampling_parameters_are_keyed() -> None:
    base = key({})
    for name, value in [
        ("max_tokens", 5),
        ("stop", ["\n"]),
        ("seed", 1),
        ("tools", [{"type": "function", "function": {"name": "f"}}]),
        ("response_format", {"type": "json_object"}),
        # A mocked answer must never be replayed as the real model's sample.
        ("mock_response", "MOCKED"),
    ]:
        assert key({name: value}) != base, name


def test_credentials_of_any_provider_never_reach_a_key_or_record(tmp_path: Path) -> None:
    secrets = {
        "aws_secret_access_key": "AWS-SECRET",
        "aws_session_token": "AWS-TOKEN",
        "vertex_credentials": "VERTEX-CREDS",
        "azure_ad_token": "AZURE-TOKEN",
        "api_key": "sk-secret",
    }
    assert all(is_credential(name) for name in secrets)
    assert not any(is_credential(name) for name in ("max_tokens", "top_k", "bos_token"))
    identity = {"model": "m", "params": dict(secrets)}
    record = request_record(identity, Request(MESSAGES, dict(secrets)))
    text = repr(record)
    assert not any(value in text for value in secrets.values())
    assert key(dict(secrets), identity) == key({}, {"model": "m", "params": {}})


def test_a_credential_in_an_object_of_provider_fields_is_not_keyed() -> None:
    # extra_body={"session_token": ...} is sent to the provider, never keyed or stored;
    # deeper names (a tool's argument, a schema's property) are what the model sees.
    body = {"top_k": 5, "session_token": "secret", "auth": {"key": "secret"}}
    assert keyed_params({"extra_body": body}) == {"extra_body": {"top_k": 5}}
    assert keyed_params({"extra_body": {"session_token": "secret"}}) == {}
    schema = {"type": "object", "properties": {"password": {"type": "string"}}}
    assert keyed_params({"response_format": {"type": "json_schema", "schema": schema}}) == {
        "response_format": {"type": "json_schema", "schema": schema}
    }
    through_litellm = LiteLLMRequest(({"role": "user", "content": "hi"},), {"extra_body": body})
    assert through_litellm.sampling_params() == {"extra_body": {"top_k": 5}}


def test_plumbing_inside_an_object_of_provider_fields_is_not_keyed() -> None:
    # LiteLLM takes a tracer's keys in metadata, and a client (agno) may pass its metadata
    # on in extra_body: there it was keyed, stored, and shown by a replication miss, and a
    # rotated key missed every request.
    def body_key(secret: str) -> str:
        metadata = {"langfuse_secret_key": secret, "trace_name": "run"}
        return key({"extra_body": {"top_k": 5, "metadata": metadata, "user": "u1"}})

    assert body_key("sk-lf-1") == body_key("sk-lf-2") == key({"extra_body": {"top_k": 5}})
    assert key({"extra_body": {"metadata": {"langfuse_secret_key": "sk"}}}) == key({})


def test_token_ids_of_logit_bias_are_keyed_as_given() -> None:
    # Its keys are numbers (token ids): no name to tell a credential by, and no TypeError.
    assert key({"logit_bias": {50256: -100}}) == key({"logit_bias": {"50256": -100}})
    assert key({"logit_bias": {50256: -100}}) != key({})


@pytest.mark.parametrize("number", [float("nan"), float("inf"), -float("inf")])
def test_a_number_json_cannot_hold_is_refused_before_anything_is_sent(number: float) -> None:
    # NaN went into the key, the stored record and the JSON Lines export as a bare token
    # no JSON reader takes (and into a request body the server could not parse).
    with pytest.raises(ValueError, match="JSON numbers are finite"):
        key({"top_p": number})
    with pytest.raises(ValueError, match="JSON numbers are finite"):
        key({"extra_body": {"min_p": number}})


def test_a_base_url_from_the_environment_or_litellm_is_a_models_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import litellm

    from mnimi_adapters import LiteLLMModel, OpenAICompatible

    assert "endpoint" not in LiteLLMModel("openai/llama3").identity()
    monkeypatch.setenv("OPENAI_API_BASE", "http://127.0.0.1:8000/v1/")
    assert LiteLLMModel("openai/llama3").identity()["endpoint"] == "http://127.0.0.1:8000/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://user:pw@127.0.0.1:9000/v1")
    assert LiteLLMModel("gpt-4o").identity()["endpoint"] == "http://127.0.0.1:9000/v1"
    monkeypatch.setattr(litellm, "api_base", "http://127.0.0.1:7000")
    assert LiteLLMModel("openai/llama3").identity()["endpoint"] == "http://127.0.0.1:7000"
    # A given one, or an alias, decides as before.
    given = LiteLLMModel("openai/llama3", api_base="http://h/v1")
    assert given.identity()["endpoint"] == "http://h/v1"
    assert "endpoint" not in LiteLLMModel("openai/llama3", alias="llama3").identity()
    assert OpenAICompatible("llama3", 1.0, "http://h/v1").identity()["endpoint"] == "http://h/v1"
