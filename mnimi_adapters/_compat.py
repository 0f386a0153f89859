"""Every use of a private LiteLLM, LangChain, DSPy or pydantic symbol, in one place.

Public extension points come first; each entry below is here because none exists for what
it does, and says why it is needed. ``tests/unit/test_compat.py`` asserts that every symbol
named here still exists in the installed versions, so an upgrade that removes one fails
in one named test instead of somewhere deep in a cache hit.

Nothing here imports LiteLLM at module import time (``import litellm`` takes seconds):
the LiteLLM entries import it when first called.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .core.request import is_credential

# ---------------------------------------------------------------------------------------
# LiteLLM: which call parameters are its own
# ---------------------------------------------------------------------------------------
#
# Why: a cache key must hold what decides the answer and nothing else. LiteLLM mixes its
# own options into the keyword arguments of ``completion``; they are listed in
# ``litellm.types.utils.all_litellm_params``, which is not a documented API. The lists are
# a snapshot of it (1.110.2), not read from LiteLLM at run time, because importing LiteLLM
# costs seconds (and may fetch a price map, which a replication run must never do) and a
# key must not change because LiteLLM grew its list. Credentials do not depend on these
# lists: ``core.request.is_credential`` decides them by the shape of the name.

#: LiteLLM's plumbing: never keyed, and never passed on when MnimiCache re-sends a call
#: (but for ``litellm_call_id``, which MnimiCache sets on the provider call itself, so
#: that callbacks log a miss under the caller's id).
LITELLM_DROPPED: Final = frozenset({
    "model", "messages", "n", "stream", "stream_options", "metadata", "litellm_metadata",
    "litellm_logging_obj", "litellm_call_id", "parent_otel_span", "cache", "caching", "cache_key",
    "preset_cache_key", "acompletion", "atext_completion", "aembedding", "aimg_generation",
    "atranscription", "arerank", "async_call", "text_completion", "complete_response", "fallbacks",
    "max_fallbacks", "fallback_depth", "context_window_fallback_dict", "retry_policy",
    "retry_strategy", "num_retries", "max_retries", "model_list",
    "proxy_server_request", "stream_response", "secret_fields", "id", "self"
})  # fmt: skip
#: LiteLLM's own options: how a call is routed, authenticated, logged, billed, limited or
#: timed; never keyed. (Pricing options, ``input_cost_per_token`` and the like, and a
#: provider's settings, ``vertex_location`` and the like, are matched by name in
#: ``providers.litellm_param_role``.)
LITELLM_OPTIONS: Final = frozenset({
    "model_info",  # a Router deployment's: its loggers and pricing read it on the call
    "adaptive_router_config", "adaptive_router_default_model", "allm_passthrough_route",
    "allow_client_keepalive_override", "allowed_model_region", "allowed_openai_params",
    "anthropic_disable_workload_identity_federation", "anthropic_federation_rule_id",
    "anthropic_federation_workspace_id", "anthropic_identity_source", "anthropic_issuer_audience",
    "anthropic_issuer_subject", "anthropic_issuer_ttl_seconds", "anthropic_issuer_url",
    "anthropic_keycloak_client_id", "anthropic_keycloak_scope", "anthropic_organization_id",
    "anthropic_service_account_id", "api_base", "api_key", "api_version", "arize_api_key",
    "arize_error_sampling_rate", "arize_otlp_protocol", "arize_space_id", "arize_space_key",
    "arize_success_sampling_rate", "attempted_targets", "auto_router_config",
    "auto_router_config_path", "auto_router_default_model", "auto_router_embedding_model",
    "auto_router_max_input_chars", "auto_router_model_compression",
    "auto_router_routing_compression", "aws_batch_role_arn", "aws_bedrock_control_plane_endpoint",
    "azure", "azure_ad_token_provider", "azure_password", "azure_scope", "azure_username",
    "base_model", "bedrock_tags", "budget_duration", "caching_groups", "client", "client_id",
    "client_secret", "client_side_timeout", "completion_call_id", "complexity_router_config",
    "complexity_router_default_model", "configurable_clientside_auth_params", "cooldown_time",
    "custom_llm_provider", "daily_reset_time", "data_residency", "dd_agent_host", "dd_agent_port",
    "dd_api_key", "dd_site", "default_api_key_rpm_limit", "default_api_key_tpm_limit",
    "disable_add_transform_inline_image_block", "enable_json_schema_validation",
    "enable_prompt_caching", "enable_tag_filtering", "fastest_response",
    "fedramp_uplift_multiplier", "fireworks_forward_user_id", "force_timeout", "gcs_bucket_name",
    "gcs_path_service_account", "github_copilot_host", "github_copilot_user_session",
    "guardrails", "headers", "hf_model_name", "humanloop_api_key", "itpm", "keepalive_seconds",
    "kubernetes_pod_discovery", "langfuse_environment", "langfuse_host",
    "langfuse_prompt_version", "langfuse_public_key", "langfuse_secret", "langfuse_secret_key",
    "langfuse_span_scope", "langsmith_api_key", "langsmith_base_url", "langsmith_project",
    "langsmith_sampling_rate", "langsmith_tenant_id", "litellm_credential_name",
    "litellm_disabled_callbacks", "litellm_request_debug", "litellm_session_id",
    "litellm_trace_id", "litellm_trusted_callback_vars", "log_client_error_tracebacks",
    "logger_fn", "max_agentic_loops", "max_budget", "max_file_size_mb", "max_parallel_requests",
    "merge_reasoning_content_in_choices", "mock_timeout", "model_alias_map", "model_config",
    "model_file_id_mapping", "newrelic_api_key", "newrelic_region", "no-log",
    "openai_identity_provider_id", "openai_service_account_id", "order", "otpm",
    "output_vector_size", "posthog_api_key", "posthog_api_url", "provider_affinity_header",
    "provider_specific_header", "quality_router_config", "quality_router_default_model",
    "region_name", "regional_endpoint_uplift_multiplier",
    "regional_processing_uplift_multiplier_eu", "regional_processing_uplift_multiplier_us",
    "request_timeout", "responses_api_version", "routing_strategy", "rpd", "rpm", "rust",
    "s3_access_key_id", "s3_bucket_name", "s3_bucket_owner", "s3_encryption_key_id",
    "s3_endpoint_url", "s3_output_bucket_name", "s3_region_name", "s3_secret_access_key",
    "search_tool_name", "shared_session", "signoz_ingestion_endpoint", "signoz_ingestion_key",
    "silent_model", "ssl_verify", "stream_chunk_size", "stream_timeout",
    "stream_timeout_by_service_tier", "switchyard_router_config", "tag_regex", "tags",
    "tenant_id", "thought_signature_in_tool_call_id", "tiered_pricing", "timeout_by_service_tier",
    "tpd", "tpm", "ttl", "turn_off_message_logging", "use_chat_completions_api", "use_client",
    "use_in_pass_through", "use_litellm_proxy", "use_xai_oauth", "verbose", "wandb_api_key",
    "weave_project_id", "weight"
})  # fmt: skip
#: LiteLLM's own parameters that shape the prompt the provider sees (prompt management,
#: system prompt injection, prompt templates), and a mocked answer, which must never be
#: replayed as the model's own sample: keyed.
LITELLM_KEYED: Final = frozenset({
    "prompt_id", "prompt_variables", "prompt_version", "prompt_label", "prompt_environment",
    "litellm_system_prompt", "assistant_continue_message", "user_continue_message",
    "ensure_alternating_roles", "supports_system_message", "custom_prompt_dict",
    "final_prompt_value", "initial_prompt_value", "roles", "bos_token", "eos_token",
    "mock_response"
})  # fmt: skip


def at_interpreter_exit(hook: Callable[[], None]) -> None:
    """Run ``hook`` when the interpreter exits, before its thread pools stop taking work.

    Why: at exit CPython first runs ``threading``'s exit hooks, among them the one of
    ``concurrent.futures`` that makes every thread pool refuse new work, and only then the
    ``atexit`` handlers. LiteLLM needs a thread pool for every call (an async call runs its
    set-up in the event loop's default executor), so a provider refill still in flight at
    exit fails there unless it is waited for first. ``threading._register_atexit`` (private
    to CPython, there since 3.9) runs its hooks in the reverse order of registration: one
    registered after ``concurrent.futures.thread`` is imported runs before its hook.
    Without it (another Python), ``atexit`` is the fallback.

    Args:
        hook: What to run, once.
    """
    import concurrent.futures.thread  # noqa: F401 - registers its hook first, so ours runs before

    register = getattr(threading, "_register_atexit", None)
    if register is None:
        atexit.register(hook)
    else:
        register(hook)


def installed_litellm_params() -> frozenset[str]:
    """The parameter names the installed LiteLLM treats as its own (tests compare)."""
    from litellm.types.utils import all_litellm_params

    return frozenset(all_litellm_params)


# ---------------------------------------------------------------------------------------
# LiteLLM: a response's cost
# ---------------------------------------------------------------------------------------


def response_cost(response: Any) -> float | None:
    """What LiteLLM says a ``completion`` response cost, or ``None`` if it has no price.

    Why: LiteLLM prices every response it returns and keeps the figure in the response's
    ``_hidden_params["response_cost"]`` (the way its documentation shows to read a cost).
    Pricing it again with ``litellm.completion_cost`` would search the price map a second
    time, and for a model LiteLLM has no price for that prints a "Provider List" banner to
    stdout (LiteLLM's ``get_llm_provider``), which a plain ``completion`` never does.
    """
    hidden = getattr(response, "_hidden_params", None)
    cost = hidden.get("response_cost") if isinstance(hidden, dict) else None
    return float(cost) if isinstance(cost, int | float) and cost else None


# ---------------------------------------------------------------------------------------
# LiteLLM: answering from a Cache subclass
# ---------------------------------------------------------------------------------------

#: A response field LiteLLM copies onto the response object it builds from a cached dict.
HIDDEN_PARAMS_FIELD: Final = "_hidden_params"


class HiddenParams(dict[str, Any]):
    """A cached response's ``_hidden_params`` that keeps ``cache_hit`` truthful.

    Why: LiteLLM marks whatever a cache returns as ``cache_hit=True`` (it sets the item on
    this dict); a response for which samples had to be drawn from the provider first is
    not a hit, and the cost and logs built on that flag would be wrong.
    """

    hit: bool = True

    def __setitem__(self, key: str, value: Any) -> None:
        if key == "cache_hit" and not self.hit:
            value = False
        super().__setitem__(key, value)


def tell_logging_about_hit(logging_obj: Any, hit: bool, provider: Callable[[], Any]) -> None:
    """Record on LiteLLM's logging object whether a cached answer was a hit.

    Why: LiteLLM prices a cached response before it records the hit (sync path), from
    ``logging_obj.model_call_details``; it then searches the price map to explain the zero
    cost. A hit is free, and a miss must be priced as the provider the samples came from.
    """
    details = getattr(logging_obj, "model_call_details", None)
    if isinstance(details, dict):
        details["cache_hit"] = hit
        if not hit and "custom_llm_provider" not in details:
            details["custom_llm_provider"] = provider()


def attempt_sent_again_on(
    retried: Callable[[Exception], bool],
) -> contextlib.AbstractContextManager[None]:
    """Around one attempt of a request: a failure ``retried`` says is retried is not logged.

    Why: the provider layer retries a request itself (with backoff and ``Retry-After``),
    each attempt a LiteLLM call of its own, and LiteLLM logged every failed attempt to the
    failure callbacks: a call that finally succeeded logged failures, where LiteLLM's own
    ``num_retries`` logs none. LiteLLM marks such an attempt with the context manager
    ``litellm._internal_context.resent_on`` (its Anthropic adapter re-sends that way):
    its failure is then neither logged nor retried by LiteLLM. Without it (another
    LiteLLM version), every failed attempt is logged, as before.
    """
    try:
        from litellm._internal_context import resent_on
    except ImportError:
        return contextlib.nullcontext()
    return resent_on(retried)


#: LiteLLM's global callback lists: what a call's logging reaches (``"cache"`` is the
#: entry ``Cache.__init__`` adds, which nothing reads any more).
_CALLBACK_LISTS: Final = (
    "callbacks",
    "success_callback",
    "_async_success_callback",
    "input_callback",
    "_async_input_callback",
    "service_callback",
)


def hit_needs_litellm() -> bool:
    """Whether a cache hit must pass through LiteLLM's client wrapper to be answered.

    Why: a hit replayed through the wrapper is checked by LiteLLM's pre- and post-call
    rules and its global budget (``litellm.max_budget``), and logged as a hit to every
    callback (LangFuse, a Router's usage tracking, ...). That costs the whole wrapper: its
    logging object, ``inspect.signature`` of the entry point, the cached response's
    conversion. With no rule, budget or callback set, none of it has an effect. The two
    async callback lists are private to LiteLLM; the public ``callbacks`` list is how
    most callers add theirs. (A call's own ``callbacks=`` are not told of cache hits even
    by LiteLLM's replay.)
    """
    import litellm

    if litellm.pre_call_rules or litellm.post_call_rules or litellm.max_budget:
        return True
    return any(
        callback != "cache"
        for name in _CALLBACK_LISTS
        for callback in getattr(litellm, name, None) or ()
    )


def init_without_global_callbacks(init: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """Run ``litellm.caching.caching.Cache.__init__`` without touching LiteLLM's globals.

    Why: ``Cache.__init__`` appends ``"cache"`` to LiteLLM's global callback lists, which
    nothing in LiteLLM reads any more; constructing a cache should change no global
    state, and a cache that is never installed must leave none behind.

    Args:
        init: The bound ``Cache.__init__`` (``super().__init__`` in a subclass).
        *args: Passed to ``init``.
        **kwargs: Passed to ``init``.
    """
    import litellm

    names = ("input_callback", "success_callback", "_async_success_callback")
    before = {name: "cache" in getattr(litellm, name) for name in names}
    init(*args, **kwargs)
    for name, present in before.items():
        callbacks = getattr(litellm, name)
        if not present and "cache" in callbacks:
            callbacks.remove("cache")


_STREAM_ITERATORS: Final = (
    ("litellm.responses.streaming_iterator", "BaseResponsesAPIStreamingIterator"),
    (
        "litellm.llms.anthropic.pass_through.messages.response_cache",
        "CachedAnthropicMessagesStreamIterator",
    ),
)


def _defer_stream_hit_callbacks(*, cached_result: object) -> bool:
    """LiteLLM's check, minus its imports of proxy modules (which need ``fastapi``).

    The original imports the Anthropic pass-through module on every cache hit, which
    imports ``litellm.proxy`` and so ``fastapi``, a dependency of LiteLLM's proxy only.
    An object can only be an instance of a class whose module is loaded, so looking the
    classes up in ``sys.modules`` gives the same answer without importing anything.
    """
    from litellm.litellm_core_utils.streaming_handler import CustomStreamWrapper

    if isinstance(cached_result, CustomStreamWrapper):
        return True
    for module_name, class_name in _STREAM_ITERATORS:
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if isinstance(cls, type) and isinstance(cached_result, cls):
            return True
    return False


def patch_stream_hit_check() -> None:
    """Make LiteLLM's cache-hit path work without ``fastapi`` installed.

    Why: on the LiteLLM versions this package allows, every cache hit calls
    ``caching_handler._should_defer_streaming_cache_hit_callbacks``, which imports LiteLLM's
    proxy and so ``fastapi`` (LiteLLM issue 42195): a hit fails with ModuleNotFoundError
    where only ``litellm`` is installed. The replacement gives the same answer for every
    input, so it stays in place for good: undoing it when one cache is uninstalled would
    break another one still installed.
    """
    from litellm.caching import caching_handler

    if hasattr(caching_handler, "_should_defer_streaming_cache_hit_callbacks"):
        caching_handler._should_defer_streaming_cache_hit_callbacks = _defer_stream_hit_callbacks


def keep_entry_point_signatures() -> None:
    """Compute the signatures of LiteLLM's ``completion`` and ``acompletion`` once.

    Why: while any ``litellm.cache`` is installed, LiteLLM's cache handler calls
    ``inspect.signature`` of the entry point on every call, hit or miss (to map positional
    arguments to names), some 50 microseconds each time for ``completion``'s 46
    parameters. ``inspect.signature`` returns a function's ``__signature__`` when it has
    one, so setting it to the very signature it computes changes nothing but the cost.
    Kept for good, like the other patches: the signature does not change.
    """
    import litellm

    for name in ("completion", "acompletion"):
        function = getattr(litellm, name)
        while hasattr(function, "__wrapped__"):  # the wrappers down to LiteLLM's function
            function = function.__wrapped__
        if "__signature__" not in vars(function):
            function.__signature__ = inspect.signature(function)


def _not_to_store(call: object) -> bool:
    """Whether a call's keyword arguments say ``cache={"no-store": True}``."""
    options = call.get("cache") if isinstance(call, Mapping) else None
    return isinstance(options, Mapping) and options.get("no-store") is True


def skip_cache_writes_not_to_store() -> None:
    """Let LiteLLM's cache handler skip at once the write of a call that says ``no-store``.

    Why: while any ``litellm.cache`` is installed, LiteLLM hands every response to its
    cache handler's ``async_set_cache``/``sync_set_cache``, which copies the call's
    arguments, maps the positional ones, looks for a tracing span and builds a pydantic
    ``TypeAdapter`` to read the ``cache`` option, all before it sees ``no-store`` and writes
    nothing. Every miss of a ``MnimiCache`` is such a call (the cache stores the sample
    itself): that work was some 0.04x to 0.07x of the CPU of a burst of misses. Returning
    at once for those calls gives LiteLLM's own outcome, nothing written; any other call
    (the keyword missing or passed positionally) goes through unchanged. Kept for good,
    like the other patches.
    """
    from litellm.caching.caching_handler import LLMCachingHandler

    for name in ("async_set_cache", "sync_set_cache"):
        original = getattr(LLMCachingHandler, name, None)
        if original is None or getattr(original, "_skips_no_store", False):
            continue
        setattr(LLMCachingHandler, name, _skipping_no_store(original))


def _skipping_no_store(original: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def aset_cache(self: Any, *args: Any, **kwargs: Any) -> Any:
            if _not_to_store(kwargs.get("kwargs")):
                return None
            return await original(self, *args, **kwargs)

        aset_cache._skips_no_store = True  # type: ignore[attr-defined]
        return aset_cache

    @functools.wraps(original)
    def set_cache(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _not_to_store(kwargs.get("kwargs")):
            return None
        return original(self, *args, **kwargs)

    set_cache._skips_no_store = True  # type: ignore[attr-defined]
    return set_cache


# ---------------------------------------------------------------------------------------
# LiteLLM: text completions of several prompts
# ---------------------------------------------------------------------------------------


def prompt_count(kwargs: Mapping[str, Any]) -> int:
    """How many prompts a ``completion`` call that ``text_completion`` made sends (else 1).

    Why: ``text_completion(prompt=[...])`` hands ``completion`` one user message per
    prompt string (or one message holding a list of token lists), flagged
    ``text_completion=True``; a completions endpoint (a provider LiteLLM names
    ``text-completion-...``, or ``azure_text``) gets them back as a list of prompts
    (``litellm.llms.openai.completion.utils.transform_prompt``) and answers ``n`` choices
    per prompt: the answers of several requests in one response. A chat provider sends
    the messages as one conversation, which is one request.

    Args:
        kwargs: The call's keyword arguments.
    """
    messages = kwargs.get("messages")
    if kwargs.get("text_completion") is not True or not isinstance(messages, list | tuple):
        return 1
    if not is_completions_provider(_text_provider(kwargs)):
        return 1
    if len(messages) == 1 and isinstance(messages[0], Mapping):
        content = messages[0].get("content")
        if isinstance(content, list) and all(isinstance(item, list) for item in content):
            return len(content)  # token lists, one per prompt
    return len(messages)


def is_completions_provider(provider: object) -> bool:
    """Whether LiteLLM sends a call of ``provider`` to a completions endpoint (raw text in,
    raw text out), not a chat one: the providers it names ``text-completion-...``, and
    ``azure_text``."""
    return isinstance(provider, str) and (
        provider.startswith("text-completion") or provider == "azure_text"
    )


def _text_provider(kwargs: Mapping[str, Any]) -> str:
    """The LiteLLM provider a text completion goes to (``""`` if LiteLLM cannot tell)."""
    import litellm

    try:
        return str(
            litellm.get_llm_provider(
                model=str(kwargs.get("model")),
                custom_llm_provider=kwargs.get("custom_llm_provider"),
                api_base=kwargs.get("api_base"),
            )[1]
        )
    except Exception:  # an unknown route: LiteLLM's own call will say so
        return ""


# ---------------------------------------------------------------------------------------
# LiteLLM: calls that switch the cache off
# ---------------------------------------------------------------------------------------


def without_cache_switches(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` minus ``caching=False`` and the ``no-cache``/``no-store`` of ``cache``.

    Args:
        kwargs: A ``litellm.completion`` call's keyword arguments (changed in place).

    Returns:
        The same dict.
    """
    if kwargs.get("caching") is False:
        del kwargs["caching"]
    switches = kwargs.get("cache")
    if isinstance(switches, Mapping) and ("no-cache" in switches or "no-store" in switches):
        kept = {k: v for k, v in switches.items() if k not in ("no-cache", "no-store")}
        if kept:
            kwargs["cache"] = kept
        else:
            del kwargs["cache"]
    return kwargs


def has_cache_switches(kwargs: Mapping[str, Any]) -> bool:
    """Whether a call switches the cache off: ``caching=False``, ``cache={"no-cache": True}``
    or ``cache={"no-store": True}``.

    LiteLLM's client wrapper skips reading ``litellm.cache`` for the first two, and
    writing it for the third; a MnimiCache stores what a call reads, so it does neither
    for any of them.
    """
    switches = kwargs.get("cache")
    return kwargs.get("caching") is False or (
        isinstance(switches, Mapping)
        and (switches.get("no-cache") is True or switches.get("no-store") is True)
    )


#: A handler of one call: the original entry point, its positional and keyword arguments.
#: For an async entry point it returns an awaitable: a coroutine function's result, or (a
#: handler that only checks the call) the original's own coroutine.
EntryHandler = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]


def _entry(original: Callable[..., Any], handler: EntryHandler) -> Callable[..., Any]:
    """``original`` routed through ``handler``, sync or async as ``original`` is."""
    import functools
    import inspect

    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def aentry(*args: Any, **kwargs: Any) -> Any:
            return await handler(original, args, kwargs)

        aentry._mnimi_wrapped = True  # type: ignore[attr-defined]
        return aentry

    @functools.wraps(original)
    def entry(*args: Any, **kwargs: Any) -> Any:
        return handler(original, args, kwargs)

    entry._mnimi_wrapped = True  # type: ignore[attr-defined]
    return entry


#: Per wrapped entry point (its owner, a module or class, and its name), LiteLLM's function
#: and the wrapper put in its place.
_WRAPPED: dict[tuple[Any, str], tuple[Callable[..., Any], Callable[..., Any]]] = {}


def wrap_entry_points(handlers: Mapping[str, EntryHandler], owner: Any = None) -> None:
    """Route LiteLLM's public entry points (``completion``, ...) through ``handlers``.

    Why: LiteLLM skips ``litellm.cache`` for a call with ``caching=False`` or
    ``cache={"no-cache": True}`` (a Router without ``cache_responses`` sends the first,
    DSPy the second on every call), and decides so in its ``client`` wrapper before any
    hook that could change the call's arguments runs (the sync path has no such hook). A
    replication cache must answer those calls too. And a cache reached through LiteLLM's
    cache handler can only draw a miss with a second, nested ``litellm.completion`` (the
    whole client wrapper again), and can only answer a stream with a finished response.
    So the module's public entry points are wrapped: a handler answers the call before
    LiteLLM's wrapper runs. Every caller that looks the function up on the module at call
    time (the Router, DSPy's LiteLLM engine, ``litellm.completion(...)``) goes through it;
    one that bound ``from litellm import completion`` before the cache was installed
    reaches the cache through LiteLLM's cache handler instead. The wrappers stay in place
    while any cache is installed (a handler whose cache is gone calls the original at
    once), and :func:`unwrap_entry_points` puts LiteLLM's functions back.

    Args:
        handlers: Per entry point's name, the handler of its calls (for an async entry
            point such as ``acompletion``, one whose result is awaited: see
            :data:`EntryHandler`).
        owner: What holds the entry points: the ``litellm`` module unless given (a class
            of :func:`client_class_methods`, whose methods are wrapped in place).
    """
    import litellm

    owner = litellm if owner is None else owner
    for name, handler in handlers.items():
        original = getattr(owner, name)
        if not getattr(original, "_mnimi_wrapped", False):
            wrapper = _entry(original, handler)
            _WRAPPED[owner, name] = (original, wrapper)
            setattr(owner, name, wrapper)


def unwrap_entry_points() -> None:
    """Put back the LiteLLM functions :func:`wrap_entry_points` replaced.

    An entry point someone wrapped again since (its module attribute is no longer our
    wrapper) is left as it is: their wrapper calls ours, which with no cache installed
    calls LiteLLM's function at once.
    """
    for (owner, name), (original, wrapper) in _WRAPPED.items():
        if getattr(owner, name, None) is wrapper:
            setattr(owner, name, original)
    _WRAPPED.clear()


def client_class_methods() -> list[Any]:
    """The classes whose ``create`` LiteLLM's OpenAI-style client ``litellm.LiteLLM`` calls.

    Why: ``LiteLLM().chat.completions.create(...)`` is a method of ``litellm.main``'s
    ``Completions`` (``AsyncCompletions`` for a client made with ``acompletion=True``),
    neither of them public. It calls LiteLLM's ``completion`` as ``litellm.main`` imported
    it, not the module attribute a cache wraps, with the client's parameters merged into
    the call's and kept for its later calls. Those parameters are the ``locals()`` of the
    client's constructor, ``self`` included, so every call passes ``self=<client>``, and
    any cache's ``get_cache(self, **kwargs)`` then fails after the request was sent (a
    replication cache's too). So their ``create`` is wrapped, to set the parameters right
    before LiteLLM's method runs.
    """
    import litellm.main

    return [
        owner
        for owner in (
            getattr(litellm.main, name, None) for name in ("Completions", "AsyncCompletions")
        )
        if isinstance(owner, type) and callable(getattr(owner, "create", None))
    ]


#: LiteLLM's public functions that send a request but are neither named in its ``CallTypes``
#: nor made by its ``client`` decorator, so :func:`request_entry_points` finds them by name:
#: token counting at the provider (``acount_tokens`` posts to its ``input_tokens``
#: endpoint) and health checks, whose point is to reach the provider.
_UNTYPED_SENDERS: Final = ("acount_tokens", "ahealth_check", "realtime_health_check")

#: LiteLLM's public functions that call its ``completion``, ``acompletion``, ``responses`` or
#: ``aresponses`` as LiteLLM's own modules imported them (not the module attributes
#: MnimiCache wraps), with the caller's keyword arguments. The cache still answers those
#: calls, through LiteLLM's cache handler, which the caller's cache switches would skip.
_ROUTED: Final = (
    "text_completion",
    "completion_with_retries",
    "acompletion_with_retries",
    "responses_with_retries",
    "aresponses_with_retries",
    "adapter_completion",
    "aadapter_completion",
    "aresponses_api_with_mcp",
)


#: LiteLLM's retry helpers, each with the entry point it retries (see :func:`retried_entry_point`).
_RETRY_HELPERS: Final = {
    "completion_with_retries": "completion",
    "acompletion_with_retries": "acompletion",
    "responses_with_retries": "responses",
    "aresponses_with_retries": "aresponses",
}


def retry_helpers() -> dict[str, str]:
    """LiteLLM's ``*_with_retries`` helpers it has, each with the entry point it retries."""
    import litellm

    return {
        helper: entry
        for helper, entry in _RETRY_HELPERS.items()
        if callable(getattr(litellm, helper, None))
    }


def retried_entry_point(helper: str, kwargs: dict[str, Any]) -> None:
    """Make a ``*_with_retries`` call retry the module's (wrapped) entry point.

    Why: ``responses_with_retries`` retries ``litellm.responses.dispatch.responses``, not
    the module attribute a cache wraps, and LiteLLM's cache handler answers no Responses
    call: every attempt was sent and none stored. (``completion_with_retries`` reached
    the cache only through LiteLLM's cache handler, as a second LiteLLM call.) Every
    helper takes the function it retries as its ``original_function`` keyword (1.105.3
    and 1.110.2), which the caller may set; unset, it is the module's entry point.

    Args:
        helper: The helper's name (a key of :data:`_RETRY_HELPERS`).
        kwargs: The helper call's keyword arguments (changed in place).
    """
    import litellm

    kwargs.setdefault("original_function", getattr(litellm, _RETRY_HELPERS[helper]))


def routed_entry_points() -> list[str]:
    """The names of LiteLLM's functions that reach a cache only through its cache handler.

    Why: LiteLLM decides to skip ``litellm.cache`` for a call with ``caching=False`` or
    ``cache={"no-cache": True}`` in its ``client`` wrapper. ``text_completion``, the
    ``*_with_retries`` helpers and the adapters hand the caller's keyword arguments to
    LiteLLM's own ``completion``/``responses``, not to the wrapped module attributes, so a
    replication cache must drop the switches on the way in (see :data:`_ROUTED`).
    """
    import litellm

    return [name for name in _ROUTED if callable(getattr(litellm, name, None))]


def _client_codes() -> frozenset[Any]:
    """The code objects of the two wrappers LiteLLM's ``client`` decorator makes."""
    from litellm.utils import client

    def probe() -> None:
        """Decorated only to read the wrapper's code."""

    async def aprobe() -> None:
        """Decorated only to read the wrapper's code."""

    return frozenset({client(probe).__code__, client(aprobe).__code__})


def _made_by_client(function: Any, codes: frozenset[Any]) -> bool:
    """Whether ``function``, or one it wraps (``functools.wraps``), is a ``client`` wrapper."""
    for _ in range(8):  # a few decorators deep at most; never loop on a cycle
        if function is None:
            return False
        if getattr(function, "__code__", None) in codes:
            return True
        function = getattr(function, "__wrapped__", None)
    return False


def _module_functions() -> dict[str, Any]:
    """The public functions of the ``litellm`` module, the lazily exported ones included.

    ``litellm`` imports some attributes on first access (its ``__getattr__``, from the
    registry ``litellm._lazy_imports_registry.LITELLM_ATTRIBUTES``): ``update_eval`` is
    one. Those whose module is already imported are read (which imports nothing); the
    others (LiteLLM's agent harness) are left alone, as importing them has side effects.
    """
    import importlib
    import importlib.util

    import litellm

    found = {
        name: value
        for name, value in vars(litellm).items()
        if not name.startswith("_") and inspect.isfunction(value)
    }
    try:
        from litellm._lazy_imports_registry import LITELLM_ATTRIBUTES
    except ImportError:  # a LiteLLM without the registry exports everything eagerly
        return found
    for name, (module, _attribute) in LITELLM_ATTRIBUTES.items():
        if name in found or name.startswith("_"):
            continue
        if importlib.util.resolve_name(module, "litellm") not in sys.modules:
            continue
        value = getattr(litellm, name, None)
        if inspect.isfunction(value):
            found[name] = value
    return found


def request_entry_points(answered: frozenset[str]) -> list[str]:
    """The names of LiteLLM's public functions that send a request, except ``answered``.

    Why: a replication cache sends nothing, whatever the caller does, and LiteLLM has
    some 150 entry points besides ``completion`` (embeddings, images, speech, rerank,
    batches, files, evals, skills, ...), a list that grows with each release. LiteLLM
    names most of them in its public ``CallTypes`` enum (what its callbacks receive as
    ``call_type``); the rest (``list_batches``, ``image_variation``, the evals, agents and
    skills, ``video_status``) are made by its ``client`` decorator (``litellm.utils.client``,
    not documented), whose wrapper functions all share one code object; a few more send
    without either (:data:`_UNTYPED_SENDERS`).

    Args:
        answered: The entry points the cache answers itself.
    """
    import litellm
    from litellm.types.utils import CallTypes

    codes = _client_codes()
    names = {call.value for call in CallTypes} | set(_UNTYPED_SENDERS)
    names |= {name for name, value in _module_functions().items() if _made_by_client(value, codes)}
    return sorted(
        name for name in names if name not in answered and callable(getattr(litellm, name, None))
    )


# ---------------------------------------------------------------------------------------
# LiteLLM: what a Router's caller passed
# ---------------------------------------------------------------------------------------

#: The names of the keyword arguments the caller of the Router call in progress passed,
#: while one is in progress (see :func:`note_router_call_params`).
router_call_params: ContextVar[frozenset[str] | None] = ContextVar(
    "mnimi_router_call_params", default=None
)

#: A Router's entry points that reach MnimiCache (chat, text and Responses calls).
_ROUTER_CALLS: Final = (
    "completion",
    "acompletion",
    "text_completion",
    "atext_completion",
    "responses",
    "aresponses",
)


def note_router_call_params() -> None:
    """Note, while a Router call runs, which keyword arguments its caller passed.

    Why: a ``litellm.Router`` calls LiteLLM with the picked deployment's ``litellm_params``
    (its region, project, ``drop_params``, a ``max_tokens`` it sets, ...) merged into the
    caller's arguments, and nothing in that call says which came from where: the
    deployment travels in the call's metadata by its model and id only. A key that held
    the deployment's settings would split one model group into a sequence per deployment,
    and a replay would depend on which one the Router picked. So the Router's public entry
    points are wrapped to note the names of their caller's keyword arguments in
    :data:`router_call_params`, which the LiteLLM call inherits (the Router makes it in
    the caller's context, sync and async). LiteLLM 1.110 serves a Router's methods from
    its core class and forwards an assignment to the ``Router`` class there (what
    ``unittest.mock.patch.object(Router, ...)`` relies on); before, they were plain
    methods. The outermost Router call is the caller's: one the Router makes itself
    (a fallback) keeps its note. Kept for good, like the other patches.
    """
    import litellm

    router = litellm.Router
    for name in _ROUTER_CALLS:
        original = getattr(router, name, None)
        if callable(original) and not getattr(original, "_mnimi_notes", False):
            setattr(router, name, _noting_params(original))


def _router_defaults(router: Any) -> frozenset[str]:
    """The names of a Router's ``default_litellm_params``: the same for every deployment,
    so keyed as the caller's own (a Router-wide temperature decides every answer).

    LiteLLM 1.110 serves them from ``Router.settings()`` and warns of the attribute,
    which is all that earlier versions have.
    """
    settings = getattr(router, "settings", None)
    defaults = (
        settings().default_litellm_params
        if callable(settings)
        else getattr(router, "default_litellm_params", None)
    )
    return frozenset(defaults) if isinstance(defaults, Mapping) else frozenset()


def _noting_params(original: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def anoting(self: Any, *args: Any, **kwargs: Any) -> Any:
            if router_call_params.get() is not None:
                return await original(self, *args, **kwargs)
            token = router_call_params.set(frozenset(kwargs) | _router_defaults(self))
            try:
                return await original(self, *args, **kwargs)
            finally:
                router_call_params.reset(token)

        anoting._mnimi_notes = True  # type: ignore[attr-defined]
        return anoting

    @functools.wraps(original)
    def noting(self: Any, *args: Any, **kwargs: Any) -> Any:
        if router_call_params.get() is not None:
            return original(self, *args, **kwargs)
        token = router_call_params.set(frozenset(kwargs) | _router_defaults(self))
        try:
            return original(self, *args, **kwargs)
        finally:
            router_call_params.reset(token)

    noting._mnimi_notes = True  # type: ignore[attr-defined]
    return noting


def responses_stream_events(response: Any) -> list[Any]:
    """A ``ResponsesAPIResponse`` as the stream events a streamed call would have received.

    Why: a streamed Responses call answered from the cache must be replayed as the events
    LiteLLM's own stream yields (``response.created``, the text deltas, ...,
    ``response.completed``). LiteLLM builds them from a finished response only with
    ``litellm.responses.streaming_iterator.build_synthetic_response_events`` (its mock and
    cached-response iterators use it), the same keyword-only function on 1.105.3 and
    1.110.2. Without a logging object it prices nothing: the response carries its cost.

    Args:
        response: The response to replay.
    """
    from litellm.responses.streaming_iterator import build_synthetic_response_events

    return list(
        build_synthetic_response_events(transformed=response, logging_obj=None, chunk_size=24)
    )


def close_stream(stream: Any) -> None:
    """Close a ``litellm.completion(stream=True)`` stream, and with it its connection.

    Why: a stream its reader abandons must stop the provider's answer. LiteLLM's
    ``CustomStreamWrapper`` has ``close()`` in 1.110.2 but not in 1.105.3, where only the
    provider stream it wraps (its ``completion_stream`` attribute, an OpenAI SDK
    ``Stream``) has one.

    Args:
        stream: What ``litellm.completion(..., stream=True)`` returned.
    """
    close = getattr(stream, "close", None)
    if not callable(close):
        close = getattr(getattr(stream, "completion_stream", None), "close", None)
    if callable(close):
        close()


# ---------------------------------------------------------------------------------------
# DSPy: its native engine
# ---------------------------------------------------------------------------------------


def route_dspy_through_litellm(routing: Callable[[], bool]) -> bool:
    """Send DSPy's LM calls through ``litellm.completion`` while ``routing()`` is true.

    Why: DSPy 3.4's default engine (its vendored ``lm15``) talks HTTP to the provider
    itself, so no LiteLLM cache or hook ever sees those calls; only ``engine="litellm"``
    goes through ``litellm.completion``. DSPy decides per call which engine runs in
    ``dspy.clients.execution.select_backend`` (imported from ``backend_selection``), which
    has no public switch. Turning its "native" answer into "not native" makes DSPy use its
    own LiteLLM compatibility engine for the call, with the same model, endpoint and
    credentials, and ``n`` sent as one request. Does nothing if DSPy is not installed.

    Args:
        routing: Whether DSPy's calls are to go through LiteLLM now.

    Returns:
        Whether DSPy is installed (and so routed).
    """
    import dataclasses
    import importlib.util

    if importlib.util.find_spec("dspy") is None:
        return False
    from dspy.clients import execution

    original = execution.select_backend
    if getattr(original, "_mnimi_routes", False):
        return True

    def select_backend(lm: Any, options: Any = None) -> Any:
        selection = original(lm, options)
        if selection.native and routing():
            return dataclasses.replace(selection, native=False)
        return selection

    select_backend._mnimi_routes = True  # type: ignore[attr-defined]
    execution.select_backend = select_backend
    return True


#: The ``rollout_id`` of the DSPy call being sent through LiteLLM, if it has one.
dspy_rollout_id: ContextVar[Any] = ContextVar("mnimi_dspy_rollout_id", default=None)
#: Whether the running LiteLLM call is a DSPy LM's (set with :data:`dspy_rollout_id`).
in_dspy_call: ContextVar[bool] = ContextVar("mnimi_in_dspy_call", default=False)


def carry_dspy_rollout_ids() -> bool:
    """Make the ``rollout_id`` of a DSPy call visible to a LiteLLM cache (:data:`dspy_rollout_id`).

    Why: DSPy asks for a new sample by giving a call a new ``rollout_id``
    (``lm.copy(rollout_id=i)``: ``BestOfN``, ``Refine``, ``BootstrapFewShot`` rounds,
    SIMBA), which only its own cache keys; its LiteLLM engine drops the id in the
    functions of ``dspy.clients.lm`` it looks up on that module for every call, one per
    ``model_type`` (``litellm_completion``, ``litellm_text_completion``,
    ``litellm_responses_completion`` and their async twins), before LiteLLM runs. So each
    rollout would replay one sample. Those are wrapped to hold the id in a context
    variable while they run, and to mark the call as DSPy's (:data:`in_dspy_call`: DSPy
    switches LiteLLM's cache off on every call, which a cache serving DSPy ignores).
    Does nothing if DSPy is not installed.

    Returns:
        Whether DSPy is installed (and so carried).
    """
    import importlib.util

    if importlib.util.find_spec("dspy") is None:
        return False
    from dspy.clients import lm

    for name in _DSPY_CALLS:
        call = getattr(lm, name, None)
        if call is None or getattr(call, "_mnimi_carries", False):
            continue  # a DSPy without that model type, or carried already
        if inspect.iscoroutinefunction(call):

            @functools.wraps(call)
            async def carried_async(
                request: dict[str, Any], *args: Any, _call: Any = call, **kwargs: Any
            ) -> Any:
                with _as_dspy_call(request):
                    return _as_dspy_hit(await _call(request, *args, **kwargs))

            carried: Any = carried_async
        else:

            @functools.wraps(call)
            def carried_sync(
                request: dict[str, Any], *args: Any, _call: Any = call, **kwargs: Any
            ) -> Any:
                with _as_dspy_call(request):
                    return _as_dspy_hit(_call(request, *args, **kwargs))

            carried = carried_sync
        carried._mnimi_carries = True
        setattr(lm, name, carried)
    return True


#: DSPy's LiteLLM calls, one per ``model_type`` (chat, text, responses), sync and async.
_DSPY_CALLS = (
    "litellm_completion",
    "alitellm_completion",
    "litellm_text_completion",
    "alitellm_text_completion",
    "litellm_responses_completion",
    "alitellm_responses_completion",
)


def _as_dspy_hit(response: Any) -> Any:
    """``response``; a cache hit with no usage, as DSPy's own cache hands a hit back.

    DSPy's usage tracker counts the usage of every answer its own cache did not give, and
    reads no flag of LiteLLM's: a replay counted as tokens spent. A hit's cost was
    already 0 (LiteLLM's own rule), and it keeps its usage for everyone but DSPy.
    """
    hidden = getattr(response, "_hidden_params", None)
    if isinstance(hidden, dict) and hidden.get("cache_hit") is True and hasattr(response, "usage"):
        import litellm

        response.usage = litellm.Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
    return response


@contextlib.contextmanager
def _as_dspy_call(request: dict[str, Any]) -> Iterator[None]:
    """Hold a DSPy call's ``rollout_id`` and mark the call as DSPy's while it runs."""
    token = dspy_rollout_id.set(request.get("rollout_id"))
    marked = in_dspy_call.set(True)
    try:
        yield
    finally:
        in_dspy_call.reset(marked)
        dspy_rollout_id.reset(token)


# ---------------------------------------------------------------------------------------
# LangChain
# ---------------------------------------------------------------------------------------


def in_runnable_context() -> bool:
    """Whether code runs inside a LangChain runnable (so LangGraph may have a runtime).

    Why: LangGraph's ``get_runtime()`` raises outside a graph, and raising and catching
    an exception on every plain model call costs more than the call's cache hit. LangChain
    keeps the current runnable config in ``runnables.config.var_child_runnable_config``,
    a module-level ContextVar that is not part of its documented API.
    """
    from langchain_core.runnables.config import var_child_runnable_config

    return var_child_runnable_config.get() is not None


#: A LangGraph node attempt, as ``get_runtime().execution_info`` says: its task's id (the
#: same on every attempt of one task), the attempt (1, 2, ...), and when the task's run
#: began (its first attempt), or ``None`` where LangGraph does not say. A task run again
#: from its start (a resumed ``interrupt()``) keeps its id and counts from 1 again.
NodeAttempt = tuple[str, int, float | None]


@dataclass(frozen=True)
class GraphRun:
    """One LangGraph graph run in progress around the current code."""

    #: What :func:`carry_node_attempts_into_graphs` was told to note when the run started
    #: (the Mnimi scope open then).
    noted: object
    #: The node attempt that runs this graph (a subgraph's, an agent's); ``None`` for a
    #: graph no node runs.
    node: NodeAttempt | None


#: The graph runs around the current code, outermost first.
_GRAPH_RUNS: ContextVar[tuple[GraphRun, ...]] = ContextVar("mnimi_graph_runs", default=())


def enclosing_graph_runs() -> tuple[GraphRun, ...]:
    """The LangGraph graph runs the current code runs in, outermost first.

    Empty until :func:`carry_node_attempts_into_graphs` has run, and outside any graph.
    """
    return _GRAPH_RUNS.get()


def node_attempt(runtime: Any) -> NodeAttempt | None:
    """The node attempt a LangGraph ``Runtime`` runs, or ``None`` if it says none.

    Public API (``Runtime.execution_info``, langgraph 1.1 and later); older versions lack
    it, and a runtime outside any node has no task.
    """
    info = getattr(runtime, "execution_info", None)
    task, attempt = getattr(info, "task_id", None), getattr(info, "node_attempt", None)
    if not task or not isinstance(attempt, int) or attempt < 1:
        return None
    began = getattr(info, "node_first_attempt_time", None)  # langgraph 1.1 and later
    return str(task), attempt, float(began) if isinstance(began, int | float) else None


def _run_starting(config: Any, noted: object) -> tuple[GraphRun, ...]:
    """The graph runs around a graph run about to start with ``config``, itself last."""
    from langchain_core.runnables.config import ensure_config
    from langgraph._internal._constants import CONFIG_KEY_RUNTIME

    # Only a graph run in a node finds a runtime in its config: that node's.
    runtime = ensure_config(config).get("configurable", {}).get(CONFIG_KEY_RUNTIME)
    return (*_GRAPH_RUNS.get(), GraphRun(noted, node_attempt(runtime)))


def carry_node_attempts_into_graphs(note: Callable[[], object]) -> None:
    """Let a graph run inside a LangGraph node know that node's attempt.

    Why: a ``RetryPolicy`` re-runs a failed node, and records the attempt in the node's
    runtime (``execution_info.node_attempt``). A graph the node runs (a subgraph added as
    the node, a compiled graph or an agent it invokes or streams) starts a runtime of its
    own whose nodes are at attempt 1, so calls made there cannot tell a retry from the
    first run, and a repeatable cache would replay the rejected answer on every attempt.
    LangGraph keeps the node's runtime in the run's configuration under a private key;
    the graph's public ``stream``/``astream`` (which ``invoke``/``ainvoke`` run) are
    wrapped to note the runs around (:class:`GraphRun`, with ``note()`` called as each
    starts), in a ContextVar set while each step runs, so the graph's own nodes inherit it
    and the caller's code between steps does not. Kept for good once made, like the other
    patches; ``note`` is the first caller's.
    """
    from langgraph.pregel import Pregel

    if getattr(Pregel.stream, "_mnimi_wrapped", False):
        return
    stream, astream = Pregel.stream, Pregel.astream

    @functools.wraps(stream)
    def noting_stream(self: Any, input: Any, config: Any = None, **kwargs: Any) -> Any:
        runs = _run_starting(config, note())
        steps: Any = stream(self, input, config, **kwargs)
        try:
            while True:
                token = _GRAPH_RUNS.set(runs)
                try:
                    step = next(steps)
                except StopIteration:
                    return
                finally:
                    _GRAPH_RUNS.reset(token)
                yield step
        finally:
            steps.close()

    @functools.wraps(astream)
    async def noting_astream(self: Any, input: Any, config: Any = None, **kwargs: Any) -> Any:
        runs = _run_starting(config, note())
        steps: Any = astream(self, input, config, **kwargs)
        try:
            while True:
                token = _GRAPH_RUNS.set(runs)
                try:
                    step = await steps.__anext__()
                except StopAsyncIteration:
                    return
                finally:
                    _GRAPH_RUNS.reset(token)
                yield step
        finally:
            await steps.aclose()

    noting_stream._mnimi_wrapped = True  # type: ignore[attr-defined]
    Pregel.stream = noting_stream  # type: ignore[method-assign]
    Pregel.astream = noting_astream  # type: ignore[method-assign]
    _carry_node_attempts_into_tasks(note)


def _carry_node_attempts_into_tasks(note: Callable[[], object]) -> None:
    """Let a ``@task`` called in a LangGraph node (or ``@entrypoint``) know that node's
    attempt, as a graph run in the node does.

    Why: the task runs as a task of its own, at its own attempt 1 on every attempt of the
    node that calls it, so a retried node would be served the answer it rejected. The
    task's body runs in a copy of the caller's context made when it is called, so the
    call is noted as a graph run in the node, outside any scope (in one, every call draws
    afresh already, and the task follows it). ``@task`` returns a private class,
    ``langgraph.func._TaskFunction``, whose ``__call__`` is wrapped; nothing public runs
    at the call.
    """
    from langgraph.func import _TaskFunction

    call: Any = _TaskFunction.__call__

    @functools.wraps(call)
    def noting_call(self: Any, *args: Any, **kwargs: Any) -> Any:
        runs = _run_starting(None, note())
        if any(run.noted is not None for run in runs):
            # In a scope every call draws afresh, a retry's too: the task follows it, and
            # its first call claims its position at once, as a node's does.
            return call(self, *args, **kwargs)
        token = _GRAPH_RUNS.set(runs)
        try:
            return call(self, *args, **kwargs)
        finally:
            _GRAPH_RUNS.reset(token)

    _TaskFunction.__call__ = noting_call  # type: ignore[method-assign]


class InvocationParamsWithoutCredentials:
    """A mixin for a ``BaseChatModel`` whose invocation params carry no credential.

    Why: LangChain sends ``_get_invocation_params(stop, **kwargs)`` to every callback and
    tracer (LangSmith included), with the per-call keyword arguments merged in as they
    are: ``model.invoke(x, api_key=...)`` would put the key in a trace. This is the one
    method that builds that dict, and it is private. The result is what LangChain's own
    version returns (``{**_identifying_params, "_type": ..., "stop": stop, **kwargs}``),
    with credential-named keywords left out.
    """

    if TYPE_CHECKING:

        @property
        def _identifying_params(self) -> Mapping[str, Any]: ...

        @property
        def _llm_type(self) -> str: ...

    def _get_invocation_params(
        self, stop: list[str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        params = dict(self._identifying_params)
        params["_type"] = self._llm_type
        params["stop"] = stop
        if kwargs:
            params.update((k, v) for k, v in kwargs.items() if not is_credential(k))
        return params


class LLMOutputOfTheWrappedModel:
    """A mixin for a ``BaseChatModel`` that answers for another one (its ``model``): the
    ``llm_output`` of its ``generate`` combines its calls' as that model's own would.

    Why: ``BaseChatModel.generate`` combines the ``llm_output`` of its calls with the
    private ``_combine_llm_outputs``, which partner models override (``ChatOpenAI`` adds
    the token usage up and names its model) and which returns ``{}`` otherwise. There is
    no public way to ask a model for it. A model without one (a LiteLLM model name)
    combines to ``{}``, as before.
    """

    model: Any

    def _combine_llm_outputs(self, llm_outputs: list[dict[str, Any] | None], /) -> dict[str, Any]:
        if len(llm_outputs) == 1 and llm_outputs[0]:
            # One call's output is the model's own already (combined when it was drawn),
            # and a model combines one output into itself: not combined again on every hit.
            return dict(llm_outputs[0])
        combine = getattr(self.model, "_combine_llm_outputs", None)
        return dict(combine(llm_outputs)) if callable(combine) else {}


def is_configurable_chat_model(model: Any) -> bool:
    """Whether ``model`` is the configurable model ``init_chat_model`` returns (given
    ``configurable_fields=``, or no model): a runnable that makes a chat model for each
    call from the call's config.

    Why: its class, ``langchain.chat_models.base._ConfigurableModel``, is private, and
    nothing public tells it from other runnables (it answers any attribute asked of it
    with the model it would make). Looked up only where ``langchain`` is imported
    already: a model it made has imported it.
    """
    module = sys.modules.get("langchain.chat_models.base")
    configurable = getattr(module, "_ConfigurableModel", None)
    return isinstance(configurable, type) and isinstance(model, configurable)


def private_attributes(model: Any) -> dict[str, Any]:
    """A pydantic model's private attribute values (``PrivateAttr``), to read and write.

    Why: pydantic serves a private attribute through ``BaseModel.__getattr__``, which runs
    only after ordinary lookup has failed: about 1.4 us per read, and a cache hit of a
    wrapped chat model reads its memos several times. The values live in the instance's
    ``__pydantic_private__`` slot, a dict (an attribute of ``BaseModel``, not documented
    as a way in), which reads in well under 0.1 us. Writes through it skip pydantic's
    ``__setattr__`` the same way, with the same effect on a private attribute.
    """
    private: dict[str, Any] = model.__pydantic_private__
    return private


def uses_responses_api(chat: Any, params: Mapping[str, Any]) -> bool:
    """Whether a LangChain chat model sends a call with these parameters to OpenAI's
    Responses API, which takes no ``n``: one request answers one sample.

    Why: ``ChatOpenAI`` decides it in its private ``_use_responses_api(payload)``, from
    ``use_responses_api`` and, when that is unset, from settings (``reasoning``,
    ``output_version="responses/v1"``, the model's name) and from the request (built-in
    tools, Responses-only parameters); there is no public way to ask. The call's
    parameters stand in for the payload: the request keys the method reads are among them.
    A model without the method (any other class) sends no Responses API request.
    """
    decide = getattr(chat, "_use_responses_api", None)
    return callable(decide) and bool(decide(dict(params)))


@contextlib.contextmanager
def without_hooked_handlers() -> Iterator[None]:
    """Run the enclosed code without the callback handlers LangChain adds from context
    variables (``register_configure_hook``).

    Why: ``get_openai_callback()``, ``get_usage_metadata_callback()`` and
    ``collect_runs()`` put their handler in a context variable, which LangChain adds to
    every run started while it is set, whatever callbacks the run was given. A wrapped
    model's own run, inside the wrapper's run, then reported every paid call twice (its
    tokens and cost counted twice). The variables are listed only in
    ``langchain_core.tracers.context._configure_hooks``; each set one is unset here.
    """
    from langchain_core.tracers import context

    hooks = getattr(context, "_configure_hooks", ())
    unset = [(hook[0], hook[0].set(None)) for hook in hooks if hook[0].get() is not None]
    try:
        yield
    finally:
        for variable, token in reversed(unset):
            variable.reset(token)


#: What a forked child took from LiteLLM's client cache, kept referenced for good: a
#: client finalized in the child would close connections its parent still uses.
_PARENTS_CLIENTS: list[Any] = []
#: The module attributes where LiteLLM keeps HTTP clients it made (lazily, on first use).
LITELLM_CLIENT_ATTRIBUTES: Final = (
    "in_memory_llm_clients_cache",
    "module_level_client",
    "module_level_aclient",
)


def litellm_clients_of_the_child() -> None:
    """In a forked child, let LiteLLM make its HTTP clients anew.

    Why: LiteLLM keeps the clients it made (OpenAI SDK and httpx clients, with their open
    keep-alive connections) in ``litellm.in_memory_llm_clients_cache`` and in its
    ``module_level_client``/``module_level_aclient``, module attributes it creates on first
    use (``litellm._lazy_imports``), none of them a documented API. A fork copies the
    connections: parent and workers of a ``multiprocessing`` pool then write their
    requests into one socket and read each other's answers, which a cache stores for
    good under the wrong request. Dropped here, each attribute is made anew at its next
    use, with the child's own connections.
    """
    litellm = sys.modules.get("litellm")
    if litellm is None:
        return
    for name in LITELLM_CLIENT_ATTRIBUTES:
        made = vars(litellm).pop(name, None)
        if made is not None:
            _PARENTS_CLIENTS.append(made)


#: ``(module, attribute)`` of every private symbol used here, for the existence test.
PRIVATE_SYMBOLS: Final = (
    ("threading", "_register_atexit"),
    ("litellm.types.utils", "all_litellm_params"),
    ("litellm.utils", "client"),
    # litellm._lazy_imports_registry.LITELLM_ATTRIBUTES: on LiteLLM 1.110 only (see
    # _module_functions); tests/unit/test_compat.py::_lazy_registry checks it there.
    ("litellm.caching.caching", "Cache"),
    ("litellm.caching.caching_handler", "_should_defer_streaming_cache_hit_callbacks"),
    ("litellm.caching.caching_handler", "LLMCachingHandler"),
    ("litellm.litellm_core_utils.streaming_handler", "CustomStreamWrapper"),
    ("litellm.litellm_core_utils.litellm_logging", "Logging"),
    ("litellm", "input_callback"),
    ("litellm", "success_callback"),
    ("litellm", "_async_success_callback"),
    ("litellm", "_async_input_callback"),
    ("litellm", "callbacks"),
    ("litellm", "service_callback"),
    ("litellm", "pre_call_rules"),
    ("litellm", "post_call_rules"),
    ("litellm", "max_budget"),
    ("litellm", "completion"),
    ("litellm", "acompletion"),
    # litellm_clients_of_the_child: where LiteLLM keeps the HTTP clients it made.
    *(("litellm", name) for name in LITELLM_CLIENT_ATTRIBUTES),
    ("litellm", "responses"),
    ("litellm.responses.streaming_iterator", "build_synthetic_response_events"),
    ("litellm", "aresponses"),
    # A Router's entry points, wrapped at the class (note_router_call_params).
    *(("litellm", f"Router.{name}") for name in _ROUTER_CALLS if "responses" not in name),
    # LiteLLM's OpenAI-style client's completions (client_class_methods).
    ("litellm.main", "Completions"),
    ("litellm.main", "AsyncCompletions"),
    # Not exported by ``litellm`` itself: the type a Responses API hit is rebuilt as.
    ("litellm.types.llms.openai", "ResponsesAPIResponse"),
    ("dspy.clients.execution", "select_backend"),
    ("dspy.clients.backend_selection", "BackendSelection"),
    ("dspy.clients.lm", "litellm_completion"),
    ("dspy.clients.lm", "alitellm_completion"),
    ("dspy.clients.lm", "litellm_text_completion"),
    ("dspy.clients.lm", "alitellm_text_completion"),
    ("dspy.clients.lm", "litellm_responses_completion"),
    ("dspy.clients.lm", "alitellm_responses_completion"),
    ("langchain_core.runnables.config", "var_child_runnable_config"),
    ("langchain_core.tracers.context", "_configure_hooks"),
    # The key of a node's runtime in a LangGraph run's configuration.
    ("langgraph._internal._constants", "CONFIG_KEY_RUNTIME"),
    # _carry_node_attempts_into_tasks: what @task returns, called in a node.
    ("langgraph.func", "_TaskFunction.__call__"),
    ("langchain_core.language_models.chat_models", "BaseChatModel"),
    # LLMOutputOfTheWrappedModel: how generate() combines its calls' llm_output.
    ("langchain_core.language_models.chat_models", "BaseChatModel._combine_llm_outputs"),
    # is_configurable_chat_model: what init_chat_model(configurable_fields=...) returns.
    ("langchain.chat_models.base", "_ConfigurableModel"),
    # uses_responses_api: how ChatOpenAI picks the Responses API.
    ("langchain_openai.chat_models.base", "ChatOpenAI._use_responses_api"),
    ("pydantic.main", "BaseModel"),  # its __pydantic_private__ slot: private_attributes
)

#: Private symbols of newer LiteLLM versions only, with the version that has them (the
#: lowest the suite ran on with them): used where present, and nothing breaks without
#: them, but from that version on the existence test expects them.
PRIVATE_SYMBOLS_SINCE: Final = (
    # attempt_sent_again_on: without it every failed attempt is logged, as before.
    ("litellm._internal_context", "resent_on", "1.110"),
    # note_router_call_params: a Router without them has no Responses API to note.
    ("litellm", "Router.responses", "1.110"),
    ("litellm", "Router.aresponses", "1.110"),
)
