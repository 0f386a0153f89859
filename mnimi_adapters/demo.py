"""A guided tour of the Mnimi README, run against a real provider or a local mock.

``python -m mnimi_adapters`` (or ``mnimi demo``) walks through the README's story:
independent, repeatable and persistent sampling, the retry loop, batch splitting, cache
slicing and replication, printing for each step what was cached, how many provider
requests were made and how many tokens were spent.

Unless the key of a provider it picks on its own is set (``AI302_API_KEY``,
``FIREWORKS_API_KEY``, ``CLOSEAI_API_KEY`` or ``XMCP_API_KEY``), it starts the built-in
:class:`~mnimi_adapters.testing.SamplingServer` on 127.0.0.1 and samples from it, so the
demo runs offline and costs nothing. ``OPENAI_API_KEY`` counts only with
``--provider openai``. Every step keeps its samples in one cache directory
(``--cache-dir``, else ``$MNIMI_DEMO_CACHE_DIR``, else ``~/.llm_cache/mnimi-demo``), under
its own alias of the model: a second run replays the whole tour with 0 requests,
``mnimi stats`` and ``mnimi show`` on that directory list every step, and ``--fresh``
starts over. The local server draws new numbers in every run, as a model would: only the
cache makes a run repeat.

Example:
    >>> from mnimi_adapters.demo import run_demo
    >>> run_demo()  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .core import (
    CacheLayer,
    DiskStore,
    Independent,
    MnimiError,
    Model,
    Persistent,
    Repeatable,
    ReplicationCacheMiss,
    Request,
)

if TYPE_CHECKING:
    from .testing import SamplingServer

__all__ = ["CACHE_DIR_ENV", "DEFAULT_CACHE_DIR", "PROVIDERS", "main", "run_demo"]

DEFAULT_CACHE_DIR = "~/.llm_cache/mnimi-demo"
#: The environment variable naming the demo's cache directory when ``--cache-dir`` does not.
CACHE_DIR_ENV = "MNIMI_DEMO_CACHE_DIR"
#: The slice's directory inside the cache directory: a store of its own, as a shared slice is.
SLICE_DIR = "slice"
PROMPT = "Choose a number between 1 and 1000."
NUM_RETRIES = 5


@dataclass(frozen=True)
class _Provider:
    """How the demo builds one provider's model."""

    class_name: str
    key_env: str
    default_model: str
    #: Whether ``--provider auto`` may pick it when its key is set. A key many users export
    #: for other tools (``OPENAI_API_KEY``) must not turn the offline demo into paid
    #: requests: such a provider is used only when named.
    auto: bool = True


#: Providers the demo can use; ``--provider auto`` looks for the keys of those with
#: ``auto`` set, in this order.
PROVIDERS: dict[str, _Provider] = {
    "ai302": _Provider("AI302", "AI302_API_KEY", "gpt-4o"),
    "fireworks": _Provider(
        "FireworksAI", "FIREWORKS_API_KEY", "accounts/fireworks/models/llama-v3p1-8b-instruct"
    ),
    "closeai": _Provider("CloseAI", "CLOSEAI_API_KEY", "gpt-4o"),
    "xmcp": _Provider("XMCP", "XMCP_API_KEY", "ali/qwen2.5-7b-instruct"),
    "openai": _Provider("LiteLLMModel", "OPENAI_API_KEY", "openai/gpt-4o-mini", auto=False),
}

#: The local mock's name in cache keys: stable across runs, although its port is not.
LOCAL_ALIAS = "mnimi-demo-mock"


def _choose_provider(provider: str) -> str:
    if provider != "auto":
        return provider
    for name, spec in PROVIDERS.items():
        if spec.auto and os.environ.get(spec.key_env):
            return name
    return "local"


def _auto_help() -> str:
    """What ``--provider auto`` does, in the words of ``--help``."""
    picked = [f"{name} ({spec.key_env})" for name, spec in PROVIDERS.items() if spec.auto]
    named = [
        f"--provider {name} ({spec.key_env})" for name, spec in PROVIDERS.items() if not spec.auto
    ]
    return (
        f"auto (the default): the first of {', '.join(picked)} whose key is set, "
        "else the built-in local sampling server (offline, free); "
        f"{', '.join(named)} only when asked"
    )


