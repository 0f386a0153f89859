"""Real DSPy programs on a MnimiCache, on both DSPy engines, against the local server.

DSPy's default engine talks HTTP itself and its LiteLLM engine switches LiteLLM's cache off
on every call; ``MnimiCache(..., dspy=True)`` (and any replication cache) answers both.
The server answers in JSON (its ``json_answers`` mode), which DSPy's ``JSONAdapter`` parses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# LiteLLM downloads its price map at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

dspy = pytest.importorskip("dspy")

from mnimi_adapters import ReplicationCacheMiss, independent  # noqa: E402
from mnimi_adapters.litellm import MnimiCache  # noqa: E402
from mnimi_adapters.testing import SamplingServer  # noqa: E402

pytestmark = pytest.mark.integration

#: DSPy's default engine (native HTTP) and its LiteLLM engine.
ENGINES = ("auto", "litellm")
QUESTIONS = ("What is 2 + 2?", "Name a colour.", "Who wrote Hamlet?")


@pytest.fixture(scope="module")
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=3, json_answers=True) as running:
        yield running


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest, server: SamplingServer) -> Iterator[str]:
    lm = dspy.LM(
        "openai/mock-model", api_base=server.url, api_key="sk-test", cache=False,
        engine=request.param,
    )  # fmt: skip
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        yield str(request.param)


def sent(server: SamplingServer) -> int:
    return len(server.chat_requests())


def run(program: Any) -> list[str]:
    """A program run: one prediction per question."""
    return [str(program(question=q).answer) for q in QUESTIONS]


def test_a_rerun_replays_with_no_request(
    server: SamplingServer, engine: str, tmp_path: Path
) -> None:
    server.reset()
    with MnimiCache(str(tmp_path), dspy=True) as cache:
        first = run(dspy.Predict("question -> answer"))
        assert sent(server) == len(QUESTIONS)
        assert run(dspy.Predict("question -> answer")) == first
    cache.close()
    assert sent(server) == len(QUESTIONS)


def test_independent_gives_fresh_samples(
    server: SamplingServer, engine: str, tmp_path: Path
) -> None:
    server.reset()
    predict = dspy.Predict("question -> answer")
    with MnimiCache(str(tmp_path), dspy=True) as cache:
        with independent():
            attempts = [str(predict(question=QUESTIONS[0]).answer) for _ in range(3)]
        assert len(set(attempts)) == 3
        assert sent(server) == 3
        # A new run replays the same three attempts.
        with independent():
            assert [str(predict(question=QUESTIONS[0]).answer) for _ in range(3)] == attempts
    cache.close()
    assert sent(server) == 3


def test_a_threaded_batch_inside_independent_gives_fresh_samples(
    server: SamplingServer, engine: str, tmp_path: Path
) -> None:
    # DSPy's num_threads (also what Evaluate and Parallel use) runs each example on a
    # thread that does not inherit the caller's context: the threads borrow its scope.
    server.reset()
    predict = dspy.Predict("question -> answer")
    examples = [dspy.Example(question=QUESTIONS[2]).with_inputs("question")] * 3
    with MnimiCache(str(tmp_path), dspy=True) as cache:
        with independent():
            answers = predict.batch(examples, num_threads=3, disable_progress_bar=True)
        assert len({str(p.answer) for p in answers}) == 3
        # Three samples drawn (a thread that claims a later position first may draw two).
        assert sum(r.body.get("n", 1) for r in server.chat_requests()) == 3
    cache.close()


def best_of_three(seen: list[str]) -> Any:
    """BestOfN of three rollouts, none good enough: each candidate's answer goes to ``seen``."""

    def never_good_enough(args: Any, prediction: Any) -> float:
        seen.append(str(prediction.answer))
        return 0.0

    return dspy.BestOfN(
        module=dspy.Predict("question -> answer"), N=3, reward_fn=never_good_enough, threshold=1.0
    )


def test_each_rollout_of_a_dspy_retry_module_gets_its_own_sample(
    server: SamplingServer, engine: str, tmp_path: Path
) -> None:
    # BestOfN (as Refine and BootstrapFewShot's rounds) asks for new samples with
    # lm.copy(rollout_id=i), which DSPy drops before LiteLLM: each rollout is keyed apart.
    server.reset()
    seen: list[str] = []
    best = best_of_three(seen)
    with MnimiCache(str(tmp_path), dspy=True) as cache:
        best(question=QUESTIONS[0])
        assert len(set(seen)) == 3 and sent(server) == 3
        # The id is keyed, never sent: DSPy does not send it either.
        assert not any("dspy_rollout_id" in r.body for r in server.chat_requests())
        first, seen[:] = list(seen), []
        best(question=QUESTIONS[0])  # a re-run replays every rollout
        assert seen == first and sent(server) == 3
    cache.close()
    seen.clear()
    with MnimiCache(str(tmp_path), replication=True) as replica:
        best(question=QUESTIONS[0])
    replica.close()
    assert seen == first and sent(server) == 3


