"""The ``mnimi`` command on caches and bundles this user may not read.

A folder of mode 000 made every command print a ``PermissionError`` traceback and exit 1,
the code that says "damage found": a script running ``mnimi verify`` in CI would report a
sound cache as damaged. A store out of reach is exit 2 (the store cannot be opened), with
one line naming what to open up.

Modes bind root only without the capabilities that let it ignore them, so the command
runs in a subprocess without them (``setpriv``); where they cannot be dropped the tests
skip, never passing with the modes ignored.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import pytest
from support import NumberModel, run_unprivileged

from mnimi_adapters import cli
from mnimi_adapters.core import Persistent


def mnimi_unprivileged(*arguments: str) -> subprocess.CompletedProcess[str]:
    """Run ``mnimi`` as this user, bound by file modes even if it is root."""
    return run_unprivileged([sys.executable, "-m", "mnimi_adapters.cli", *arguments])


def fill(location: Path) -> None:
    cache = Persistent(NumberModel(), location, record=location.parent / "run.jsonl")
    list(islice(cache.sample("Choose a number.", batch=2), 2))
    cache.close()


@pytest.fixture
def locked(tmp_path: Path, modes_bind: None) -> Iterator[Path]:
    """A cache directory holding samples, mode 000."""
    folder = tmp_path / "cache"
    fill(folder)
    folder.chmod(0)
    yield folder
    folder.chmod(0o700)  # for the clean-up, as a user who is not root


def one_refusal(done: subprocess.CompletedProcess[str]) -> str:
    """The single line a refused command prints, checked: exit 2, no traceback."""
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == cli.EXIT_ERROR, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("mnimi: ")
    return line


@pytest.mark.parametrize(
    "command",
    [
        ["stats"],
        ["show"],
        ["verify"],
        ["prune", "--max-size", "1G"],
        ["prune", "--max-size", "1G", "--dry-run"],
        ["export", "{out}", "--grep", "number"],
        ["export", "{out}", "--bundle"],
        ["export", "{out}.jsonl", "--jsonl"],
    ],
    ids=lambda command: " ".join(command).replace("{out}", "OUT"),
)
def test_every_command_on_a_cache_it_may_not_enter_exits_2_naming_it(
    tmp_path: Path, locked: Path, command: list[str]
) -> None:
    name, *rest = command
    arguments = [part.replace("{out}", str(tmp_path / "out")) for part in rest]
    line = one_refusal(mnimi_unprivileged(name, str(locked), *arguments))
    assert f"may not enter {locked} (Permission denied)" in line
    assert f"chmod u+rwx {locked}" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("out", ["slice", "bundle", "all.jsonl"])
def test_export_into_a_folder_it_may_not_enter_exits_2(
    tmp_path: Path, modes_bind: None, out: str
) -> None:
    fill(tmp_path / "cache")
    closed = tmp_path / "closed"
    closed.mkdir(mode=0)
    option = {"slice": ["--grep", "number"], "bundle": ["--bundle"], "all.jsonl": ["--jsonl"]}
    try:
        done = mnimi_unprivileged(
            "export", str(tmp_path / "cache"), str(closed / out), *option[out]
        )
    finally:
        closed.chmod(0o700)
    assert str(closed / out) in one_refusal(done)
    assert list(closed.iterdir()) == []


@pytest.mark.parametrize("part", ["MANIFEST.json", "run.jsonl", "store", "store/cache.db"])
def test_verify_of_a_bundle_it_may_not_read_exits_2_not_1(
    tmp_path: Path, modes_bind: None, part: str
) -> None:
    # Exit 1 says the bundle was altered; a file out of reach says nothing of the kind.
    fill(tmp_path / "cache")
    bundle = tmp_path / "bundle"
    record = str(tmp_path / "run.jsonl")
    assert (
        cli.main(["export", str(tmp_path / "cache"), str(bundle), "--bundle", "--record", record])
        == 0
    )
    (bundle / part).chmod(0)
    try:
        done = mnimi_unprivileged("verify", str(bundle))
    finally:
        (bundle / part).chmod(0o700 if part == "store" else 0o600)
    assert str(bundle / part) in one_refusal(done)
    assert cli.main(["verify", str(bundle)]) == cli.EXIT_OK  # whole once it can be read


# -- what the command writes is private -------------------------------------------


def modes(root: Path) -> dict[str, str]:
    """The mode of each file and folder under ``root``, by path relative to it."""
    return {
        str(path.relative_to(root)): oct(stat.S_IMODE(path.stat().st_mode))
        for path in sorted(root.rglob("*"))
    }


def test_every_file_an_export_or_import_writes_is_private(tmp_path: Path, umask: int) -> None:
    # Under umask 000 the JSON Lines export, the bundle's MANIFEST.json and run.jsonl were
    # 0666 (any local user could alter a paper's bundle unseen), and each cache.db 0644.
    fill(tmp_path / "cache")
    record = str(tmp_path / "run.jsonl")
    out = tmp_path / "out"
    out.mkdir(mode=0o755)
    out.chmod(0o755)  # the user's own folder keeps its mode: only what is made in it
    source = str(tmp_path / "cache")
    commands = [
        ["export", source, str(out / "nested" / "bundle"), "--bundle", "--record", record],
        ["export", source, str(out / "all.jsonl"), "--jsonl"],
        ["export", source, str(out / "slice"), "--grep", "number"],
        ["import", str(out / "all.jsonl"), str(out / "imported")],
    ]
    for command in commands:
        assert cli.main(command) == cli.EXIT_OK, command
    found = modes(out)
    assert found == {name: "0o700" if (out / name).is_dir() else "0o600" for name in found}, found
    assert {
        "nested/bundle/MANIFEST.json",
        "nested/bundle/run.jsonl",
        "nested/bundle/store/cache.db",
        "all.jsonl",
        "slice/cache.db",
        "imported/cache.db",
    } <= set(found)
    assert oct(stat.S_IMODE(out.stat().st_mode)) == "0o755"
    assert cli.main(["verify", str(out / "nested" / "bundle")]) == cli.EXIT_OK


def test_a_leftover_partial_export_that_is_a_link_is_not_followed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The partial file is made anew, never opened through what is there: a link planted
    # in its place would have had the export written into (and truncating) its target.
    fill(tmp_path / "cache")
    target = tmp_path / "someone-elses-file"
    target.write_text("keep me\n")
    (tmp_path / "all.jsonl.part").symlink_to(target)
    code = cli.main(["export", str(tmp_path / "cache"), str(tmp_path / "all.jsonl"), "--jsonl"])
    assert code == cli.EXIT_ERROR
    assert capsys.readouterr().err == (
        f"mnimi: cannot write {tmp_path / 'all.jsonl'}: {tmp_path / 'all.jsonl.part'} is a "
        "link in its way (not ours to follow or remove)\n"
    )
    assert target.read_text() == "keep me\n" and not (tmp_path / "all.jsonl").exists()


def test_a_leftover_partial_export_is_replaced_by_a_private_file(tmp_path: Path) -> None:
    # An export killed before the fix left a world-writable .part: reusing it, as a plain
    # open("w") did, would keep that mode for the finished file.
    fill(tmp_path / "cache")
    leftover = tmp_path / "all.jsonl.part"
    leftover.write_text("half a line")
    leftover.chmod(0o666)
    code = cli.main(["export", str(tmp_path / "cache"), str(tmp_path / "all.jsonl"), "--jsonl"])
    assert code == cli.EXIT_OK and not leftover.exists()
    assert oct(stat.S_IMODE((tmp_path / "all.jsonl").stat().st_mode)) == "0o600"
    assert cli.main(["import", str(tmp_path / "all.jsonl"), str(tmp_path / "again")]) == 0
