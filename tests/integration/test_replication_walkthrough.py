"""README's "Sharing a replication package" runs end to end, offline: its Python blocks
and its shell commands (through ``mnimi_adapters.cli.main``), in order."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from mnimi_adapters import cli
from mnimi_adapters.providers import OpenAICompatible
from mnimi_adapters.testing import SamplingServer

README = Path(__file__).resolve().parents[2] / "README.md"
_FENCE = re.compile(r"```(?P<lang>python|bash)\n(?P<code>.*?)```", re.S)


def walkthrough() -> list[tuple[str, str]]:
    """The section's blocks, in order, as (language, code)."""
    text = README.read_text()
    start = text.index("## Sharing a replication package\n")
    section = text[start : text.index("\n## ", start + 1)]
    return [(m["lang"], m["code"]) for m in _FENCE.finditer(section)]


@pytest.fixture
def server() -> Iterator[SamplingServer]:
    with SamplingServer(seed=5) as running:
        yield running


def test_the_walkthrough_has_both_sides() -> None:
    blocks = walkthrough()
    assert [lang for lang, _ in blocks] == ["python", "bash", "python", "bash"]


def test_the_walkthrough_runs_offline(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: SamplingServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    requests_after: list[int] = []
    for lang, code in walkthrough():
        if lang == "python":
            model = OpenAICompatible("mock-model", 1.0, api_base=server.url, api_key="x")
            exec(compile(code, str(README), "exec"), {"__name__": "readme", "model": model})
        else:
            for line in code.splitlines():
                args = shlex.split(line, comments=True)
                assert args[0] == "mnimi"
                assert cli.main(args[1:]) == 0, line
        requests_after.append(len(server.chat_requests()))
    out = capsys.readouterr().out
    # The authors drew three samples; the colleague's replay asked the server nothing.
    assert requests_after[0] >= 1
    assert requests_after[0] == requests_after[-1]
    assert "identical: both runs consumed the same 3 samples of 1 key" in out
    assert (tmp_path / "paper-bundle" / "MANIFEST.json").is_file()
    assert (tmp_path / ".llm_cache").is_dir()
