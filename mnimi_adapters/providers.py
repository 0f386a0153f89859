"""LiteLLM-backed provider models: 302.ai, CloseAI, Fireworks, XMCP and any OpenAI-compatible API.

Every provider here is a :class:`~mnimi_adapters.core.model.BatchedModel`: the base class
splits a refill of ``batch`` samples into ``ceil(batch / max_batch)`` requests, sends them
concurrently, drops empty answers and keeps the accounts. This module only turns one
``query(request, n)`` into one ``litellm.completion`` call (with retries), and its choices
into :class:`~mnimi_adapters.core.sample.Sample` records.

LiteLLM is imported on the first request, never at import time: importing it costs seconds
(it may try to download a price map), and ``import mnimi_adapters`` must stay fast.

Example:
    >>> from mnimi_adapters import AI302, Persistent  # doctest: +SKIP
    >>> model = Persistent(AI302("gpt-4o", 1.0, max_batch=10), "~/.llm_cache")  # doctest: +SKIP
    >>> next(model.sample("Choose a number between 1 and 1000."))  # doctest: +SKIP
    '92'
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import tenacity

from ._compat import (
    LITELLM_DROPPED,
    LITELLM_KEYED,
    LITELLM_OPTIONS,
    attempt_sent_again_on,
    litellm_clients_of_the_child,
    response_cost,
)
from .core.errors import ProviderError, ProviderRequestError
from .core.model import BatchedModel, afan_out, fan_out
from .core.request import (
    TRANSPORT_PARAMS,
    Request,
    is_credential,
    is_query_credential,
    keyed_params,
    reveal_secret,
    sent_secrets,
)
from .core.sample import Sample, new_draw_id, split_evenly

__all__ = [
    "AI302",
    "XMCP",
    "CloseAI",
    "FireworksAI",
    "LiteLLMModel",
    "LiteLLMRequest",
    "OpenAICompatible",
    "ProviderRequestError",
]

logger = logging.getLogger("mnimi_adapters.providers")

_T = TypeVar("_T")

# A forked worker must not share its parent's HTTP connections (see _compat).
os.register_at_fork(after_in_child=litellm_clients_of_the_child)

# Statuses worth another attempt: throttling, server trouble and "try again later" answers.
_RETRY_STATUSES = frozenset({408, 409, 425, 429})
# This layer decides these itself: n is the refill size, streaming would merge n > 1
# choices into one (a LiteLLM quirk), and retries are done here, with backoff.
_CONTROLLED_PARAMS = frozenset({"n", "stream", "stream_options", "num_retries", "max_retries"})
# "n" as a word of its own in an error message: "n must be at most 1", "['n']",
# "Unsupported parameter: 'n'", but not "\n" or the n in "n-gram".
_N_MENTION = re.compile(r"(?<![\w\\-])n(?![\w-])")
# Placeholder credential for OpenAI-compatible servers that need none; it keeps LiteLLM from
# sending the user's OPENAI_API_KEY to a third-party host.
_NO_KEY = "EMPTY"

# ---------------------------------------------------------------------------------------
# Which LiteLLM parameters are keyed
# ---------------------------------------------------------------------------------------
#
# One rule for every way into LiteLLM (LiteLLMModel, MnimiChatModel, and MnimiCache's own
# copy of it), so that Persistent(LiteLLMModel(...)) and MnimiCache share sequences whatever
# options a call carries. LiteLLM's own parameter names are a snapshot (see _compat);
# credentials are decided by their names' shape, whatever LiteLLM adds.

_PRICING = re.compile(r"(?:^|_)cost(?:_|$)")
# Words of a provider's own configuration: where a deployment serves a model (its region,
# location, zone, cloud project or endpoint; AWS's parameters all say which account, role or
# endpoint), as whom (a profile or role), which parameters LiteLLM drops for it, and the
# tracing span a call reports to. They pick a deployment of a model, not what the model
# answers: one a provider adds tomorrow is an option on the day it appears, as a credential
# is. LiteLLM's own parameters (``litellm_...``) and an API's flavour and version
# (``api_type``, ``api_version``) are options by their prefix.
_CONFIG_WORDS = frozenset(
    {"aws", "region", "location", "zone", "project", "endpoint", "profile", "role", "drop"}
    | {"otel", "span"}
)
_CONFIG_PREFIXES = ("litellm_", "api_")
_WORD = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|[^A-Za-z0-9]+")
# OpenAI request fields that change how a request is handled or billed, not its answer.
_OPENAI_TRANSPORT = frozenset(
    {
        "timeout",
        "base_url",
        "extra_headers",
        "deployment_id",
        "store",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
    }
)
# LiteLLM's per-call loggers (``completion(success_callback=[...])``): where a call is
# reported, not what it answers; a function in a key could not even be hashed.
_CALLBACK_PARAMS = frozenset(
    {"callbacks", "success_callback", "failure_callback", "input_callback", "logger_fn"}
)
ParamRole = Literal["drop", "transport", "sampling"]


@lru_cache(maxsize=1024)
def litellm_param_role(name: str) -> ParamRole:
    """How a parameter of a LiteLLM call is treated by the cache.

    ``"drop"``: LiteLLM's plumbing (not keyed; MnimiCache does not pass it on),
    ``"transport"``: sent, never keyed (credentials, timeouts, routing, logging options),
    ``"sampling"``: sent and keyed (it can change the answer).

    Example:
        >>> litellm_param_role("top_p"), litellm_param_role("ssl_verify")
        ('sampling', 'transport')
        >>> litellm_param_role("aws_secret_access_key"), litellm_param_role("num_retries")
        ('transport', 'drop')
    """
    if name in LITELLM_DROPPED or name.startswith("_"):
        return "drop"
    if name in LITELLM_KEYED:
        return "sampling"
    if (
        name in TRANSPORT_PARAMS
        or name in LITELLM_OPTIONS
        or name in _OPENAI_TRANSPORT
        or name in _CALLBACK_PARAMS
        or _PRICING.search(name)
        or is_credential(name)
        or _is_provider_config(name)
    ):
        return "transport"
    return "sampling"


def _is_provider_config(name: str) -> bool:
    """Whether ``name`` is a provider's configuration by its shape (see ``_CONFIG_WORDS``).

    Example:
        >>> [_is_provider_config(n) for n in ("vertex_location", "additional_drop_params")]
        [True, True]
        >>> _is_provider_config("top_k"), _is_provider_config("api")
        (False, False)
    """
    if name.startswith(_CONFIG_PREFIXES):
        return True
    return any(word.lower() in _CONFIG_WORDS for word in _WORD.split(name))


@dataclass(frozen=True, eq=False)
class LiteLLMRequest(Request):
    """A request for a :class:`LiteLLMModel`, keyed by :func:`litellm_param_role`.

    Its ``params`` may mix sampling parameters with LiteLLM options and credentials
    (``ssl_verify``, ``tags``, ``api_key``, ``timeout``, ...): only the sampling ones reach
    the key, so the request shares its sequence with the same call made through
    :class:`~mnimi_adapters.litellm.MnimiCache`. Transport values travel with the call:
    they override the model's own (``timeout``, ``api_key``, ``max_retries``).

    Args:
        max_batch: The most samples one request of this call's refills may ask for
            (default: the model's ``max_batch``).

    Example:
        >>> request = LiteLLMRequest(({"role": "user", "content": "hi"},), {"top_p": 0.5,
        ...     "ssl_verify": False, "timeout": 5})
        >>> request.sampling_params()
        {'top_p': 0.5}
    """

    max_batch: int | None = None

    def sampling_params(self) -> dict[str, Any]:
        # keyed_params too: the credentials a listed or nested object carries stay out.
        return keyed_params(
            {k: v for k, v in self.params.items() if litellm_param_role(k) == "sampling"}
        )


# ---------------------------------------------------------------------------------------
# Marking calls made by the provider layer
# ---------------------------------------------------------------------------------------

_provider_call: ContextVar[bool] = ContextVar("mnimi_provider_call", default=False)


@contextlib.contextmanager
def provider_call_active() -> Iterator[None]:
    """Mark the enclosed code as a provider layer's own call to LiteLLM.

    :class:`~mnimi_adapters.litellm.MnimiCache` answers ``litellm.completion`` calls from
    the sample sequences; the calls this layer makes to draw the missing samples must go
    through to the provider instead. The mark is a ContextVar: asyncio tasks inherit it,
    and this module sets it again inside every worker thread it uses.

    Example:
        >>> with provider_call_active():
        ...     in_provider_call()
        True
        >>> in_provider_call()
        False
    """
    token = _provider_call.set(True)
    try:
        yield
    finally:
        _provider_call.reset(token)


def in_provider_call() -> bool:
    """Whether the current code runs inside a provider layer's call to LiteLLM.

    Example:
        >>> in_provider_call()
        False
    """
    return _provider_call.get()


def _sent_secrets(kwargs: Mapping[str, Any]) -> list[str]:
    """Every credential a call sent, longest first (see :func:`sent_secrets`), but the
    placeholder key sent where none may be: ``EMPTY`` is no secret."""
    return [secret for secret in sent_secrets(kwargs) if secret != _NO_KEY]


def callers_max_retries(params: Mapping[str, Any]) -> int | None:
    """The ``max_retries`` a call asked for, if it is a valid count, else ``None``."""
    return retry_count(params.get("max_retries"))


def retry_count(value: Any) -> int | None:
    """``value`` if it is a valid count of retries (an int >= 0, not a bool), else ``None``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _litellm() -> ModuleType:
    # Imported on first use only: ``import litellm`` takes seconds.
    import litellm

    return litellm


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


class _NotSupportedN(ProviderRequestError):
    """The provider refused a request because of ``n`` > 1."""


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and its causes: LiteLLM wraps the SDK's exception, which wraps httpx's."""
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen and len(seen) < 16:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _http_response(error: BaseException) -> Any:
    """The provider's HTTP response behind ``error``, if it got that far."""
    import httpx

    for link in _chain(error):
        if isinstance(link, httpx.HTTPStatusError):
            return link.response
    return None


def _status(error: BaseException) -> int | None:
    """The HTTP status the provider answered, or ``None`` if no answer came.

    LiteLLM gives a connection failure the status 500 and a timeout 408, though nothing
    answered: reported as such, they sent users looking for a provider outage.
    """
    response = _http_response(error)
    if response is not None:
        return int(response.status_code)
    if _never_answered(error):
        return None
    status = getattr(error, "status_code", None)
    return status if isinstance(status, int) else None


def _never_answered(error: BaseException) -> bool:
    """Whether ``error`` came from the network (no connection, a timeout), not an answer."""
    import httpx

    return any(
        isinstance(link, httpx.TransportError | ConnectionError | TimeoutError)
        for link in _chain(error)
    )


def _is_malformed(error: BaseException) -> bool:
    # LiteLLM reports a 200 with a non-JSON body as a 500 (openai route) or an APIError
    # (fireworks route); only the JSONDecodeError in the chain tells the truth.
    return any(isinstance(link, json.JSONDecodeError) for link in _chain(error))


def _is_retryable(error: BaseException) -> bool:
    """Rate limits, 5xx, timeouts, connection errors and malformed bodies; never another 4xx.

    A 200 whose body is not JSON was garbled or cut short on the way: LiteLLM retries it
    too, as the 500 it reports it as.
    """
    litellm = _litellm()
    response = _http_response(error)
    if response is not None:
        status = int(response.status_code)
        return status in _RETRY_STATUSES or status >= 500
    if _never_answered(error) or _is_malformed(error):
        return True
    # LiteLLM also reports client-side mistakes (missing credentials, a bad parameter) as
    # InternalServerError or APIConnectionError: without an HTTP response or a network
    # error behind them, only classes that cannot mean a local mistake are retried.
    return isinstance(
        error,
        litellm.RateLimitError
        | litellm.ServiceUnavailableError
        | litellm.BadGatewayError
        | litellm.Timeout,
    )


def _retried(attempt: int, retries: int) -> Callable[[Exception], bool]:
    """Whether a failure of attempt ``attempt`` (from 1) is retried: then it is not the
    request's outcome, and LiteLLM does not log it as a failure (see ``_compat``)."""
    return lambda error: attempt <= retries and _is_retryable(error)


def _headers(error: BaseException) -> dict[str, str]:
    response = _http_response(error)
    headers: Any = getattr(response, "headers", None)
    if not headers:
        headers = getattr(error, "litellm_response_headers", None)
    if not headers:
        headers = getattr(getattr(error, "response", None), "headers", None)
    if not headers:
        return {}
    try:
        return {str(k).lower(): str(v) for k, v in headers.items()}
    except (AttributeError, TypeError):
        return {}


def _retry_after(error: BaseException) -> float | None:
    """Seconds the provider asked to wait before retrying, from ``retry-after(-ms)``."""
    headers = _headers(error)
    if "retry-after-ms" in headers:
        with contextlib.suppress(ValueError):
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    with contextlib.suppress(TypeError, ValueError, IndexError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return None


def refuses_n(error: BaseException) -> bool:
    """Whether ``error`` is a 400 about the ``n`` parameter (providers limited to one choice:
    Groq answers ``n`` > 1 with "n must be at most 1")."""
    if _status(error) not in (400, 422):
        return False
    if getattr(error, "param", None) == "n":
        return True
    return bool(_N_MENTION.search(str(getattr(error, "message", None) or error)))


# ---------------------------------------------------------------------------------------
# One query's decisions, apart from its I/O
# ---------------------------------------------------------------------------------------

#: What one query decides (``LiteLLMModel._plan``), written once for sync and async: it
#: yields the sizes of the requests to send next, all at once (``[n]``, or ``[1] * n`` to
#: emulate ``n``), is sent their samples or thrown their error, and returns the answer.
_Plan = Generator[list[int], list[Sample], list[Sample]]


def _carry_out(plan: _Plan, send: Callable[[list[int]], list[Sample]]) -> list[Sample]:
    """Send the requests ``plan`` asks for, hand it what came of them, and return its answer."""
    try:
        sizes = next(plan)
        while True:
            try:
                samples = send(sizes)
            except Exception as error:
                sizes = plan.throw(error)
            else:
                sizes = plan.send(samples)
    except StopIteration as done:
        return done.value


async def _acarry_out(
    plan: _Plan, send: Callable[[list[int]], Awaitable[list[Sample]]]
) -> list[Sample]:
    """Async :func:`_carry_out`."""
    try:
        sizes = next(plan)
        while True:
            try:
                samples = await send(sizes)
            except Exception as error:
                sizes = plan.throw(error)
            else:
                sizes = plan.send(samples)
    except StopIteration as done:
        return done.value


# ---------------------------------------------------------------------------------------
# The generic LiteLLM model
# ---------------------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def _provider_of(model: str) -> str | None:
    """The LiteLLM provider a model name routes to (``gpt-4o``: ``openai``), if known."""
    prefix, slash, _ = model.partition("/")
    if slash and prefix in _litellm().provider_list:
        return prefix
    try:
        return str(_litellm().get_llm_provider(model)[1])
    except Exception:  # LiteLLM cannot route it: the call itself will say so
        return None


def configured_api_base(model: str, provider: str | None = None) -> str | None:
    """The base URL a call of ``model`` without ``api_base`` goes to, if the user set one.

    LiteLLM sends such a call to ``litellm.api_base`` or, for most providers, to the
    ``<PROVIDER>_API_BASE`` environment variable (for OpenAI ``OPENAI_BASE_URL``, then
    ``OPENAI_API_BASE``), before its default. Two servers reached that way are two
    endpoints, as two given ``api_base`` are: the key must tell them apart.

    Args:
        model: The model name as passed to LiteLLM.
        provider: Its ``custom_llm_provider``, if the call names one.
    """
    configured = _litellm().api_base
    if isinstance(configured, str) and configured:
        return configured
    provider = provider or _provider_of(model)
    if not provider:
        return None
    names = ("OPENAI_BASE_URL", "OPENAI_API_BASE") if provider == "openai" else ()
    for name in (*names, f"{provider.upper()}_API_BASE"):
        value = os.environ.get(name)
        if value:
            return value
    return None


def keyed_endpoint(url: str) -> str:
    """``url`` as a cache key and a stored record name it: without its credentials.

    A base URL may carry a password (``https://user:secret@host/v1``) or a key in its
    query (``?api-key=...``, an Azure Functions ``?code=``, a signature's ``?sig=``: see
    :func:`is_query_credential`). Credentials never reach a key or a stored value, and two
    addresses that differ only in them are one endpoint, as two API keys are one model.
    Nor does a final ``/`` of the path: every client joins its routes to a base URL with
    or without one alike, so ``.../v1/`` and ``.../v1`` are one endpoint too.

    Example:
        >>> keyed_endpoint("https://user:secret@host/v1?api-key=k&deployment=d")
        'https://host/v1?deployment=d'
        >>> keyed_endpoint("https://fn.example/api/?code=c&sig=s&v=1")
        'https://fn.example/api?v=1'
    """
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    path = parts.path.rstrip("/")
    query = parts.query
    if query:  # always spelled one way: the same parameters are the same endpoint
        fields = parse_qsl(query, keep_blank_values=True)
        kept = [(k, v) for k, v in fields if not is_query_credential(k)]
        query = urlencode(kept)
    if (netloc, path, query) == (parts.netloc, parts.path, parts.query):
        return url
    return urlunsplit(parts._replace(netloc=netloc, path=path, query=query))


class LiteLLMModel(BatchedModel):
    """Any model LiteLLM can route to, sampled through ``litellm.completion``.

    Args:
        model: A LiteLLM model string, e.g. ``"fireworks_ai/accounts/fireworks/models/x"``
            or ``"openai/llama3"``.
        temperature: Sampling temperature.
        alias: The model's name in cache keys. Without an alias, a model with an
            ``api_base`` keys its entries by that endpoint too, so two local servers that
            both call their model "llama3" never share entries.
        max_batch: The most samples one request may ask for (``n``).
        api_base: The endpoint to send requests to (default: LiteLLM's for the route).
        api_key: The API key. Never part of a key, a stored sample or a message.
        api_key_env: Environment variable to read the key from when the first request is
            sent. Without ``api_key`` and ``api_key_env``, LiteLLM finds the key itself,
            except on an ``openai/`` route with an ``api_base``: there a placeholder is
            sent, so that ``OPENAI_API_KEY`` never reaches a third-party endpoint (pass
            ``api_key_env="OPENAI_API_KEY"`` if that endpoint wants it).
        supports_n: Whether the provider returns several choices per request. If not (or
            once it answers a 400 about ``n``, or ignores ``n``), ``n`` samples are drawn
            with ``n`` concurrent single-choice requests.
        max_retries: Retries after the first attempt, on rate limits (429), server errors
            (5xx), timeouts and connection errors. Other 4xx answers raise at once.
        timeout: Seconds to wait for one response.
        retry_wait: Base of the exponential backoff in seconds (randomised: full jitter).
        max_retry_wait: Cap on one wait, also on a provider's ``Retry-After``.
        **litellm_kwargs: Default sampling parameters (``max_tokens``, ``stop``, ``seed``,
            ``top_p``, ``tools``, ``response_format``, ...) and LiteLLM options. A request's
            own parameters win over them, and so do its ``timeout``, ``api_key`` and
            ``max_retries``. Sampling parameters are part of the cache key; LiteLLM's own
            options (``ssl_verify``, ``tags``, ``logger_fn``, ...) and credentials are not
            (see :func:`litellm_param_role`).

    Example:
        >>> model = LiteLLMModel("openai/llama3", 0.7, api_base="http://127.0.0.1:8000/v1")
        >>> model.identity()
        {'model': 'openai/llama3', 'params': {'temperature': 0.7}, 'endpoint': 'http://127.0.0.1:8000/v1'}
    """

    #: The LiteLLM functions a request goes to: the synchronous and the async one.
    entry_points: tuple[str, str] = ("completion", "acompletion")

    def __init__(
        self,
        model: str,
        temperature: float = 1.0,
        alias: str | None = None,
        max_batch: int = 1,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        api_key_env: str | None = None,
        supports_n: bool = True,
        max_retries: int = 4,
        timeout: float = 120.0,
        retry_wait: float = 0.5,
        max_retry_wait: float = 60.0,
        **litellm_kwargs: Any,
    ) -> None:
        super().__init__(model, temperature, alias, max_batch)
        if "n" in litellm_kwargs:
            raise TypeError(
                "n is not a model parameter: ask for samples with sample(prompt, batch=k) "
                "and limit the samples per request with max_batch"
            )
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        self.route = model
        self.api_base = api_base.rstrip("/") if api_base else None
        self.api_key_env = api_key_env
        self.supports_n = supports_n
        self.max_retries = max_retries
        self.timeout = timeout
        self.retry_wait = retry_wait
        self.max_retry_wait = max_retry_wait
        self.litellm_kwargs = dict(litellm_kwargs)
        self._api_key = api_key
        # Whether the endpoint is "the provider" (named providers) or a generic one whose
        # address belongs in the cache key.
        self._keyed_by_endpoint = True
        # Learned at run time: a provider that rejected or ignored n > 1.
        self._n_supported = supports_n

    def __repr__(self) -> str:
        shown = self.api_base and keyed_endpoint(self.api_base)
        base = f", api_base={shown!r}" if shown and self._keyed_by_endpoint else ""
        return f"{type(self).__name__}({self.model_name!r}, {self.temperature}{base})"

    def identity(self) -> dict[str, Any]:
        params = {"temperature": self.temperature}
        # LiteLLM's rule, not only the core's: MnimiCache keys a call carrying these options
        # the same way, and options such as logger_fn=print are not even JSON.
        params.update(
            (k, v) for k, v in self.litellm_kwargs.items() if litellm_param_role(k) == "sampling"
        )
        identity: dict[str, Any] = {"model": self.alias or self.model_name, "params": params}
        if self.alias is None and self._keyed_by_endpoint:
            # Given or configured.
            api_base = self.api_base or configured_api_base(self.model_name)
            if api_base:
                identity["endpoint"] = keyed_endpoint(api_base)
        return identity

    # -- sending --------------------------------------------------------------------

    def _resolve_key(self) -> str | None:
        """The API key, read now (at the first request), never at construction.

        ``None`` lets LiteLLM find the provider's key itself.
        """
        if self._api_key is not None:
            return self._api_key
        if self.api_key_env:
            value = os.environ.get(self.api_key_env)
            if not value:
                raise ProviderError(
                    f"{self!r} needs an API key: set the environment variable "
                    f"{self.api_key_env} (or pass api_key=...)"
                )
            return value
        if self._third_party_openai():
            # LiteLLM would send OPENAI_API_KEY to whatever host api_base names.
            return _NO_KEY
        return None

    def _third_party_openai(self) -> bool:
        """An ``openai`` route sent to an endpoint of the user's choosing."""
        openai_route = self.route.startswith("openai/") or (
            self.litellm_kwargs.get("custom_llm_provider") == "openai"
        )
        return openai_route and bool(self.api_base or self.litellm_kwargs.get("base_url"))

    def _kwargs(self, request: Request, n: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"temperature": self.temperature, "timeout": self.timeout}
        kwargs.update(self.litellm_kwargs)
        # The caller's transport settings (timeout, api_key, ...) win over the model's: one
        # model serves every caller of a sequence, each sending its refills its own way.
        kwargs.update(request.params)
        for name in _CONTROLLED_PARAMS:
            kwargs.pop(name, None)
        for name, value in kwargs.items():
            if is_credential(name):
                kwargs[name] = reveal_secret(value)
        kwargs["model"] = self.route
        kwargs["messages"] = list(request.messages)
        if n > 1:
            kwargs["n"] = n
        if self.api_base:
            kwargs.setdefault("api_base", self.api_base)
        if kwargs.get("api_key") is None:
            kwargs.pop("api_key", None)
            key = self._resolve_key()
            if key is not None:
                kwargs["api_key"] = key
        # Retries happen here, with backoff and Retry-After; LiteLLM's and the OpenAI SDK's
        # own retries would multiply the attempts.
        kwargs["num_retries"] = 0
        kwargs["max_retries"] = 0
        # A LiteLLM cache must never answer a provider call: it would replay one sample as
        # if it were a fresh draw. (MnimiCache also checks in_provider_call().) Nor store
        # one: LiteLLM would serialise every response for a cache that keeps nothing.
        kwargs["caching"] = False
        kwargs["cache"] = {"no-cache": True, "no-store": True}
        return kwargs

    def _retries(self, request: Request) -> int:
        """Retries for this call: the caller's ``max_retries``, else the model's."""
        retries = callers_max_retries(request.params)
        return self.max_retries if retries is None else retries

    def _retry_options(self, retries: int) -> dict[str, Any]:
        return {
            "stop": tenacity.stop_after_attempt(retries + 1),
            "wait": self._wait,
            "retry": tenacity.retry_if_exception(_is_retryable),
            "before_sleep": self._log_retry,
            # The provider's own exception reaches _failure(), not tenacity's RetryError.
            "reraise": True,
        }

    def _wait(self, state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        hinted = _retry_after(error) if error is not None else None
        if hinted is not None:
            return min(hinted, self.max_retry_wait)
        backoff = tenacity.wait_random_exponential(
            multiplier=self.retry_wait, max=self.max_retry_wait
        )
        return float(backoff(state))

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        stop = getattr(state.retry_object, "stop", None)
        retries = getattr(stop, "max_attempt_number", self.max_retries + 1) - 1
        # Only the error's class and status: a provider message might echo a credential.
        logger.info(
            "%r: %s (HTTP %s), retry %d of %d in %.2f s",
            self,
            type(error).__name__,
            _status(error) if error is not None else None,
            state.attempt_number,
            retries,
            wait,
        )

    def _scrub(self, text: str, kwargs: Mapping[str, Any]) -> str:
        for secret in _sent_secrets(kwargs):
            text = text.replace(secret, "***")
        return text

    def _cause(self, error: BaseException, kwargs: Mapping[str, Any]) -> BaseException | None:
        """``error``, unless a provider echoed a secret into it: then no traceback shows it.

        A secret deeper in its chain is cut off with the rest of the chain: httpx's error
        names the URL, password and all, and the LiteLLM exception above it is still the
        one a caller (and a Router) knows how to handle.
        """
        secrets = list(_sent_secrets(kwargs))
        above: BaseException | None = None
        for link in _chain(error):
            text = str(link)
            if any(secret in text for secret in secrets):
                if above is None:
                    return None
                above.__cause__ = above.__context__ = None
                above.__suppress_context__ = True
                break
            above = link
        return error

    def _failed(
        self, error: BaseException, attempts: int, n: int, kwargs: Mapping[str, Any]
    ) -> tuple[ProviderRequestError, BaseException | None]:
        """The error to raise for ``error``, and its cause (``None`` if the key was echoed).

        Raise it out of the ``except`` block that caught ``error``: raised in it, Python
        attaches ``error`` as its context, and an echoed key would reach whatever walks
        the chain (error reporters do), hidden from the traceback only.
        """
        return self._failure(error, attempts, n, kwargs), self._cause(error, kwargs)

    def _failure(
        self, error: BaseException, attempts: int, n: int, kwargs: Mapping[str, Any]
    ) -> ProviderRequestError:
        """Turn a LiteLLM exception into a clear ProviderRequestError (no credentials)."""
        status = _status(error)
        detail = self._scrub(str(getattr(error, "message", None) or error), kwargs)
        if len(detail) > 1000:
            detail = detail[:1000] + "..."
        name = repr(self)
        base = kwargs.get("api_base")
        # As the key names it: a password in the URL is no part of an error.
        shown = keyed_endpoint(str(base)) if base else ""
        where = f" at {shown}" if shown and shown not in name else ""
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        if _is_malformed(error):
            decode = next(e for e in _chain(error) if isinstance(e, json.JSONDecodeError))
            message = (
                f"{name}{where} answered with a malformed response body{tries} "
                f"(not valid JSON: {decode})"
            )
            return ProviderRequestError(message, status, attempts, retryable=True)
        retryable = _is_retryable(error)
        if status is not None:
            code = f"HTTP {status}"
        elif _never_answered(error):
            code = "no answer: a connection failure or a timeout"
        else:
            code = type(error).__name__
        message = f"{name}{where} request failed ({code}){tries}: {detail}"
        if n > 1 and refuses_n(error):
            return _NotSupportedN(message, status, attempts)
        return ProviderRequestError(message, status, attempts, retryable)

    def _send(self, request: Request, n: int, attempts: list[int]) -> list[Sample]:
        """One request for ``n`` choices, retried; ``attempts`` collects the sends."""
        kwargs = self._kwargs(request, n)
        send = getattr(_litellm(), self.entry_points[0])
        response, tries = self._retrying(lambda: send(**kwargs), request, n, kwargs, attempts)
        return self._asked(self._samples(response), n, tries)

    async def _asend(self, request: Request, n: int, attempts: list[int]) -> list[Sample]:
        """Async :meth:`_send`."""
        kwargs = self._kwargs(request, n)
        send = getattr(_litellm(), self.entry_points[1])
        response, tries = await self._aretrying(
            lambda: send(**kwargs), request, n, kwargs, attempts
        )
        return self._asked(self._samples(response), n, tries)

    def _retrying(
        self,
        send: Callable[[], _T],
        request: Request,
        n: int,
        kwargs: Mapping[str, Any],
        attempts: list[int],
    ) -> tuple[_T, int]:
        """What ``send()`` returns, retried on a transient failure, and how many attempts it took.

        ``send`` makes one attempt of the request ``kwargs`` for ``n`` choices; ``attempts``
        receives the count whatever the outcome, and a final failure is raised as a
        :class:`ProviderRequestError`. The first attempt is made outside tenacity, whose
        loop costs a miss about 100 us; a retryable failure of it is handed to tenacity as
        its first attempt's outcome.
        """
        retries = self._retries(request)
        tries = 1
        first: list[Exception] = []
        failed: tuple[ProviderRequestError, BaseException | None] | None = None
        try:
            try:
                with provider_call_active(), attempt_sent_again_on(_retried(tries, retries)):
                    return send(), tries
            except Exception as error:
                first = self._first_failure(error, retries)
            for attempt in tenacity.Retrying(**self._retry_options(retries)):
                with attempt:
                    if first:
                        raise first.pop()
                    tries += 1
                    retried = _retried(tries, retries)
                    with provider_call_active(), attempt_sent_again_on(retried):
                        result = send()
        except Exception as error:
            failed = self._failed(error, tries, n, kwargs)
        finally:
            attempts.append(tries)
        if failed is not None:  # raised here, out of the except block: see _failed
            raise failed[0] from failed[1]
        return result, tries

    async def _aretrying(
        self,
        send: Callable[[], Awaitable[_T]],
        request: Request,
        n: int,
        kwargs: Mapping[str, Any],
        attempts: list[int],
    ) -> tuple[_T, int]:
        """Async :meth:`_retrying`."""
        retries = self._retries(request)
        tries = 1
        first: list[Exception] = []
        failed: tuple[ProviderRequestError, BaseException | None] | None = None
        try:
            try:
                with provider_call_active(), attempt_sent_again_on(_retried(tries, retries)):
                    return await send(), tries
            except Exception as error:
                first = self._first_failure(error, retries)
            async for attempt in tenacity.AsyncRetrying(**self._retry_options(retries)):
                with attempt:
                    if first:
                        raise first.pop()
                    tries += 1
                    retried = _retried(tries, retries)
                    with provider_call_active(), attempt_sent_again_on(retried):
                        result = await send()
        except Exception as error:
            failed = self._failed(error, tries, n, kwargs)
        finally:
            attempts.append(tries)
        if failed is not None:  # raised here, out of the except block: see _failed
            raise failed[0] from failed[1]
        return result, tries

    @staticmethod
    def _first_failure(error: Exception, retries: int) -> list[Exception]:
        """The first attempt's failure, to replay into tenacity's loop; raised if final."""
        if not (retries and _is_retryable(error)):
            raise error
        return [error]

    # -- answers --------------------------------------------------------------------

    def _asked(self, samples: list[Sample], n: int, attempts: int) -> list[Sample]:
        """``samples``, unless the provider answered more choices than the ``n`` asked for.

        Such an answer is not ``n`` samples of the request (a completions endpoint answers
        each prompt of a list apart), so none of it is stored (law 8).
        """
        if len(samples) > n:
            raise ProviderRequestError(
                f"{self!r} answered {len(samples)} choices to a request for {n}: they are not "
                "all samples of that request, so none is stored",
                attempts=attempts,
            )
        return samples

    def _samples(self, response: Any) -> list[Sample]:
        """One sample per choice, each with its share of the usage and cost."""
        choices = list(getattr(response, "choices", None) or [])
        response_id = getattr(response, "id", None) or new_draw_id()
        if not choices:
            raise ProviderRequestError(
                f"{self!r} answered with no choices (response {response_id}): "
                "an empty or filtered response holds no sample"
            )
        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        prompt_shares = split_evenly(prompt_tokens, len(choices))
        completion_shares = split_evenly(completion_tokens, len(choices))
        cost = response_cost(response)
        fingerprint = getattr(response, "system_fingerprint", None)
        samples = []
        for i, choice in enumerate(choices):
            message = getattr(choice, "message", None)
            content = getattr(message, "content", None)
            tool_calls = [_plain(call) for call in getattr(message, "tool_calls", None) or []]
            record = {"role": "assistant", "content": content, "tool_calls": tool_calls or None}
            samples.append(
                Sample(
                    text=content if isinstance(content, str) else "",
                    message={k: v for k, v in record.items() if v is not None},
                    finish_reason=getattr(choice, "finish_reason", None),
                    usage={
                        "prompt_tokens": prompt_shares[i],
                        "completion_tokens": completion_shares[i],
                    },
                    model=getattr(response, "model", None),
                    response_id=response_id,
                    cost=None if cost is None else cost / len(choices),
                    logprobs=_plain_or_none(getattr(choice, "logprobs", None)),
                    system_fingerprint=fingerprint if isinstance(fingerprint, str) else None,
                )
            )
        return samples

    # -- BatchedModel ---------------------------------------------------------------

    def batch_limit(self, request: Request) -> int:
        """The call's ``max_batch`` (a :class:`LiteLLMRequest`), else the model's.

        One model serves the calls of several adapter copies with different limits.
        """
        max_batch = getattr(request, "max_batch", None)
        return self.max_batch if max_batch is None else int(max_batch)

    def query(self, request: Request, n: int) -> list[str | Sample]:
        """Draw ``n`` samples with one request (or ``n`` single ones if ``n`` is unsupported).

        Example:
            >>> samples = model.query(Request.of("Pick a number"), 3)  # doctest: +SKIP
        """
        attempts: list[int] = []

        def send(sizes: list[int]) -> list[Sample]:
            return self._merge(fan_out(lambda size: self._send(request, size, attempts), sizes))

        try:
            return list(_carry_out(self._plan(n), send))
        finally:
            self._count_extra(attempts)

    async def aquery(self, request: Request, n: int) -> list[str | Sample]:
        """Async :meth:`query`, through ``litellm.acompletion``."""
        attempts: list[int] = []

        async def send(sizes: list[int]) -> list[Sample]:
            requests = await afan_out(lambda size: self._asend(request, size, attempts), sizes)
            return self._merge(requests)

        try:
            return list(await _acarry_out(self._plan(n), send))
        finally:
            self._count_extra(attempts)

    def _plan(self, n: int) -> _Plan:
        """How one query draws ``n`` samples; its driver sends the requests (see :data:`_Plan`).

        One request asks for all ``n``, unless the provider is known to refuse ``n`` > 1:
        then ``n`` single requests do. A refusal is learnt, and so is an answer of one
        choice. A short answer is topped up with single requests, and kept if they fail.
        """
        if n > 1 and not self._n_supported:
            return (yield [1] * n)
        try:
            samples = yield [n]
        except _NotSupportedN as error:
            self._learn_no_n(error)
            return (yield [1] * n)
        if len(samples) >= n:
            return samples
        if len(samples) == 1:
            self._learn_no_n(None)
        try:
            return samples + (yield [1] * (n - len(samples)))
        except Exception as error:
            return self._keep_paid(samples, n, error)

    def _merge(self, outcomes: list[list[Sample] | BaseException]) -> list[Sample]:
        """Keep every paid sample of requests sent at once; raise only if all of them failed."""
        samples = [
            s for outcome in outcomes if not isinstance(outcome, BaseException) for s in outcome
        ]
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if samples:
            if errors:
                logger.warning(
                    "%r: %d of %d single requests failed: %s",
                    self,
                    len(errors),
                    len(outcomes),
                    errors[0],
                )
            return samples
        raise errors[0]

    def _keep_paid(self, samples: list[Sample], n: int, error: Exception) -> list[Sample]:
        """The choices a provider did return, when topping them up to ``n`` failed.

        They are paid for (and counted): the refill is short, and the missing samples are
        simply drawn again later, like those of a failed chunk.
        """
        logger.warning(
            "%r: got %d of %d choices, and the single requests for the rest failed: %s",
            self,
            len(samples),
            n,
            error,
        )
        return samples

    def _learn_no_n(self, error: ProviderError | None) -> None:
        if self._n_supported:
            reason = "rejected n > 1" if error is not None else "ignored n > 1"
            logger.info("%r %s; drawing with concurrent single requests from now on", self, reason)
        self._n_supported = False

    def _count_extra(self, attempts: list[int]) -> None:
        # The base counts one request per query(); retries and emulated single requests are
        # requests sent too.
        extra = sum(attempts) - 1
        if extra > 0:
            self.account(0.0, [], extra)


def _plain(value: Any) -> Any:
    """A LiteLLM/pydantic object (a tool call) as plain JSON-ready dicts."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        value = dump()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _plain_or_none(value: Any) -> dict[str, Any] | None:
    """A choice's ``logprobs`` object as a plain dict, or ``None`` when it holds nothing."""
    plain = _plain(value) if value is not None else None
    return plain if isinstance(plain, dict) and plain else None


# ---------------------------------------------------------------------------------------
# Named providers
# ---------------------------------------------------------------------------------------


class _NamedProvider(LiteLLMModel):
    """A provider with a fixed route, base URL and key variable.

    Its cache identity is the bare model name the user gave (or the alias), without an
    endpoint: the provider is the endpoint, and an alias shares entries across providers.
    """

    ROUTE: ClassVar[str] = "openai"
    API_BASE: ClassVar[str] = ""
    KEY_ENV: ClassVar[str] = ""

    def __init__(
        self,
        model: str,
        temperature: float,
        alias: str | None = None,
        max_batch: int = 1,
        **litellm_kwargs: Any,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty str, got {model!r}")
        litellm_kwargs.setdefault("api_base", self.API_BASE)
        litellm_kwargs.setdefault("api_key_env", self.KEY_ENV)
        super().__init__(f"{self.ROUTE}/{model}", temperature, alias, max_batch, **litellm_kwargs)
        self.model_name = model
        self._keyed_by_endpoint = False


class AI302(_NamedProvider):
    """Models served by 302.ai (OpenAI-compatible), key in ``AI302_API_KEY``.

    Args:
        model: 302.ai's model name, e.g. ``"gpt-4o"``.
        temperature: Sampling temperature.
        alias: The model's name in cache keys (share entries with other providers).
        max_batch: The most samples one request may ask for.
        **litellm_kwargs: Sampling parameters and the options of :class:`LiteLLMModel`
            (``api_base``, ``api_key``, ``max_retries``, ``timeout``, ...).

    Example:
        >>> AI302("deepseek-v3-huoshan", 0.5, alias="deepseek-v3").identity()
        {'model': 'deepseek-v3', 'params': {'temperature': 0.5}}
    """

    API_BASE = "https://api.302.ai/v1"
    KEY_ENV = "AI302_API_KEY"


class CloseAI(_NamedProvider):
    """Models served by CloseAI (OpenAI-compatible), key in ``CLOSEAI_API_KEY``.

    Arguments as for :class:`AI302`.

    Example:
        >>> CloseAI("gpt-4o", 1.0, max_batch=10).identity()
        {'model': 'gpt-4o', 'params': {'temperature': 1.0}}
    """

    API_BASE = "https://api.openai-proxy.org/v1"
    KEY_ENV = "CLOSEAI_API_KEY"


class FireworksAI(_NamedProvider):
    """Models served by Fireworks (LiteLLM route ``fireworks_ai/``), key in ``FIREWORKS_API_KEY``.

    Arguments as for :class:`AI302`.

    Example:
        >>> name = "accounts/fireworks/models/llama-v3p1-8b-instruct"
        >>> FireworksAI(name, 1.0, alias="llama-3.1-8b").identity()["model"]
        'llama-3.1-8b'
    """

    ROUTE = "fireworks_ai"
    API_BASE = "https://api.fireworks.ai/inference/v1"
    KEY_ENV = "FIREWORKS_API_KEY"


class XMCP(_NamedProvider):
    """Models served by XMCP (OpenAI-compatible, ``/chat/completions`` without ``/v1``).

    Key in ``XMCP_API_KEY``; arguments as for :class:`AI302`.

    Example:
        >>> XMCP("ali/qwen2.5-7b-instruct", 1.0, alias="qwen2.5-7b").identity()["model"]
        'qwen2.5-7b'
    """

    API_BASE = "https://llm.xmcp.ltd"
    KEY_ENV = "XMCP_API_KEY"


class OpenAICompatible(LiteLLMModel):
    """Any OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp, a proxy, ...).

    Without an alias its cache key includes ``api_base``, so two servers that both call
    their model "llama3" never share entries; with one, they do.

    Args:
        model: The model name the endpoint knows.
        temperature: Sampling temperature.
        api_base: The endpoint, e.g. ``"http://127.0.0.1:8000/v1"``.
        api_key: The key, if the endpoint needs one. Without it (and without
            ``api_key_env=...``) a placeholder is sent, never ``OPENAI_API_KEY``.
        alias: The model's name in cache keys.
        max_batch: The most samples one request may ask for.
        **kw: Sampling parameters and the options of :class:`LiteLLMModel`.

    Example:
        >>> m = OpenAICompatible("llama3", 1.0, "http://127.0.0.1:8000/v1", api_key="local")
        >>> m.identity()
        {'model': 'llama3', 'params': {'temperature': 1.0}, 'endpoint': 'http://127.0.0.1:8000/v1'}
    """

    def __init__(
        self,
        model: str,
        temperature: float,
        api_base: str,
        api_key: str | None = None,
        alias: str | None = None,
        max_batch: int = 1,
        **kw: Any,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty str, got {model!r}")
        if not isinstance(api_base, str) or not api_base:
            raise ValueError(f"api_base must be a non-empty str, got {api_base!r}")
        if api_key is None and not kw.get("api_key_env"):
            api_key = _NO_KEY
        super().__init__(
            f"openai/{model}",
            temperature,
            alias,
            max_batch,
            api_base=api_base,
            api_key=api_key,
            **kw,
        )
        self.model_name = model
