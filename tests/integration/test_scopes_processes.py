"""Scopes and process pools: a worker outside any scope that replays a request says so.

Scopes do not cross processes, and a spawned (or forkserver) worker starts outside any:
``with independent():`` around a pass@k over a ``ProcessPoolExecutor`` hands out one
sample k times. A fork copies the parent's scope, and warns of that (``test_scopes.py``);
these workers have no scope to copy, so they warn when they replay a request.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from support import NumberModel

from mnimi_adapters.core import Persistent, ScopeWarning, independent, scoped
from mnimi_adapters.core.model import Layer

PROMPT = "Choose a number between 1 and 1000."

METHODS = [
    method
    for method in ("spawn", "forkserver")
    if method in multiprocessing.get_all_start_methods()
]

#: A worker's cache layer per directory: one per process, as an adapter keeps one.
_LAYERS: dict[str, Layer] = {}


#: The MnimiCache directories a worker installed.
_INSTALLED: set[str] = set()


def _layer(path: str) -> Layer:
    layer = _LAYERS.get(path)
    if layer is None:
        layer = _LAYERS[path] = Persistent(NumberModel(), path)
    return layer


def _warned(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, ScopeWarning)]


def _ask(path: str, prompt: str) -> tuple[str, list[str]]:
    """In a worker: one call as an adapter makes it, and the ScopeWarnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sample = next(scoped(_layer(path)).sample(prompt))
    return sample, _warned(caught)


def _ask_in_independent(path: str, prompt: str, k: int) -> tuple[list[str], list[str]]:
    """In a worker: ``k`` calls of one request in an independent() of the worker's own."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with independent():
            samples = [next(scoped(_layer(path)).sample(prompt)) for _ in range(k)]
    return samples, _warned(caught)


def _pool(method: str) -> ProcessPoolExecutor:
    # One worker: every task runs in the same process, one after the other.
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(method))


@pytest.mark.parametrize("method", METHODS)
def test_a_worker_outside_any_scope_that_replays_a_request_warns_once(
    tmp_path: Path, method: str
) -> None:
    # The parent's independent() does not reach the worker: each call replays position 0,
    # which nothing said. The second call of the request warns, and only it.
    with independent(), _pool(method) as pool:
        answers = list(pool.map(_ask, [str(tmp_path)] * 4, [PROMPT] * 4))
    assert len({sample for sample, _ in answers}) == 1
    warned = [warning for _, warnings_ in answers for warning in warnings_]
    assert len(warned) == 1 and answers[1][1] == warned
    assert "scopes do not cross process boundaries" in warned[0]
    assert "open independent() inside the worker function" in warned[0]


@pytest.mark.parametrize("method", METHODS)
def test_a_worker_drawing_distinct_requests_or_in_its_own_scope_does_not_warn(
    tmp_path: Path, method: str
) -> None:
    prompts = [f"{PROMPT} ({i})" for i in range(4)]
    with independent(), _pool(method) as pool:
        distinct = list(pool.map(_ask, [str(tmp_path)] * 4, prompts))
        # k samples of one request drawn in one worker, in its own scope: distinct.
        scoped_k = pool.submit(_ask_in_independent, str(tmp_path), PROMPT, 3).result()
        first_unscoped = pool.submit(_ask, str(tmp_path), PROMPT).result()
    assert [warned for _, warned in distinct] == [[]] * 4
    samples, warned = scoped_k
    assert len(set(samples)) == 3 and warned == []
    # Its first call of the request outside a scope: position 0, served there once only.
    assert first_unscoped == (samples[0], [])


def _ask_litellm(cache: str, url: str, problem: int) -> tuple[str, list[str]]:
    """In a worker: a pass@k call through LiteLLM, cached by MnimiCache, as a user writes it."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    from mnimi_adapters.litellm import MnimiCache

    if cache not in _INSTALLED:  # once per worker
        MnimiCache(cache).install()
        _INSTALLED.add(cache)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        response = litellm.completion(
            model="openai/mock-model",
            api_base=url,
            api_key="sk-test",
            temperature=0.8,
            messages=[{"role": "user", "content": f"Problem {problem}: pick a number"}],
        )
    return str(response.choices[0].message.content), _warned(caught)


def test_a_pass_at_k_through_litellm_over_a_spawned_pool_warns(tmp_path: Path) -> None:
    from mnimi_adapters.testing import SamplingServer

    cache = str(tmp_path / "cache")
    with SamplingServer(seed=0) as server, independent(), _pool("spawn") as pool:
        answers = list(pool.map(_ask_litellm, [cache] * 3, [server.url] * 3, [0, 0, 0]))
    assert len({sample for sample, _ in answers}) == 1
    assert [len(warned) for _, warned in answers] == [0, 1, 0]
    assert "scopes do not cross process boundaries" in answers[1][1][0]
