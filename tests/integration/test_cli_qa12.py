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

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import pytest
from support import NumberModel

from mnimi_adapters import cli
from mnimi_adapters.core import Persistent

#: The capabilities with which root reads, enters and changes what modes forbid.
_OVERRIDES = "-dac_override,-dac_read_search,-fowner"


def mnimi_unprivileged(*arguments: str) -> subprocess.CompletedProcess[str]:
    """Run ``mnimi`` as this user, bound by file modes even if it is root."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip(
                "root ignores file modes, and setpriv (util-linux), to drop that, is missing"
            )
        prefix = [setpriv, "--bounding-set", _OVERRIDES, "--inh-caps", _OVERRIDES]
    command = [*prefix, sys.executable, "-m", "mnimi_adapters.cli", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def fill(location: Path) -> None:
    cache = Persistent(NumberModel(), location, record=location.parent / "run.jsonl")
    list(islice(cache.sample("Choose a number.", batch=2), 2))
    cache.close()


@pytest.fixture
def modes_bind(tmp_path: Path) -> None:
    """Skip unless a folder of mode 000 keeps the unprivileged ``mnimi`` out."""
    folder = tmp_path / "probe"
    folder.mkdir(mode=0)
    try:
        # A path under it: a PermissionError traceback before the fix, a refusal after.
        probe = mnimi_unprivileged("stats", str(folder / "x"))
    finally:
        folder.chmod(0o700)
    if "Permission" not in probe.stderr:  # "no cache at": it went in
        pytest.skip(
            "file modes do not bind a subprocess here (the capabilities that let root "
            f"ignore them cannot be dropped): {probe.stderr.strip()[-200:]}"
        )


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
