"""A guided tour of the Mnimi README, run against a real provider or a local mock.

``python -m mnimi_adapters`` (or ``mnimi demo``) walks through the README's story:
independent, repeatable and persistent sampling, the retry loop, batch splitting, cache
slicing and replication, printing for each step what was cached, how many provider
requests were made and how many tokens were spent.

Without a provider key in the environment it starts the built-in
:class:`~mnimi_adapters.testing.SamplingServer` on 127.0.0.1 and samples from it, so the
demo runs offline and costs nothing. The persistent step keeps its cache in
``--cache-dir`` (default ``~/.llm_cache/mnimi-demo``): run the demo twice and that step
makes no request the second time.

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
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TextIO

from .core import (
    CacheLayer,
    Independent,
    MnimiError,
    Model,
    Persistent,
    Repeatable,
    ReplicationCacheMiss,
)

__all__ = ["DEFAULT_CACHE_DIR", "PROVIDERS", "main", "run_demo"]

DEFAULT_CACHE_DIR = "~/.llm_cache/mnimi-demo"
PROMPT = "Choose a number between 1 and 1000."
NUM_RETRIES = 5


@dataclass(frozen=True)
class _Provider:
    """How the demo builds one provider's model."""

    class_name: str
    key_env: str
    default_model: str


#: Providers the demo can use, in the order ``--provider auto`` looks for their keys.
PROVIDERS: dict[str, _Provider] = {
    "ai302": _Provider("AI302", "AI302_API_KEY", "gpt-4o"),
    "fireworks": _Provider(
        "FireworksAI", "FIREWORKS_API_KEY", "accounts/fireworks/models/llama-v3p1-8b-instruct"
    ),
    "closeai": _Provider("CloseAI", "CLOSEAI_API_KEY", "gpt-4o"),
    "xmcp": _Provider("XMCP", "XMCP_API_KEY", "ali/qwen2.5-7b-instruct"),
    "openai": _Provider("LiteLLMModel", "OPENAI_API_KEY", "openai/gpt-4o-mini"),
}

#: The local mock's name in cache keys: stable across runs, although its port is not.
LOCAL_ALIAS = "mnimi-demo-mock"

ModelFactory = Callable[[int], Model]


def _choose_provider(provider: str) -> str:
    if provider != "auto":
        return provider
    for name, spec in PROVIDERS.items():
        if os.environ.get(spec.key_env):
            return name
    return "local"


def _factory(provider: str, model: str | None, server_url: str | None) -> ModelFactory:
    """A function building the chosen model with a given ``max_batch``."""
    from . import providers

    if provider == "local":
        assert server_url is not None

        def local(max_batch: int) -> Model:
            return providers.OpenAICompatible(
                model or "mock-model",
                1.0,
                api_base=server_url,
                api_key="local",
                alias=LOCAL_ALIAS,
                max_batch=max_batch,
            )

        return local
    spec = PROVIDERS[provider]
    cls = getattr(providers, spec.class_name)
    name = model or spec.default_model

    def remote(max_batch: int) -> Model:
        built: Model = cls(name, 1.0, max_batch=max_batch)
        return built

    return remote


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
        self.say(f"   cached:   {cached()}")
        self.say(f"   requests: {requests} | tokens: {prompt} in, {completion} out")


def _count(layer: CacheLayer) -> int:
    """Samples held by a cache layer, over all its keys."""
    store = layer.store
    return sum(store.length(key) for key in list(store.keys()))


def _samples(count: int) -> str:
    return f"{count} sample{'' if count == 1 else 's'}"


def _on_disk(layer: CacheLayer) -> Callable[[], str]:
    return lambda: f"{_samples(_count(layer))} on disk"


