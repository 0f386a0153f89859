"""The ``mnimi`` command where it refused the same samples, overflowed, or misreported.

- ``import`` and ``export`` refused a slice of a sequence as "a different sequence" when
  the target held the longer sequence it was cut from (the same draw ids): exporting a
  slice back into its own cache failed with exit 1.
- ``show --limit`` above SQLite's largest integer ended in a traceback.
- A reader that left (``mnimi stats PATH | head -1``) made the command exit 1, the code
  that says the store is damaged.
- ``verify`` of a bundle counted an altered sample among the sound ones.
- ``export --jsonl`` to a Redis URL was refused as a path; ``import -`` did not read
  stdin, nor ``export - --jsonl`` write stdout; ``show --limit 0`` printed nothing;
  ``python -m mnimi_adapters --version`` failed; the demo with ``--provider openai`` and
  no key ended in LiteLLM's HTTP 500.
"""

from __future__ import annotations

import os

# LiteLLM downloads its price map at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from support import Locations, NumberModel, mnimi, open_location
from support import fill as fill_store

from mnimi_adapters import cli
from mnimi_adapters.core import BatchedModel, Request, Sample
from mnimi_adapters.core.stores import open_store
from mnimi_adapters.demo import run_demo

PROMPT = "Choose a number between 1 and 1000."


def draws(location: str | Path, key: str) -> list[str]:
    with open_store(location, create=False, read_only=True) as store:
        held = [store.get(key, index) for index in range(store.length(key))]
    return [sample.draw_id for sample in held if sample is not None]


def first_lines(path: Path, count: int, tmp_path: Path) -> Path:
    """A JSON Lines export of the first ``count`` samples of ``path``'s one sequence."""
    prefix = tmp_path / f"first-{count}.jsonl"
    prefix.write_text("".join(path.read_text().splitlines(keepends=True)[:count]))
    return prefix


# -- 1. a slice back into the sequence it was cut from --------------------------------


