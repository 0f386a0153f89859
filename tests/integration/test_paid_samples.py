"""A sample paid for is stored whatever happens to the caller (law 6).

The provider answers after a delay; meanwhile its caller times out, is cancelled,
has its event loop closed by ``asyncio.run``, is interrupted by Ctrl-C, or the
interpreter exits. Each time, the samples the provider returned end up in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mnimi_adapters.core import BatchedModel, DiskStore, Persistent, Request, Sample
from mnimi_adapters.core.layers import wait_for_refills
from mnimi_adapters.testing import SamplingServer

PROMPT = "Choose a number between 1 and 1000."
PAID = ["paid-0", "paid-1", "paid-2"]
TESTS = Path(__file__).resolve().parent


class Slow(BatchedModel):
    """Answers ``paid-0``, ``paid-1``, ... after ``delay`` seconds; notes what it returned."""

    def __init__(self, delay: float = 0.8) -> None:
        super().__init__("slow", 1.0, max_batch=3)
        self.delay = delay
        self.started = threading.Event()
        self.answered: list[str] = []
        self._lock = threading.Lock()

    def _answer(self, n: int) -> list[str | Sample]:
        with self._lock:
            texts = [f"paid-{len(self.answered) + i}" for i in range(n)]
            self.answered.extend(texts)
        return list(texts)

    def query(self, request: Request, n: int) -> list[str | Sample]:
        self.started.set()
        time.sleep(self.delay)
        return self._answer(n)

    async def aquery(self, request: Request, n: int) -> list[str | Sample]:
        self.started.set()
        await asyncio.sleep(self.delay)
        return self._answer(n)


def stored(path: Path) -> list[str]:
    """The texts of the one sequence stored at ``path``."""
    with DiskStore(path) as store:
        (key,) = store.keys()
        samples = [store.get(key, i) for i in range(store.length(key))]
    return [s.text for s in samples if s is not None]


async def refills_done() -> bool:
    return await asyncio.to_thread(wait_for_refills, 30)


async def test_a_timed_out_call_stores_what_was_paid_for(tmp_path: Path) -> None:
    provider = Slow()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(Persistent(provider, tmp_path).adraw(PROMPT, 1, batch=3), 0.2)
    assert await refills_done()
    assert stored(tmp_path) == provider.answered == PAID


async def test_a_cancelled_call_stores_what_was_paid_for(tmp_path: Path) -> None:
    provider = Slow()
    call = asyncio.create_task(Persistent(provider, tmp_path).adraw(PROMPT, 1, batch=3))
    assert await asyncio.to_thread(provider.started.wait, 10)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await refills_done()
    assert stored(tmp_path) == provider.answered == PAID


@pytest.mark.parametrize("how", ["timeout", "abandoned task"])
def test_samples_in_flight_when_the_event_loop_closes_are_stored(tmp_path: Path, how: str) -> None:
    provider = Slow()
    model = Persistent(provider, tmp_path)

    async def main() -> None:
        if how == "timeout":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(model.adraw(PROMPT, 1, batch=3), 0.2)
        else:
            # Left running: asyncio.run cancels it, and everything it awaits, on return.
            call = asyncio.create_task(model.adraw(PROMPT, 1, batch=3))
            assert await asyncio.to_thread(provider.started.wait, 10)
            assert not call.done()

    asyncio.run(main())
    assert wait_for_refills(30)
    assert stored(tmp_path) == provider.answered == PAID
    # The next run replays them: nothing is drawn, so nothing is paid twice.
    assert [s.text for s in Persistent(Slow(), tmp_path, replication=True).draw(PROMPT, 3)] == PAID


def run_child(script: str, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter, with ``Slow`` importable and the store at argv[1]."""
    prelude = "import sys\nfrom pathlib import Path\nfrom test_paid_samples import PROMPT, Slow\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + script, str(path), *args],
        cwd=TESTS,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        capture_output=True,
        text=True,
        timeout=120,
    )


ASYNC_THEN_EXIT = """
import asyncio
from mnimi_adapters.core import Persistent

async def main():
    try:
        await asyncio.wait_for(Persistent(Slow(), sys.argv[1]).adraw(PROMPT, 1, batch=3), 0.2)
    except TimeoutError:
        print("timed out")

asyncio.run(main())
"""


def test_an_async_refill_in_flight_at_exit_is_stored(tmp_path: Path) -> None:
    child = run_child(ASYNC_THEN_EXIT, tmp_path)
    assert child.returncode == 0, child.stderr
    assert child.stdout == "timed out\n"
    assert "1 provider refill in flight" in child.stderr
    assert stored(tmp_path) == PAID


CTRL_C_DURING_DRAW = """
import signal, threading
from mnimi_adapters.core import Persistent

provider = Slow()
main = threading.main_thread().ident

def interrupt():
    provider.started.wait()
    signal.pthread_kill(main, signal.SIGINT)

threading.Thread(target=interrupt, daemon=True).start()
try:
    Persistent(provider, sys.argv[1]).draw(PROMPT, 1, batch=3)
except KeyboardInterrupt:
    print("interrupted")
"""


