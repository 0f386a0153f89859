"""The upstream symbols mnimi_adapters relies on still exist, each in one named test."""

from __future__ import annotations

import importlib
import inspect

import pytest

from mnimi_adapters._compat import (
    _CALLBACK_LISTS,
    LITELLM_DROPPED,
    LITELLM_KEYED,
    LITELLM_OPTIONS,
    PRIVATE_SYMBOLS,
    PRIVATE_SYMBOLS_SINCE,
    _module_functions,
    client_class_methods,
    hit_needs_litellm,
    installed_litellm_params,
    keep_entry_point_signatures,
    request_entry_points,
    retry_helpers,
    routed_entry_points,
    skip_cache_writes_not_to_store,
)
from mnimi_adapters.core.request import is_credential
from mnimi_adapters.providers import litellm_param_role


def _found(module: str, name: str) -> bool:
    try:
        found: object = importlib.import_module(module)
    except ImportError:
        return False
    for part in name.split("."):  # a class's attribute is named after the class
        if not hasattr(found, part):
            return False
        found = getattr(found, part)
    return True


@pytest.mark.parametrize(("module", "name"), PRIVATE_SYMBOLS, ids=lambda v: str(v))
def test_private_symbol_still_exists(module: str, name: str) -> None:
    assert _found(module, name), f"{module}.{name} is gone"


@pytest.mark.parametrize(("module", "name", "since"), PRIVATE_SYMBOLS_SINCE, ids=lambda v: str(v))
def test_a_newer_litellms_private_symbol_exists_from_its_version_on(
    module: str, name: str, since: str
) -> None:
    from importlib.metadata import version

    from packaging.version import Version

    if Version(version("litellm")) < Version(since):
        pytest.skip(f"litellm {version('litellm')} predates {module}.{name} (used if present)")
    assert _found(module, name), f"{module}.{name} is gone"


def test_parameter_snapshot_covers_the_installed_litellm() -> None:
    # A parameter LiteLLM added since the snapshot would be keyed: add it to _compat.py
    # (as an option, unless it changes the answer) before raising the upper bound.
    unlisted = installed_litellm_params() - LITELLM_DROPPED - LITELLM_OPTIONS - LITELLM_KEYED
    keyed = {name for name in unlisted if litellm_param_role(name) == "sampling"}
    assert not keyed, f"LiteLLM parameters missing from the snapshot: {sorted(keyed)}"


def test_credential_named_litellm_parameters_are_never_keyed_whatever_the_snapshot() -> None:
    # Safety must not depend on the snapshot: every credential-shaped parameter of the
    # installed LiteLLM is decided by its name alone.
    credentials = {name for name in installed_litellm_params() if is_credential(name)}
    assert {"api_key", "client_secret", "azure_password"} <= credentials
    assert all(litellm_param_role(name) != "sampling" for name in credentials)
    # Added in LiteLLM 1.110 without being a listed option before: safe by its shape.
    assert is_credential("github_copilot_user_session")


def test_param_roles() -> None:
    for name in ("top_p", "seed", "tools", "extra_body", "top_k", "max_new_tokens", "max_tokens"):
        assert litellm_param_role(name) == "sampling", name
    for name in ("stop_token_ids", "bos_token", "mock_response"):
        assert litellm_param_role(name) == "sampling", name
    for name in ("timeout", "api_key", "vertex_credentials", "extra_headers", "service_tier"):
        assert litellm_param_role(name) == "transport", name
    # Per-call loggers say where a call is reported, not what it answers.
    for name in ("callbacks", "success_callback", "failure_callback", "input_callback"):
        assert litellm_param_role(name) == "transport", name
    for name in ("num_retries", "metadata", "_private", "fallbacks"):
        assert litellm_param_role(name) == "drop", name