def _unpicked_keys() -> dict[str, str]:
    """The providers ``auto`` leaves alone whose key is set, by name: their key variables."""
    return {
        name: spec.key_env
        for name, spec in PROVIDERS.items()
        if not spec.auto and os.environ.get(spec.key_env)
    }


@dataclass
class _Models:
    """Builds the chosen model once per step, under that step's own alias.

    One cache directory holds every step, and steps that ask the same prompt must not
    read each other's samples: the alias (``<name>@<step>``) keeps their keys apart and
    names each step in ``mnimi stats`` and ``mnimi show``.
    """

    name: str
    build: Callable[[str, int], Model]
    built: list[Model] = field(default_factory=list)

    def __call__(self, step: str, max_batch: int = 1) -> Model:
        model = self.build(self.alias(step), max_batch)
        self.built.append(model)
        return model

    def alias(self, step: str) -> str:
        """The model's name in the cache keys of ``step``."""
        return f"{self.name}@{step}"

    def owns(self, record: dict[str, Any] | None) -> bool:
        """Whether a stored sequence's record is one the demo wrote with this model."""
        request = (record or {}).get("request")
        return isinstance(request, dict) and str(request.get("model")).startswith(self.alias(""))


def _models(provider: str, model: str | None, server_url: str | None) -> _Models:
    """The chosen provider's model builder."""
    from . import providers

    if provider == "local":
        assert server_url is not None

        def local(alias: str, max_batch: int) -> Model:
            return providers.OpenAICompatible(
                model or "mock-model",
                1.0,
                api_base=server_url,
                api_key="local",
                alias=alias,
                max_batch=max_batch,
            )

        return _Models(LOCAL_ALIAS, local)
    spec = PROVIDERS[provider]
    cls = getattr(providers, spec.class_name)
    name = model or spec.default_model

    def remote(alias: str, max_batch: int) -> Model:
        # The key read from its variable, as each named provider reads its own: a missing
        # OPENAI_API_KEY is then said as plainly, not a provider's HTTP 500 from LiteLLM.
        built: Model = cls(name, 1.0, alias=alias, max_batch=max_batch, api_key_env=spec.key_env)
        return built

    return _Models(name, remote)


class _Meter:
    """Requests and tokens a model spent during one step."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self._start = self._now()

    def _now(self) -> tuple[int, int, int]:
        prompt, completion = self.model.total_token_count()
        return self.model.total_requests(), prompt, completion

    def spent(self) -> tuple[int, int, int]:
        now = self._now()
        return now[0] - self._start[0], now[1] - self._start[1], now[2] - self._start[2]


class _Story:
    """Prints the tour, one numbered step at a time."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.step = 0

    def say(self, text: str = "") -> None:
        print(text, file=self.out)

    @contextlib.contextmanager
    def section(self, title: str, model: Model, cached: Callable[[], str]) -> Iterator[None]:
        self.step += 1
        self.say(f"\n== {self.step}. {title} ==")
        meter = _Meter(model)
        yield
        requests, prompt, completion = meter.spent()
        replayed = " | replayed from the cache" if requests == 0 else ""
        self.say(f"   cached:   {cached()}")
        self.say(f"   requests: {requests} | tokens: {prompt} in, {completion} out{replayed}")


def _held(layer: CacheLayer) -> int:
    """Samples a cache layer holds for the demo's prompt."""
    return layer.store.length(layer.key_of(Request.of(PROMPT)))


def _samples(count: int) -> str:
    return f"{count} sample{'' if count == 1 else 's'}"


def _on_disk(layer: CacheLayer) -> Callable[[], str]:
    return lambda: f"{_samples(_held(layer))} on disk"