def test_import_of_a_prefix_into_the_longer_sequence_adds_nothing(
    locations: Locations, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long = locations.new("long")
    key = fill(long, 3)
    exported = tmp_path / "long.jsonl"
    assert mnimi(capsys, "export", long, str(exported), "--jsonl")[0] == 0
    prefix = first_lines(exported, 2, tmp_path)
    code, printed, err = mnimi(capsys, "import", str(prefix), long)
    assert (code, err) == (0, "")
    assert "imported 1 sequence (2 samples, 0 new)" in printed
    code, printed, _ = mnimi(capsys, "--json", "import", str(prefix), long)
    assert code == 0 and json.loads(printed)["added"] == 0
    assert len(draws(long, key)) == 3


def test_export_of_a_slice_back_into_its_source_adds_nothing(
    locations: Locations, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long = locations.new("long")
    key = fill(long, 3)
    exported = tmp_path / "long.jsonl"
    assert mnimi(capsys, "export", long, str(exported), "--jsonl")[0] == 0
    short = tmp_path / "short"
    assert mnimi(capsys, "import", str(first_lines(exported, 2, tmp_path)), str(short))[0] == 0
    code, printed, err = mnimi(capsys, "export", str(short), long, "--grep", "")
    assert (code, err) == (0, "")
    assert f"exported {key}  gpt-4o  2 samples (0 new)" in printed
    assert len(draws(long, key)) == 3


def test_a_shorter_sequence_of_other_draws_is_still_refused(
    locations: Locations, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same request sampled apart: other draw ids at index 0, not the same samples."""
    long = locations.new("long")
    key = fill(long, 3)
    other = tmp_path / "other"
    assert fill(other, 2) == key
    held = draws(long, key)
    exported = tmp_path / "other.jsonl"
    assert mnimi(capsys, "export", str(other), str(exported), "--jsonl")[0] == 0
    code, _, err = mnimi(capsys, "import", str(exported), long)
    assert code == 1 and "holds a different sequence for key" in err
    code, _, err = mnimi(capsys, "export", str(other), long, "--grep", "")
    assert code == 1 and "holds a different sequence for this key; not exported" in err
    assert draws(long, key) == held


# -- 2. --limit beyond what a store can be asked for ----------------------------------


@pytest.mark.parametrize("limit", [str(2**63), "99999999999999999999999"])
def test_a_limit_beyond_the_largest_integer_is_a_usage_error(
    locations: Locations, capsys: pytest.CaptureFixture[str], limit: str
) -> None:
    location = locations.new()
    key = fill(location)
    for extra in ([], [key]):
        code, _, err = mnimi(capsys, "show", location, *extra, "--limit", limit)
        assert code == 2 and "Traceback" not in err
        assert f"invalid limit '{limit}' (at most {2**63 - 1})" in err


def test_the_largest_limit_shows_everything(
    locations: Locations, capsys: pytest.CaptureFixture[str]
) -> None:
    location = locations.new()
    key = fill(location)
    code, printed, _ = mnimi(capsys, "show", location, "--limit", str(2**63 - 1))
    assert code == 0 and key in printed
    code, printed, _ = mnimi(capsys, "show", location, key, "--limit", str(2**63 - 1))
    assert code == 0 and "shown)" not in printed


# -- 3. a reader that leaves ----------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["stats"], ["show"], ["show", "{key}"], ["--json", "show", "{key}"], ["verify"]],
    ids=" ".join,
)
def test_output_whose_reader_left_exits_141_silently(
    locations: Locations, command: list[str]
) -> None:
    """The pipe is closed before the command starts, so every run meets it alike."""
    location = locations.new()
    key = fill(location)
    arguments = [part.replace("{key}", key) for part in command]
    arguments.insert(arguments.index("show") + 1 if "show" in arguments else 1, location)
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mnimi_adapters.cli", *arguments],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (cli.EXIT_PIPE, "")


# -- 4. verify counts what the manifest vouches for -----------------------------------


def alter(bundle: Path, key: str, index: int) -> None:
    """Give one stored sample of the bundle another text, straight in the database."""
    row = f"s:{key}:{index}"
    with sqlite3.connect(bundle / "store" / "cache.db") as db:
        (value,) = db.execute("SELECT value FROM Cache WHERE key = ?", (row,)).fetchone()
        sample = json.loads(value)
        sample["text"] = sample["message"]["content"] = "666"
        db.execute("UPDATE Cache SET value = ? WHERE key = ?", (json.dumps(sample), row))


@pytest.mark.parametrize(("altered", "sound"), [([1], 3), ([0, 2], 2)])
def test_verify_of_a_bundle_counts_no_altered_sample_as_sound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], altered: list[int], sound: int
) -> None:
    cache = tmp_path / "cache"
    key = fill(cache, 4)
    bundle = tmp_path / "bundle"
    assert mnimi(capsys, "export", str(cache), str(bundle), "--bundle")[0] == 0
    for index in altered:
        alter(bundle, key, index)
    code, printed, _ = mnimi(capsys, "verify", str(bundle))
    assert code == 1
    assert printed.splitlines()[-1] == (
        f"damaged: 1 problem, 1 of 1 key affected ({sound} sound samples)"
    )
    code, printed, _ = mnimi(capsys, "--json", "verify", str(bundle))
    assert code == 1 and json.loads(printed)["samples"] == sound


# -- 5. stdin and stdout, Redis OUT, --limit 0, --version, the demo's key -------------


def test_a_jsonl_export_to_a_redis_url_is_refused_as_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    fill(cache)
    code, _, err = mnimi(
        capsys, "export", str(cache), "redis://127.0.0.1:1/0?namespace=x", "--jsonl"
    )
    assert (code, err) == (2, "mnimi: a JSON Lines export is a file, not a Redis store\n")


def test_export_to_stdout_and_import_from_stdin(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    key = fill(cache)
    assert mnimi(capsys, "export", str(cache), "file.jsonl", "--jsonl")[0] == 0
    code, printed, err = mnimi(capsys, "export", str(cache), "-", "--jsonl")
    assert code == 0 and not Path("-").exists()
    assert printed == Path("file.jsonl").read_text(encoding="utf-8")
    assert err.endswith("wrote 1 sequence (3 samples) to stdout\n")  # the report: stderr
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(printed.encode())))
    code, printed, err = mnimi(capsys, "import", "-", "copy")
    assert (code, err) == (0, "")
    assert printed == "imported 1 sequence (3 samples, 3 new) into copy\n"
    assert draws("copy", key) == draws(cache, key)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    code, _, err = mnimi(capsys, "import", "-", "empty")
    assert code == 1 and err.startswith("mnimi: stdin holds no sample")


@pytest.mark.parametrize("form", [[], ["--bundle"]])
def test_out_dash_is_stdout_for_jsonl_only(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    form: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    fill(tmp_path / "cache")
    code, printed, err = mnimi(capsys, "export", "cache", "-", "--grep", "", *form)
    assert code == 2 and printed == "" and not Path("-").exists()
    assert "OUT - is stdout, for --jsonl" in err


def test_a_listing_limited_to_nothing_says_what_it_left_out(
    locations: Locations, capsys: pytest.CaptureFixture[str]
) -> None:
    location = locations.new()
    key = fill(location)
    code, printed, _ = mnimi(capsys, "show", location, "--limit", "0")
    assert (code, printed) == (0, "(0 of 1 keys shown)\n")
    code, printed, _ = mnimi(capsys, "show", location, "--grep", "number", "--limit", "0")
    assert (code, printed) == (0, "(0 of 1 keys shown)\n")
    code, printed, _ = mnimi(capsys, "show", location, key, "--limit", "0")
    assert code == 0 and printed.endswith("(0 of 3 samples shown)\n")
    with open_location(location) as store:
        assert store.length(key) == 3


def test_python_m_mnimi_adapters_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mnimi_adapters", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("mnimi ")


def test_the_demo_with_openai_and_no_key_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = io.StringIO()
    assert run_demo(str(tmp_path / "cache"), out=out, provider="openai") == 1
    assert "needs an API key: set the environment variable OPENAI_API_KEY" in out.getvalue()


def fill(location: str | Path, count: int = 3) -> str:
    """Draw ``count`` samples of :data:`PROMPT` into the store at ``location``; its key."""
    return fill_store(location, NumberModel(), PROMPT, count)


class Cheap(BatchedModel):
    """Each answer costs $0.00000975 (a cheap model's few tokens)."""

    def query(self, request: Request, n: int) -> list[str | Sample]:
        return [Sample(text=str(i), cost=9.75e-06) for i in range(n)]


def test_stats_shows_a_cheap_model_s_cost_rather_than_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Four decimals printed $0.0000 for what cost $0.0000098: it read as free.
    fill_store(tmp_path / "cheap", Cheap("gpt-4.1-nano", 1.0), PROMPT, 1)
    code, printed, _ = mnimi(capsys, "stats", str(tmp_path / "cheap"))
    assert code == 0 and "$0.0000097" in printed and "$0.0000 " not in printed
