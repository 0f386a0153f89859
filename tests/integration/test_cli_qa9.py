"""The ``mnimi`` command on input it did not write: a request edited in a store or a
bundle, files that are not UTF-8 or nest too deeply, paths that do not exist, sizes no
store reaches, and an empty import. Each ends in a one-line message and an exit code,
never a traceback, and an edited request is reported by ``verify``."""

from __future__ import annotations

import os

# LiteLLM downloads its price map at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import json
import sqlite3
import stat
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import pytest
from support import Locations, mnimi
from support import fill as fill_store

from mnimi_adapters import cli
from mnimi_adapters.core import BatchedModel, DiskStore, Persistent, Request, Sample
from mnimi_adapters.core.request import record_key
from mnimi_adapters.core.stores import open_store

PROMPT = "Choose a number between 1 and 1000."
#: The same length, so the edit keeps every byte count of the record.
EDITED = "Choose a number between 1 and 9999."
ALTERED_REQUEST = (
    "the recorded request is not the one the key is the hash of: it was altered "
    "(show, explain and export would present a request that was never sampled)"
)


class Numbers(BatchedModel):
    """Answers 0, 1, 2, ... with no provider."""

    def __init__(self) -> None:
        super().__init__("numbers", 1.0)
        self.count = 0

    def query(self, request: Request, n: int) -> list[str | Sample]:
        self.count += n
        return [str(i) for i in range(self.count - n, self.count)]


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "cache"
    fill(path)
    yield path


def edit_request_on_disk(directory: Path, key: str) -> None:
    """Change the prompt in a sequence's record, straight in the database."""
    with sqlite3.connect(directory / "cache.db") as db:
        (value,) = db.execute("SELECT value FROM Cache WHERE key = ?", (f"m:{key}",)).fetchone()
        assert value.count(PROMPT) == 1
        db.execute(
            "UPDATE Cache SET value = ? WHERE key = ?",
            (value.replace(PROMPT, EDITED), f"m:{key}"),
        )


