"""MnimiChatModel in an LCEL chain: repeatable by default, independent where you ask.

Run it with ``python examples/langchain_chain.py [--cache-dir DIR]``.

With ``FIREWORKS_API_KEY`` set it samples from Fireworks; without it, it starts the
built-in local sampling server (``mnimi_adapters.testing.SamplingServer``) and runs
offline. Run it twice with the same ``--cache-dir`` and the second run replays the
first one without a single provider request.
"""

from __future__ import annotations

import os

# LiteLLM would otherwise try to download its price map when first imported.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from _local_model import example_chat_model
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from mnimi_adapters import independent, repeatable


def main() -> None:
    with example_chat_model(__doc__.splitlines()[0], seed=1) as chat:
        prompt = ChatPromptTemplate.from_messages(
            [("human", "Pick a random number between 1 and {top}. Answer with the number only.")]
        )
        chain = prompt | chat | StrOutputParser()

        # 1. Outside any scope a chain is repeatable: the same request, the same sample.
        a, b = chain.invoke({"top": 100}), chain.invoke({"top": 100})
        print(f"repeatable:   {a!r} == {b!r}: {a == b}")

        # 2. pass@k: independent samples, drawn concurrently by LangChain's thread pool.
        with independent():
            samples = chain.batch([{"top": 100}] * 5)
        print(f"independent:  {samples}")

        # 3. Retries: each attempt gets fresh samples that stay fixed within the attempt.
        with independent():
            for attempt in range(1, 4):
                with repeatable():
                    first, again = chain.invoke({"top": 100}), chain.invoke({"top": 100})
                print(f"attempt {attempt}:    {first!r} (again within the attempt: {again!r})")

        # 4. A rerun of the pass@k step replays it from the cache, in the same order.
        before = chat.cache_stats()["requests"]
        with independent():
            rerun = chain.batch([{"top": 100}] * 5)
        after = chat.cache_stats()["requests"]
        print(
            f"rerun:        replayed {rerun == samples} with {after - before} new provider requests"
        )
        print(f"cache stats:  {chat.cache_stats()}")


if __name__ == "__main__":
    main()
