"""``MnimiCache`` against no cache and LiteLLM's ``Cache()``: misses, then hits.

1. Concurrent misses, then hits. ``--concurrent`` ``acompletion`` calls at once, in an
   ``independent()`` scope (each a fresh sample), against a sampling server in another
   process that waits ``--latency`` seconds before each answer, with no cache and with
   ``MnimiCache``; then the same run again, which ``MnimiCache`` answers from its store.
   Rounds alternate the two, each ``MnimiCache`` round with an empty directory; medians of
   the wall time and of this process's CPU time (the server's is not counted) are compared.
   A miss costs one LiteLLM call: the provider response is returned as it is. The calls
   are k samples of one request (pass@k), or with ``--distinct`` one sample each of as
   many requests.

2. Cache-hit latency, ``MnimiCache`` against LiteLLM's in-memory ``Cache()``. Both caches
answer the same request in the same process, call by call interleaved (in a
random order per round, so that neither always runs on a warmer interpreter), and the
medians are compared. Every hit goes through the same LiteLLM wrapper, caching handler and
response conversion; what differs:

* MnimiCache parses the call and hashes its key once (before LiteLLM runs; LiteLLM's
  request for the key reuses it), reads the sample (from memory after the first read)
  and builds the response dict.
* LiteLLM prices a cached response before it records that it was a hit, and then searches
  its price map to explain the zero cost. MnimiCache tells the logging object it is a hit
  first (the price of a hit is 0 by LiteLLM's own rule), so its hits skip that work; this
  is why they can be faster than LiteLLM's own in-memory hits.
* The rest is LiteLLM: ``inspect.signature`` of ``completion`` on every call, logging
  setup, pydantic response objects and the success callbacks.

Run by hand (it talks to a local sampling server only)::

    LITELLM_LOCAL_MODEL_COST_MAP=True python bench/bench_litellm.py --calls 2000 --rounds 5

Add ``--profile`` to print where a MnimiCache hit spends its time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import pstats
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from litellm.caching.caching import Cache

from mnimi_adapters import independent
from mnimi_adapters.litellm import MnimiCache
from mnimi_adapters.testing import SamplingServer

TARGET = 1.0
MISS_TARGET = 1.15
MESSAGES = [
    {"role": "system", "content": "You answer with one number."},
    {"role": "user", "content": "Choose a number between 1 and 1000."},
]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _sync_timer(kwargs: dict[str, Any]) -> Callable[[], float]:
    def once() -> float:
        start = time.perf_counter()
        response = litellm.completion(**kwargs)
        elapsed = time.perf_counter() - start
        assert response._hidden_params.get("cache_hit") is True, "not a cache hit"
        return elapsed

    return once


def _async_timer(kwargs: dict[str, Any]) -> Callable[[], Awaitable[float]]:
    async def once() -> float:
        start = time.perf_counter()
        response = await litellm.acompletion(**kwargs)
        elapsed = time.perf_counter() - start
        assert response._hidden_params.get("cache_hit") is True, "not a cache hit"
        return elapsed

    return once


def _run_sync(
    caches: dict[str, Cache], kwargs: dict[str, Any], calls: int, rng: random.Random
) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {name: [] for name in caches}
    once = _sync_timer(kwargs)
    for cache in caches.values():  # fill each cache, then warm the hit path
        litellm.cache = cache
        litellm.completion(**kwargs)
        for _ in range(20):
            once()
    names = list(caches)
    for _ in range(calls):
        rng.shuffle(names)
        for name in names:
            litellm.cache = caches[name]
            timings[name].append(once())
    return timings


async def _run_async(
    caches: dict[str, Cache], kwargs: dict[str, Any], calls: int, rng: random.Random
) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {name: [] for name in caches}
    once = _async_timer(kwargs)
    for cache in caches.values():
        litellm.cache = cache
        await litellm.acompletion(**kwargs)
        await asyncio.sleep(0.05)  # LiteLLM writes its cache in a background task
        for _ in range(20):
            await once()
    names = list(caches)
    for _ in range(calls):
        rng.shuffle(names)
        for name in names:
            litellm.cache = caches[name]
            timings[name].append(await once())
    return timings


def _rows(label: str, timings: dict[str, list[float]]) -> tuple[list[str], float]:
    ours = statistics.median(timings["MnimiCache"])
    theirs = statistics.median(timings["litellm Cache()"])
    ratio = ours / theirs
    rows = []
    for name, values in timings.items():
        rows.append(
            f"| {label} | {name} | {len(values)} | {statistics.median(values) * 1e6:,.0f} | "
            f"{_percentile(values, 0.9) * 1e6:,.0f} |"
        )
    return rows, ratio


class _RemoteServer:
    """The sampling server in a process of its own, so that its CPU time is not ours."""

    def __init__(self, latency: float) -> None:
        command = [sys.executable, "-m", "mnimi_adapters.testing", "--port", "0"]
        command += ["--latency", str(latency)]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        self.url = line.split(" at ", 1)[1].split()[0]

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)


async def _burst(url: str, prompt: str, concurrent: int, distinct: bool = False) -> None:
    """``concurrent`` acompletion calls at once, in one independent() scope: samples of
    one request (pass@k), or with ``distinct`` one sample each of as many requests."""
    kwargs = {"model": "openai/mock-model", "api_base": url, "api_key": "sk-test"}

    def messages(i: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"{prompt} ({i})" if distinct else prompt}]

    with independent():
        responses = await asyncio.gather(
            *(litellm.acompletion(messages=messages(i), **kwargs) for i in range(concurrent))
        )
    assert len({r.choices[0].message.content for r in responses}) == concurrent


def _timed(run: Callable[[], None]) -> tuple[float, float]:
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def _concurrent(
    concurrent: int, latency: float, rounds: int, distinct: bool
) -> tuple[list[str], float, float]:
    """Rows of the concurrency table, and the miss ratios (wall, CPU) of the medians."""
    server = _RemoteServer(latency)
    times: dict[str, list[tuple[float, float]]] = {"no cache": [], "miss": [], "hit": []}
    try:
        asyncio.run(_burst(server.url, "warm-up", concurrent))  # connections, imports
        for number in range(rounds):
            prompt = f"Round {number}: say something."

            def burst(prompt: str = prompt) -> None:
                asyncio.run(_burst(server.url, prompt, concurrent, distinct))

            times["no cache"].append(_timed(burst))
            with tempfile.TemporaryDirectory() as directory, MnimiCache(directory) as cache:
                times["miss"].append(_timed(burst))
                times["hit"].append(_timed(burst))
            cache.close()
    finally:
        server.close()
    medians = {name: tuple(statistics.median(t[i] for t in runs) for i in (0, 1))
               for name, runs in times.items()}  # fmt: skip
    base_wall, base_cpu = medians["no cache"]
    rows = [
        f"| {name} | {wall:.3f} | {cpu:.3f} | {wall / base_wall:.2f}x | {cpu / base_cpu:.2f}x |"
        for name, (wall, cpu) in medians.items()
    ]
    return rows, medians["miss"][0] / base_wall, medians["miss"][1] / base_cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per cache and API")
    parser.add_argument("--seed", type=int, default=0, help="seed of the interleaving order")
    parser.add_argument("--profile", action="store_true", help="profile MnimiCache hits")
    parser.add_argument("--concurrent", type=int, default=200, help="calls at once")
    parser.add_argument("--latency", type=float, default=0.1, help="server seconds per answer")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the concurrent run")
    parser.add_argument(
        "--distinct", action="store_true", help="a request each (not k samples of one)"
    )
    args = parser.parse_args(argv)
    # LiteLLM's own cache hits print a "Provider List" banner for unknown models.
    litellm.suppress_debug_info = True
    rng = random.Random(args.seed)
    burst_rows, miss_wall, miss_cpu = _concurrent(
        args.concurrent, args.latency, args.rounds, args.distinct
    )

    with SamplingServer(seed=1) as server, tempfile.TemporaryDirectory() as directory:
        kwargs = {
            "model": "openai/mock-model",
            "messages": MESSAGES,
            "api_base": server.url,
            "api_key": "sk-test",
            "temperature": 0.7,
            "max_tokens": 64,
        }
        mnimi = MnimiCache(directory)
        # install() also swaps in the fastapi-free hit check, which LiteLLM's own Cache
        # needs too on this version: both caches then take the same path through LiteLLM.
        mnimi.install()
        caches: dict[str, Cache] = {"MnimiCache": mnimi, "litellm Cache()": Cache()}
        saved = litellm.cache
        gc.collect()
        try:
            sync = _run_sync(caches, kwargs, args.calls, rng)
            asynchronous = asyncio.run(_run_async(caches, kwargs, args.calls, rng))
            if args.profile:
                litellm.cache = mnimi
                profiler = cProfile.Profile()
                profiler.enable()
                for _ in range(args.calls):
                    litellm.completion(**kwargs)
                profiler.disable()
        finally:
            litellm.cache = saved
            mnimi.close()
        requests = len(server.chat_requests())

    sync_rows, sync_ratio = _rows("completion", sync)
    async_rows, async_ratio = _rows("acompletion", asynchronous)
    versions = f"Python {sys.version.split()[0]}, litellm {metadata.version('litellm')}"
    what = "requests, one sample each" if args.distinct else "samples of one request"
    print(
        f"{args.concurrent} concurrent acompletion calls in independent() ({what}), server "
        f"latency {args.latency} s, medians of {args.rounds} rounds ({versions})\n"
    )
    print("| run | wall s | client CPU s | wall / no cache | CPU / no cache |")
    print("|---|---:|---:|---:|---:|")
    for row in burst_rows:
        print(row)
    print(f"\nMnimiCache misses / no cache: wall {miss_wall:.2f}x, CPU {miss_cpu:.2f}x "
          f"(target <= {MISS_TARGET}x)\n")  # fmt: skip
    print(f"Cache-hit latency, same request, interleaved ({versions}); µs per call\n")
    print("| API | cache | calls | median µs | p90 µs |")
    print("|---|---|---:|---:|---:|")
    for row in sync_rows + async_rows:
        print(row)
    print()
    print("| API | MnimiCache / litellm Cache() (medians) | target |")
    print("|---|---:|---:|")
    print(f"| completion | {sync_ratio:.2f}x | <= {TARGET}x |")
    print(f"| acompletion | {async_ratio:.2f}x | <= {TARGET}x |")
    print(f"\nprovider requests: {requests} (the first call through each cache fills it)")
    print(
        "\ncommand: LITELLM_LOCAL_MODEL_COST_MAP=True python bench/bench_litellm.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
    )
    if args.profile:
        print("\nMnimiCache hit profile (cumulative, top 25):")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    met = max(sync_ratio, async_ratio) <= TARGET and max(miss_wall, miss_cpu) <= MISS_TARGET
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
