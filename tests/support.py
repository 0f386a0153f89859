"""Helpers the tests share: provider stand-ins, Redis servers and store locations.

Fixtures live in ``conftest.py``; everything a test imports lives here (``tests`` is on
pytest's ``pythonpath``, so ``from support import NumberModel`` works from any folder).
"""

from __future__ import annotations

import importlib.util
import io
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import redirect_stderr, redirect_stdout
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from mnimi_adapters import cli
from mnimi_adapters.core import BatchedModel, DiskStore, Layer, Persistent, Request
from mnimi_adapters.core.stores import RedisStore, is_redis_url, open_store

if TYPE_CHECKING:  # imported by the function that needs them: most tests do not
    from langchain_core.language_models import BaseChatModel

    from mnimi_adapters.testing import SamplingServer


class NumberModel(BatchedModel):
    """A provider stand-in: answers random numbers and counts its requests."""

    def __init__(self, name: str = "gpt-4o", temperature: float = 1.0, **kwargs: object) -> None:
        super().__init__(name, temperature, **kwargs)  # type: ignore[arg-type]
        self.calls: list[int] = []
        self._rng = random.Random(7)
        self._lock = threading.Lock()

    def query(self, request: Request, n: int) -> list[str]:
        with self._lock:
            self.calls.append(n)
            return [str(self._rng.randint(1, 1000)) for _ in range(n)]


class FailingModel(BatchedModel):
    """A provider that must never be reached."""

    def query(self, request: Request, n: int) -> list[str]:
        raise AssertionError("the provider was called")


# -- Redis ------------------------------------------------------------------------------
#
# Real redis-server processes on 127.0.0.1, never a mock: the store's atomicity is the
# server's, so only a server can test it.

REDIS_URL_VARIABLE = "MNIMI_TEST_REDIS_URL"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def with_namespace(url: str, namespace: str) -> str:
    """``url`` selecting ``namespace`` (replacing one it already names)."""
    base, _, query = url.partition("?")
    kept = [p for p in query.split("&") if p and not p.startswith("namespace=")]
    return f"{base}?{'&'.join([*kept, f'namespace={namespace}'])}"


def drop_namespace(url: str) -> None:
    """Delete every Redis key of ``url``'s namespace (tests leave a shared server clean)."""
    import redis

    store = RedisStore(url, check_format=False)
    client = redis.Redis.from_url(url.partition("?")[0], socket_timeout=5)
    try:
        names = [f"mnimi:{store.namespace}:{name}" for name in store.names()]
        for start in range(0, len(names), 500):
            client.delete(*names[start : start + 500])
    finally:
        client.close()
        store.close()


class RedisServer:
    """A private redis-server on 127.0.0.1, its files in ``directory``.

    Args:
        directory: Working directory (AOF files, log).
        port: Port to listen on; a free one if ``None``.
        options: Further redis-server options, e.g. ``("--appendonly", "yes")``.
    """

    def __init__(
        self, directory: Path, port: int | None = None, options: Sequence[str] = ()
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.options = list(options)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, password: str | None = None) -> str:
        credentials = f":{password}@" if password else ""
        return f"redis://{credentials}{self.address}/0"

    def start(self, timeout: float = 20.0) -> RedisServer:
        """Start the server and wait until it answers (and has loaded its data)."""
        import redis

        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.directory),
            "--logfile",
            "redis.log",
            "--save",
            "",
            *self.options,
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        password = self._option("--requirepass")
        client = redis.Redis(host="127.0.0.1", port=self.port, password=password, socket_timeout=2)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server exited at start:\n{log}")
                try:
                    if client.ping():
                        return self
                except redis.exceptions.ConnectionError:  # not up, or loading its AOF
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.02)
        finally:
            client.close()

    def _option(self, name: str) -> str | None:
        if name in self.options:
            return self.options[self.options.index(name) + 1]
        return None

    def kill(self) -> None:
        """SIGKILL: the server dies mid-whatever, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        """SIGTERM: an orderly shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None