@pytest.mark.parametrize("engine_name", ENGINES)
def test_each_rollout_gets_its_own_sample_on_the_responses_api(
    server: SamplingServer, engine_name: str, tmp_path: Path
) -> None:
    # DSPy drops the rollout id on every model type's path, not only chat's: through the
    # Responses API (and text completions) each rollout replayed one sample.
    server.reset()
    seen: list[str] = []
    best = best_of_three(seen)
    lm = dspy.LM(
        "openai/mock-model", api_base=server.url, api_key="sk-test", cache=False,
        model_type="responses", engine=engine_name,
    )  # fmt: skip
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        with MnimiCache(str(tmp_path), dspy=True) as cache:
            best(question=QUESTIONS[1])
        cache.close()
        first, seen[:] = list(seen), []
        assert len(set(first)) == 3 and len(server.requests) == 3
        with MnimiCache(str(tmp_path), replication=True) as replica:
            best(question=QUESTIONS[1])
        replica.close()
    assert seen == first and len(server.requests) == 3


def test_n_is_served_from_the_sequence(server: SamplingServer, engine: str, tmp_path: Path) -> None:
    server.reset()
    # DSPy samples n > 1 at 0.7 unless told otherwise, and a temperature is part of the key.
    hot = {"temperature": 1.0}
    with MnimiCache(str(tmp_path), dspy=True) as cache:
        three = dspy.Predict("question -> answer", n=3, **hot)(question=QUESTIONS[1])
        answers = [str(a) for a in three.completions.answer]
        assert len(set(answers)) == 3
        assert sent(server) == 1  # one request for three samples
        two = dspy.Predict("question -> answer", n=2, **hot)(question=QUESTIONS[1])
        assert [str(a) for a in two.completions.answer] == answers[:2]
        one = dspy.Predict("question -> answer", **hot)(question=QUESTIONS[1])
        assert str(one.answer) == answers[0]
    cache.close()
    assert sent(server) == 1


def test_replication_replays_and_raises_without_a_request(
    server: SamplingServer, engine: str, tmp_path: Path
) -> None:
    with MnimiCache(str(tmp_path), dspy=True) as recorder:
        recorded = run(dspy.Predict("question -> answer"))
    recorder.close()
    server.reset()
    # No dspy=True: a replication cache answers DSPy's calls whatever it asks for.
    with MnimiCache(str(tmp_path), replication=True) as replica:
        assert run(dspy.Predict("question -> answer")) == recorded
        with pytest.raises(Exception) as raised:
            dspy.Predict("question -> answer")(question="Never recorded?")
    replica.close()
    # DSPy wraps what its LM raises; the miss is in the chain, key and all.
    chain: list[BaseException] = []
    error: BaseException | None = raised.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    misses = [e for e in chain if isinstance(e, ReplicationCacheMiss)]
    assert misses, f"no ReplicationCacheMiss in {chain!r}"
    assert misses[0].key in str(raised.value)
    assert sent(server) == 0


@pytest.mark.parametrize("replica_dspy", [False, True], ids=["replica", "replica-dspy"])
def test_a_replica_replays_a_retry_loop_attempt_by_attempt(
    server: SamplingServer, engine: str, tmp_path: Path, replica_dspy: bool
) -> None:
    """DSPy switches LiteLLM's cache off on every call: recorded with ``dspy=True`` its
    calls took positions, so a replica must not give them back as it does for a call that
    switched the cache off (each attempt then read sample 0, silently)."""
    predict = dspy.Predict("question -> answer")
    with MnimiCache(str(tmp_path), dspy=True) as recorder, independent():
        attempts = [str(predict(question=QUESTIONS[1]).answer) for _ in range(3)]
    recorder.close()
    assert len(set(attempts)) == 3
    server.reset()
    replica = MnimiCache(str(tmp_path), replication=True, dspy=replica_dspy)
    with replica, independent():
        assert [str(predict(question=QUESTIONS[1]).answer) for _ in range(3)] == attempts
    replica.close()
    assert sent(server) == 0


def test_dspy_resetting_litellm_cache_leaves_the_cache_installed(
    server: SamplingServer, tmp_path: Path
) -> None:
    # A fresh process: DSPy sets litellm.cache = None on its first LiteLLM call only.
    code = f"""
import dspy, litellm
from mnimi_adapters.litellm import MnimiCache
cache = MnimiCache({str(tmp_path)!r}, dspy=True).install()
lm = dspy.LM("openai/mock-model", api_base={server.url!r}, api_key="sk-test", cache=False,
             engine="litellm")
with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
    answers = [dspy.Predict("question -> answer")(question="Why?").answer for _ in range(2)]
assert answers[0] == answers[1], answers
assert litellm.cache is cache, litellm.cache
"""
    server.reset()
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert sent(server) == 1


def test_a_replay_spends_no_tokens_in_dspys_usage_tracker(
    server: SamplingServer, engine: str, tmp_path: Path
) -> None:
    # DSPy counts the usage of every answer its own cache did not give: a replay from the
    # Mnimi cache was counted as the tokens of the call it replays.
    def spent() -> int:
        with dspy.context(track_usage=True):
            usage = dspy.Predict("question -> answer")(question=QUESTIONS[0]).get_lm_usage()
        return sum(int(totals.get("total_tokens") or 0) for totals in usage.values())

    with MnimiCache(str(tmp_path), dspy=True) as cache:
        assert spent() > 0
        assert spent() == 0
    cache.close()
    with MnimiCache(str(tmp_path), replication=True) as replica:
        assert spent() == 0
    replica.close()
