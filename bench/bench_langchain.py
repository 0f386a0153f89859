"""Cache-hit ``invoke`` latency: MnimiChatModel versus LangChain's own ``InMemoryCache``.

Run by hand from the repository root::

    python bench/bench_langchain.py [--calls 2000] [--profile]

Both models answer the same messages from the same local sampling server through
LiteLLM; after one warm-up miss each, every measured call is a cache hit. Calls are
interleaved (one of each per round) so drift in machine load hits both alike, and the
table reports medians. The baseline is the fairest LangChain equivalent: a
``BaseChatModel`` that calls ``litellm.completion`` with ``cache=InMemoryCache()``
(LangChain's request-level cache, which replays one generation per request). The
MnimiChatModel row pays for what that cache does not do: a canonical request key, a
disk (SQLite) read and the scope lookup that keeps samples independent.

``--profile`` adds a cProfile of the MnimiChatModel hit path, split into LangChain's
own machinery, the adapter and the core.

``--wrapped`` measures the wrapper around the user's own model instead, in one run:
cache-hit ``invoke`` of ``MnimiChatModel(model=ChatOpenAI(...))`` against the same
``ChatOpenAI`` with LangChain's ``InMemoryCache`` and with ``SQLiteCache`` (interleaved,
medians), and the time to the first chunk of a streamed miss against the bare
``ChatOpenAI`` (each miss a new prompt; the server waits ``--chunk-delay`` seconds between
events, so a stream that is not live would show it, and ``--first-token`` seconds before
the first byte: 0, the default, leaves only the clients' own overhead, while a hosted
model takes hundreds of milliseconds to its first token).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import itertools
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from langchain_core.caches import InMemoryCache
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatResult

from mnimi_adapters import no_cache
from mnimi_adapters.core import Persistent, Request
from mnimi_adapters.langchain import MnimiChatModel
from mnimi_adapters.providers import LiteLLMModel
from mnimi_adapters.testing import SamplingServer

MESSAGES: list[BaseMessage] = [
    SystemMessage("You are a careful assistant."),
    HumanMessage("Pick a number between 1 and 1000."),
]


class LiteLLMChat(BaseChatModel):
    """The baseline: a plain LangChain chat model over ``litellm.completion``."""

    model: str
    api_base: str
    api_key: str
    temperature: float = 1.0

    @property
    def _llm_type(self) -> str:
        return "litellm-baseline"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        import litellm
        from langchain_core.messages import convert_to_openai_messages

        response: Any = litellm.completion(
            model=self.model,
            messages=convert_to_openai_messages(messages),
            api_base=self.api_base,
            api_key=self.api_key,
            temperature=self.temperature,
            stop=stop,
        )
        choice = response.choices[0]
        usage = response.usage
        message = AIMessage(
            content=choice.message.content or "",
            usage_metadata=UsageMetadata(
                input_tokens=usage.prompt_tokens,
                output_tokens=usage.completion_tokens,
                total_tokens=usage.total_tokens,
            ),
            response_metadata={"model_name": response.model, "finish_reason": choice.finish_reason},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


def timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter_ns()
    call()
    return (time.perf_counter_ns() - start) / 1000.0


def measure(calls: int, server: SamplingServer, cache_dir: str) -> dict[str, list[float]]:
    mnimi = MnimiChatModel(
        model="openai/mock-model", api_base=server.url, api_key="sk-bench", cache_dir=cache_dir
    )
    baseline = LiteLLMChat(
        model="openai/mock-model",
        api_base=server.url,
        api_key="sk-bench",
        cache=InMemoryCache(),
    )
    core = Persistent(
        LiteLLMModel("openai/mock-model", 1.0, api_base=server.url, api_key="sk-bench"),
        os.path.join(cache_dir, "core"),
    )
    request = Request(tuple({"role": m.type, "content": m.content} for m in MESSAGES))
    # Warm-up: the one miss each, then a few hits to settle imports and caches.
    first = mnimi.invoke(MESSAGES).content
    baseline.invoke(MESSAGES)
    next(core.samples(request))
    for _ in range(50):
        mnimi.invoke(MESSAGES)
        baseline.invoke(MESSAGES)
        next(core.samples(request))
    assert mnimi.invoke(MESSAGES).content == first
    misses = len(server.chat_requests())
    rows: dict[str, list[float]] = {"mnimi": [], "baseline": [], "core": []}
    for _ in range(calls):
        rows["mnimi"].append(timed(lambda: mnimi.invoke(MESSAGES)))
        rows["baseline"].append(timed(lambda: baseline.invoke(MESSAGES)))
        rows["core"].append(timed(lambda: next(core.samples(request))))
    assert len(server.chat_requests()) == misses, "a measured call reached the server"
    return rows


def profile(calls: int, server: SamplingServer, cache_dir: str) -> None:
    mnimi = MnimiChatModel(
        model="openai/mock-model", api_base=server.url, api_key="sk-bench", cache_dir=cache_dir
    )
    mnimi.invoke(MESSAGES)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        mnimi.invoke(MESSAGES)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]

    def cumulative(fragment: str, name: str) -> float:
        return sum(
            entry[3]
            for (path, _, function), entry in raw.items()
            if fragment in path and function == name
        )

    parts = [
        ("whole invoke (LangChain + adapter + core)", "chat_models.py", "invoke"),
        ("adapter _generate", "mnimi_adapters/langchain.py", "_generate"),
        ("  convert_to_openai_messages", "messages/utils.py", "convert_to_openai_messages"),
        ("  request key (canonical JSON + sha256)", "core/request.py", "request_key"),
        ("  store read (SQLite + JSON)", "core/store.py", "get"),
        ("  AIMessage construction", "mnimi_adapters/langchain.py", "_generation"),
    ]
    print(
        f"\ncProfile of {calls} MnimiChatModel cache hits ({total / calls * 1e6:.0f} us/call; "
        "the profiler inflates code made of many small calls, so read proportions):\n"
    )
    print("| part | us per call |")
    print("|---|---:|")
    for label, fragment, name in parts:
        print(f"| {label} | {cumulative(fragment, name) / calls * 1e6:.0f} |")
    print()
    stats.sort_stats("tottime").print_stats(12)


#: The hit bench's models, in the order of its first round.
WRAPPED_NAMES = ("in_memory", "sqlite", "wrapped")


def measure_wrapped(calls: int, server: SamplingServer, cache_dir: str) -> dict[str, list[float]]:
    """Cache hits of the wrapped ChatOpenAI and of ChatOpenAI with LangChain's caches."""
    from langchain_community.cache import SQLiteCache
    from langchain_openai import ChatOpenAI

    def openai(**settings: Any) -> ChatOpenAI:
        return ChatOpenAI(model="mock-model", base_url=server.url, api_key="sk-bench", **settings)

    models: dict[str, Callable[[], Any]] = {}
    wrapped = MnimiChatModel(model=openai(), cache_dir=os.path.join(cache_dir, "mnimi"))
    in_memory = openai(cache=InMemoryCache())
    sqlite = openai(cache=SQLiteCache(os.path.join(cache_dir, "langchain.db")))
    models = dict(
        zip(
            WRAPPED_NAMES,
            (
                lambda: in_memory.invoke(MESSAGES),
                lambda: sqlite.invoke(MESSAGES),
                lambda: wrapped.invoke(MESSAGES),
            ),
            strict=True,
        )
    )
    for call in models.values():  # the one miss each, then hits to settle
        for _ in range(50):
            call()
    misses = len(server.chat_requests())
    rows: dict[str, list[float]] = {name: [] for name in models}
    # Each round in the next of the six orders: a call timed right after SQLiteCache's
    # (SQLite, unpickling) runs slower, and a fixed order (or its rotations) would put
    # that cost on the same model every round.
    orders = list(itertools.permutations(models))
    for round_ in range(calls):
        before = ""
        for name in orders[round_ % len(orders)]:
            elapsed = timed(models[name])
            rows[name].append(elapsed)
            rows.setdefault(f"{name} after {before or 'nothing'}", []).append(elapsed)
            before = name
    assert len(server.chat_requests()) == misses, "a measured call reached the server"
    return rows