def _walk(story: _Story, make: ModelFactory, scratch: Path, cache_dir: Path) -> list[Model]:
    """Tell the story; return the provider models it used (for the totals)."""
    say = story.say
    model = make(1)

    # 1. Without caching, every call is a fresh draw.
    with story.section("Independent sampling (no cache)", model, lambda: "nothing"):
        n1 = next(model.sample(PROMPT))
        n2 = next(model.sample(PROMPT))
        say(f"   next(model.sample(prompt)) twice -> {n1!r}, {n2!r}")

    # 2. Repeatable: every sample() call replays one in-memory sequence.
    rep = Repeatable(model)
    with story.section("Repeatable(model)", model, lambda: f"{_samples(_count(rep))} in memory"):
        n3 = next(rep.sample(PROMPT))
        n4 = next(rep.sample(PROMPT))
        pair = list(islice(rep.sample(PROMPT), 2))
        say(f"   next(...) twice -> {n3!r}, {n4!r} (same result)")
        say(f"   islice(rep.sample(prompt), 2) -> {pair} (independent within the sequence)")

    # 3. Independent over it: successive calls continue, from the same memory.
    ind = Independent(rep)
    with story.section(
        "Independent(Repeatable(model))", model, lambda: f"{_samples(_count(rep))} in memory"
    ):
        n5 = next(ind.sample(PROMPT))
        n6 = next(ind.sample(PROMPT))
        say(f"   next(...) twice -> {n5!r}, {n6!r} (taken from the in-memory sequence)")

    # 4. Persistent: the same sequence across runs of the program.
    persistent = Persistent(model, cache_dir)
    with story.section(
        f"Persistent(model, {str(cache_dir)!r})",
        model,
        _on_disk(persistent),
    ):
        before = model.total_requests()
        p1 = next(persistent.sample(PROMPT))
        p2 = next(persistent.sample(PROMPT))
        fresh = model.total_requests() - before
        say(f"   next(...) twice -> {p1!r}, {p2!r} (same result, across runs too)")
        if fresh == 0:
            say("   0 requests: both came from the cache on disk that an earlier run wrote.")
        else:
            say("   Run the demo again: this step will then make 0 requests.")
    persistent.close()

    # 5. The retry loop: independent across attempts, repeatable within one.
    retry_dir = scratch / "retry"
    for run in (1, 2):
        base = Persistent(model, retry_dir)
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
    batched = make(10)
    big_dir = scratch / "original_cache"
    big = Persistent(batched, big_dir)
    with story.section(
        "Batching: max_batch=10, islice(Persistent(...).sample(prompt, batch=20), 40)",
        batched,
        _on_disk(big),
    ):
        got = list(islice(big.sample(PROMPT, batch=20), 40))
        say(f"   {len(got)} samples, {len(set(got))} distinct: {got[:5]} ...")
        say("   batch=20 with max_batch=10: 2 refills, each 2 concurrent requests of n=10")

    # 7. Slicing: a nested Persistent keeps exactly what the run used.
    sliced_dir = scratch / "sliced_cache"
    sliced = Persistent(big, sliced_dir)
    with story.section(
        "Slicing: Persistent(Persistent(model, original), sliced)",
        batched,
        lambda: f"{_samples(_count(sliced))} in the slice, {_count(big)} in the original",
    ):
        used = list(islice(Independent(sliced).sample(PROMPT), 3))
        prefix = list(islice(big.sample(PROMPT), 3))
        say(f"   the run used {used}: the slice holds exactly these")
        say(f"   the original's first 3 samples are {prefix}: same = {used == prefix}")
    sliced.close()
    big.close()

    # 8. Replication: only the cache, never the provider (needs no key, opens no socket).
    replica = Persistent(batched, sliced_dir, replication=True)
    with story.section(
        "Replication: Persistent(model, sliced, replication=True)",
        batched,
        lambda: f"{_samples(_count(replica))} (read only)",
    ):
        again = list(islice(replica.sample(PROMPT), 3))
        say(f"   3 samples replayed from the slice: {again}")
        try:
            list(islice(replica.sample(PROMPT), 4))
        except ReplicationCacheMiss as miss:
            say(f"   a 4th sample raises ReplicationCacheMiss: {miss}")
    replica.close()
    return [model, batched]


def run_demo(
    cache_dir: str | None = None,
    out: TextIO | None = None,
    *,
    provider: str = "auto",
    model: str | None = None,
) -> int:
    """Run the tour and return an exit code (0 on success).

    Args:
        cache_dir: Directory of the persistent step's cache (default
            ``~/.llm_cache/mnimi-demo``, created private). The other steps use a fresh
            temporary directory.
        out: Where to print the story (default: ``sys.stdout`` at call time, so that
            ``contextlib.redirect_stdout`` works).
        provider: ``"auto"`` (a provider whose key is set, else the local mock),
            ``"local"``, or one of :data:`PROVIDERS`.
        model: A model name for the provider (each has a default).

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
    persistent_dir = Path(cache_dir or DEFAULT_CACHE_DIR).expanduser()

    with contextlib.ExitStack() as stack:
        server_url = None
        if chosen == "local":
            from .testing import SamplingServer

            server = stack.enter_context(SamplingServer(seed=0))
            server_url = server.url
            story.say(
                "No provider key set: sampling from the built-in mock server at "
                f"{server_url} (random numbers, free, offline)."
            )
        else:
            spec = PROVIDERS[chosen]
            story.say(
                f"Using {spec.class_name} ({model or spec.default_model}); "
                "this makes real, paid requests (about a dozen short ones)."
            )
        story.say(f"Prompt: {PROMPT!r}")
        story.say(f"Persistent cache: {persistent_dir} (a second run replays it)")
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mnimi-demo-")))
        _quiet_litellm()
        try:
            used = _walk(story, _factory(chosen, model, server_url), scratch, persistent_dir)
        except MnimiError as error:
            story.say(f"\nThe demo stopped: {error}")
            return 1
    requests = sum(m.total_requests() for m in used)
    prompt = sum(m.total_token_count()[0] for m in used)
    completion = sum(m.total_token_count()[1] for m in used)
    seconds = sum(m.total_query_time() for m in used)
    story.say(
        f"\nIn total: {requests} requests, {prompt} input and {completion} output tokens, "
        f"{seconds:.2f} s waiting for the provider."
    )
    story.say("The cache layers alone decided which samples were fresh and which replayed.")
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
        help="auto: the first provider whose key is set, else the local mock server",
    )
    parser.add_argument("--model", default=None, help="model name for the provider")
    parser.add_argument(
        "--cache-dir",
        default=DEFAULT_CACHE_DIR,
        help=f"cache of the persistent step (default {DEFAULT_CACHE_DIR})",
    )
    args = parser.parse_args(argv)
    return run_demo(args.cache_dir, provider=args.provider, model=args.model)
