"""The guided tour (``python -m mnimi_adapters``), run in-process against the local server."""

from __future__ import annotations

import os

# LiteLLM downloads its price map at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
from support import NumberModel

from mnimi_adapters import cli
from mnimi_adapters.core import Persistent
from mnimi_adapters.demo import (
    CACHE_DIR_ENV,
    LOCAL_ALIAS,
    PROMPT,
    PROVIDERS,
    _choose_provider,
    main,
    run_demo,
)
from mnimi_adapters.testing import SamplingServer

README = Path(__file__).resolve().parents[2] / "README.md"

#: The steps that draw samples, by the alias they draw under.
DRAWING_STEPS = ["independent", "repeatable", "persistent", "retry", "batching"]


@pytest.fixture(autouse=True)
def _no_provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for spec in PROVIDERS.values():
        monkeypatch.delenv(spec.key_env, raising=False)
    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)


@pytest.fixture
def server() -> Iterator[SamplingServer]:
    """One server for every run of a test, so that any request a replay made would show."""
    with SamplingServer(seed=0) as running:
        yield running


def demo(cache: Path, server: SamplingServer, fresh: bool = False) -> str:
    out = io.StringIO()
    assert run_demo(str(cache), out=out, provider="local", server=server, fresh=fresh) == 0
    return out.getvalue()


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


def drawn(story: dict[str, str]) -> dict[str, list[str]]:
    """The samples each step printed."""
    return {title: re.findall(r"'(\d+)'", body) for title, body in story.items()}


