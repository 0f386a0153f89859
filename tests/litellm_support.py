"""Test helpers that need LiteLLM (kept apart from ``support``, which unit tests import)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import litellm
from litellm.integrations.custom_logger import CustomLogger


class SuccessCounter(CustomLogger):
    """LiteLLM's public callback: the LiteLLM calls that returned, by call id.

    LiteLLM may report one call to both the sync and the async hook, and report calls of
    earlier tests late: only calls with ``prompts`` count.
    """

    def __init__(self, *prompts: str) -> None:
        super().__init__()
        self.prompts = prompts
        self.hits: dict[str, bool] = {}

    def _count(self, kwargs: Any) -> None:
        messages = kwargs.get("messages") or [{}]
        if messages[-1].get("content") in self.prompts:
            self.hits[kwargs["litellm_call_id"]] = bool(kwargs.get("cache_hit"))

    def log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._count(kwargs)

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._count(kwargs)

    async def reported(self, events: int = 1, call_id: str | None = None) -> None:
        """Wait until ``events`` calls were reported, or the call ``call_id`` was: LiteLLM
        logs success in the background, for async calls on the caller's event loop."""
        for _ in range(500):
            if (call_id in self.hits) if call_id is not None else len(self.hits) >= events:
                return
            await asyncio.sleep(0.01)


@contextmanager
def listening(logger: CustomLogger) -> Iterator[None]:
    """``logger`` in ``litellm.callbacks`` for the block, then in no callback list at all.

    LiteLLM copies what is in ``litellm.callbacks`` into its other callback lists on the
    next call, and skips adding a logger of a class it already holds.
    """
    litellm.callbacks.append(logger)
    try:
        yield
    finally:
        for name in dir(litellm):
            held = getattr(litellm, name)
            if "callback" in name and isinstance(held, list):
                while logger in held:
                    held.remove(logger)
