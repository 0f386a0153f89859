"""Plain ``litellm.completion`` calls, cached by Mnimi without losing independence.

By default it runs offline against the local sampling server (random answers); pass
``--model`` and ``--api-base`` (and set the key variable LiteLLM expects) to use a real
provider::

    python examples/litellm_completion.py
    python examples/litellm_completion.py --model openai/gpt-4o-mini --cache ~/.llm_cache

Run it twice with the same ``--cache``: the second run prints the same answers and sends
no request, because every call replays the samples the first run drew.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-map download

import litellm

from mnimi_adapters import ReplicationCacheMiss, independent, repeatable
from mnimi_adapters.litellm import MnimiCache
from mnimi_adapters.testing import SamplingServer

PROMPT = [{"role": "user", "content": "Choose a number between 1 and 1000."}]
LOCAL_MODEL = "openai/mock-model"
# The local server listens on a new port each run; without an alias the port (its
# api_base) would be part of every key, and a second run would share nothing.
ALIAS = {LOCAL_MODEL: "mock-model"}


@contextlib.contextmanager
def endpoint(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """The model and endpoint to call: the local sampling server unless told otherwise."""
    if args.model:
        options = {"model": args.model}
        if args.api_base:
            options["api_base"] = args.api_base
        yield options
        return
    with SamplingServer(seed=0) as server:
        yield {"model": LOCAL_MODEL, "api_base": server.url, "api_key": "sk-local"}


def answer(response: Any) -> list[str]:
    return [str(choice.message.content) for choice in response.choices]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a LiteLLM model string (default: local server)")
    parser.add_argument("--api-base", help="the endpoint, for OpenAI-compatible servers")
    parser.add_argument("--cache-dir", "--cache", help="cache directory (default: a temporary one)")
    args = parser.parse_args()
    directory = args.cache_dir or tempfile.mkdtemp(prefix="mnimi-")

    with endpoint(args) as model, MnimiCache(directory, alias=ALIAS):
        # Outside any scope, identical calls replay sample 0 of their sequence.
        print("repeatable:", answer(litellm.completion(messages=PROMPT, **model)))
        print("again:     ", answer(litellm.completion(messages=PROMPT, **model)))

        # In an independent scope, each call continues the sequence: 3 distinct samples.
        with independent():
            draws = [answer(litellm.completion(messages=PROMPT, **model))[0] for _ in range(3)]
        print("independent:", draws)

        # n=5 reuses the 3 samples above and draws only the 2 that are missing.
        print("n=5:       ", answer(litellm.completion(messages=PROMPT, n=5, **model)))

        # The retry pattern: each attempt gets a fresh sample, repeated within the attempt.
        with independent():
            for attempt in range(2):
                with repeatable():
                    first = answer(litellm.completion(messages=PROMPT, **model))[0]
                    same = answer(litellm.completion(messages=PROMPT, **model))[0]
                    print(f"attempt {attempt}: {first} (again: {same})")

        # Streaming calls get the same samples, as chunks.
        stream = litellm.completion(messages=PROMPT, stream=True, **model)
        print("streamed:  ", "".join(c.choices[0].delta.content or "" for c in stream))

        # A streamed miss is live: each chunk arrives as the provider sends it, and the
        # sample is stored when the stream ends.
        story = [{"role": "user", "content": "Tell me a short story."}]
        print("live:       ", end="")
        for chunk in litellm.completion(messages=story, stream=True, **model):
            print(chunk.choices[0].delta.content or "" if chunk.choices else "", end="")
        print()

        # acompletion too, and concurrent calls in one scope get distinct samples.
        async def concurrent() -> list[str]:
            with independent():
                calls = [litellm.acompletion(messages=PROMPT, **model) for _ in range(4)]
                return [answer(r)[0] for r in await asyncio.gather(*calls)]

        print("gathered:  ", asyncio.run(concurrent()))

    # Replication: answers come from the cache only; a miss raises, nothing is sent, even
    # for a call that switches LiteLLM's cache off.
    with endpoint(args) as model, MnimiCache(directory, replication=True, alias=ALIAS):
        print("replayed:  ", answer(litellm.completion(messages=PROMPT, **model)))
        print("caching=False:", answer(litellm.completion(messages=PROMPT, caching=False, **model)))
        try:
            litellm.completion(messages=[{"role": "user", "content": "New question"}], **model)
        except ReplicationCacheMiss as miss:
            print("replication miss:", miss)
    print("cache directory:", directory)


if __name__ == "__main__":
    main()
