"""Shared fixtures. Tests never touch the internet.

``tests/unit`` holds the tests that need no server and no subprocess; everything under
``tests/integration`` is marked ``integration`` here (the local sampling server, Redis
servers, subprocesses, the CLI on real stores).
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# LiteLLM downloads its price map at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from support import (
    REDIS_URL_VARIABLE,
    Locations,
    NumberModel,
    RedisServer,
    drop_namespace,
    kept_out_by_modes,
    redis_unavailable,
    with_namespace,
)

_INTEGRATION = Path(__file__).parent / "integration"


def pytest_sessionfinish() -> None:
    # LiteLLM leaves its logging worker pending on event loops the tests have closed
    # (pytest-asyncio makes one per test); collected at exit, each would print "Task was
    # destroyed but it is pending!" under the results. Collect them now, quietly.
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.disabled = True
    try:
        gc.collect()
    finally:
        asyncio_logger.disabled = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def number_model() -> NumberModel:
    return NumberModel()


@pytest.fixture(scope="session")
def redis_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server for the session: $MNIMI_TEST_REDIS_URL, else a private one."""
    if importlib.util.find_spec("redis") is None:
        redis_unavailable('the redis client is not installed: pip install -e ".[test]"')
    url = os.environ.get(REDIS_URL_VARIABLE)
    if url:
        yield url
        return
    if shutil.which("redis-server") is None:
        redis_unavailable(
            f"no Redis server: set {REDIS_URL_VARIABLE} or install the redis-server package"
        )
    server = RedisServer(tmp_path_factory.mktemp("redis"), options=["--appendonly", "no"])
    server.start()
    try:
        yield server.url()
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_base_url: str) -> Iterator[str]:
    """A Redis URL with a namespace of this test's own, emptied afterwards."""
    url = with_namespace(redis_base_url, f"test-{uuid.uuid4().hex[:12]}")
    yield url
    drop_namespace(url)


@pytest.fixture(params=["disk", pytest.param("redis", marks=pytest.mark.redis)])
def locations(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Locations]:
    """Store locations of each backend in turn: the law suites run over both stores."""
    url = request.getfixturevalue("redis_base_url") if request.param == "redis" else None
    made = Locations(request.param, tmp_path, url)
    yield made
    made.cleanup()


@pytest.fixture(params=[0o000, 0o277], ids=["umask 000", "umask 277"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The process's umask for the test: none at all, or one that takes owner bits."""
    mask: int = request.param
    previous = os.umask(mask)
    try:
        yield mask
    finally:
        os.umask(previous)


@pytest.fixture
def modes_bind(tmp_path: Path) -> None:
    """Skip unless an unprivileged subprocess is kept out of a folder of mode 000."""
    folder = tmp_path / "probe"
    folder.mkdir(mode=0)
    try:
        why_not = kept_out_by_modes(folder)
    finally:
        folder.chmod(0o700)
    if why_not is not None:
        pytest.skip(
            "file modes do not bind a subprocess here (the capabilities that let root "
            f"ignore them cannot be dropped): {why_not}"
        )
