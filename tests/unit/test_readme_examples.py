"""Every example of the Mnimi README, with the import changed."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest
from support import FailingModel, NumberModel

from mnimi_adapters import Independent, Persistent, Repeatable, ReplicationCacheMiss

PROMPT = "Choose a number between 1 and 1000."


def test_without_caching_each_call_is_independent(number_model: NumberModel) -> None:
    model = number_model
    draws = [next(model.sample(PROMPT)) for _ in range(5)]
    assert len(model.calls) == 5
    assert len(set(draws)) > 1


def test_repeatable_then_independent_walkthrough(number_model: NumberModel) -> None:
    model = Repeatable(number_model)
    n3 = next(model.sample(PROMPT))
    n4 = next(model.sample(PROMPT))
    assert n3 == n4
    first_two = list(islice(model.sample(PROMPT), 2))
    assert first_two[0] == n3
    model = Independent(model)
    n5 = next(model.sample(PROMPT))
    n6 = next(model.sample(PROMPT))
    # Independent continues the in-memory sequence of the Repeatable below it.
    assert [n5, n6] == first_two
    assert len(number_model.calls) == 2


def test_persistent_repeats_across_runs(tmp_path: Path) -> None:
    def run() -> tuple[str, str, NumberModel]:
        provider = NumberModel()
        model = Persistent(provider, tmp_path / "llm_cache")
        return next(model.sample(PROMPT)), next(model.sample(PROMPT)), provider

    n1, n2, first = run()
    again1, again2, second = run()
    assert n1 == n2 == again1 == again2
    assert first.calls == [1] and second.calls == []


def test_retry_loop_draws_fresh_per_attempt_and_replays_across_runs(tmp_path: Path) -> None:
    num_retries = 4

    def run() -> tuple[list[tuple[str, str, str]], NumberModel]:
        provider = NumberModel()
        model = Persistent(provider, tmp_path)
        ind_model = Independent(model)
        attempts = []
        for attempt in range(num_retries):
            rep_model = Repeatable(ind_model)
            x = next(rep_model.sample(PROMPT))  # step_1
            y = next(rep_model.sample(PROMPT))  # step_2 sees the same sample
            z = next(rep_model.sample(PROMPT))  # step_3 too
            attempts.append((x, y, z))
            if attempt == num_retries - 1:
                break
        return attempts, provider

    attempts, provider = run()
    assert all(x == y == z for x, y, z in attempts)
    assert len({x for x, _, _ in attempts}) == num_retries  # a new sample per attempt
    assert provider.calls == [1] * num_retries
    replay, second = run()
    assert replay == attempts and second.calls == []


def test_slicing_keeps_exactly_what_the_run_used(tmp_path: Path) -> None:
    original = Persistent(NumberModel(), tmp_path / "original")
    full = list(islice(original.sample(PROMPT), 10))
    next(original.sample("another prompt"))

    model = Persistent(Persistent(NumberModel(), tmp_path / "original"), tmp_path / "sliced")
    used = list(islice(model.sample(PROMPT), 3))
    assert used == full[:3]

    replica = Persistent(FailingModel("gpt-4o", 1.0), tmp_path / "sliced", replication=True)
    assert list(islice(replica.sample(PROMPT), 3)) == full[:3]
    with pytest.raises(ReplicationCacheMiss):
        list(islice(replica.sample(PROMPT), 4))
    with pytest.raises(ReplicationCacheMiss):
        next(replica.sample("another prompt"))


def test_batch_split_by_provider_limit(tmp_path: Path) -> None:
    provider = NumberModel(max_batch=10)
    model = Persistent(provider, tmp_path)
    results = list(islice(model.sample(PROMPT, batch=20), 40))
    assert len(results) == 40
    assert provider.calls == [10, 10, 10, 10]
    assert provider.total_requests() == 4


def test_replication_raises_on_a_miss_and_names_the_request(tmp_path: Path) -> None:
    Persistent(NumberModel(), tmp_path).sample(PROMPT).__next__()
    model = Persistent(FailingModel("gpt-4o", 1.0), tmp_path, replication=True)
    assert next(model.sample(PROMPT))
    with pytest.raises(ReplicationCacheMiss) as caught:
        list(islice(model.sample(PROMPT), 2))
    error = caught.value
    assert error.cached == 1 and error.index == 1
    assert "Choose a number" in str(error) and error.key in str(error)
    assert f"the 2nd sample (index 1) of key {error.key} is not cached; 1 is cached" in str(error)


def test_aliases_and_accounting() -> None:
    m = NumberModel("deepseek-v3-huoshan", 0.5, alias="deepseek-v3", max_batch=2)
    assert m.identity()["model"] == "deepseek-v3"
    list(islice(m.sample(PROMPT, batch=4), 4))
    assert m.total_query_time() > 0
    assert m.total_token_count() == (0, 0)
    assert m.calls == [2, 2]
