"""LangChain adapter: :class:`MnimiChatModel`, a chat model over Mnimi sample sequences.

``MnimiChatModel`` drops into LCEL chains and LangGraph agents like any other
``BaseChatModel``. Every call becomes a :class:`~mnimi_adapters.core.Request`
(messages plus sampling parameters) and is answered from that request's
append-only sample sequence, so LangChain code gets the Mnimi semantics:

* outside any scope a call is *repeatable*: identical requests replay sample 0
  (and ``n=k`` replays samples ``0..k-1``), in this run and in later ones;
* inside ``with independent():`` successive identical calls continue the
  sequence, so retries and pass@k get fresh, statistically independent samples
  which a later run replays in the same order;
* ``with repeatable():`` nested in ``independent()`` fixes the samples for one
  attempt, exactly like the ``Repeatable(Independent(...))`` wrappers.

Example:
    >>> from mnimi_adapters import independent
    >>> from mnimi_adapters.langchain import MnimiChatModel
    >>> chat = MnimiChatModel(model="fireworks_ai/accounts/fireworks/models/qwen3-8b")
    >>> first = chat.invoke("Pick a number")  # doctest: +SKIP
    >>> chat.invoke("Pick a number").content == first.content  # doctest: +SKIP
    True
    >>> with independent():  # doctest: +SKIP
    ...     a, b = chat.invoke("Pick a number"), chat.invoke("Pick a number")  # two samples
"""

from __future__ import annotations

import inspect
import os
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, Literal, cast

from langchain_core.caches import BaseCache
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.load.serializable import (
    SerializedConstructor,
    SerializedNotImplemented,
    to_json_not_implemented,
)
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    InvalidToolCall,
    ToolCall,
    ToolCallChunk,
    convert_to_openai_messages,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import invalid_tool_call, tool_call_chunk
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.base import OutputParserLike
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
    parse_tool_call,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import ConfigDict, Field, PrivateAttr, Secret, SecretStr, model_validator

from ._compat import InvocationParamsWithoutCredentials, in_runnable_context
from .core import CacheLayer, Layer, Persistent, Request, Sample, scoped
from .core.redis_store import shown_location, url_has_password
from .core.request import is_credential
from .core.scopes import caching_enabled
from .providers import LiteLLMModel, LiteLLMRequest

__all__ = ["MnimiChatModel"]

# Constructor arguments that configure the provider layer MnimiChatModel builds itself;
# with ``layer=`` they belong to that layer and setting them here would be silently ignored.
_LAYER_FIELDS = (
    "temperature",
    "cache_dir",
    "replication",
    "max_batch",
    "alias",
    "api_base",
    "api_key",
    "timeout",
    "max_retries",
)

# Per-call kwargs LangChain may pass that are not request parameters.
_CALL_ONLY = frozenset({"stream", "stream_options", "n", "model"})

# Layers built by MnimiChatModel instances, one per sequence identity (model, temperature,
# alias, endpoint, store, replication). Scopes keep one cursor per layer, so two copies of
# one chat model inside ``with independent():`` must draw from one layer or they would hand
# out the same samples twice; that holds for copies that differ only in how requests are
# sent (api_key, timeout, max_retries, max_batch) too, so those travel with each call.
# Weak values: a layer lives as long as a chat model (or a scope) uses it.
_SHARED_LAYERS: weakref.WeakValueDictionary[tuple[Any, ...], Layer] = weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()

_STREAM_PIECES = 4


def _hide(name: str, value: Any) -> Any:
    """A credential's value wrapped so that no repr, dump or log line shows it."""
    if value is None or not is_credential(name) or isinstance(value, SecretStr | Secret):
        return value
    return SecretStr(value) if isinstance(value, str) else Secret(value)


def _reveal(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr | Secret) else value


def _over_litellm(layer: Layer) -> bool:
    """Whether ``layer`` draws from a LiteLLMModel (so LiteLLM's rule decides the keys)."""
    # Not Layer.root: a custom layer need not be a Model nor name its inner layer.
    while isinstance(getattr(layer, "inner", None), Layer):
        layer = layer.inner  # type: ignore[attr-defined]
    return isinstance(layer, LiteLLMModel)