def test_verify_of_a_bundle_reports_an_edited_request(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundle"
    assert mnimi(capsys, "export", str(cache), str(out), "--bundle")[0] == 0
    key = json.loads((out / "MANIFEST.json").read_text())["sequences"][0]["key"]
    edit_request_on_disk(out / "store", key)
    code, printed, _ = mnimi(capsys, "verify", str(out))
    assert code == 1
    assert f"{key}: {ALTERED_REQUEST}\n" in printed
    code, printed, _ = mnimi(capsys, "--json", "verify", str(out))
    problems = json.loads(printed)["problems"]
    assert code == 1 and problems == [{"key": key, "row": f"m:{key}", "problem": ALTERED_REQUEST}]


def test_verify_of_a_store_reports_an_edited_request(
    locations: Locations, capsys: pytest.CaptureFixture[str]
) -> None:
    location = locations.new()
    key = fill(location)
    assert mnimi(capsys, "verify", location)[0] == 0
    if locations.backend == "disk":
        edit_request_on_disk(Path(location), key)
    else:
        import redis

        namespace = location.rpartition("namespace=")[2]
        client = redis.Redis.from_url(location.partition("?")[0], socket_timeout=5)
        try:
            name = f"mnimi:{namespace}:m:{key}"
            request = client.hget(name, "request")
            assert isinstance(request, bytes) and request.count(PROMPT.encode()) == 1
            client.hset(name, "request", request.replace(PROMPT.encode(), EDITED.encode()))
        finally:
            client.close()
    code, printed, _ = mnimi(capsys, "verify", location)
    assert code == 1 and printed.startswith(f"{key}: {ALTERED_REQUEST}\n")


def test_a_key_a_program_chose_is_not_held_to_a_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The store takes any key; only one a model layer computed is a request's hash."""
    store = DiskStore(tmp_path / "direct")
    store.append("k", [Sample(text="held", draw_id="h")], {"model": "m", "messages": []})
    lookalike = record_key({"model": "m", "messages": []})
    store.append(lookalike, [Sample(text="a", draw_id="a")], {"model": "n", "messages": []})
    store.close()
    code, printed, _ = mnimi(capsys, "verify", str(tmp_path / "direct"))
    assert code == 1
    assert printed.splitlines()[:-1] == [f"{lookalike}: {ALTERED_REQUEST}"]


def jsonl_with(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "export.jsonl"
    assert mnimi(capsys, "export", str(cache), str(out), "--jsonl")[0] == 0
    return out


@pytest.mark.parametrize(("param", "value"), [("temperature", 1.0), ("api_key", "sk-no-key")])
def test_import_refuses_a_request_not_written_as_its_key_hashes_it(
    cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    param: str,
    value: float | str,
) -> None:
    """A line's key is checked against its request in canonical form, where a
    temperature of 1.0 is 1 and a credential is left out; stored as written, that
    request would make verify report the new store as altered."""
    exported = jsonl_with(tmp_path, cache, capsys)
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    for line in lines:
        line["request"]["params"][param] = value
    exported.write_text("".join(json.dumps(line) + "\n" for line in lines))
    target = tmp_path / "imported"
    code, _, err = mnimi(capsys, "import", str(exported), str(target))
    assert code == 1 and not target.exists()
    assert err == (
        f"mnimi: {exported}: the request of key {lines[0]['key']} is not written in the "
        "canonical form its key is the hash of (as export --jsonl writes it); nothing imported\n"
    )


@pytest.mark.parametrize("text", ["", "\n\n"])
def test_import_of_an_empty_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text(text)
    code, _, err = mnimi(capsys, "import", str(empty), str(tmp_path / "store"))
    assert code == 1 and not (tmp_path / "store").exists()
    assert err == (
        f"mnimi: {empty} holds no sample (is it the file export --jsonl wrote?); nothing imported\n"
    )


def test_jsonl_export_into_a_missing_folder_is_refused(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "no" / "such" / "out.jsonl"
    code, _, err = mnimi(capsys, "export", str(cache), str(out), "--jsonl")
    assert code == 2 and not (tmp_path / "no").exists()
    assert err == f"mnimi: cannot write {out}: its folder does not exist (create it first)\n"


def test_jsonl_export_that_cannot_write_says_so(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.jsonl"
    (tmp_path / "out.jsonl.part").mkdir()  # not ours to remove
    code, _, err = mnimi(capsys, "export", str(cache), str(out), "--jsonl")
    assert code == 2 and not out.exists() and (tmp_path / "out.jsonl.part").is_dir()
    assert err == f"mnimi: cannot write {out}: Is a directory\n"


NOT_UTF8 = b'{"run":1,"started":0}\n\xff\xfe\n'


def test_diff_runs_of_a_file_that_is_not_utf8_names_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "cache.db"
    wrong.write_bytes(NOT_UTF8)
    code, _, err = mnimi(capsys, "diff-runs", str(wrong), str(wrong))
    assert code == 2
    assert err.startswith(f"mnimi: {wrong}, line 2: not a run record line ('utf-8' codec")
    assert len(err.splitlines()) == 1


def test_export_of_a_record_that_is_not_utf8_writes_nothing(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = tmp_path / "run.jsonl"
    record.write_bytes(NOT_UTF8)
    out = tmp_path / "bundle"
    code, _, err = mnimi(
        capsys, "export", str(cache), str(out), "--bundle", "--record", str(record)
    )
    assert code == 2 and not out.exists()
    assert err.startswith(f"mnimi: {record}, line 2: not a run record line")


def test_verify_reports_a_bundle_record_with_a_byte_that_is_not_utf8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache, record = tmp_path / "cache", tmp_path / "run.jsonl"
    layer = Persistent(Numbers(), cache, record=record)
    list(islice(layer.sample(PROMPT), 2))
    layer.close()
    out = tmp_path / "bundle"
    assert (
        mnimi(capsys, "export", str(cache), str(out), "--bundle", "--record", str(record))[0] == 0
    )
    shipped = bytearray((out / "run.jsonl").read_bytes())
    shipped[10] = 0xFF
    (out / "run.jsonl").write_bytes(bytes(shipped))
    code, printed, _ = mnimi(capsys, "verify", str(out))
    assert code == 1
    lines = printed.splitlines()
    assert lines[0] == f"{out}: run.jsonl was altered: its SHA-256 differs from MANIFEST.json"
    assert lines[1].startswith(f"{out}: run.jsonl cannot be read: {out / 'run.jsonl'}, line 1:")


def test_bundle_export_makes_every_missing_folder_private(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shared" / "papers" / "bundle"
    previous = os.umask(0o022)
    try:
        assert mnimi(capsys, "export", str(cache), str(out), "--bundle")[0] == 0
    finally:
        os.umask(previous)
    made = [tmp_path / "shared", tmp_path / "shared" / "papers", out, out / "store"]
    assert [stat.S_IMODE(folder.stat().st_mode) for folder in made] == [0o700] * 4


def test_a_size_beyond_any_store_is_refused(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    huge = "99999999999999999999999999999999999999"
    code, _, err = mnimi(capsys, "prune", str(cache), "--max-size", huge, "--dry-run")
    assert code == 2 and f"invalid size '{huge}' (at most 8EiB)" in err
    code, printed, _ = mnimi(capsys, "prune", str(cache), "--max-size", "8EiB", "--dry-run")
    assert code == 0 and "fit in 8.0 EiB" in printed
    assert cli.format_size(3 * 1024**5) == "3.0 PiB"


DEEP = "[" * 100_000


def test_verify_reports_rows_nested_too_deeply_to_read(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with sqlite3.connect(cache / "cache.db") as db:
        db.execute("UPDATE Cache SET value = ? WHERE key LIKE 'm:%' OR key LIKE 's:%:0'", (DEEP,))
    code, printed, _ = mnimi(capsys, "verify", str(cache))
    assert code == 1
    assert "sample #0 is not valid JSON (maximum recursion depth exceeded" in printed
    assert "the record is not valid JSON (maximum recursion depth exceeded" in printed


def test_a_manifest_or_request_nested_too_deeply_is_reported(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundle"
    assert mnimi(capsys, "export", str(cache), str(out), "--bundle")[0] == 0
    (out / "MANIFEST.json").write_text(DEEP)
    code, printed, _ = mnimi(capsys, "verify", str(out))
    assert code == 1 and f"{out}: MANIFEST.json cannot be read: maximum recursion" in printed
    request = tmp_path / "request.json"
    request.write_text(DEEP)
    code, _, err = mnimi(capsys, "explain", str(cache), str(request))
    assert code == 2 and err.startswith(f"mnimi: {request} is not JSON: maximum recursion")


@pytest.mark.parametrize("form", ["--jsonl", "--bundle", "--grep"])
def test_export_leaves_out_a_sequence_whose_request_was_edited(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], form: str
) -> None:
    """Copied, the edited request would pass for the one sampled (and a bundle made of
    it would fail verify); it is reported like any other damaged sequence."""
    with open_store(cache, create=False, read_only=True) as store:
        (key,) = store.keys()
    edit_request_on_disk(cache, key)
    out = tmp_path / ("out.jsonl" if form == "--jsonl" else "out")
    extra = ["--grep", "Choose"] if form == "--grep" else [form]
    code, _, err = mnimi(capsys, "export", str(cache), str(out), *extra)
    assert code == 1
    assert err == (
        f"mnimi: {key}: its recorded request is not the one its key is the hash of; not exported\n"
    )
    if form == "--bundle":
        assert mnimi(capsys, "verify", str(out))[0] == 0


LONE = "caf\udcff"  # what json.loads makes of the valid JSON "caf\udcff"


class LoneSurrogates(BatchedModel):
    """Answers text holding a lone surrogate, as a provider's valid JSON may."""

    def __init__(self) -> None:
        super().__init__("lone", 1.0)

    def query(self, request: Request, n: int) -> list[str | Sample]:
        return [f"{LONE} {i}" for i in range(n)]


def test_a_cache_with_lone_surrogates_shows_exports_imports_and_bundles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Stored losslessly, such a sample then broke the exports: the JSON Lines file and the
    # manifest were written as UTF-8 text it has none of, and the bundle's digest too.
    cache = tmp_path / "cache"
    layer = Persistent(LoneSurrogates(), cache)
    drawn = list(islice(layer.sample(f"say {LONE}", batch=2), 2))
    layer.close()
    assert mnimi(capsys, "show", str(cache))[0] == 0
    assert mnimi(capsys, "export", str(cache), str(tmp_path / "out.jsonl"), "--jsonl")[0] == 0
    assert mnimi(capsys, "import", str(tmp_path / "out.jsonl"), str(tmp_path / "copy"))[0] == 0
    assert mnimi(capsys, "export", str(cache), str(tmp_path / "bundle"), "--bundle")[0] == 0
    assert mnimi(capsys, "verify", str(tmp_path / "bundle"))[0] == 0
    for copy in (tmp_path / "copy", tmp_path / "bundle" / "store"):
        replay = Persistent(LoneSurrogates(), copy, replication=True)
        assert list(islice(replay.sample(f"say {LONE}"), 2)) == drawn
        replay.close()


def test_a_record_or_line_nested_too_deep_is_reported_as_damage(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # json raises RecursionError on deep nesting, which show, stats and import let out as
    # a traceback: a shared cache or file could end the command.
    deep = "[" * 100_000 + "]" * 100_000
    with sqlite3.connect(cache / "cache.db") as db:
        db.execute("UPDATE Cache SET value = ? WHERE key LIKE 'm:%'", (f'{{"request": {deep}}}',))
    for command in ("show", "stats", "verify"):
        code, out, err = mnimi(capsys, command, str(cache))
        assert code == 1 and "damaged" in out + err
    line = tmp_path / "deep.jsonl"
    line.write_text(f'{{"key": "k", "index": 0, "request": {deep}, "sample": {{}}}}\n')
    code, _, err = mnimi(capsys, "import", str(line), str(tmp_path / "imported"))
    assert code == 1 and "line 1" in err and "nothing imported" in err


def fill(location: str | Path, count: int = 3) -> str:
    """Draw ``count`` samples of :data:`PROMPT` into the store at ``location``; its key."""
    return fill_store(location, Numbers(), PROMPT, count)