def _walk(story: _Story, models: _Models, cache_dir: Path) -> None:
    """Tell the story, every step sampling into ``cache_dir``."""
    say = story.say

    # 1. The layers of steps 1-3 keep nothing on disk by design, so these steps sample
    # through a recorder: it draws what the model itself would, and a new one starts at
    # position 0 again, so the next run replays them like every other step.
    model = models("independent")
    recorder = Persistent(model, cache_dir)
    with story.section(
        "Independent sampling: recorded = Independent(Persistent(model, cache))",
        model,
        _on_disk(recorder),
    ):
        recorded = Independent(recorder)
        n1 = next(recorded.sample(PROMPT))
        n2 = next(recorded.sample(PROMPT))
        say(f"   next(recorded.sample(prompt)) twice -> {n1!r}, {n2!r} (two distinct draws)")
        say("   Each call draws anew, as the model does; the cache only records the draws,")
        say("   so the next run replays them. Steps 2-3 sample through such a recorder too.")
    recorder.close()

    # 2. Repeatable: every sample() call replays one in-memory sequence.
    model = models("repeatable")
    recorder = Persistent(model, cache_dir)
    rep = Repeatable(Independent(recorder))

    def in_memory() -> str:
        return f"{_samples(_held(rep))} in memory"

    with story.section("Repeatable(recorded)", model, in_memory):
        n3 = next(rep.sample(PROMPT))
        n4 = next(rep.sample(PROMPT))
        pair = list(islice(rep.sample(PROMPT), 2))
        say(f"   next(...) twice -> {n3!r}, {n4!r} (same result)")
        say(f"   islice(rep.sample(prompt), 2) -> {pair} (independent within the sequence)")

    # 3. Independent over it: successive calls continue, from the same memory.
    ind = Independent(rep)
    with story.section("Independent(Repeatable(recorded))", model, in_memory):
        n5 = next(ind.sample(PROMPT))
        n6 = next(ind.sample(PROMPT))
        say(f"   next(...) twice -> {n5!r}, {n6!r} (taken from the in-memory sequence)")
    recorder.close()

    # 4. Persistent: the same sequence across runs of the program.
    model = models("persistent")
    persistent = Persistent(model, cache_dir)
    with story.section(f"Persistent(model, {str(cache_dir)!r})", model, _on_disk(persistent)):
        before = model.total_requests()
        p1 = next(persistent.sample(PROMPT))
        p2 = next(persistent.sample(PROMPT))
        fresh = model.total_requests() - before
        say(f"   next(...) twice -> {p1!r}, {p2!r} (same result, across runs too)")
        if fresh == 0:
            say("   0 requests: both came from the cache on disk that an earlier run wrote.")
        else:
            say("   1 request: the second call read the first one's sample back from disk.")
    persistent.close()

    # 5. The retry loop: independent across attempts, repeatable within one.
    model = models("retry")
    for run in (1, 2):
        base = Persistent(model, cache_dir)
        with story.section(
            f"Retry loop, run {run}: Repeatable(Independent(Persistent(...))) per attempt",
            model,
            _on_disk(base),
        ):
            ind_model = Independent(base)
            for attempt in range(NUM_RETRIES):
                rep_model = Repeatable(ind_model)
                x = next(rep_model.sample(PROMPT))  # step_1
                y = next(rep_model.sample(PROMPT))  # step_2 sees step_1's sample again
                number = re.search(r"\d+", x)  # A chatty model may wrap it in words.
                good = number is not None and int(number.group()) % 2 == 0
                verdict = "accepted (even)" if good else "rejected, retrying"
                say(f"   attempt {attempt + 1}: step_1 -> {x!r}, step_2 -> {y!r}: {verdict}")
                if good:
                    break
            else:
                say("   did not get a good response")
            if run == 2:
                say("   A new Independent over the same Persistent starts at position 0 again:")
                say("   run 2 replays run 1 from disk, attempt by attempt.")
        base.close()

    # 6. Batch splitting: provider limits decoupled from the experiment's batch size.
    batched = models("batching", 10)
    big = Persistent(batched, cache_dir)
    with story.section(
        "Batching: max_batch=10, islice(Persistent(...).sample(prompt, batch=20), 40)",
        batched,
        _on_disk(big),
    ):
        got = list(islice(big.sample(PROMPT, batch=20), 40))
        say(f"   {len(got)} samples, {len(set(got))} distinct: {got[:5]} ...")
        say("   batch=20 with max_batch=10: drawn in 2 refills, each 2 concurrent requests of n=10")

    # 7. Slicing: a nested Persistent keeps exactly what the run used.
    slice_dir = cache_dir / SLICE_DIR
    sliced = Persistent(big, slice_dir)
    with story.section(
        "Slicing: Persistent(Persistent(model, cache), slice)",
        batched,
        lambda: f"{_samples(_held(sliced))} in the slice, {_held(big)} in the cache",
    ):
        used = list(islice(Independent(sliced).sample(PROMPT), 3))
        prefix = list(islice(big.sample(PROMPT), 3))
        say(f"   the run used {used}: the slice holds exactly these")
        say(f"   the cache's first 3 samples are {prefix}: same = {used == prefix}")
    sliced.close()
    big.close()

    # 8. Replication: only the cache, never the provider (needs no key, opens no socket).
    replica = Persistent(batched, slice_dir, replication=True)
    with story.section(
        "Replication: Persistent(model, slice, replication=True)",
        batched,
        lambda: f"{_samples(_held(replica))} (read only)",
    ):
        again = list(islice(replica.sample(PROMPT), 3))
        say(f"   3 samples replayed from the slice: {again}")
        try:
            list(islice(replica.sample(PROMPT), 4))
        except ReplicationCacheMiss as miss:
            say(f"   asking for a 4th raises ReplicationCacheMiss: {miss}")
    replica.close()