def test_a_sync_draw_interrupted_by_ctrl_c_stores_what_was_paid_for(tmp_path: Path) -> None:
    child = run_child(CTRL_C_DURING_DRAW, tmp_path)
    assert child.returncode == 0, child.stderr
    assert child.stdout == "interrupted\n"
    assert stored(tmp_path) == PAID


MAIN_THREAD_FAILS = """
import threading
from mnimi_adapters.core import Persistent

provider = Slow()
model = Persistent(provider, sys.argv[1])
threading.Thread(target=lambda: model.draw(PROMPT, 1, batch=3), daemon=True).start()
provider.started.wait()
raise RuntimeError("the main thread fails while a daemon thread draws")
"""


def test_a_sync_draw_in_a_daemon_thread_survives_the_interpreter_exit(tmp_path: Path) -> None:
    child = run_child(MAIN_THREAD_FAILS, tmp_path)
    assert child.returncode == 1
    assert "RuntimeError: the main thread fails" in child.stderr
    assert stored(tmp_path) == PAID


@pytest.mark.integration
def test_mnimicache_keeps_what_a_call_cut_short_paid_for(tmp_path: Path) -> None:
    # Imported here: the child interpreters above import this module, and need no LiteLLM.
    import litellm

    from mnimi_adapters.litellm import MnimiCache

    call = {
        "model": "openai/mock-model",
        "api_key": "sk-test",
        "messages": [{"role": "user", "content": PROMPT}],
        "n": 3,
    }
    with SamplingServer(seed=3, latency=0.8) as server, MnimiCache(str(tmp_path)) as cache:

        async def main() -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(litellm.acompletion(api_base=server.url, **call), 0.2)

        asyncio.run(main())
        assert wait_for_refills(30)
        (request,) = server.chat_requests()
        assert request.status == 200 and request.body["n"] == 3
        server.latency = 0.0
        replay = litellm.completion(api_base=server.url, **call)
        assert len(server.chat_requests()) == 1  # the replay was served from the store
        assert len({choice.message.content for choice in replay.choices}) == 3
    cache.close()
    assert len(stored(tmp_path)) == 3


@pytest.mark.integration
@pytest.mark.parametrize("how", ["ainvoke", "astream"])
def test_a_wrapped_chat_model_keeps_what_a_call_cut_short_paid_for(
    tmp_path: Path, how: str
) -> None:
    """Its async miss outlives the caller's event loop, as every refill does."""
    from langchain_openai import ChatOpenAI

    from mnimi_adapters.langchain import MnimiChatModel

    with SamplingServer(seed=3, latency=0.8) as server:
        chat = ChatOpenAI(model="mock-model", base_url=server.url, api_key="sk-test")
        wrapped = MnimiChatModel(model=chat, cache_dir=str(tmp_path))

        async def call() -> None:
            if how == "ainvoke":
                await wrapped.ainvoke(PROMPT)
            else:
                async for _ in wrapped.astream(PROMPT):
                    pass

        async def main() -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call(), 0.2)

        asyncio.run(main())
        assert wait_for_refills(30)
        server.latency = 0.0
        if how == "ainvoke":  # a whole answer paid for is kept, and replayed
            replay = wrapped.invoke(PROMPT)
            assert len(server.chat_requests()) == 1 and len(stored(tmp_path)) == 1
            # Paid in this run by a call that never returned it: the call that first gets
            # it reports the miss (and its cost), or the run's reported costs fall short.
            assert replay.response_metadata["cache_hit"] is False
            assert wrapped.invoke(PROMPT).response_metadata["cache_hit"] is True
        else:  # a stream given up half-way stores nothing (issue 11), and no position
            with DiskStore(tmp_path) as store:
                assert list(store.keys()) == []


LITELLM_CALL_THEN_EXIT = """
import asyncio, contextlib
import litellm
from mnimi_adapters.litellm import MnimiCache

call = {"model": "openai/mock-model", "api_key": "sk-test", "api_base": sys.argv[2],
        "messages": [{"role": "user", "content": PROMPT}]}

async def main():
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(litellm.acompletion(**call), 0.2)
    print("timed out")

MnimiCache(sys.argv[1]).install()
asyncio.run(main())
"""


@pytest.mark.integration
def test_a_litellm_refill_in_flight_at_exit_is_stored(tmp_path: Path) -> None:
    # The interpreter shuts its thread pools down before atexit handlers run, and LiteLLM
    # needs one for every call: the wait for refills must come before that.
    with SamplingServer(seed=3, latency=1.5) as server:
        child = run_child(LITELLM_CALL_THEN_EXIT, tmp_path, server.url)
        assert child.returncode == 0, child.stderr
        assert child.stdout == "timed out\n"
        (request,) = server.chat_requests()
        assert request.status == 200
    assert len(stored(tmp_path)) == 1