def _split(text: str, pieces: int = _STREAM_PIECES) -> list[str]:
    """Split ``text`` into up to ``pieces`` consecutive parts that join back to it."""
    if not text:
        return []
    size = -(-len(text) // min(pieces, len(text)))
    return [text[i : i + size] for i in range(0, len(text), size)]


_get_runtime: Callable[[], Any] | None = None
_langgraph_checked = False


def _node_attempt() -> int:
    """The LangGraph node attempt (1, 2, ...) this call runs in; 1 outside LangGraph.

    LangGraph's ``RetryPolicy`` re-runs a failed node with identical input and
    records the attempt in ``get_runtime().execution_info.node_attempt``
    (checked in langgraph 1.2: ``langgraph/runtime.py`` and ``pregel/_retry.py``).
    """
    global _get_runtime, _langgraph_checked
    if not _langgraph_checked:
        # Imported once, lazily: LangGraph is optional and its import is not free.
        try:
            from langgraph.runtime import get_runtime
        except ImportError:
            _get_runtime = None
        else:
            _get_runtime = get_runtime
        _langgraph_checked = True
    # LangGraph's get_runtime() raises outside a runnable context; checking first keeps
    # plain calls (the common case) free of a raised exception.
    if _get_runtime is None or not in_runnable_context():
        return 1
    try:
        # Outside a runnable context get_config() raises, outside a graph the
        # runtime is missing, and older LangGraph versions lack execution_info.
        attempt = _get_runtime().execution_info.node_attempt
    except Exception:
        return 1
    return attempt if isinstance(attempt, int) and attempt > 1 else 1


def _is_pydantic_class(schema: Any) -> bool:
    return isinstance(schema, type) and is_basemodel_subclass(schema)


def _usage(sample: Sample) -> UsageMetadata:
    prompt, completion = sample.prompt_tokens, sample.completion_tokens
    return UsageMetadata(
        input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion
    )


def _parse_tool_calls(
    raw_calls: list[dict[str, Any]],
) -> tuple[list[ToolCall], list[InvalidToolCall]]:
    tool_calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for raw in raw_calls:
        try:
            parsed = parse_tool_call(raw, return_id=True)
        except Exception as error:  # a provider's malformed JSON arguments
            function = raw.get("function") or {}
            invalid.append(
                invalid_tool_call(
                    name=function.get("name"),
                    args=function.get("arguments"),
                    id=raw.get("id"),
                    error=str(error),
                )
            )
            continue
        if parsed is not None:
            tool_calls.append(
                ToolCall(name=parsed["name"], args=parsed["args"], id=parsed.get("id"))
            )
    return tool_calls, invalid


class MnimiChatModel(InvocationParamsWithoutCredentials, BaseChatModel):
    """A LangChain chat model whose answers come from Mnimi sample sequences.

    By default it draws from ``Persistent(LiteLLMModel(model, ...), cache_dir)``,
    built on the first call (under a lock, so concurrent first calls share one
    layer). Pass ``layer=`` to draw from any core layer instead.

    Everything that changes the output distribution is in the cache key: the
    model (or ``alias``), ``temperature``, the generic endpoint ``api_base``
    (without an alias), ``max_tokens``, ``stop``, bound ``tools`` /
    ``tool_choice`` / ``response_format`` and any other provider keyword
    (``top_p``, ``seed``, ...; unknown constructor keywords are collected in
    ``model_kwargs``). ``n``, credentials, ``timeout``, ``max_retries`` and LiteLLM's
    own options (``ssl_verify``, ``tags``, ...) are not: copies of a chat model that differ
    only in those (or in ``max_batch``) draw from one shared sequence, so inside
    ``independent()`` they get distinct samples, and each sends its refills with its own
    key, timeout and retries. Credentials given as provider keywords
    (``aws_secret_access_key=...``) are kept as secrets: never shown, traced or serialised.

    Semantics of a call, decided by the enclosing scopes (``mnimi_adapters.independent``,
    ``repeatable``, ``no_cache``):

    * outside any scope: repeatable; identical requests replay positions
      ``0..n-1`` of their sequence;
    * in ``independent()``: the next ``n`` positions of the sequence;
    * in ``no_cache()``: straight to the provider, nothing stored.

    ``n=k`` makes ``generate`` return ``k`` distinct generations, drawn in one
    provider request where possible; ``invoke`` returns the first (as
    LangChain does). Streaming replays a cached sample as chunks; a streamed
    miss is drawn without streaming, stored once complete and then streamed.

    LangGraph retries: a node with a ``RetryPolicy`` re-sends identical input.
    On attempt ``k`` of a node (``get_runtime().execution_info.node_attempt``)
    a repeatable call skips the first ``(k - 1) * n`` samples of each request's
    sequence, i.e. attempt ``k`` sees the sequence as if it started at position
    ``(k - 1) * n``. So every attempt gets fresh samples, and re-running the whole
    graph (in this process or a later one) replays the same samples per attempt.
    Calls that continue a sequence anyway (in ``independent()``) or that are not
    cached (``no_cache()``, a plain model as ``layer``) are not shifted.

    Each generation's ``response_metadata`` holds ``model_name``,
    ``finish_reason`` and the cache facts ``cache_hit``, ``sequence_index`` and
    ``cache_key``; ``usage_metadata`` holds the sample's share of the token usage.
    In replication mode a missing sample raises
    :class:`~mnimi_adapters.ReplicationCacheMiss` through chains.

    LangChain's own cache (``cache=``, ``set_llm_cache``) is off by default: it
    would return one generation for every identical request.

    Args:
        model: LiteLLM model name, e.g. ``"fireworks_ai/accounts/fireworks/models/x"``
            or ``"openai/<name>"`` with ``api_base``. A per-call ``model=`` keyword
            selects another model (with its own sequences).
        temperature: Sampling temperature.
        cache_dir: Directory of the persistent sample store.
        replication: Never call the provider; a missing sample raises
            ``ReplicationCacheMiss``.
        n: Generations per call.
        max_batch: Most samples one provider request may return.
        alias: The model's name in cache keys (share a cache across providers).
        api_base: Base URL of an OpenAI-compatible endpoint.
        api_key: The provider key; if not given, LiteLLM reads the provider's own
            variable (e.g. ``FIREWORKS_API_KEY``) when the first request is sent.
        max_tokens: Completion token limit.
        stop: Stop sequences.
        timeout: Seconds per provider request.
        max_retries: Provider retries on transient errors.
        model_kwargs: Further LiteLLM parameters, sent with (and keyed into) every request.
        layer: Draw from this core layer instead of building one.

    Example:
        >>> from mnimi_adapters.core import Persistent  # doctest: +SKIP
        >>> chat = MnimiChatModel(layer=Persistent(my_model, "llm_cache"))  # doctest: +SKIP
        >>> chain = prompt | chat | StrOutputParser()  # doctest: +SKIP
        >>> with independent():  # doctest: +SKIP
        ...     answers = chain.batch([{"topic": "cats"}] * 5)  # five independent samples
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str | None = None
    temperature: float = 1.0
    cache_dir: str = "~/.llm_cache"
    replication: bool = False
    n: int = Field(default=1, ge=1)
    max_batch: int = Field(default=1, ge=1)
    alias: str | None = None
    api_base: str | None = None
    api_key: SecretStr | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    timeout: float | None = None
    max_retries: int | None = None
    streaming: bool = False
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    layer: Layer | None = Field(default=None, exclude=True)
    # LangChain's request-level cache returns one answer to every identical request,
    # which is exactly the independence bug Mnimi exists to fix: off unless asked for.
    cache: BaseCache | bool | None = Field(default=False, exclude=True)

    # The configuration the layers were built for, and the layers by model override. A
    # copy (model_copy) or a changed field never reuses a layer built for another one.
    _built: tuple[tuple[Any, ...], dict[str | None, Layer]] | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _collect_model_kwargs(cls, values: Any) -> Any:
        """Move unknown constructor keywords into ``model_kwargs`` (``top_p=...``)."""
        if not isinstance(values, dict):
            return values
        known = set()
        for name, info in cls.model_fields.items():
            known.add(name)
            if info.alias:
                known.add(info.alias)
        extra = {k: values[k] for k in list(values) if k not in known}
        if not extra:
            return values
        values = {k: v for k, v in values.items() if k not in extra}
        model_kwargs = dict(values.get("model_kwargs") or {})
        for key, value in extra.items():
            if key in model_kwargs:
                raise ValueError(f"{key!r} was given both directly and in model_kwargs")
            model_kwargs[key] = value
        values["model_kwargs"] = model_kwargs
        return values

    @model_validator(mode="after")
    def _check_source(self) -> MnimiChatModel:
        if self.layer is None and not self.model:
            raise ValueError("MnimiChatModel needs model=... (a LiteLLM model name) or layer=...")
        if self.layer is not None:
            if self.model:
                raise ValueError("give MnimiChatModel either model=... or layer=..., not both")
            if not isinstance(self.layer, Layer):
                raise TypeError(f"layer must be a core Layer, got {type(self.layer).__name__}")
            clash = sorted(f for f in _LAYER_FIELDS if f in self.model_fields_set)
            if clash:
                raise ValueError(
                    f"{', '.join(clash)} configure the provider layer; with layer=... set them "
                    "on that layer instead"
                )
        forbidden = {"api_key", "n", "stream", "model"} & set(self.model_kwargs)
        if forbidden:
            raise ValueError(f"model_kwargs may not hold {sorted(forbidden)}; use the fields")
        if any(is_credential(name) for name in self.model_kwargs):
            # Wrapped like api_key, so that repr, model_dump and tracebacks never show them.
            self.model_kwargs = {k: _hide(k, v) for k, v in self.model_kwargs.items()}
        return self

    # -- LangChain plumbing ------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "mnimi-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        """What identifies this model's outputs (never a credential).

        LangChain sends these to callbacks and tracers (as invocation params).
        """
        defaults = self._request_defaults()
        if self.model_kwargs and any(is_credential(name) for name in defaults):
            defaults = {k: v for k, v in defaults.items() if not is_credential(k)}
        if self.layer is not None:
            return {"layer": repr(self.layer), **defaults, "n": self.n}
        return {
            "model": self.model,
            "temperature": self.temperature,
            "alias": self.alias,
            "api_base": self.api_base,
            # Invocation params reach callbacks and tracers: a Redis password must not.
            "cache_dir": shown_location(self.cache_dir),
            "replication": self.replication,
            "n": self.n,
            "max_batch": self.max_batch,
            **defaults,
        }

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["mnimi_adapters", "langchain"]

    @property
    def lc_secrets(self) -> dict[str, str]:
        # Serialised with the secret replaced by this variable name, read back on load.
        secrets = {"api_key": "MNIMI_API_KEY"}
        if url_has_password(self.cache_dir):  # a Redis URL with its password
            secrets["cache_dir"] = "MNIMI_CACHE_DIR"
        for name in self.model_kwargs:
            if is_credential(name):  # aws_secret_access_key -> AWS_SECRET_ACCESS_KEY
                secrets[name] = name.upper()  # serialised as a keyword of its own: to_json
        return secrets

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name == "model_kwargs" and value:
                # Also when a credential was put there after construction, unwrapped.
                value = {k: _hide(k, v) for k, v in value.items()}
            yield name, shown_location(value) if name == "cache_dir" else value

    def to_json(self) -> Any:
        """LangChain serialisation; a model over a user ``layer`` cannot be serialised."""
        if self.layer is not None:
            not_implemented: SerializedNotImplemented = to_json_not_implemented(self)
            return not_implemented
        serialized = super().to_json()
        hidden = [name for name in self.model_kwargs if is_credential(name)]
        if not hidden or serialized.get("type") != "constructor":
            return serialized
        # Credentials among the provider keywords become secret references of their own:
        # LangChain escapes a reference nested in model_kwargs, so it would not be read
        # back. On load the keyword returns to model_kwargs (_collect_model_kwargs).
        constructor = cast(SerializedConstructor, serialized)
        kwargs = dict(constructor["kwargs"])
        public = {k: v for k, v in kwargs.pop("model_kwargs", {}).items() if k not in hidden}
        if public:
            kwargs["model_kwargs"] = public
        for name in hidden:
            kwargs[name] = {"lc": 1, "type": "secret", "id": [self.lc_secrets[name]]}
        constructor["kwargs"] = kwargs
        return constructor

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="mnimi",
            ls_model_name=str(kwargs.get("model") or self._model_name(None)),
            ls_model_type="chat",
        )
        temperature = kwargs.get("temperature", self.temperature if self.layer is None else None)
        if isinstance(temperature, int | float):
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if isinstance(max_tokens, int):
            params["ls_max_tokens"] = max_tokens
        stop = stop if stop is not None else self.stop
        if stop:
            params["ls_stop"] = list(stop)
        return params

    # -- layers -------------------------------------------------------------------------

    def _model_name(self, override: str | None) -> str:
        if override:
            return override
        if self.model:
            return self.model
        assert self.layer is not None
        return str(self.layer.identity().get("model"))

    def _config(self) -> tuple[Any, ...]:
        """The fields a built layer depends on (how requests are sent travels per call)."""
        return (
            self.model,
            self.temperature,
            self.alias,
            self.api_base,
            self.cache_dir,
            self.replication,
        )

    def _layer_for(self, override: str | None) -> Layer:
        """The cache layer for ``override`` (or the configured model), built once."""
        if self.layer is not None:
            if override and override != self._model_name(None):
                raise ValueError(
                    f"cannot switch to model {override!r}: this MnimiChatModel draws from a "
                    "given layer"
                )
            return self.layer
        config = self._config()
        built = self._built
        # Compared, not hashed: tuple equality checks identity first, so a hit costs
        # well under a microsecond.
        if built is not None and built[0] == config:
            layer = built[1].get(override)
            if layer is not None:
                return layer
        model = override or self.model
        assert model is not None
        # The sequence identity only: copies that differ in api_key, timeout, max_retries or
        # max_batch must share the layer (and so a scope's cursor); _prepare sends those
        # with each call.
        key = (
            model,
            self.temperature,
            self.alias if not override else None,
            self.api_base,
            os.path.abspath(os.path.expanduser(self.cache_dir)),
            self.replication,
        )
        # One lock for building: concurrent first calls (asyncio.gather, thread pools)
        # must end up with the same layer, or each would start its own cursors.
        with _SHARED_LOCK:
            built = self._built
            if built is None or built[0] != config:
                built = self._built = (config, {})
            layer = built[1].get(override)
            if layer is None:
                layer = _SHARED_LAYERS.get(key)
                if layer is None:
                    layer = self._build_layer(model, alias=key[2])
                    _SHARED_LAYERS[key] = layer
                built[1][override] = layer
        return layer

    def _build_layer(self, model: str, alias: str | None) -> Layer:
        # No key, timeout, retries or max_batch here: the layer is shared by every copy
        # of this configuration, and each call brings its own (see _prepare).
        provider = LiteLLMModel(model, self.temperature, alias=alias, api_base=self.api_base)
        return Persistent(provider, self.cache_dir, replication=self.replication)

    def cache_stats(self, model: str | None = None) -> dict[str, int | float]:
        """What the cache layer did so far: hits, misses, provider requests, tokens, cost.

        Args:
            model: A per-call model override to report on (default: the configured model).

        Returns:
            :meth:`CacheLayer.stats` of the layer, or ``{}`` when it is not a cache layer
            or has not been used yet.

        Example:
            >>> chat.cache_stats()  # doctest: +SKIP
            {'hits': 4, 'misses': 1, 'requests': 1, 'samples_stored': 1, ...}
        """
        if self.layer is not None:
            layer: Layer | None = self.layer
        else:
            built = self._built
            override = None if model == self.model else model
            layer = built[1].get(override) if built and built[0] == self._config() else None
        return layer.stats() if isinstance(layer, CacheLayer) else {}

    # -- requests and samples ----------------------------------------------------------

    def _request_defaults(self) -> dict[str, Any]:
        params: dict[str, Any] = dict(self.model_kwargs)
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens
        if self.stop:
            params["stop"] = list(self.stop)
        return params

    def _prepare(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[Layer, Request, int, int, str]:
        """Turn one LangChain call into (layer, request, n, offset, model name)."""
        override = kwargs.get("model")
        if override is not None and not isinstance(override, str):
            raise TypeError(f"model must be a str, got {type(override).__name__}")
        n = kwargs.get("n", self.n)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        params = self._request_defaults()
        if stop is not None:
            if stop:
                params["stop"] = list(stop)
            else:
                params.pop("stop", None)
        for key, value in kwargs.items():
            if key not in _CALL_ONLY and value is not None:
                params[key] = value
        if override == self.model:
            override = None
        chat = tuple(convert_to_openai_messages(messages))
        request: Request
        if self.layer is None:
            # How this caller's refills are sent: the shared layer serves copies that
            # differ in these, so they travel with the call (a per-call keyword wins).
            # LiteLLMRequest keys none of them, nor LiteLLM's own options, as MnimiCache.
            if self.api_key is not None:
                params.setdefault("api_key", self.api_key)
            if self.timeout is not None:
                params.setdefault("timeout", self.timeout)
            if self.max_retries is not None:
                params.setdefault("max_retries", self.max_retries)
            request = LiteLLMRequest(chat, params, max_batch=self.max_batch)
        elif _over_litellm(self.layer):
            request = LiteLLMRequest(chat, params)
        else:
            # A custom model gets its keywords as given, secrets unwrapped.
            request = Request(chat, {k: _reveal(v) for k, v in params.items()})
        base = self._layer_for(override)
        layer = scoped(base)
        offset = 0
        # Only a sequence that replays from position 0 needs shifting for a retry.
        if isinstance(layer, CacheLayer) and caching_enabled():
            attempt = _node_attempt()
            if attempt > 1:
                offset = (attempt - 1) * n
        return layer, request, n, offset, self._model_name(override)

    def _draw(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[list[Sample], str]:
        layer, request, n, offset, model = self._prepare(messages, stop, kwargs)
        # n per refill, so a miss draws all n generations in one provider request.
        return layer.draw(request, offset + n, batch=n)[offset:], model

    async def _adraw(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[list[Sample], str]:
        layer, request, n, offset, model = self._prepare(messages, stop, kwargs)
        return (await layer.adraw(request, offset + n, batch=n))[offset:], model

    @staticmethod
    def _metadata(sample: Sample, model: str) -> dict[str, Any]:
        origin = sample.origin or {}
        return {
            "model_name": model,
            "finish_reason": sample.finish_reason,
            "cache_hit": bool(origin.get("cache_hit", False)),
            "sequence_index": origin.get("index"),
            "cache_key": origin.get("key"),
            "draw_id": sample.draw_id,
            "provider_model_name": sample.model,
        }

    def _generation(self, sample: Sample, model: str) -> ChatGeneration:
        raw_calls = sample.message.get("tool_calls")
        content = sample.text or sample.message.get("content") or ""
        calls: dict[str, Any] = {}
        if raw_calls:  # skipped when empty: validating empty lists costs a cache hit ~0.5 us
            calls["tool_calls"], calls["invalid_tool_calls"] = _parse_tool_calls(raw_calls)
        message = AIMessage(
            content=content,
            usage_metadata=_usage(sample),
            response_metadata=self._metadata(sample, model),
            **calls,
        )
        return ChatGeneration(
            message=message, generation_info={"finish_reason": sample.finish_reason}
        )

    def _chunks(self, sample: Sample, model: str) -> Iterator[ChatGenerationChunk]:
        """A stored sample as a stream: text pieces, tool-call chunks, then the totals."""
        content = sample.text or sample.message.get("content") or ""
        for piece in _split(content):
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
        raw_calls: list[dict[str, Any]] = sample.message.get("tool_calls") or []
        for index, raw in enumerate(raw_calls):
            function = raw.get("function") or {}
            call: ToolCallChunk = tool_call_chunk(
                name=function.get("name"),
                args=function.get("arguments") or "",
                id=raw.get("id"),
                index=index,
            )
            yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[call]))
        # Usage and metadata ride on the last chunk only: LangChain adds chunks up, so
        # metadata on several chunks would be concatenated or counted twice.
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=_usage(sample),
                response_metadata=self._metadata(sample, model),
                chunk_position="last",
            ),
            generation_info={"finish_reason": sample.finish_reason},
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        samples, model = self._draw(messages, stop, kwargs)
        return ChatResult(generations=[self._generation(s, model) for s in samples])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        samples, model = await self._adraw(messages, stop, kwargs)
        return ChatResult(generations=[self._generation(s, model) for s in samples])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        # A miss is drawn whole (and stored) before anything is streamed: a half-read
        # stream must never leave a torn sample behind.
        samples, model = self._draw(messages, stop, kwargs)
        for chunk in self._chunks(samples[0], model):
            if run_manager is not None:
                run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        samples, model = await self._adraw(messages, stop, kwargs)
        for chunk in self._chunks(samples[0], model):
            if run_manager is not None:
                await run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk

    # -- tools and structured output ---------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: dict[str, Any] | str | bool | None = None,
        strict: bool | None = None,
        parallel_tool_calls: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (OpenAI format); their calls are cached and replayed intact.

        Args:
            tools: Tools as dicts, pydantic classes, functions or ``BaseTool`` objects.
            tool_choice: ``"auto"``, ``"none"``, ``"required"``/``"any"``/``True``
                (call some tool), a tool name, or an OpenAI ``tool_choice`` dict.
            strict: Ask the provider to follow the schemas exactly.
            parallel_tool_calls: Allow several tool calls in one answer.
            **kwargs: Further request parameters.

        Returns:
            A runnable that returns ``AIMessage`` objects with ``tool_calls``.

        Example:
            >>> chat.bind_tools([get_weather], tool_choice="get_weather")  # doctest: +SKIP
        """
        formatted = [convert_to_openai_tool(tool, strict=strict) for tool in tools]
        names = [tool["function"]["name"] for tool in formatted]
        if tool_choice is not None and tool_choice is not False:
            if tool_choice is True or tool_choice == "any":
                tool_choice = "required"
            elif isinstance(tool_choice, str) and tool_choice not in ("auto", "none", "required"):
                if tool_choice not in names:
                    raise ValueError(f"tool_choice {tool_choice!r} names none of the tools {names}")
                tool_choice = {"type": "function", "function": {"name": tool_choice}}
            kwargs["tool_choice"] = tool_choice
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        return super().bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: Literal["function_calling", "json_mode", "json_schema"] = "function_calling",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | Any]:
        """A runnable that answers with an instance of ``schema`` (or a dict).

        LangChain's default implementation always uses tool calling; this one
        also offers the providers' JSON modes.

        Args:
            schema: A pydantic class, a ``TypedDict``, a JSON schema or an OpenAI
                tool schema.
            method: ``"function_calling"`` (a forced tool call), ``"json_mode"``
                (``response_format={"type": "json_object"}``; the prompt must ask
                for the keys) or ``"json_schema"`` (the provider's structured outputs).
            include_raw: Return ``{"raw", "parsed", "parsing_error"}`` instead of
                raising on a parsing error.
            strict: Ask the provider to follow the schema exactly.
            **kwargs: Not supported; present for interface compatibility.

        Returns:
            A runnable returning pydantic objects (pydantic schemas) or dicts.

        Raises:
            ValueError: Unknown ``method`` or unexpected keyword arguments.

        Example:
            >>> class Joke(BaseModel):  # doctest: +SKIP
            ...     setup: str
            ...     punchline: str
            >>> jokes = chat.with_structured_output(Joke, method="json_schema")  # doctest: +SKIP
            >>> jokes.invoke("Tell me a joke about cats.")  # doctest: +SKIP
            Joke(setup='...', punchline='...')
        """
        if kwargs:
            raise ValueError(f"unsupported arguments {sorted(kwargs)}")
        pydantic = _is_pydantic_class(schema)
        trace = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
        parser: OutputParserLike[Any]
        if method == "function_calling":
            name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools(
                [schema], tool_choice=name, strict=strict, ls_structured_output_format=trace
            )
            parser = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
                if pydantic
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
        elif method in ("json_mode", "json_schema"):
            if method == "json_mode":
                response_format: dict[str, Any] = {"type": "json_object"}
            else:
                function = convert_to_openai_tool(schema, strict=strict)["function"]
                spec: dict[str, Any] = {"name": function["name"], "schema": function["parameters"]}
                if function.get("description"):
                    spec["description"] = function["description"]
                if strict is not None:
                    spec["strict"] = strict
                response_format = {"type": "json_schema", "json_schema": spec}
            llm = self.bind(response_format=response_format, ls_structured_output_format=trace)
            parser = (
                PydanticOutputParser(pydantic_object=schema)  # type: ignore[arg-type]
                if pydantic
                else JsonOutputParser()
            )
        else:
            raise ValueError(
                f"method must be 'function_calling', 'json_mode' or 'json_schema', got {method!r}"
            )
        if not include_raw:
            return llm | parser
        parse = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        fallback = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parse.with_fallbacks(
            [fallback], exception_key="parsing_error"
        )


# LangChain inspects ``_generate``'s signature on every uncached call (to see whether it
# takes ``run_manager``); a precomputed ``__signature__`` makes that lookup ~10 us cheaper,
# a noticeable share of a cache hit.
MnimiChatModel._generate.__signature__ = inspect.signature(  # type: ignore[attr-defined]
    MnimiChatModel._generate
)
MnimiChatModel._agenerate.__signature__ = inspect.signature(  # type: ignore[attr-defined]
    MnimiChatModel._agenerate
)