def totals(text: str) -> tuple[int, int, int]:
    """The final line's requests, input and output tokens."""
    match = re.search(r"^In total: (\d+) requests, (\d+) input and (\d+) output tokens", text, re.M)
    assert match, text
    requests, prompt, completion = match.groups()
    return int(requests), int(prompt), int(completion)


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    assert cli.main(["--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_first_run_draws_and_every_later_run_replays_it(
    tmp_path: Path, server: SamplingServer, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    first = demo(cache, server)
    story = steps(first)

    assert "built-in local sampling server" in first and f"Cache: {cache}\n" in first
    assert "No earlier run there: this run draws every sample" in first
    assert requests_of(step(story, "Independent sampling")) == 2
    assert "Independent(Persistent(model, cache))" in next(iter(story))
    repeatable = step(story, "Repeatable(recorded)")
    assert requests_of(repeatable) == 2 and "(same result)" in repeatable
    assert requests_of(step(story, "Independent(Repeatable")) == 0
    persistent = step(story, "Persistent(model")
    assert requests_of(persistent) == 1
    assert "1 request: the second call read the first one's sample back from disk." in persistent
    retry = step(story, "Retry loop, run 1")
    assert requests_of(retry) == retry.count("attempt ") >= 1
    assert requests_of(step(story, "Retry loop, run 2")) == 0
    batching = step(story, "Batching")
    assert requests_of(batching) == 4 and "40 samples, 40 distinct" in batching
    slicing = step(story, "Slicing")
    assert requests_of(slicing) == 0 and "same = True" in slicing
    assert "3 samples in the slice, 40 in the cache" in slicing
    miss = "asking for a 4th raises ReplicationCacheMiss: replication mode: the 4th sample"
    replication = step(story, "Replication")
    assert requests_of(replication) == 0
    assert miss in replication and "(index 3)" in replication and "; 3 are cached" in replication
    paid = sum(requests_of(body) for body in story.values())
    assert totals(first)[0] == paid == len(server.chat_requests())
    assert "run the demo again to replay it all\nwith 0 requests" in first

    second = demo(cache, server)
    replayed = steps(second)
    assert list(replayed) == list(story)
    for title, body in replayed.items():
        assert requests_of(body) == 0 and "| replayed from the cache" in body, title
    assert drawn(replayed) == drawn(story)
    assert "0 requests: both came from the cache on disk" in step(replayed, "Persistent(model")
    assert miss in step(replayed, "Replication")
    assert totals(second) == (0, 0, 0)
    assert len(server.chat_requests()) == paid  # nothing reached the server
    kept = cli_json(capsys, "stats", str(cache))["samples"]
    assert f"It holds the {kept} samples of an earlier run: this run replays them" in second
    assert f"Every step replayed the samples an earlier run kept in {cache}." in second

    assert demo(cache, server) == second
    assert len(server.chat_requests()) == paid


def test_stats_and_show_account_for_every_step(
    tmp_path: Path, server: SamplingServer, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    first = demo(cache, server)
    story = steps(first)
    requests, prompt, completion = totals(first)
    capsys.readouterr()

    stats = cli_json(capsys, "stats", str(cache))
    models = {row["model"]: row for row in stats["models"]}
    assert sorted(models) == sorted(f"{LOCAL_ALIAS}@{name}" for name in DRAWING_STEPS)
    assert stats["keys"] == len(DRAWING_STEPS) and not stats["damaged"]
    # The cache holds what the run paid for: every request bought one sample, except
    # the batching step's 4, which bought 10 each.
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == (prompt, completion)
    assert stats["samples"] == requests - 4 + 4 * 10
    assert models[f"{LOCAL_ALIAS}@batching"]["samples"] == 40
    assert models[f"{LOCAL_ALIAS}@persistent"]["samples"] == 1
    retry = step(story, "Retry loop, run 1")
    assert models[f"{LOCAL_ALIAS}@retry"]["samples"] == requests_of(retry)
    assert requests == len(server.chat_requests())

    listing = cli_json(capsys, "show", str(cache))
    assert sorted(entry["model"] for entry in listing["keys"]) == sorted(models)
    assert all(entry["prompt"] == PROMPT for entry in listing["keys"])
    (sliced,) = cli_json(capsys, "show", str(cache / "slice"))["keys"]
    assert (sliced["model"], sliced["samples"]) == (f"{LOCAL_ALIAS}@batching", 3)

    assert f"   mnimi stats {cache}\n" in first and f"   mnimi show {cache}\n" in first
    assert f"   mnimi show {cache / 'slice'}  # the slice you would share" in first


def test_fresh_draws_anew_and_leaves_other_work_alone(
    tmp_path: Path, server: SamplingServer
) -> None:
    cache = tmp_path / "cache"
    first = demo(cache, server)
    paid = totals(first)[0]
    other = Persistent(NumberModel("someone-elses-model"), cache)
    mine = list(islice(other.sample(PROMPT), 3))
    other.close()

    again = demo(cache, server, fresh=True)
    assert "--fresh: removed the " in again and "this run draws anew" in again
    story = steps(again)
    for prefix in ("Independent sampling", "Repeatable", "Persistent", "Retry loop, run 1"):
        assert requests_of(step(story, prefix)) >= 1, prefix
    assert requests_of(step(story, "Batching")) == 4
    drew = totals(again)[0]
    assert drew == sum(requests_of(body) for body in story.values())
    assert len(server.chat_requests()) == paid + drew
    assert drawn(story) != drawn(steps(first))  # new draws, not the old ones
    assert "same = True" in step(story, "Slicing")  # the old slice went too

    kept = Persistent(NumberModel("someone-elses-model"), cache, replication=True)
    assert list(islice(kept.sample(PROMPT), 3)) == mine
    kept.close()
    assert totals(demo(cache, server))[0] == 0


def test_fresh_draws_new_numbers_from_the_demos_own_server(tmp_path: Path) -> None:
    # No server given: each run starts its own, as `mnimi demo` does. Its draws must be
    # new after --fresh, while a plain re-run still replays with 0 requests.
    cache = tmp_path / "cache"

    def run(fresh: bool = False) -> str:
        out = io.StringIO()
        assert run_demo(str(cache), out=out, provider="local", fresh=fresh) == 0
        return out.getvalue()

    first = run()
    replay = run()
    assert totals(first)[0] > 0 and totals(replay)[0] == 0
    assert drawn(steps(replay)) == drawn(steps(first))
    again = run(fresh=True)
    assert totals(again)[0] > 0
    assert step(steps(again), "Batching") != step(steps(first), "Batching")  # 40 new numbers
    assert drawn(steps(again)) != drawn(steps(first))
    after = run()
    assert totals(after)[0] == 0 and drawn(steps(after)) == drawn(steps(again))


def test_main_takes_the_cache_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "llm_cache" / "mnimi-demo"
    monkeypatch.setenv(CACHE_DIR_ENV, str(cache))
    assert main(["--provider", "local"]) == 0
    printed = capsys.readouterr().out
    assert f"Cache: {cache}\n" in printed and "In total:" in printed
    assert (cache.stat().st_mode & 0o077) == 0  # Created private.

    flag = tmp_path / "flag"
    assert cli.main(["demo", "--provider", "local", "--cache-dir", str(flag), "--fresh"]) == 0
    assert f"Cache: {flag}\n" in capsys.readouterr().out
    assert (flag / "slice").is_dir()


def test_module_entry_point_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mnimi_adapters", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        # Wide enough that no option is wrapped at its hyphens.
        env={**os.environ, "COLUMNS": "400"},
    )
    for option in ("--cache-dir", "--provider", "--fresh", CACHE_DIR_ENV):
        assert option in result.stdout
    for spec in PROVIDERS.values():
        assert spec.key_env in result.stdout
    assert "--provider openai (OPENAI_API_KEY) only when asked" in result.stdout


def test_an_openai_key_alone_leaves_the_demo_offline(
    tmp_path: Path, server: SamplingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Many users export OPENAI_API_KEY for other tools: the demo must not bill it unasked.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-to-be-sent")
    out = io.StringIO()
    assert run_demo(str(tmp_path / "cache"), out=out, server=server) == 0
    printed = out.getvalue()
    assert "No demo provider key set: sampling from the built-in local sampling server" in printed
    assert "(OPENAI_API_KEY is set, but the demo uses it only with --provider openai" in printed
    assert totals(printed)[0] == len(server.chat_requests()) > 0
    assert _choose_provider("openai") == "openai"  # asked for by name, it is used


def test_auto_picks_exactly_the_providers_the_readme_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    quickstart = " ".join(README.read_text().split("\n## Why\n")[0].split())  # one line
    listed = re.search(r"with (`\w+`(?:, `\w+`)* or `\w+`) set it uses that provider", quickstart)
    assert listed, "the Quickstart names the keys that switch the demo to a provider"
    keys = re.findall(r"`(\w+)`", listed[1])
    picked = {spec.key_env: name for name, spec in PROVIDERS.items() if spec.auto}
    assert keys == list(picked)  # the same keys, in the order auto looks for them
    assert _choose_provider("auto") == "local"
    for key, name in picked.items():
        monkeypatch.setenv(key, "set")
        assert _choose_provider("auto") == name
        monkeypatch.delenv(key)
    monkeypatch.setenv("OPENAI_API_KEY", "set")
    assert _choose_provider("auto") == "local"
    assert "`mnimi demo --provider openai`" in quickstart


def test_the_module_entry_point_runs_mnimi_commands_too(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mnimi_adapters", "stats", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "no cache at" in result.stderr
