"""The guided tour (``python -m mnimi_adapters``), run in-process against the local server."""

from __future__ import annotations

import os

# LiteLLM downloads its price map at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mnimi_adapters.demo import PROVIDERS, main, run_demo


@pytest.fixture(autouse=True)
def _no_provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for spec in PROVIDERS.values():
        monkeypatch.delenv(spec.key_env, raising=False)


def steps(text: str) -> dict[str, str]:
    """Each step's title mapped to its printed lines."""
    parts = re.split(r"^== \d+\. (.*) ==$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def requests_of(step: str) -> int:
    match = re.search(r"requests: (\d+) \|", step)
    assert match, step
    return int(match.group(1))


def step(story: dict[str, str], prefix: str) -> str:
    (found,) = [body for title, body in story.items() if title.startswith(prefix)]
    return found


def test_demo_tells_the_readme_story_and_replays_on_a_second_run(tmp_path: Path) -> None:
    out = io.StringIO()
    assert run_demo(str(tmp_path / "cache"), out=out) == 0
    first = out.getvalue()
    story = steps(first)

    assert "built-in mock server" in first
    assert requests_of(step(story, "Independent sampling")) == 2
    assert requests_of(step(story, "Independent(Repeatable")) == 0
    assert "(same result)" in step(story, "Repeatable(model)")
    persistent = step(story, "Persistent(model")
    assert requests_of(persistent) == 1
    assert "Run the demo again: this step will then make 0 requests." in persistent
    assert requests_of(step(story, "Retry loop, run 2")) == 0
    batching = step(story, "Batching")
    assert requests_of(batching) == 4 and "40 samples, 40 distinct" in batching
    slicing = step(story, "Slicing")
    assert requests_of(slicing) == 0 and "same = True" in slicing
    assert "3 samples in the slice, 40 in the original" in slicing
    replication = step(story, "Replication")
    assert requests_of(replication) == 0
    assert "raises ReplicationCacheMiss" in replication and "; 3 are cached" in replication

    again = io.StringIO()
    assert run_demo(str(tmp_path / "cache"), out=again) == 0
    persistent = step(steps(again.getvalue()), "Persistent(model")
    assert requests_of(persistent) == 0
    assert "0 requests: both came from the cache on disk" in persistent


def test_main_parses_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "llm_cache" / "mnimi-demo"
    assert main(["--provider", "local", "--cache-dir", str(cache)]) == 0
    printed = capsys.readouterr().out
    assert "In total:" in printed and str(cache) in printed
    assert (cache.stat().st_mode & 0o077) == 0  # Created private.


def test_module_entry_point_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mnimi_adapters", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "--cache-dir" in result.stdout and "--provider" in result.stdout
