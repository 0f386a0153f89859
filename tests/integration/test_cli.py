"""The ``mnimi`` command over real stores built with the core.

Damage is done the way it happens in practice: through a plain
``diskcache.Cache`` opened on the same directory, which writes raw strings
and pickles whatever else it is given.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import types
from itertools import islice
from pathlib import Path
from typing import Any

import diskcache
import pytest

from mnimi_adapters import cli
from mnimi_adapters.cli import main, parse_size
from mnimi_adapters.core import BatchedModel, DiskStore, Persistent, Request, Sample
from mnimi_adapters.core.errors import StoreError
from mnimi_adapters.core.stores import FORMAT_KEY

ROOT = Path(__file__).resolve().parents[2]
COLOUR = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Name a colour"}]


class Counting(BatchedModel):
    """Distinct answers with known usage, so totals can be checked exactly."""

    def __init__(self, name: str = "gpt-4o", temperature: float = 1.0) -> None:
        super().__init__(name, temperature)
        self.count = 0

    def query(self, request: Request, n: int) -> list[str | Sample]:
        samples: list[str | Sample] = []
        for _ in range(n):
            self.count += 1
            text = f"{self.model_name} answer {self.count} to {request.messages[-1]['content']}"
            samples.append(
                Sample(
                    text=text,
                    message={"role": "assistant", "content": text},
                    finish_reason="stop",
                    usage={"prompt_tokens": 10, "completion_tokens": 2},
                    cost=0.001,
                )
            )
        return samples


def draw(path: Path, model: str, prompt: Any, count: int) -> None:
    layer = Persistent(Counting(model), path)
    list(islice(layer.sample(prompt, batch=count), count))
    layer.close()


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """Three sequences: gpt-4o x3 and x2 (with a system prompt), llama3 x4."""
    path = tmp_path / "cache"
    draw(path, "gpt-4o", "Pick a number", 3)
    time.sleep(0.01)  # distinct `used` times, so the LRU order is known
    draw(path, "gpt-4o", COLOUR, 2)
    time.sleep(0.01)
    draw(path, "llama3", "Pick a number", 4)
    return path


def keys(path: Path) -> dict[str, str]:
    """Key by a short name: ``number``, ``colour`` (gpt-4o) and ``llama``."""
    with DiskStore(path) as store:
        found = {}
        for key in list(store.keys()):
            request = (store.info(key) or {})["request"]
            if request["model"] == "llama3":
                found["llama"] = key
            elif len(request["messages"]) == 2:
                found["colour"] = key
            else:
                found["number"] = key
        return found


def sequence(path: Path, key: str) -> list[dict[str, Any]]:
    with DiskStore(path) as store:
        samples = [store.get(key, i) for i in range(store.length(key))]
    assert all(s is not None for s in samples)
    return [s.to_dict() for s in samples if s is not None]


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, Any]:
    code, out, _ = run(capsys, "--json", *argv)
    return code, json.loads(out)


def raw_cache(path: Path) -> diskcache.Cache:
    """The store's directory opened as a plain diskcache: raw strings, pickles."""
    return diskcache.Cache(str(path))


# -- stats ------------------------------------------------------------------