def redis_unavailable(reason: str) -> None:
    """Skip for lack of a Redis server, or fail in CI, where one must be there."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: Redis tests must run)", pytrace=False)
    pytest.skip(reason)


def need_redis_server_binary() -> None:
    """Skip (fail in CI) unless redis-server can be started and the client imported."""
    if importlib.util.find_spec("redis") is None:
        redis_unavailable('the redis client is not installed: pip install -e ".[test]"')
    if shutil.which("redis-server") is None:
        redis_unavailable("redis-server is not on PATH (install the redis-server package)")


def open_location(location: str) -> DiskStore | RedisStore:
    """The persistent store at ``location``, typed with its whole-store methods (keys, info)."""
    return RedisStore(location) if is_redis_url(location) else DiskStore(location)


class Locations:
    """Fresh store locations of one backend: new directories, or new Redis namespaces.

    Args:
        backend: ``"disk"`` or ``"redis"``.
        root: Where directories go.
        redis_url: The server's URL (for ``"redis"``).
    """

    def __init__(self, backend: str, root: Path, redis_url: str | None = None) -> None:
        self.backend = backend
        self._root = root
        self._redis_url = redis_url
        self._made: list[str] = []

    def new(self, name: str = "cache") -> str:
        """A location nobody has used yet."""
        unique = f"{name}-{uuid.uuid4().hex[:12]}"
        if self.backend == "disk":
            return str(self._root / unique)
        assert self._redis_url is not None
        url = with_namespace(self._redis_url, f"test-{unique}")
        self._made.append(url)
        return url

    def cleanup(self) -> None:
        for url in self._made:
            drop_namespace(url)


# -- file modes -------------------------------------------------------------------------

#: The capabilities with which root reads, enters and changes what modes forbid.
_OVERRIDES = "-dac_override,-dac_read_search,-fowner"


def run_unprivileged(arguments: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``arguments`` as this user, bound by file modes even if it is root."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip(
                "root ignores file modes, and setpriv (util-linux), to drop that, is missing"
            )
        prefix = [setpriv, "--bounding-set", _OVERRIDES, "--inh-caps", _OVERRIDES]
    return subprocess.run(
        [*prefix, *arguments], capture_output=True, text=True, timeout=120, check=False
    )


def kept_out_by_modes(folder: Path) -> str | None:
    """Why an unprivileged subprocess is not kept out of ``folder`` (of mode 000), if not."""
    probe = run_unprivileged(
        [sys.executable, "-c", "import os, sys; os.stat(sys.argv[1] + '/x')", str(folder)]
    )
    if "PermissionError" in probe.stderr:
        return None
    return probe.stderr.strip()[-200:]


def fill(location: str | Path, model: Layer, prompt: str, count: int = 3) -> str:
    """Draw ``count`` samples of ``prompt`` from ``model`` into the store at ``location``;
    the request's key (the store's only one)."""
    layer = Persistent(model, location)
    try:
        list(islice(layer.sample(prompt, batch=count), count))
    finally:
        layer.close()
    with open_store(location, create=False, read_only=True) as store:
        (key,) = store.keys()
    return key


def mnimi(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The ``mnimi`` command run in-process: its exit code, output and error output."""
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def run_cli(*argv: object) -> tuple[int, str, str]:
    """The ``mnimi`` command run in-process, its output captured without a fixture: its
    exit code, output and error output."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


# -- LangChain adapters -------------------------------------------------------------------

#: The three ways a LangChain program reaches the cache: a wrapped ``ChatOpenAI``, a
#: LiteLLM model name, and ``MnimiLLMCache`` as the model's LangChain cache.
CHAT_FORMS = ("wrapped", "string", "llmcache")


def chat_model(
    form: str,
    server: SamplingServer,
    cache: str,
    replication: bool = False,
    timeout: float | None = None,
) -> BaseChatModel:
    """A new chat model of ``form`` (see :data:`CHAT_FORMS`) over ``cache`` on the local
    server; provider errors are not retried by it.

    A ``ChatOpenAI`` of a ``timeout`` no other test gives uses an async HTTP client of its
    own: langchain-openai shares one per base URL and timeout, and a connection another
    test's event loop left in it fails to close once that loop is gone.
    """
    from langchain_openai import ChatOpenAI

    from mnimi_adapters.langchain import MnimiChatModel, MnimiLLMCache

    if form == "string":
        return MnimiChatModel(
            model="openai/mock-model",
            api_base=server.url,
            api_key="sk-test",
            max_retries=0,
            cache_dir=cache,
            replication=replication,
        )
    openai = ChatOpenAI(
        base_url=server.url, api_key="sk-test", model="mock-model", max_retries=0, timeout=timeout
    )
    if form == "wrapped":
        return MnimiChatModel(model=openai, cache_dir=cache, replication=replication)
    return openai.model_copy(update={"cache": MnimiLLMCache(cache, replication=replication)})