@pytest.mark.parametrize(
    "name",
    [
        "drop_params",
        "additional_drop_params",
        "aws_region_name",
        "vertex_project",
        "vertex_location",
        "watsonx_region_name",
        "api_type",
        "litellm_parent_otel_span",
        # Made up: a provider's setting nobody has listed yet is an option all the same.
        "zorblax_cluster_region",
        "quux_serving_zone",
        "acmeProjectId",
        "litellm_frobnicator",
    ],
)
def test_provider_settings_are_options_by_the_shape_of_their_name(name: str) -> None:
    # A Router merges its picked deployment's settings into the call: keyed, they split
    # one model group into a sequence per deployment.
    assert litellm_param_role(name) == "transport"


def test_names_near_provider_settings_stay_sampling_parameters() -> None:
    # "api" alone is the marker that keeps a Responses call's key apart.
    for name in ("api", "top_k", "roles", "litellm_system_prompt", "reasoning_effort"):
        assert litellm_param_role(name) == "sampling", name


@pytest.mark.parametrize(
    "name",
    [
        "zorblax_session_token",
        "acme_user_session",
        "x-api-key",
        "X-Auth-Token",
        "apiKey",
        "clientSecret",
        "db_passwd",
        "quux_credentials",
        "refresh_token",
        "accesstoken",
        "service_account_private_key",
        "oauth_cookie",
    ],
)
def test_names_shaped_like_credentials_are_credentials(name: str) -> None:
    assert is_credential(name)
    assert litellm_param_role(name) == "transport"


@pytest.mark.parametrize(
    "name",
    [
        "max_tokens",
        "max_completion_tokens",
        "top_k",
        "temperature",
        "tools",
        "response_format",
        "stop",
        "logit_bias",
        "reasoning_effort",
        "keyword",
    ],
)
def test_sampling_names_are_not_credentials(name: str) -> None:
    assert not is_credential(name)


@pytest.mark.parametrize("name", ["completion", "acompletion"])
def test_kept_signatures_are_the_ones_litellm_computes(name: str) -> None:
    import litellm

    function = getattr(litellm, name)
    while hasattr(function, "__wrapped__"):
        function = function.__wrapped__
    vars(function).pop("__signature__", None)
    computed = inspect.signature(function)
    assert "messages" in computed.parameters
    keep_entry_point_signatures()
    assert vars(function)["__signature__"] == computed
    assert inspect.signature(function) is vars(function)["__signature__"]


def test_a_hit_needs_litellm_for_a_callback_a_rule_or_a_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import litellm

    # Earlier tests may leave loggers behind (a Router registers its own on some versions).
    for name in _CALLBACK_LISTS:
        monkeypatch.setattr(litellm, name, [])
    assert not hit_needs_litellm()
    litellm.success_callback.append("cache")  # what LiteLLM's own Cache() adds: not a reader
    try:
        assert not hit_needs_litellm()
    finally:
        litellm.success_callback.remove("cache")
    for name, value in [
        ("callbacks", [print]),
        ("_async_success_callback", [print]),
        ("pre_call_rules", [bool]),
        ("post_call_rules", [bool]),
        ("max_budget", 1.0),
    ]:
        saved = getattr(litellm, name)
        setattr(litellm, name, value)
        try:
            assert hit_needs_litellm(), name
        finally:
            setattr(litellm, name, saved)
    assert not hit_needs_litellm()


def test_litellms_request_entry_points_are_found_by_their_call_types() -> None:
    # What a replication MnimiCache refuses: every sending entry point but those it answers.
    names = request_entry_points(frozenset({"completion", "acompletion"}))
    assert {"embedding", "aembedding", "image_generation", "moderation", "rerank"} <= set(names)
    assert "completion" not in names and "acompletion" not in names


def _lazy_registry() -> bool:
    """Whether this LiteLLM lists its lazily exported attributes (1.110 does; 1.105 has
    only its module ``__getattr__``, which no one can list)."""
    registry = importlib.import_module("litellm._lazy_imports_registry")
    if hasattr(registry, "LITELLM_ATTRIBUTES"):
        return True
    from importlib.metadata import version

    from packaging.version import Version

    assert Version(version("litellm")) < Version("1.110"), "LITELLM_ATTRIBUTES is gone"
    return False