def test_stats_counts_keys_samples_tokens_and_models(
    store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, data = run_json(capsys, "stats", store_path)
    assert code == 0
    assert (data["keys"], data["samples"]) == (3, 9)
    assert (data["prompt_tokens"], data["completion_tokens"]) == (90, 18)
    assert data["cost"] == pytest.approx(0.009)
    assert data["disk_bytes"] > data["bytes"] > 0
    assert data["damaged"] == []
    models = {m["model"]: m for m in data["models"]}
    assert (models["gpt-4o"]["keys"], models["gpt-4o"]["samples"]) == (2, 5)
    assert (models["llama3"]["keys"], models["llama3"]["samples"]) == (1, 4)
    assert models["llama3"]["prompt_tokens"] == 40

    code, out, err = run(capsys, "stats", store_path)
    assert code == 0 and err == ""
    assert "keys       3" in out and "samples    9" in out
    assert "90 prompt + 18 completion" in out
    assert "llama3" in out and "gpt-4o" in out


def test_json_flag_after_the_command(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "stats", store_path, "--json")
    assert code == 0 and json.loads(out)["keys"] == 3


def test_stats_flags_a_damaged_record(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = keys(store_path)["colour"]
    with raw_cache(store_path) as cache:
        cache.set(f"m:{key}", "{not json")
    code, data = run_json(capsys, "stats", store_path)
    assert code == 1
    assert [d["key"] for d in data["damaged"]] == [key]


# -- show -------------------------------------------------------------------


def test_show_lists_one_line_per_key(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = keys(store_path)
    code, out, _ = run(capsys, "show", store_path)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["KEY", "MODEL", "SAMPLES", "MSGS", "PROMPT"]
    assert len(lines) == 4
    # Most recently used first.
    assert [line.split()[0] for line in lines[1:]] == [
        names["llama"],
        names["colour"],
        names["number"],
    ]
    assert "'Name a colour'" in out

    code, data = run_json(capsys, "show", store_path)
    assert code == 0 and data["matched"] == 3
    listed = {k["key"]: k for k in data["keys"]}
    assert listed[names["colour"]]["messages"] == 2
    assert listed[names["llama"]] | {"stored": 0, "used": 0} == {
        "key": names["llama"],
        "model": "llama3",
        "samples": 4,
        "messages": 1,
        "prompt": "Pick a number",
        "bytes": listed[names["llama"]]["bytes"],
        "stored": 0,
        "used": 0,
        "error": None,
    }


def test_show_limit_and_grep(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = keys(store_path)
    code, data = run_json(capsys, "show", store_path, "--limit", 1)
    assert code == 0 and data["matched"] == 3 and len(data["keys"]) == 1

    code, data = run_json(capsys, "show", store_path, "--grep", "PICK A")
    assert code == 0
    assert {k["key"] for k in data["keys"]} == {names["number"], names["llama"]}

    code, data = run_json(capsys, "show", store_path, "--grep", "llama3")  # the model counts too
    assert [k["key"] for k in data["keys"]] == [names["llama"]]

    code, out, err = run(capsys, "show", store_path, "--grep", "no such text")
    assert code == 1 and out == "" and "matches" in err


def test_show_key_prints_request_and_samples(
    store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = keys(store_path)["colour"]
    code, out, _ = run(capsys, "show", store_path, key)
    assert code == 0
    assert f"key        {key}" in out
    assert "system: Be terse." in out and "user: Name a colour" in out
    assert '"temperature": 1' in out
    assert "gpt-4o answer 1 to Name a colour" in out
    assert "gpt-4o answer 2 to Name a colour" in out
    assert "stop" in out

    # A unique prefix is enough; --limit cuts the samples.
    code, data = run_json(capsys, "show", store_path, key[:12], "--limit", 1)
    assert code == 0
    assert data["key"] == key and data["length"] == 2
    assert data["request"]["messages"] == COLOUR
    assert (data["prompt_tokens"], data["completion_tokens"]) == (20, 4)
    assert len(data["samples"]) == 1
    first = data["samples"][0]
    assert first["index"] == 0 and first["finish_reason"] == "stop"
    assert first["text"] == "gpt-4o answer 1 to Name a colour"
    assert first["draw_id"] == sequence(store_path, key)[0]["draw_id"]


def test_show_unknown_key_and_bad_usage(
    store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "show", store_path, "m1-ffffffffffffffffffff")
    assert code == 1 and "no key" in err
    code, _, err = run(capsys, "show", store_path, "m1-")  # every key has this prefix
    assert code == 2 and "ambiguous" in err
    code, _, err = run(capsys, "show", store_path, "m1-", "--grep", "x")
    assert code == 2 and "not both" in err
    code, _, err = run(capsys, "show", store_path, "--limit", "-3")
    assert code == 2 and "invalid limit" in err


def test_show_key_marks_a_damaged_sample(
    store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = keys(store_path)["number"]
    with raw_cache(store_path) as cache:
        cache.set(f"s:{key}:1", "garbage")
    code, out, _ = run(capsys, "show", store_path, key)
    assert code == 1
    assert "answer 1 to Pick a number" in out and "damaged" in out


# -- verify -----------------------------------------------------------------


def test_verify_clean_store(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "verify", store_path)
    assert (code, err) == (0, "")
    assert out.strip() == "ok: 3 keys, 9 samples"
    code, data = run_json(capsys, "verify", store_path)
    assert code == 0
    assert data["ok"] is True and data["problems"] == []
    assert (data["format"], data["keys"], data["samples"]) == (1, 3, 9)


def damage_non_json(cache: diskcache.Cache, key: str) -> None:
    cache.set(f"s:{key}:0", "this is not JSON")


def damage_gap(cache: diskcache.Cache, key: str) -> None:
    assert cache.delete(f"s:{key}:1")


def damage_pickle(cache: diskcache.Cache, key: str) -> None:
    cache.set(f"s:{key}:2", {"a": 1})  # a dict: diskcache pickles it


def damage_length(cache: diskcache.Cache, key: str) -> None:
    cache.set(f"n:{key}", 5)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (damage_non_json, "sample #0 is not valid JSON"),
        (damage_gap, "missing sample #1 of 3 (a gap in the sequence)"),
        (damage_pickle, "sample #2 is a pickle (refused: unpickling can run code)"),
        (damage_length, "the record says 3 samples, the length row 5"),
    ],
)
def test_verify_names_the_damage(
    store_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: Any,
    expected: str,
) -> None:
    key = keys(store_path)["number"]
    with raw_cache(store_path) as cache:
        damage(cache, key)
    code, out, _ = run(capsys, "verify", store_path)
    assert code == 1
    assert f"{key}: {expected}" in out
    assert "1 of 3 keys affected" in out.splitlines()[-1]

    code, data = run_json(capsys, "verify", store_path)
    assert code == 1 and data["ok"] is False
    assert {p["key"] for p in data["problems"]} == {key}
    assert any(expected in p["problem"] for p in data["problems"])


def test_verify_length_shorter_than_the_samples(
    store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = keys(store_path)["llama"]
    with raw_cache(store_path) as cache:
        cache.set(f"n:{key}", 2)
    code, out, _ = run(capsys, "verify", store_path)
    assert code == 1
    assert f"{key}: sample #2-#3 stored beyond the length 2" in out


def test_verify_foreign_and_pickled_rows(
    store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with raw_cache(store_path) as cache:
        cache.set("stray", {"a": 1})
        cache.set(("a", "tuple"), "x")  # a pickled key
    code, data = run_json(capsys, "verify", store_path)
    assert code == 1
    problems = [(p["row"], p["problem"]) for p in data["problems"]]
    assert ("stray", "unexpected row (not written by mnimi_adapters)") in problems
    assert any("pickled name" in problem for _, problem in problems)


def test_verify_draw_index_problems(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = keys(store_path)["llama"]
    draws = [s["draw_id"] for s in sequence(store_path, key)]
    with raw_cache(store_path) as cache:
        cache.set(f"d:{key}:{draws[0]}", 3)  # points at the wrong sample
        cache.delete(f"d:{key}:{draws[1]}")  # no index at all
        # Sample #3 becomes a second copy of draw #2.
        copy = json.loads(cache.get(f"s:{key}:2"))
        cache.set(f"s:{key}:3", json.dumps(copy))
    code, data = run_json(capsys, "verify", store_path)
    assert code == 1
    problems = "\n".join(p["problem"] for p in data["problems"])
    assert f"the draw index says #3, but {draws[0]} is #0" in problems
    assert f"sample #1 (draw {draws[1]}) has no draw index" in problems
    assert f"draw {draws[2]} is stored 2 times: samples #2-#3" in problems


def test_verify_missing_format_marker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "foreign"
    with diskcache.Cache(str(path)) as cache:
        cache.set("x", "y")
    code, data = run_json(capsys, "verify", path)
    assert code == 1
    assert any(p["problem"] == "the format marker is missing" for p in data["problems"])
    # The other commands refuse to open it at all.
    code, _, err = run(capsys, "stats", path)
    assert code == 2 and "not written by mnimi_adapters" in err


def test_verify_does_not_change_the_store(
    store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = keys(store_path)["number"]
    with raw_cache(store_path) as cache:
        cache.set(f"s:{key}:0", "this is not JSON")
        before = {name: cache.get(name) for name in cache.iterkeys()}
    assert run(capsys, "verify", store_path)[0] == 1
    with raw_cache(store_path) as cache:
        assert {name: cache.get(name) for name in cache.iterkeys()} == before


# -- opening errors -----------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["stats"],
        ["show"],
        ["verify"],
        ["prune", "--max-size", "1MB"],
        ["export", "--keys", "k"],
    ],
)
def test_no_cache_at_path_is_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    missing = tmp_path / "nowhere"
    out = tmp_path / "out"
    args = [argv[0], missing, *([out] if argv[0] == "export" else []), *argv[1:]]
    code, stdout, err = run(capsys, *args)
    assert code == 2 and stdout == ""
    assert err == f"mnimi: no cache at {missing}\n"
    assert not missing.exists() and not out.exists()

    # An empty directory is no cache either, and stays empty.
    missing.mkdir()
    assert run(capsys, *args)[0] == 2
    assert list(missing.iterdir()) == []


def test_a_bundle_directory_is_named_with_the_cache_in_it(
    store_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "paper-bundle"
    assert run(capsys, "export", store_path, bundle, "--bundle")[0] == 0
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"model": "gpt-4o", "messages": COLOUR}))
    said = f"no cache at {bundle}: it is a replication bundle, whose cache is {bundle / 'store'}"
    for argv in (["stats"], ["show"], ["prune", "--max-size", "1MB"], ["explain", request]):
        assert run(capsys, argv[0], bundle, *argv[1:]) == (2, "", f"mnimi: {said}\n")
    # The library says the same to a replay pointed at the bundle, and writes nothing.
    before = sorted(p.name for p in bundle.iterdir())
    with pytest.raises(StoreError) as raised:
        Persistent(Counting(), bundle, replication=True)
    assert str(raised.value) == said
    assert sorted(p.name for p in bundle.iterdir()) == before
    # A run that would draw into it is refused too: its cache would sit beside the manifest.
    with pytest.raises(StoreError, match="is a replication bundle, not a cache"):
        Persistent(Counting(), bundle)
    assert sorted(p.name for p in bundle.iterdir()) == before
    # Its store is the cache, and verify takes either.
    assert run(capsys, "stats", bundle / "store")[0] == 0
    assert run(capsys, "verify", bundle)[0] == 0


def test_a_file_is_not_a_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "file"
    path.write_text("hello")
    code, _, err = run(capsys, "stats", path)
    assert code == 2 and "is not a cache directory" in err


@pytest.mark.parametrize("command", ["stats", "show", "verify", "prune", "export"])
def test_unknown_format_version(
    store_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    with raw_cache(store_path) as cache:
        cache.set(FORMAT_KEY, 99)
    extras: dict[str, list[object]] = {
        "prune": ["--max-size", "0"],
        "export": [tmp_path / "out", "--grep", "number"],
    }
    extra = extras.get(command, [])
    code, out, err = run(capsys, command, store_path, *extra)
    assert code == 2 and out == ""
    assert "store format 99" in err and "reads format 1" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_usage_errors_exit_2(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys)[0] == 2
    assert run(capsys, "frobnicate", store_path)[0] == 2
    code, _, err = run(capsys, "prune", store_path, "--max-size", "lots")
    assert code == 2 and "invalid size 'lots'" in err
    assert run(capsys, "prune", store_path)[0] == 2  # --max-size is required
    assert run(capsys, "export", store_path, "out")[0] == 2  # --keys or --grep
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "exit codes" in out


# -- prune ------------------------------------------------------------------


def recorded_bytes(path: Path) -> dict[str, int]:
    with DiskStore(path) as store:
        return {key: (store.info(key) or {})["bytes"] for key in list(store.keys())}


def test_parse_size() -> None:
    assert parse_size("500MB") == 500_000_000
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size("100k") == 100_000
    assert parse_size("64 Ki") == 65536
    assert parse_size("0.1GB") == 100_000_000
    assert parse_size("1234") == 1234
    for bad in ["", "-1MB", "5 parsecs", "MB", "1e6"]:
        with pytest.raises(Exception, match="invalid size"):
            parse_size(bad)


def test_prune_removes_least_recently_used_whole_sequences(
    store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = keys(store_path)
    before = {key: sequence(store_path, key) for key in names.values()}
    sizes = recorded_bytes(store_path)
    # Use `number` (the oldest) again: through a Persistent read and a touch.
    time.sleep(0.01)
    layer = Persistent(Counting("gpt-4o"), store_path)
    assert next(layer.sample("Pick a number")) == "gpt-4o answer 1 to Pick a number"
    layer.close()
    # LRU order is now colour, llama, number.

    # One byte over: the whole least recently used sequence goes, nothing less.
    limit = sum(sizes.values()) - 1
    code, data = run_json(capsys, "prune", store_path, "--max-size", limit, "--dry-run")
    assert code == 0 and data["dry_run"] is True
    assert [r["key"] for r in data["removed"]] == [names["colour"]]
    assert recorded_bytes(store_path) == sizes  # a dry run removes nothing

    code, out, _ = run(capsys, "prune", store_path, "--max-size", limit)
    assert code == 0
    assert f"removed  {names['colour']}" in out
    assert set(recorded_bytes(store_path)) == {names["number"], names["llama"]}

    # Touching `llama` now makes `number` the least recently used.
    with DiskStore(store_path) as store:
        store.touch(names["llama"])
    code, data = run_json(capsys, "prune", store_path, "--max-size", sizes[names["llama"]])
    assert code == 0
    assert [r["key"] for r in data["removed"]] == [names["number"]]
    assert data["removed"][0]["samples"] == 3
    assert data["bytes_after"] == sizes[names["llama"]] and data["kept"] == 1

    # What is left is whole and sound.
    assert recorded_bytes(store_path) == {names["llama"]: sizes[names["llama"]]}
    assert sequence(store_path, names["llama"]) == before[names["llama"]]
    assert run(capsys, "verify", store_path)[0] == 0
    code, out, _ = run(capsys, "prune", store_path, "--max-size", "1GB")
    assert code == 0 and out.startswith("nothing to prune")


def test_prune_to_zero_empties_the_store(
    store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, data = run_json(capsys, "prune", store_path, "--max-size", "0")
    assert code == 0 and len(data["removed"]) == 3 and data["bytes_after"] == 0
    with raw_cache(store_path) as cache:
        assert list(cache.iterkeys()) == [FORMAT_KEY]
    assert run(capsys, "verify", store_path)[0] == 0


def test_prune_refuses_a_damaged_store(
    store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = keys(store_path)["colour"]
    with raw_cache(store_path) as cache:
        cache.set(f"m:{key}", "{not json")
    code, out, err = run(capsys, "prune", store_path, "--max-size", "0")
    assert code == 1 and out == "" and "nothing removed" in err
    with DiskStore(store_path) as store:
        assert len(list(store.keys())) == 3


# -- export -----------------------------------------------------------------


def test_export_copies_exact_sequences(
    store_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = keys(store_path)
    out = tmp_path / "slice"
    wanted = [names["number"], names["llama"]]
    code, data = run_json(capsys, "export", store_path, out, "--keys", wanted[0][:10], wanted[1])
    assert code == 0
    assert [(k["key"], k["samples"], k["added"], k["error"]) for k in data["keys"]] == [
        (wanted[0], 3, 3, None),
        (wanted[1], 4, 4, None),
    ]
    with DiskStore(out) as target, DiskStore(store_path) as source:
        assert sorted(target.keys()) == sorted(wanted)
        for key in wanted:
            assert (target.info(key) or {})["request"] == (source.info(key) or {})["request"]
    for key in wanted:
        assert sequence(out, key) == sequence(store_path, key)
    assert run(capsys, "verify", out)[0] == 0

    # The slice replays without a provider.
    replay = Persistent(Counting("llama3"), out, replication=True)
    texts = list(islice(replay.sample("Pick a number"), 4))
    assert texts == [s["text"] for s in sequence(store_path, names["llama"])]
    replay.close()

    # Exporting again adds nothing and changes nothing.
    code, out_text, _ = run(capsys, "export", store_path, out, "--keys", *wanted)
    assert code == 0 and "(0 new)" in out_text
    for key in wanted:
        assert sequence(out, key) == sequence(store_path, key)


def test_export_by_grep(
    store_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = keys(store_path)
    out = tmp_path / "slice"
    code, text, _ = run(capsys, "export", store_path, out, "--grep", "colour")
    assert code == 0 and "wrote 1 sequence (2 samples)" in text
    with DiskStore(out) as target:
        assert list(target.keys()) == [names["colour"]]
    assert sequence(out, names["colour"]) == sequence(store_path, names["colour"])


def test_export_misses_write_nothing(
    store_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "slice"
    code, _, err = run(capsys, "export", store_path, out, "--keys", "m1-ffffffff")
    assert code == 1 and "no key m1-ffffffff" in err
    code, _, err = run(capsys, "export", store_path, out, "--grep", "no such text")
    assert code == 1 and "matches" in err
    assert not out.exists()
    code, _, err = run(capsys, "export", store_path, store_path, "--grep", "colour")
    assert code == 2 and "differ" in err

    # A damaged sequence is not exported, not even in part.
    key = keys(store_path)["llama"]
    with raw_cache(store_path) as cache:
        cache.delete(f"s:{key}:2")
    code, data = run_json(capsys, "export", store_path, out, "--keys", key)
    assert code == 1
    assert data["keys"][0]["error"] == "sample #2 is missing; not exported"
    assert not out.exists()


def test_export_never_mixes_two_sequences(
    store_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = keys(store_path)
    out = tmp_path / "slice"
    with DiskStore(out) as target:
        target.append(names["colour"], [Sample.of_text("another draw")], {"model": "gpt-4o"})
    code, data = run_json(capsys, "export", store_path, out, "--keys", names["colour"])
    assert code == 1
    assert "different sequence" in data["keys"][0]["error"]
    with DiskStore(out) as target:
        assert target.length(names["colour"]) == 1


def test_export_refuses_a_directory_that_is_not_a_cache(
    store_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "documents"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = run(capsys, "export", store_path, out, "--grep", "colour")
    assert code == 2 and "not a cache directory" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


# -- demo, progress, entry points ---------------------------------------------


def test_demo_is_delegated(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 3

    fake = types.ModuleType("mnimi_adapters.demo")
    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mnimi_adapters.demo", fake)
    assert main(["demo", "--help", "x"]) == 3
    assert main(["--json", "demo"]) == 3
    assert seen == [["--help", "x"], []]


def test_demo_missing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "mnimi_adapters.demo", None)
    code, _, err = run(capsys, "demo")
    assert code == 2 and "demo is not part of this installation" in err


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with cli.Progress("verify", 4) as progress:
        for _ in range(4):
            progress.advance()
    assert "verify [#####---------------] 1/4" in terminal.getvalue()
    assert terminal.getvalue().endswith("\r\x1b[K")

    piped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", piped)
    with cli.Progress("verify", 4) as progress:
        progress.advance()
    assert piped.getvalue() == ""


def test_console_entry_point(store_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "mnimi_adapters.cli", "--json", "stats", str(store_path)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["samples"] == 9

    result = subprocess.run(
        [sys.executable, "-m", "mnimi_adapters.cli", "stats", str(store_path / "missing")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"mnimi: no cache at {store_path / 'missing'}"


def test_help_does_not_import_litellm() -> None:
    code = (
        "import sys\n"
        "from mnimi_adapters.cli import main\n"
        "assert main(['--help']) == 0\n"
        "assert 'litellm' not in sys.modules, 'litellm was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: mnimi" in result.stdout
