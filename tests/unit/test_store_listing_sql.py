"""The disk store's SQL listings (totals, most recent) against the Python path over summaries()."""

from __future__ import annotations

import gc
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnimi_adapters.core.sample import Sample
from mnimi_adapters.core.stores import DiskStore
from mnimi_adapters.core.stores.base import SequenceStore, Totals

MODELS = st.sampled_from(["a", "b", "gpt-x"])
#: Damage a listing must see as Python does: (row prefix, value written over it).
DAMAGE = st.sampled_from(
    [
        ("m", "{not json"),
        # JSON5, which SQLite reads from 3.42 on and Python's json does not.
        ("m", '{"request": {"model": "a", "messages": []}, "length": 1,}'),
        ("m", "[1, 2]"),
        ("m", '{"request": {"model": 5, "messages": []}, "length": 1}'),
        ("m", '{"request": {"model": "a", "messages": []}, "length": true, "bytes": true}'),
        ("m", '{"request": {"model": "a", "messages": []}, "length": 1, "used": "x"}'),
        ("m", None),
        ("n", "three"),
        ("n", -1),
        ("n", 7),
        ("n", None),
    ]
)
SEQUENCE = st.tuples(
    MODELS,
    st.integers(1, 3),
    st.integers(0, 50),
    st.floats(0, 1, allow_nan=False),
    st.none() | DAMAGE,
)


def _build(path: Path, sequences: list[tuple[str, int, int, float, object]]) -> None:
    with DiskStore(path) as store:
        for number, (model, count, tokens, cost, damage) in enumerate(sequences):
            key = f"k{number:03d}"
            samples = [
                Sample(text=f"{key}-{i}", usage={"prompt_tokens": tokens}, cost=cost)
                for i in range(count)
            ]
            store.append(key, samples, {"model": model, "messages": [], "params": {}})
            store._cache.touch(f"m:{key}")  # type: ignore[union-attr]
            if damage is not None:
                prefix, value = damage  # type: ignore[misc]
                if value is None:
                    store._cache.delete(f"{prefix}:{key}")  # type: ignore[union-attr]
                else:
                    store._cache.set(f"{prefix}:{key}", value)  # type: ignore[union-attr]


def _same(sql: Totals, python: Totals) -> None:
    assert sql.keys == python.keys
    assert [d.key for d in sql.damaged] == [d.key for d in python.damaged]
    assert [d.error for d in sql.damaged] == [d.error for d in python.damaged]
    assert len(sql.models) == len(python.models)
    for a, b in zip(sql.models, python.models, strict=True):
        assert (a.model, a.keys, a.samples, a.bytes, a.prompt_tokens) == (
            b.model,
            b.keys,
            b.samples,
            b.bytes,
            b.prompt_tokens,
        )
        assert math.isclose(a.cost, b.cost, abs_tol=1e-9)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(SEQUENCE, max_size=8), st.integers(1, 5))
def test_sql_listings_equal_the_python_path(sequences: list, limit: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "cache"
        _build(path, sequences)
        with DiskStore(path, read_only=True) as store:
            _same(store.totals(), SequenceStore.totals(store))
            count, shown = store.recent(limit)
            expected_count, expected = SequenceStore.recent(store, limit)
            assert count == expected_count
            assert [s.key for s in shown] == [s.key for s in expected]
            assert [s.error for s in shown] == [s.error for s in expected]


def test_a_key_whose_length_row_disagrees_with_its_record_is_counted_by_its_length(
    tmp_path: Path,
) -> None:
    _build(tmp_path / "c", [("a", 2, 0, 0.0, ("n", 5)), ("b", 1, 0, 0.0, None)])
    with DiskStore(tmp_path / "c", read_only=True) as store:
        totals = store.totals()
    assert {row.model: row.samples for row in totals.models} == {"a": 5, "b": 1}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(SEQUENCE, max_size=6))
def test_a_sound_check_lists_the_sequences_as_summaries_does(sequences: list) -> None:
    # prune ranks the check's summaries rather than reading every record again.
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "cache"
        _build(path, sequences)
        with DiskStore(path, read_only=True) as store:
            check = store.check()
            listed = [(s.key, s.length, s.info, s.error) for s in store.summaries()]
        if check.problems:
            assert check.summaries == []
        else:
            assert [(s.key, s.length, s.info, s.error) for s in check.summaries] == listed
            assert len(listed) == len(sequences)


def test_a_check_holds_the_cycle_collector_off_and_gives_it_back(tmp_path: Path) -> None:
    # Its allocations set collections off that scanned every record it keeps, again and
    # again: a third of verify's time at a million keys.
    _build(tmp_path / "c", [("a", 3, 0, 0.0, None)] * 1200)
    seen: list[bool] = []
    with DiskStore(tmp_path / "c", read_only=True) as store:
        assert store.check(lambda _: seen.append(gc.isenabled())).ok
        assert gc.isenabled()
        gc.disable()
        try:
            store.check()
            assert not gc.isenabled()  # left as the caller had it
        finally:
            gc.enable()
    assert seen and not any(seen)
