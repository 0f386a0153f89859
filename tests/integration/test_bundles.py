"""Replication packages: ``mnimi export --bundle`` writes a store and a checksummed
manifest, and ``mnimi verify`` names the first sample that departs from it."""

from __future__ import annotations

import os

# LiteLLM downloads its price map at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import hashlib
import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import mnimi

import mnimi_adapters
from mnimi_adapters.core.bundle import sample_digest
from mnimi_adapters.core.request import canonical_json
from mnimi_adapters.core.runs import RunRecorder, read_run, read_runs
from mnimi_adapters.core.stores import open_store
from mnimi_adapters.demo import run_demo
from mnimi_adapters.testing import SamplingServer


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The demo's cache, filled once from the local server."""
    cache = tmp_path_factory.mktemp("demo") / "cache"
    with SamplingServer(seed=0) as server:
        assert run_demo(str(cache), out=io.StringIO(), provider="local", server=server) == 0
    yield cache


def bundle(
    demo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> Path:
    out = tmp_path / "bundle"
    code, printed, err = mnimi(capsys, "export", str(demo_cache), str(out), "--bundle", *extra)
    assert code == 0, err
    assert printed.endswith(f"to {out}\n")
    return out


def manifest(out: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((out / "MANIFEST.json").read_text())
    return loaded


def test_a_bundle_of_the_demo_lists_every_sample_and_verifies(
    demo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = bundle(demo_cache, tmp_path, capsys)
    listed = manifest(out)
    with open_store(demo_cache, create=False, read_only=True) as source:
        summaries = {s.key: s for s in source.summaries()}
        assert {s["key"] for s in listed["sequences"]} == set(summaries)
        for entry in listed["sequences"]:
            samples = [source.get(entry["key"], i) for i in range(summaries[entry["key"]].length)]
            assert entry["sha256"] == [sample_digest(s) for s in samples if s is not None]
            assert entry["samples"] == len(samples) > 0
            assert entry["model"] == summaries[entry["key"]].model
            assert entry["request"].startswith(f"(model={entry['model']}")
            assert entry["prompt_tokens"] == sum(s.prompt_tokens for s in samples if s)
    assert listed["format"] == 1 and listed["library_version"] == mnimi_adapters.__version__
    assert listed["samples"] == sum(e["samples"] for e in listed["sequences"])
    assert len(listed["digest"]) == 64
    code, printed, _ = mnimi(capsys, "verify", str(out))
    assert code == 0
    assert printed.startswith("ok: ")


def flip_one_byte(out: Path, key: str, index: int) -> None:
    """Change the first character of one stored sample's text, straight in the database."""
    row = f"s:{key}:{index}"
    with sqlite3.connect(out / "store" / "cache.db") as db:
        (value,) = db.execute("SELECT value FROM Cache WHERE key = ?", (row,)).fetchone()
        at = value.index('"text": "') + len('"text": "')
        flipped = value[:at] + ("X" if value[at] != "X" else "Y") + value[at + 1 :]
        db.execute("UPDATE Cache SET value = ? WHERE key = ?", (flipped, row))


def test_one_flipped_byte_names_its_key_and_index(
    demo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = bundle(demo_cache, tmp_path, capsys)
    entry = max(manifest(out)["sequences"], key=lambda e: e["samples"])
    index = entry["samples"] - 1
    flip_one_byte(out, entry["key"], index)
    code, printed, _ = mnimi(capsys, "verify", str(out))
    assert code == 1
    assert f"{entry['key']}: sample #{index} (index {index}) differs from MANIFEST.json" in printed
    code, printed, _ = mnimi(capsys, "--json", "verify", str(out))
    problems = json.loads(printed)["problems"]
    assert code == 1 and [p["key"] for p in problems] == [entry["key"]]


def test_an_edited_manifest_fails_its_digest(
    demo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = bundle(demo_cache, tmp_path, capsys)
    listed = manifest(out)
    first = listed["sequences"][0]
    # Someone edits a sample and then its checksum, but not the digest.
    first["sha256"][0] = "0" * 64
    (out / "MANIFEST.json").write_text(json.dumps(listed))
    code, printed, _ = mnimi(capsys, "verify", str(out))
    assert code == 1
    assert "MANIFEST.json was altered: its digest does not match" in printed


@pytest.mark.parametrize(
    "manifest_text",
    [
        "not json",
        "[]",
        '{"format": 2}',
    ],
)
def test_a_manifest_that_is_not_one_is_reported(
    demo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], manifest_text: str
) -> None:
    out = bundle(demo_cache, tmp_path, capsys)
    (out / "MANIFEST.json").write_text(manifest_text)
    code, printed, _ = mnimi(capsys, "verify", str(out))
    assert code == 1
    assert "MANIFEST.json" in printed


def record_of(cache: Path, path: Path, draws: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """A run record of draws (key number, index) over the cache's samples, as a
    ``Persistent(..., record=...)`` over it writes one."""
    with open_store(cache, create=False, read_only=True) as store:
        keys = sorted(store.keys())
        with RunRecorder(path) as recorder:
            for number, index in draws:
                sample = store.get(keys[number], index)
                assert sample is not None
                recorder.consumed(keys[number], index, sample.draw_id)
    return read_run(path)


def test_a_bundle_carries_the_run_record_under_its_digest(
    demo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = tmp_path / "run.jsonl"
    draws = record_of(demo_cache, record, [(0, 0), (1, 0), (0, 0)])
    out = bundle(demo_cache, tmp_path, capsys, "--record", str(record))
    assert read_runs(out / "run.jsonl") == [draws]
    assert manifest(out)["run_record"] == {
        "file": "run.jsonl",
        "draws": 3,
        "sha256": hashlib.sha256((out / "run.jsonl").read_bytes()).hexdigest(),
    }
    code, printed, _ = mnimi(capsys, "verify", str(out))
    assert code == 0 and printed.startswith("ok: ")
    assert mnimi(capsys, "diff-runs", str(out / "run.jsonl"), str(record))[0] == 0
    # A bundle without a record says so: a record added later is not the author's.
    bare = bundle(demo_cache, tmp_path / "bare", capsys)
    assert manifest(bare)["run_record"] is None
    (bare / "run.jsonl").write_bytes((out / "run.jsonl").read_bytes())
    code, printed, _ = mnimi(capsys, "verify", str(bare))
    assert code == 1 and f"{bare}: run.jsonl is not listed in MANIFEST.json\n" in printed


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("another cache", "a request it does not hold (nor does"),
        ("left out", "a request it does not hold ("),
        ("past the end", " of that request"),
        ("another draw id", "; it holds draw id "),
    ],
)
def test_export_refuses_a_record_of_samples_it_does_not_hold(
    demo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str, reason: str
) -> None:
    record = tmp_path / "run.jsonl"
    draws = record_of(demo_cache, record, [(0, 0), (1, 0)])
    extra = ["--keys", draws[1]["key"]] if how == "left out" else []
    lines = record.read_text().splitlines()
    first = json.loads(lines[1])
    if how == "another cache":
        first["key"] = "m1-" + "0" * 40
    elif how == "past the end":
        with open_store(demo_cache, create=False, read_only=True) as store:
            first["index"] = store.length(first["key"])
    elif how == "another draw id":
        first["draw_id"] = "not-this-one"
    lines[1] = json.dumps(first)
    record.write_text("\n".join(lines) + "\n")
    out = tmp_path / "bundle"
    code, _, err = mnimi(
        capsys, "export", str(demo_cache), str(out), "--bundle", "--record", str(record), *extra
    )
    assert code == 2, err
    assert f"{record} records samples the export does not hold: draw 0 consumed sample" in err
    assert reason in err and err.rstrip().endswith("; nothing written")
    if how == "left out":
        assert "select it too, with --keys or --grep" in err
    assert not out.exists()


@pytest.mark.parametrize("how", ["line forged", "line dropped", "record removed"])
def test_verify_reports_an_altered_record(
    demo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    record = tmp_path / "run.jsonl"
    record_of(demo_cache, record, [(0, 0), (1, 0)])
    out = bundle(demo_cache, tmp_path, capsys, "--record", str(record))
    shipped = out / "run.jsonl"
    lines = shipped.read_text().splitlines()
    if how == "line forged":
        forged = {"draw": 2, "key": "m1-0000", "index": 7, "draw_id": "forged"}
        shipped.write_text("\n".join([*lines, json.dumps(forged)]) + "\n")
    elif how == "line dropped":
        shipped.write_text(lines[0] + "\n")
    else:
        shipped.unlink()
    code, printed, _ = mnimi(capsys, "verify", str(out))
    assert code == 1
    expected = {
        "line forged": [
            f"{out}: run.jsonl was altered: its SHA-256 differs from MANIFEST.json",
            f"{out}: run.jsonl names samples the bundle does not hold: draw 2 consumed sample 7 "
            "of m1-0000 (draw id forged), a request it does not hold",
        ],
        "line dropped": [f"{out}: run.jsonl was altered: its SHA-256 differs from MANIFEST.json"],
        "record removed": [f"{out}: run.jsonl is missing; MANIFEST.json lists it"],
    }[how]
    assert printed.splitlines()[:-1] == expected
    code, printed, _ = mnimi(capsys, "--json", "verify", str(out))
    assert code == 1 and [p["problem"] for p in json.loads(printed)["problems"]] == [
        line.split(": ", 1)[1] for line in expected
    ]


def as_written_before_run_record_checksums(out: Path) -> None:
    """Make a bundle's manifest as the version before this field wrote it: no
    ``run_record``, and a digest over the rest."""
    listed = manifest(out)
    del listed["run_record"], listed["digest"]
    listed["digest"] = hashlib.sha256(canonical_json(listed).encode()).hexdigest()
    (out / "MANIFEST.json").write_text(json.dumps(listed, indent=1))


def test_a_bundle_of_the_previous_version_still_verifies_and_its_record_is_checked(
    demo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = tmp_path / "run.jsonl"
    record_of(demo_cache, record, [(0, 0), (1, 0)])
    out = bundle(demo_cache, tmp_path, capsys, "--record", str(record))
    as_written_before_run_record_checksums(out)
    code, printed, _ = mnimi(capsys, "verify", str(out))
    assert code == 0
    assert printed.startswith(
        "note: MANIFEST.json predates run record checksums: run.jsonl is checked against "
        "the store only\nok: "
    )
    assert json.loads(mnimi(capsys, "--json", "verify", str(out))[1])["notes"] != []
    # What its record names is still checked against the store.
    with (out / "run.jsonl").open("a") as shipped:
        first = json.loads((out / "run.jsonl").read_text().splitlines()[0])
        shipped.write(json.dumps({**first, "draw": 2, "draw_id": "forged"}) + "\n")
    code, printed, _ = mnimi(capsys, "verify", str(out))
    assert code == 1
    assert (
        f"run.jsonl names samples the bundle does not hold: draw 2 consumed sample 0 of "
        f"{first['key']} (draw id forged); it holds draw id {first['draw_id']} there"
    ) in printed
    # One without a record has nothing to note.
    bare = bundle(demo_cache, tmp_path / "bare", capsys)
    as_written_before_run_record_checksums(bare)
    code, printed, _ = mnimi(capsys, "verify", str(bare))
    assert code == 0 and printed.startswith("ok: ")


def test_a_bundle_is_never_written_into_a_directory_in_use(
    demo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    code, _, err = mnimi(capsys, "export", str(demo_cache), str(tmp_path / "used"), "--bundle")
    assert code == 2 and "is not an empty directory" in err
    assert sorted(p.name for p in (tmp_path / "used").iterdir()) == ["notes.txt"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("nonsense\n")
    args = ["export", str(demo_cache), str(tmp_path / "new"), "--bundle", "--record", str(bad)]
    code, _, err = mnimi(capsys, *args)
    assert code == 2 and "line 1" in err
    assert not (tmp_path / "new").exists()


def sequences(path: Path) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Every sequence of a store: its request record and its samples as stored."""
    with open_store(path, create=False, read_only=True) as store:
        found = {}
        for summary in store.summaries():
            samples = [store.get(summary.key, i) for i in range(summary.length)]
            found[summary.key] = (summary.request, [s.to_dict() for s in samples if s])
        return found


def test_the_jsonl_round_trip_gives_identical_sequences_and_keys(
    demo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exported = tmp_path / "cache.jsonl"
    code, _, err = mnimi(capsys, "export", str(demo_cache), str(exported), "--jsonl")
    assert code == 0, err
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    original = sequences(demo_cache)
    assert len(lines) == sum(len(samples) for _, samples in original.values())
    first = lines[0]
    assert set(first) == {"key", "index", "request", "sample"}
    assert first["index"] == 0 and isinstance(first["sample"]["text"], str)
    code, printed, err = mnimi(capsys, "import", str(exported), str(tmp_path / "copy"))
    assert code == 0, err
    assert printed.startswith(f"imported {len(original)} sequences ({len(lines)} samples")
    assert sequences(tmp_path / "copy") == original
    # Importing again adds nothing: the sequences are already whole.
    assert mnimi(capsys, "import", str(exported), str(tmp_path / "copy"))[0] == 0
    assert sequences(tmp_path / "copy") == original


def broken(line: dict[str, Any], how: str) -> dict[str, Any]:
    """``line`` made not well formed, in the way ``how`` names."""
    line = json.loads(json.dumps(line))
    if how == "request edited":
        line["request"]["messages"][-1]["content"] += "!"
    elif how == "index skipped":
        line["index"] += 1
    elif how == "sample without text":
        del line["sample"]["text"]
    elif how == "usage not counts":
        line["sample"]["usage"] = "many"
    return line


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("not json", "Expecting property name"),
        ("request edited", "is not the hash of its request"),
        ("index skipped", "was next"),
        ("sample without text", "not a stored sample"),
        ("usage not counts", "maps names to token counts"),
    ],
)
def test_a_bad_line_is_named_and_nothing_is_imported(
    demo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str, reason: str
) -> None:
    exported = tmp_path / "cache.jsonl"
    assert mnimi(capsys, "export", str(demo_cache), str(exported), "--jsonl")[0] == 0
    lines = exported.read_text().splitlines()
    bad = len(lines) // 2
    replaced = "{not json" if how == "not json" else json.dumps(broken(json.loads(lines[bad]), how))
    lines[bad] = replaced
    exported.write_text("\n".join(lines) + "\n")
    code, _, err = mnimi(capsys, "import", str(exported), str(tmp_path / "copy"))
    assert code == 1
    assert f"line {bad + 1}: " in err and reason in err and "nothing imported" in err
    assert not (tmp_path / "copy").exists()


def test_import_never_mixes_two_sequences_under_one_key(
    demo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exported = tmp_path / "cache.jsonl"
    assert mnimi(capsys, "export", str(demo_cache), str(exported), "--jsonl")[0] == 0
    assert mnimi(capsys, "import", str(exported), str(tmp_path / "copy"))[0] == 0
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    for line in lines:
        line["sample"]["draw_id"] += "-other"
    exported.write_text("".join(json.dumps(line) + "\n" for line in lines))
    before = sequences(tmp_path / "copy")
    code, _, err = mnimi(capsys, "import", str(exported), str(tmp_path / "copy"))
    assert code == 1 and "holds a different sequence" in err
    assert sequences(tmp_path / "copy") == before


def test_a_failed_jsonl_export_leaves_no_file(
    demo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exported = tmp_path / "cache.jsonl"
    exported.write_text("mine\n")
    code, _, err = mnimi(capsys, "export", str(demo_cache), str(exported), "--jsonl")
    assert code == 2 and "exists" in err
    assert exported.read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.jsonl"]