def first_chunks(misses: int, server: SamplingServer, cache_dir: str) -> dict[str, list[float]]:
    """Microseconds to the first chunk of a streamed miss: wrapped and bare ChatOpenAI."""
    from langchain_openai import ChatOpenAI

    def openai() -> ChatOpenAI:
        return ChatOpenAI(model="mock-model", base_url=server.url, api_key="sk-bench")

    # Two objects, as a user has them: LangChain caches per object what it serializes for
    # the callbacks, so a shared one would spare the wrapper that work.
    bare = openai()
    wrapped = MnimiChatModel(model=openai(), cache_dir=os.path.join(cache_dir, "streams"))
    models = {"wrapped": wrapped, "bare": bare, "no_cache": wrapped}
    rows: dict[str, list[float]] = {name: [] for name in models}
    orders = list(itertools.permutations(models))  # as for the hits
    for round_ in range(misses + 5):  # the first 5 rounds warm up connections and imports
        for name in orders[round_ % len(orders)]:
            model = models[name]
            prompt = f"Tell me story number {round_} for {name}."  # a miss every time
            with no_cache() if name == "no_cache" else contextlib.nullcontext():
                start = time.perf_counter_ns()
                stream = model.stream(prompt)
                next(stream)
                elapsed = (time.perf_counter_ns() - start) / 1000.0
                for _ in stream:
                    pass
            if round_ >= 5:
                rows[name].append(elapsed)
    return rows


