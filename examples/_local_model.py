"""The chat model the LangChain examples use: Fireworks with a key, else a local server."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from mnimi_adapters.langchain import MnimiChatModel
from mnimi_adapters.testing import SamplingServer

FIREWORKS_MODEL = "fireworks_ai/accounts/fireworks/models/llama-v3p1-8b-instruct"


@contextlib.contextmanager
def chat_model(cache_dir: str, seed: int = 1) -> Iterator[MnimiChatModel]:
    """A chat model on Fireworks if a key is set, else on a local sampling server."""
    if os.environ.get("FIREWORKS_API_KEY"):
        yield MnimiChatModel(model=FIREWORKS_MODEL, temperature=1.0, cache_dir=cache_dir)
        return
    with SamplingServer(seed=seed) as server:
        # The alias keeps keys stable across runs although the server's port changes.
        yield MnimiChatModel(
            model="openai/mock-model",
            alias="mock-model",
            api_base=server.url,
            api_key="sk-local",
            cache_dir=cache_dir,
        )
