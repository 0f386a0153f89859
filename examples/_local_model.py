"""The chat model the LangChain examples use: Fireworks with a key, else a local server."""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
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


@contextlib.contextmanager
def example_chat_model(description: str, seed: int) -> Iterator[MnimiChatModel]:
    """The model of an example run from the command line (``--cache-dir DIR``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cache-dir", help="sample store (default: a new temporary one)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        cache_dir = args.cache_dir or stack.enter_context(tempfile.TemporaryDirectory())
        yield stack.enter_context(chat_model(cache_dir, seed=seed))