def _own_keys(store: DiskStore, models: _Models) -> list[str]:
    """The keys of ``store`` whose sequences the demo drew with this model."""
    keys = store.keys()  # a generator over the rows, not a dict
    return [key for key in keys if models.owns(store.info(key))]


def _earlier_run(cache_dir: Path, models: _Models, forget: bool) -> int:
    """Samples an earlier run of the demo drew into ``cache_dir``; ``forget`` removes them.

    Only the demo's own sequences count and go, since ``cache_dir`` may be a cache that
    holds other work too. The slice's copies are forgotten with them but not counted, so
    that the count is the one ``mnimi stats`` gives.
    """
    with DiskStore(cache_dir) as store:
        mine = _own_keys(store, models)
        found = sum(store.length(key) for key in mine)
        if forget:
            for key in mine:
                store.delete(key)
    if forget:
        with DiskStore(cache_dir / SLICE_DIR) as store:
            for key in _own_keys(store, models):
                store.delete(key)
    return found


def _introduce(story: _Story, cache_dir: Path, models: _Models, fresh: bool) -> None:
    """Say where the samples go, and whether this run draws or replays them."""
    say = story.say
    say(f"Cache: {cache_dir}")
    say(f"   Every step keeps its samples here, under its own alias ({models.alias('<step>')}),")
    say("   so that no step reads another's.")
    found = _earlier_run(cache_dir, models, forget=fresh)
    if fresh and found:
        say(f"   --fresh: removed the {_samples(found)} of an earlier run; this run draws anew.")
    elif found:
        say(f"   It holds the {_samples(found)} of an earlier run: this run replays them")
        say("   (--fresh starts over).")
    else:
        say("   No earlier run there: this run draws every sample, and a second run")
        say("   replays them all with 0 requests.")


def _conclude(story: _Story, cache_dir: Path, models: _Models) -> None:
    """The totals, and where to look at what the run left behind."""
    say = story.say
    used = models.built
    requests = sum(m.total_requests() for m in used)
    prompt = sum(m.total_token_count()[0] for m in used)
    completion = sum(m.total_token_count()[1] for m in used)
    seconds = sum(m.total_query_time() for m in used)
    say(
        f"\nIn total: {requests} requests, {prompt} input and {completion} output tokens, "
        f"{seconds:.2f} s waiting for the provider."
    )
    say("The cache layers alone decided which samples were fresh and which replayed.")
    if requests == 0:
        say(f"Every step replayed the samples an earlier run kept in {cache_dir}.")
    else:
        say(f"Every sample is kept in {cache_dir}: run the demo again to replay it all")
        say("with 0 requests.")
    shown = shlex.quote(str(cache_dir))
    say("See what each step cached:")
    say(f"   mnimi stats {shown}")
    say(f"   mnimi show {shown}")
    say(f"   mnimi show {shlex.quote(str(cache_dir / SLICE_DIR))}  # the slice you would share")


