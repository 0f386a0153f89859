"""Shared fixtures. Tests never touch the internet."""

from __future__ import annotations

import os
import random
import threading

import pytest

# LiteLLM downloads its price map at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from mnimi_adapters.core import BatchedModel, Request


class NumberModel(BatchedModel):
    """A provider stand-in: answers random numbers and counts its requests."""

    def __init__(self, name: str = "gpt-4o", temperature: float = 1.0, **kwargs: object) -> None:
        super().__init__(name, temperature, **kwargs)  # type: ignore[arg-type]
        self.calls: list[int] = []
        self._rng = random.Random(7)
        self._lock = threading.Lock()

    def query(self, request: Request, n: int) -> list[str]:
        with self._lock:
            self.calls.append(n)
            return [str(self._rng.randint(1, 1000)) for _ in range(n)]


class FailingModel(BatchedModel):
    """A provider that must never be reached."""

    def query(self, request: Request, n: int) -> list[str]:
        raise AssertionError("the provider was called")


@pytest.fixture
def number_model() -> NumberModel:
    return NumberModel()
