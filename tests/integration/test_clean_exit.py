"""A program that drew samples through LiteLLM exits without noise of ours on its terminal."""

from __future__ import annotations

import os
import subprocess
import sys

PROGRAM = """
import asyncio, sys, litellm
from mnimi_adapters import independent
from mnimi_adapters.litellm import MnimiCache
from mnimi_adapters.testing import SamplingServer

with SamplingServer(seed=1) as server:
    async def main():
        with MnimiCache(sys.argv[1]), independent():
            calls = [
                litellm.acompletion(
                    model="openai/mock-model", api_base=server.url, api_key="local",
                    messages=[{"role": "user", "content": "Choose a number between 1 and 99."}],
                )
                for _ in range(3)
            ]
            answers = await asyncio.gather(*calls)
        # And a call of the program's own after the cache is gone, on its own loop.
        await litellm.acompletion(
            model="openai/mock-model", api_base=server.url, api_key="local",
            messages=[{"role": "user", "content": "hi"}],
        )
        print(len({a.choices[0].message.content for a in answers}))

    asyncio.run(main())
"""


def test_async_misses_leave_no_pending_task_behind(tmp_path: object) -> None:
    # Misses run on the library's own event loop; what LiteLLM started there (its logging
    # worker) must not be left pending for the interpreter to complain about at exit.
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(tmp_path)],
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"
    assert "Task was destroyed" not in done.stderr
    assert "Traceback" not in done.stderr