def test_entry_points_outside_litellms_call_types_are_found_too() -> None:
    # Made by LiteLLM's client decorator (update_eval is exported lazily), or sending
    # without it: each of these sent a request past a replication cache.
    names = set(request_entry_points(frozenset()))
    made_by_client = {"list_batches", "alist_batches", "image_variation", "aimage_variation"}
    made_by_client |= {"video_status", "avideo_status", "create_eval"}
    if _lazy_registry():
        made_by_client.add("aupdate_eval")
    assert made_by_client <= names
    import litellm

    senders = {"acount_tokens", "ahealth_check", "realtime_health_check"}
    assert {name for name in senders if hasattr(litellm, name)} <= names
    assert not {"token_counter", "get_llm_provider", "stream_chunk_builder"} & names


def test_the_routed_helpers_still_exist() -> None:
    # Each hands the caller's cache switches to LiteLLM's own completion or responses.
    assert len(routed_entry_points()) == 8


def test_the_retry_helpers_still_take_the_function_they_retry() -> None:
    # retried_entry_point hands each its (wrapped) entry point as ``original_function``.
    import litellm

    helpers = retry_helpers()
    assert set(helpers) == {
        "completion_with_retries",
        "acompletion_with_retries",
        "responses_with_retries",
        "aresponses_with_retries",
    }
    for helper in helpers:
        assert 'kwargs.pop("original_function"' in inspect.getsource(getattr(litellm, helper))


def test_the_client_class_methods_still_exist() -> None:
    # ``litellm.LiteLLM().chat.completions`` is one of them, with a ``create``.
    import litellm

    classes = client_class_methods()
    assert [owner.__name__ for owner in classes] == ["Completions", "AsyncCompletions"]
    client = litellm.LiteLLM(api_key="sk-test")
    assert type(client.chat.completions) in classes


#: LiteLLM's public coroutine functions that a replication cache neither answers nor
#: refuses, and why none of them can send a request past it.
LEFT_ALONE = {
    "arun_tool_loop": "calls litellm.acompletion, which the cache answers",
    "async_completion_with_fallbacks": "calls litellm.acompletion",
    "aadapter_generate_content": "calls litellm.acompletion",
    "maybe_run_chat_completion_agentic_loop": "calls litellm.acompletion",
    "close_litellm_async_clients": "closes LiteLLM's HTTP clients",
    "bill_first_round_on_failure": "prices a failed round of an agentic loop",
}


def test_every_async_entry_point_of_litellm_is_answered_refused_or_reviewed() -> None:
    # A coroutine function a LiteLLM upgrade adds fails here until it is looked at: if it
    # sends, it belongs in _compat's lists; if not, in LEFT_ALONE with the reason.
    answered = {"acompletion", "atext_completion", "aresponses"}
    covered = answered | set(routed_entry_points()) | set(LEFT_ALONE)
    covered |= set(request_entry_points(frozenset(answered)))
    coroutines = {
        name
        for name, function in _module_functions().items()
        if inspect.iscoroutinefunction(function)
    }
    assert coroutines - covered == set()


@pytest.mark.parametrize("name", ["async_set_cache", "sync_set_cache"])
def test_the_cache_writes_skipped_are_called_with_the_calls_keyword_arguments(name: str) -> None:
    """``skip_cache_writes_not_to_store`` reads the call from the ``kwargs`` argument."""
    from litellm.caching.caching_handler import LLMCachingHandler

    skip_cache_writes_not_to_store()
    method = getattr(LLMCachingHandler, name)
    assert method._skips_no_store  # type: ignore[attr-defined]
    assert "kwargs" in inspect.signature(inspect.unwrap(method)).parameters