def wrapped_main(args: argparse.Namespace) -> None:
    with SamplingServer(seed=0) as server, tempfile.TemporaryDirectory() as cache_dir:
        hits = {
            k: statistics.median(v)
            for k, v in measure_wrapped(args.calls, server, cache_dir).items()
        }
        server.chunk_delay = args.chunk_delay
        server.latency = args.first_token
        firsts = {
            k: statistics.median(v) for k, v in first_chunks(args.misses, server, cache_dir).items()
        }
    command = "python bench/bench_langchain.py" + "".join(f" {a}" for a in sys.argv[1:])
    print(f"Command: `{command}`\n")
    print(f"Cache-hit `invoke`, {args.calls} interleaved calls each, medians:\n")
    print("| what (cache hit) | median us per call | vs InMemoryCache |")
    print("|---|---:|---:|")
    base = hits["in_memory"]
    for label, name in (
        ("`ChatOpenAI(cache=InMemoryCache())`", "in_memory"),
        ("`ChatOpenAI(cache=SQLiteCache(...))`", "sqlite"),
        ("`MnimiChatModel(model=ChatOpenAI(...))`", "wrapped"),
    ):
        print(f"| {label} | {hits[name]:.0f} | {hits[name] / base:.2f}x |")
    print("\nThe same calls by the call timed just before them (medians, us):\n")
    print("| call | first of its round | after InMemoryCache | after SQLiteCache | after wrapped |")
    print("|---|---:|---:|---:|---:|")
    for name in ("in_memory", "sqlite", "wrapped"):
        cells = (hits.get(f"{name} after {before}") for before in ("nothing", *WRAPPED_NAMES))
        print(f"| {name} | " + " | ".join("-" if c is None else f"{c:.0f}" for c in cells) + " |")
    print(
        f"\nTime to first chunk of a streamed miss, {args.misses} misses each, server "
        f"waiting {args.first_token * 1000:.0f} ms before the first byte and "
        f"{args.chunk_delay * 1000:.0f} ms between events, medians:\n"
    )
    print("| what (streamed miss) | median us to first chunk | vs bare |")
    print("|---|---:|---:|")
    print(f"| bare `ChatOpenAI.stream` | {firsts['bare']:.0f} | 1.00x |")
    ratio = firsts["wrapped"] / firsts["bare"]
    rows = (
        ("`MnimiChatModel(model=ChatOpenAI(...)).stream`", "wrapped"),
        ("the same in `no_cache()` (no store read or write)", "no_cache"),
    )
    for label, name in rows:
        print(f"| {label} | {firsts[name]:.0f} | {firsts[name] / firsts['bare']:.2f}x |")
    hit_ratio = hits["wrapped"] / base
    print(
        f"\nwrapped / InMemoryCache = {hit_ratio:.2f}x "
        f"({'meets' if hit_ratio <= 1.0 else 'misses'} the 1.0x target); "
        f"first chunk wrapped / bare = {ratio:.2f}x "
        f"({'meets' if ratio <= 1.1 else 'misses'} the 1.1x target)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="MnimiChatModel cache-hit invoke latency")
    parser.add_argument("--calls", type=int, default=2000, help="measured calls per model")
    parser.add_argument("--profile", action="store_true", help="also profile the hit path")
    parser.add_argument(
        "--wrapped", action="store_true", help="the wrapper around ChatOpenAI instead"
    )
    parser.add_argument("--misses", type=int, default=100, help="streamed misses per model")
    parser.add_argument(
        "--chunk-delay", type=float, default=0.002, help="seconds between streamed events"
    )
    parser.add_argument(
        "--first-token", type=float, default=0.0, help="server seconds before the first byte"
    )
    args = parser.parse_args()
    if args.wrapped:
        wrapped_main(args)
        return
    with SamplingServer(seed=0) as server, tempfile.TemporaryDirectory() as cache_dir:
        rows = measure(args.calls, server, cache_dir)
        medians = {name: statistics.median(values) for name, values in rows.items()}
        ratio = medians["mnimi"] / medians["baseline"]
        command = "python bench/bench_langchain.py" + "".join(f" {a}" for a in sys.argv[1:])
        print(f"Command: `{command}` ({args.calls} interleaved calls each, medians)\n")
        print("| what (cache hit) | median us per call | vs baseline |")
        print("|---|---:|---:|")
        print(
            "| LangChain chat model over litellm, `cache=InMemoryCache()` (baseline) "
            f"| {medians['baseline']:.0f} | 1.00x |"
        )
        print(f"| `MnimiChatModel.invoke` | {medians['mnimi']:.0f} | {ratio:.2f}x |")
        print(
            "| core only: `next(Persistent(...).samples(request))` "
            f"| {medians['core']:.0f} | {medians['core'] / medians['baseline']:.2f}x |"
        )
        verdict = "meets" if ratio <= 1.2 else "misses"
        print(f"\nMnimiChatModel / baseline = {ratio:.2f}x ({verdict} the 1.2x target)")
        if args.profile:
            profile(args.calls, server, os.path.join(cache_dir, "profile"))


if __name__ == "__main__":
    main()
