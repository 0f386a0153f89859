"""Forked workers of a process that has used LiteLLM: each its own HTTP connections.

Real LiteLLM against the local sampling server. LiteLLM keeps the clients it made, with
their keep-alive connections; a fork copied them, so the workers of a pool wrote into one
socket and read each other's answers, which their caches stored under the wrong request.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from mnimi_adapters import Persistent
from mnimi_adapters.providers import OpenAICompatible
from mnimi_adapters.testing import SamplingServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork"),
]

#: Where the workers find the server and their caches (a fork copies it).
_SETTINGS: dict[str, str] = {}


@pytest.fixture
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=9, latency=0.2, json_answers=True) as running:
        yield running


def _model() -> OpenAICompatible:
    return OpenAICompatible("mock-model", 1.0, _SETTINGS["url"], alias="mock-model")


def _prompt(task: int) -> str:
    return f"Reply with a JSON with 'key{task}' keys."


def _answer(task: int) -> tuple[int, list[str]]:
    cache = Persistent(_model(), Path(_SETTINGS["caches"]) / f"task{task}")
    return task, list(json.loads(next(cache.sample(_prompt(task)))))


def test_the_workers_of_a_pool_forked_after_a_call_get_their_own_answers(
    server: SamplingServer, tmp_path: Path
) -> None:
    _SETTINGS.update(url=server.url, caches=str(tmp_path))
    try:
        parent = Persistent(_model(), tmp_path / "parent")
        assert next(parent.sample(_prompt(999)))  # LiteLLM now holds a connection
        with multiprocessing.get_context("fork").Pool(4) as pool:
            answers = pool.map(_answer, range(12), chunksize=1)
    finally:
        _SETTINGS.clear()
    assert answers == [(task, [f"key{task}"]) for task in range(12)]