def run_demo(
    cache_dir: str | None = None,
    out: TextIO | None = None,
    *,
    provider: str = "auto",
    model: str | None = None,
    fresh: bool = False,
    server: SamplingServer | None = None,
) -> int:
    """Run the tour and return an exit code (0 on success).

    Args:
        cache_dir: Directory of the cache every step samples into (default
            ``$MNIMI_DEMO_CACHE_DIR``, else ``~/.llm_cache/mnimi-demo``; created private).
        out: Where to print the story (default: ``sys.stdout`` at call time, so that
            ``contextlib.redirect_stdout`` works).
        provider: ``"auto"`` (the first provider whose key is set, of those that
            :data:`PROVIDERS` lets ``auto`` pick, else the local mock), ``"local"``, or
            one of :data:`PROVIDERS` (``"openai"`` is used only when named).
        model: A model name for the provider (each has a default).
        fresh: Forget what an earlier run of the demo cached, and draw it anew.
        server: A running local server to sample from with the local provider (default:
            one started for the run).

    Example:
        >>> import io
        >>> run_demo("/tmp/mnimi-demo", out=io.StringIO(), provider="local")  # doctest: +SKIP
        0
    """
    # Offline, `import litellm` would spend seconds trying to download a price map.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    story = _Story(sys.stdout if out is None else out)
    chosen = _choose_provider(provider)
    if chosen != "local" and chosen not in PROVIDERS:
        story.say(f"unknown provider {provider!r}; choose local or one of {sorted(PROVIDERS)}")
        return 2
    directory = Path(cache_dir or os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR)
    directory = directory.expanduser()

    with contextlib.ExitStack() as stack:
        server_url = None
        if chosen == "local":
            if server is None:
                from .testing import SamplingServer

                # A new seed each run: the server stands in for a model, which draws anew
                # every time, so that only the cache makes a re-run repeat and --fresh
                # draws new numbers (a fixed seed drew the first run's again).
                server = stack.enter_context(SamplingServer(seed=secrets.randbits(64)))
            server_url = server.url
            why = "No demo provider key set" if provider == "auto" else "--provider local"
            story.say(
                f"{why}: sampling from the built-in local sampling server at "
                f"{server_url} (random numbers, free, offline)."
            )
            if provider == "auto":
                for name, key_env in _unpicked_keys().items():
                    story.say(
                        f"({key_env} is set, but the demo uses it only with --provider {name}, "
                        "which makes paid requests.)"
                    )
        else:
            spec = PROVIDERS[chosen]
            story.say(
                f"Using {spec.class_name} ({model or spec.default_model}); "
                "this makes real, paid requests (about a dozen short ones)."
            )
        models = _models(chosen, model, server_url)
        story.say(f"Prompt: {PROMPT!r}")
        _quiet_litellm()
        try:
            _introduce(story, directory, models, fresh)
            _walk(story, models, directory)
        except MnimiError as error:
            story.say(f"\nThe demo stopped: {error}")
            return 1
    _conclude(story, directory, models)
    return 0


def _quiet_litellm() -> None:
    """LiteLLM prints a banner to stdout for every provider error; the demo explains its own."""
    with contextlib.suppress(ImportError):
        import litellm

        litellm.suppress_debug_info = True


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point of ``python -m mnimi_adapters`` and ``mnimi demo``.

    Example:
        >>> main(["--provider", "local"])  # doctest: +SKIP
        0
    """
    parser = argparse.ArgumentParser(
        prog="mnimi demo",
        description="Walk through the Mnimi README: independent, repeatable and persistent "
        "sampling, retries, batching, slicing and replication.",
    )
    parser.add_argument(
        "--provider",
        default="auto",
        choices=["auto", "local", *PROVIDERS],
        help=_auto_help(),
    )
    parser.add_argument("--model", default=None, help="model name for the provider")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help=f"the cache every step samples into (default: ${CACHE_DIR_ENV}, "
        f"else {DEFAULT_CACHE_DIR})",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="forget what an earlier run of the demo cached, and draw it anew",
    )
    args = parser.parse_args(argv)
    return run_demo(args.cache_dir, provider=args.provider, model=args.model, fresh=args.fresh)
