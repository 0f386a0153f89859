"""Benchmark of the LiteLLM provider layer against the local sampling server.

Run by hand (not a test)::

    LITELLM_LOCAL_MODEL_COST_MAP=True python bench/bench_providers.py

It measures, in one run:

1. **Batch splitting.** 40 samples with ``batch=20, max_batch=10`` at a server latency of
   200 ms: 4 requests of ``n=10``, sent as 2 refills of 2 concurrent requests. The wall
   time is compared with 2 round trips (the ideal) and with the reference
   implementation's 4 sequential requests.
2. **Per-request overhead.** ``LiteLLMModel.query`` (and a miss through
   ``Independent(Repeatable(model))``) against a bare ``litellm.completion`` call to the
   same server at latency 0: medians over interleaved calls.

It prints a Markdown table.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import argparse
import importlib.metadata
import statistics
import sys
import time
from collections.abc import Callable
from itertools import islice

import litellm

from mnimi_adapters import Independent, OpenAICompatible, Repeatable, Request
from mnimi_adapters.testing import SamplingServer

PROMPT = "Choose a number between 1 and 1000."
LATENCY = 0.2


def _timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def bench_batching(repeats: int) -> list[tuple[str, str, str]]:
    with SamplingServer(seed=0, latency=LATENCY) as server:
        model = OpenAICompatible("mock-model", 1.0, server.url, api_key="local", max_batch=10)
        request = Request.of(PROMPT)
        model.query(request, 10)  # Warm-up: LiteLLM's client and connection pool.

        def split() -> None:
            texts = list(islice(Repeatable(model).sample(PROMPT, batch=20), 40))
            assert len(set(texts)) == 40

        def sequential() -> None:  # What the reference implementation does.
            for _ in range(4):
                model.query(request, 10)

        round_trips, splits, sequentials = [], [], []
        for _ in range(repeats):
            round_trips.append(_timed(lambda: model.query(request, 10)))
            server.reset()
            splits.append(_timed(split))
            assert [r.body.get("n") for r in server.chat_requests()] == [10] * 4
            sequentials.append(_timed(sequential))

    rtt = statistics.median(round_trips)
    wall = statistics.median(splits)
    seq = statistics.median(sequentials)
    return [
        ("one request of n=10 (round trip)", f"{rtt * 1000:.0f} ms", "-"),
        ("40 samples, batch=20, max_batch=10 (4 requests)", f"{wall * 1000:.0f} ms", "-"),
        (
            "  vs 2 round trips (target <= 1.5x)",
            f"{2 * rtt * 1000:.0f} ms",
            f"{wall / (2 * rtt):.2f}x",
        ),
        ("  vs reference: 4 sequential requests", f"{seq * 1000:.0f} ms", f"{wall / seq:.2f}x"),
    ]


def bench_overhead(calls: int) -> list[tuple[str, str, str]]:
    with SamplingServer(seed=1, latency=0.0) as server:
        model = OpenAICompatible("mock-model", 1.0, server.url, api_key="local")
        request = Request.of(PROMPT)
        kwargs = {
            "model": "openai/mock-model",
            "messages": [{"role": "user", "content": PROMPT}],
            "temperature": 1.0,
            "api_base": server.url,
            "api_key": "local",
            "timeout": 120.0,
            "num_retries": 0,
        }
        layered = Independent(Repeatable(model))
        for _ in range(10):  # Warm-up.
            litellm.completion(**kwargs)
            model.query(request, 1)
            next(layered.sample(PROMPT))

        bare, provider, through_layers = [], [], []
        for _ in range(calls):  # Interleaved, so drift hits all three alike.
            bare.append(_timed(lambda: litellm.completion(**kwargs)))
            provider.append(_timed(lambda: model.query(request, 1)))
            through_layers.append(_timed(lambda: next(layered.sample(PROMPT))))

    b = statistics.median(bare)
    p = statistics.median(provider)
    t = statistics.median(through_layers)
    return [
        (f"bare litellm.completion (median of {calls})", f"{b * 1000:.2f} ms", "-"),
        ("LiteLLMModel.query(request, 1)", f"{p * 1000:.2f} ms", f"+{(p - b) * 1000:.2f} ms"),
        (
            "miss via Independent(Repeatable(model))",
            f"{t * 1000:.2f} ms",
            f"+{(t - b) * 1000:.2f} ms",
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of the batching bench")
    parser.add_argument("--calls", type=int, default=200, help="calls per overhead variant")
    args = parser.parse_args(argv)
    litellm.suppress_debug_info = True
    server_note = "local sampling server"

    rows = bench_batching(args.repeats) + bench_overhead(args.calls)
    flags = f"--repeats {args.repeats} --calls {args.calls}"
    version = importlib.metadata.version("litellm")
    print(f"Command: LITELLM_LOCAL_MODEL_COST_MAP=True python bench/bench_providers.py {flags}")
    print(
        f"Python {sys.version.split()[0]}, litellm {version}, {server_note}; server latency "
        f"{LATENCY * 1000:.0f} ms for the batching rows, 0 for the overhead rows\n"
    )
    print("| measurement | time | ratio / overhead |")
    print("|---|---|---|")
    for name, value, ratio in rows:
        print(f"| {name} | {value} | {ratio} |")


if __name__ == "__main__":
    main()
