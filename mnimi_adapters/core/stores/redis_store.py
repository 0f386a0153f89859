"""A sample sequence store in Redis: one cache shared by many machines, same laws.

Selected by URL wherever a cache path is accepted::

    Persistent(model, "redis://127.0.0.1:6379/0")
    Persistent(model, "redis://:PASSWORD@cache.internal:6379/2?namespace=my-project")
    Persistent(model, "unix:///run/redis.sock?db=0&namespace=my-project")

``namespace`` (default ``default``) keeps the caches of several projects apart
on one server; every other query parameter goes to the redis client
(``socket_timeout``, ``socket_connect_timeout``, ...). The layout, with ``P``
standing for ``mnimi:<namespace>:`` and every value a JSON string or a number,
never a pickle::

    P format        format version (string)
    P keys          SET of the request keys that have a sequence
    P s:<key>       HASH index -> sample JSON: reading sample i is one HGET
    P d:<key>       HASH draw id -> index: de-duplication in O(1)
    P m:<key>       HASH request (JSON), length, bytes, prompt_tokens,
                    completion_tokens, cost, stored, used

An append is one Lua script, so the server runs it atomically: it reads the
length, skips draw ids already present and writes the samples, the draw index
and the record, with nothing of another client's append in between and nothing
half-written if the client dies. Keep the server's ``maxmemory-policy`` at
``noeviction`` (the default) or a ``volatile-*`` one: an ``allkeys-*`` policy
would evict single keys and punch holes into sequences, so opening a store on
such a server is refused. A ``noeviction`` server at its ``maxmemory`` refuses every
write: a miss then raises ``StoreFull`` before its request is sent (law 6), and
replays read as usual.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from ..errors import (
    CorruptStoreError,
    StoreError,
    StoreFull,
    StoreReadOnly,
    StoreUnreachable,
    UnsupportedStoreVersion,
)
from ..request import is_credential
from ..sample import Sample
from .base import (
    FORMAT_VERSION,
    Appended,
    Check,
    SequenceStore,
    Summary,
    UsageLog,
    decode_sample,
    dump_json,
    is_redis_url,
    printable_location,
)
from .check import Verifier, without_cycle_collection

if TYPE_CHECKING:
    import redis

DEFAULT_NAMESPACE = "default"

#: Namespaces are project names: no glob characters (keys are listed with SCAN
#: MATCH) and no colons (they separate the parts of a Redis key name).
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")

#: The path of a ``redis://`` URL the redis client reads as a database: none, or a number.
_DATABASE_PATH = re.compile(r"/?(?:[0-9]+/?)?")

#: Seconds; a dead or unreachable server must fail a run quickly, not hang it.
#: The URL's own ``socket_timeout`` / ``socket_connect_timeout`` win.
CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 5.0

#: Seconds the server's answer on its memory is trusted: a burst of misses asks once.
ROOM_TTL = 1.0
#: Room under ``maxmemory`` (at most 1% of it) below which a ``noeviction`` server
#: counts as full. Redis takes a write while its memory is at most maxmemory, however
#: much the write adds, and refuses every write after; but the misses of a burst all
#: ask before any of them appends, and their samples (a few KB each) land seconds
#: later: without room for them, all but the first would be paid for and refused.
ROOM_MARGIN = 1 << 20

_INSTALL_HINT = (
    'the Redis store needs the redis client: pip install "redis>=5" '
    '(in a checkout of mnimi-adapters: pip install -e ".[redis]")'
)

# Redis does not roll back a script that fails halfway, so every command that can
# fail on a damaged namespace (a key of the wrong type) runs before the first write.
_APPEND = """
-- KEYS: format marker, key index (SET), samples (HASH), draws (HASH), record (HASH)
-- ARGV: format version, request key, time, request JSON, then for every sample:
--       draw id, sample JSON, its characters, prompt tokens, completion tokens, cost
local version = redis.call('GET', KEYS[1])
if version ~= ARGV[1] then
  return redis.error_reply('MNIMI_FORMAT ' .. tostring(version))
end
redis.call('SISMEMBER', KEYS[2], ARGV[2])
redis.call('HLEN', KEYS[3])
redis.call('HLEN', KEYS[4])
local length = tonumber(redis.call('HGET', KEYS[5], 'length') or '0')
-- The position of the first sample added, then the argument indices of those added.
local added = {length}
local chars, prompt, completion, cost = 0, 0, 0, 0
for i = 5, #ARGV, 6 do
  -- HSETNX also de-duplicates draws repeated within this one call.
  if redis.call('HSETNX', KEYS[4], ARGV[i], length) == 1 then
    redis.call('HSET', KEYS[3], length, ARGV[i + 1])
    length = length + 1
    chars = chars + tonumber(ARGV[i + 2])
    prompt = prompt + tonumber(ARGV[i + 3])
    completion = completion + tonumber(ARGV[i + 4])
    cost = cost + tonumber(ARGV[i + 5])
    added[#added + 1] = (i - 5) / 6
  end
end
if #added > 1 then
  redis.call('HSETNX', KEYS[5], 'request', ARGV[4])
  redis.call('HSET', KEYS[5], 'length', length, 'stored', ARGV[3], 'used', ARGV[3])
  redis.call('HINCRBY', KEYS[5], 'bytes', chars)
  redis.call('HINCRBY', KEYS[5], 'prompt_tokens', prompt)
  redis.call('HINCRBY', KEYS[5], 'completion_tokens', completion)
  redis.call('HINCRBYFLOAT', KEYS[5], 'cost', cost)
  redis.call('SADD', KEYS[2], ARGV[2])
end
return added
"""

_OPEN = """
-- KEYS: format marker, key index. ARGV: format version, '1' to create a missing store.
local version = redis.call('GET', KEYS[1])
if version then
  return version
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return redis.error_reply('MNIMI_NO_FORMAT')
end
if ARGV[2] ~= '1' then
  return false
end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""

# Never creates a record: touching a key without a sequence is a no-op.
_TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'used', ARGV[1])
end
return 0
"""

#: The numeric fields of a record, as info() returns them.
_INT_FIELDS = ("length", "bytes", "prompt_tokens", "completion_tokens")
_FLOAT_FIELDS = ("cost", "stored", "used")


@dataclass
class RawSequence:
    """One sequence's Redis data as stored, read in one transaction (for ``mnimi verify``).

    Values are ``str`` when they are UTF-8, else the raw ``bytes``.

    Attributes:
        samples: Field -> value of the samples hash (fields should be indices).
        draws: Draw id -> value of the draw index (values should be indices).
        record: Field -> value of the record hash.
        indexed: Whether the key is in the namespace's key index.
    """

    samples: dict[str, str | bytes] = field(default_factory=dict)
    draws: dict[str, str | bytes] = field(default_factory=dict)
    record: dict[str, str | bytes] = field(default_factory=dict)
    indexed: bool = False


def _text(raw: bytes | str) -> str | bytes:
    """``raw`` decoded as UTF-8, or left as bytes when it is not UTF-8."""
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _split_url(url: str) -> tuple[str, str, list[str]]:
    """``url`` without its ``namespace`` parameter, the namespace, and the secrets in it.

    The query is edited as text: ``urlunsplit`` would turn ``unix:///path`` into
    ``unix:/path``, which the redis client rejects.
    """
    base, _, query = _lower_scheme(url).partition("?")
    kept: list[str] = []
    namespaces: list[str] = []
    secrets: list[str] = []
    for part in query.split("&") if query else []:
        name, _, value = part.partition("=")
        if unquote(name) == "namespace":
            namespaces.append(unquote(value))
        else:
            kept.append(part)
            if unquote(name) == "password" and value:
                secrets += [value, unquote(value)]
    try:
        password = urlsplit(base).password
    except ValueError:
        password = None
    if password:
        secrets += [password, unquote(password)]
    if len(namespaces) > 1:
        raise StoreError(
            f"{_printable(base)}: give the namespace once, not {len(namespaces)} times"
        )
    namespace = namespaces[0] if namespaces else DEFAULT_NAMESPACE
    if not _NAMESPACE.fullmatch(namespace):
        raise StoreError(
            f"invalid Redis namespace {namespace!r} (use up to 100 letters, digits, '_', '.' "
            "or '-')"
        )
    client_url = base + ("?" + "&".join(kept) if kept else "")
    # Longest first, so a secret containing another is hidden whole.
    return client_url, namespace, sorted(set(secrets), key=len, reverse=True)


def _lower_scheme(url: str) -> str:
    """``url`` with its scheme in lower case, the only case the redis client takes."""
    scheme, slashes, rest = url.partition("://")
    return scheme.lower() + slashes + rest


def _printable(base: str) -> str:
    """The server part of a URL (no query) with any password hidden."""
    try:
        return printable_location(base)
    except ValueError:
        return "<unparsable Redis URL>"


def redis_location(url: str) -> str:
    """``url`` as the store names itself: password and client options hidden, namespace shown.

    Raises:
        StoreError: The namespace is invalid or given twice.
    """
    _, namespace, _ = _split_url(url)
    return f"{_printable(_lower_scheme(url).partition('?')[0])}?namespace={namespace}"


def url_has_password(url: str) -> bool:
    """Whether the Redis URL ``url`` carries a password (in its user part or its query)."""
    try:
        return bool(_split_url(url)[2])
    except StoreError:
        return "@" in url or "password=" in url  # unparsable: assume the worst


def _as_typed(url: str) -> str:
    """``url`` as the user typed it, query included, with every password hidden: an
    error about its query must show the query, not the one the store rebuilt."""
    base, mark, query = url.partition("?")
    hidden = [
        f"{name}=***" if value and is_credential(unquote(name)) else f"{name}{sign}{value}"
        for name, sign, value in (part.partition("=") for part in query.split("&"))
    ]
    return _printable(base) + mark + "&".join(hidden)


def shown_location(location: str) -> str:
    """A cache path as is, or a Redis URL as :func:`redis_location` shows it; never raises."""
    if not is_redis_url(location):
        return location
    try:
        return redis_location(location)
    except StoreError:
        return _printable(location.partition("?")[0])


class RedisStore(SequenceStore):
    """Sequences in Redis, shared safely by threads, processes and machines.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db][?namespace=NAME&...]``, or
            ``rediss://`` (TLS) or ``unix:///path/to/socket?db=N``. ``namespace``
            (default ``default``) separates projects on one server; other query
            parameters are options of the redis client.
        create: Create the store (its format marker) if the namespace has none.
            ``False`` makes a missing store an error (the ``mnimi`` command never
            creates a cache it was asked to read).
        check_format: Check the format marker at open. ``mnimi verify`` opens with
            ``False`` and checks the marker itself, to report damage as a problem.

    Raises:
        StoreError: The redis client is not installed, the URL is invalid, the server
            is unreachable or evicts keys, or (``create=False``) there is no store.
        UnsupportedStoreVersion: The namespace was written by another format version.

    Example:
        >>> store = RedisStore("redis://127.0.0.1:6379/0?namespace=my-project")  # doctest: +SKIP
    """

    def __init__(self, url: str, *, create: bool = True, check_format: bool = True) -> None:
        if not is_redis_url(url):
            raise StoreError("a Redis store URL starts with redis://, rediss:// or unix://")
        client_url, self.namespace, self._secrets = _split_url(url)
        #: The URL without its password or client options, namespace included.
        self.location = redis_location(url)
        self._given = url
        self._check_database(client_url)
        self._prefix = f"mnimi:{self.namespace}:"
        self._format_key = self._prefix + "format"
        self._index_key = self._prefix + "keys"
        self._usage = UsageLog()
        #: Why the server cannot take a write (``None``: it can, or won't say), and when
        #: it was asked (monotonic seconds): see :meth:`check_writable`.
        self._full: str | None = None
        self._room_asked = -math.inf
        self._room_lock = threading.Lock()
        try:
            import redis
            from redis.backoff import ConstantBackoff
            from redis.retry import Retry
        except ImportError:
            raise StoreError(_INSTALL_HINT) from None
        self._errors = redis.exceptions
        try:
            self._client: redis.Redis = redis.Redis.from_url(
                client_url,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=SOCKET_TIMEOUT,
                # One quick retry: it replaces a pooled connection that a server
                # restart closed. Replaying an append is safe, as draw ids are
                # de-duplicated; more retries would only make a dead server slow.
                retry=Retry(ConstantBackoff(0.05), 1),
            )
        except (ValueError, TypeError) as error:
            raise StoreError(
                f"invalid Redis URL {self.location}: {self._scrub(str(error))}"
            ) from None
        self._append = self._client.register_script(_APPEND)
        self._open = self._client.register_script(_OPEN)
        self._touch = self._client.register_script(_TOUCH)
        try:
            with self._talking("opening the store", opening=True):
                self._check_eviction()
                if check_format:
                    self._check_format(create)
                else:
                    self._client.ping()
        except BaseException as error:
            self._client.close()
            if isinstance(error, TypeError):
                self._refuse_option(error)
            raise

    def _check_database(self, client_url: str) -> None:
        """Refuse a ``redis://`` path that is not a database number.

        The redis client takes ``/abc`` (or ``/0/ns``, a namespace meant as a path) as
        no database at all, so the samples would go to database 0 in silence.

        Raises:
            StoreError: The path is neither empty nor ``/N``.
        """
        try:
            parts = urlsplit(client_url)
        except ValueError:
            return  # unparsable: the redis client says why, as for any invalid URL
        if parts.scheme == "unix":  # the path is the socket's; the database is ?db=N
            return
        if _DATABASE_PATH.fullmatch(unquote(parts.path)) is None:
            path = self._scrub(parts.path)
            raise StoreError(
                f"invalid Redis URL {self.location}: its path {path!r} is not a database "
                "number; write redis://host:port/N with N the database (0 if left out), and "
                "the namespace as ?namespace=NAME"
            )

    def _refuse_option(self, error: TypeError) -> None:
        """Raise the ``StoreError`` for a query parameter the redis client does not know.

        The client takes every query parameter as a connection option, and refuses
        an unknown one only when it first connects, with a ``TypeError``.

        Raises:
            StoreError: ``error`` names an unknown option.
        """
        unknown = re.search(r"unexpected keyword argument '([^']*)'", str(error))
        if unknown is None:
            return
        name = self._scrub(unknown.group(1))
        raise StoreError(
            f"invalid Redis URL {_as_typed(self._given)}: unknown query parameter {name!r}; "
            "the URL takes namespace=NAME and the redis client's connection options "
            "(socket_timeout, socket_connect_timeout, ...)"
        ) from None

    # -- errors ------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """``text`` with every secret of the URL replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @contextmanager
    def _talking(self, doing: str, opening: bool = False) -> Iterator[None]:
        """Turn the redis client's exceptions into ``StoreError`` naming the store.

        Raises:
            StoreError: The server is unreachable, dropped the connection, timed out
                or refused the command.
        """
        errors = self._errors
        try:
            yield
        except (errors.ConnectionError, errors.TimeoutError) as error:
            # AuthenticationError and BusyLoadingError are ConnectionErrors too.
            cause = self._scrub(str(error) or type(error).__name__)
            if isinstance(error, errors.AuthenticationError):
                raise StoreError(
                    f"Redis at {self.location} refused the login ({cause}): check the "
                    "password in the URL"
                ) from None
            if opening:
                message = f"cannot open the cache at {self.location}: Redis is unreachable"
            else:
                message = f"lost the Redis server at {self.location} while {doing}"
            raise StoreUnreachable(
                f"{message} ({cause}): check that the server runs and is reachable, then "
                "run again; what was stored before stays"
            ) from None
        except errors.ResponseError as error:
            cause = self._scrub(str(error))
            if cause.startswith("OOM") or "maxmemory" in cause:
                raise StoreFull(
                    f"Redis at {self.location} is out of memory while {doing} ({cause}): raise "
                    "its maxmemory or `mnimi prune` the cache; until then it can be replayed "
                    "and replicated, but not extended"
                ) from None
            if cause.startswith("READONLY"):
                raise StoreReadOnly(
                    f"Redis at {self.location} is a read-only replica ({cause}) while {doing}: "
                    "point the URL at the primary, or replay with replication=True"
                ) from None
            # Searched, not matched at the start: servers may decorate a script's error.
            found = re.search(r"MNIMI_FORMAT (\S*)", cause)
            if found:
                self._format_gone(found.group(1))
            if "MNIMI_NO_FORMAT" in cause:
                raise StoreError(
                    f"{self.location} holds sequences but no format marker "
                    f"({self._format_key}): part of its data was lost or deleted"
                ) from None
            if "WRONGTYPE" in cause:
                # Only a foreign writer puts another type under the namespace's names.
                raise CorruptStoreError(
                    f"{self.location} is damaged: {doing} met a key of the wrong type ({cause})"
                ) from None
            raise StoreError(f"Redis at {self.location} refused {doing}: {cause}") from None
        except errors.RedisError as error:
            cause = self._scrub(str(error) or type(error).__name__)
            raise StoreError(f"Redis at {self.location} failed {doing}: {cause}") from None

    def _format_gone(self, found: str) -> None:
        if found in ("false", "nil", ""):
            raise StoreError(
                f"the format marker of {self.location} is gone: the server lost or flushed "
                "its data (restarted without persistence?); nothing was written"
            ) from None
        self._unsupported(found)

    def _unsupported(self, found: Any) -> None:
        """Raise the error for a format marker that is not this version's."""
        try:
            int(found)
        except (TypeError, ValueError):
            # Not another version, which would be a number: a marker someone rewrote.
            raise CorruptStoreError(
                f"the format marker of {self.location} is damaged: it is {found!r}, not a "
                f"version; run `mnimi verify` on the cache for every problem (if the marker "
                f"alone is damaged, SET {self._format_key} {FORMAT_VERSION} restores it)"
            ) from None
        raise UnsupportedStoreVersion(
            f"{self.location} was written in store format {found!r}; "
            f"this version of mnimi_adapters reads format {FORMAT_VERSION}"
        ) from None

    # -- opening -----------------------------------------------------------

    def _check_eviction(self) -> None:
        try:
            memory = self._client.info("memory")
        except self._errors.ResponseError:
            return  # INFO may be forbidden by an ACL; the policy is the operator's then
        policy = str(memory.get("maxmemory_policy", ""))
        if policy.startswith("allkeys"):
            raise StoreError(
                f"the Redis server at {self.location} evicts any key (maxmemory-policy "
                f"{policy}), which would punch holes into sample sequences; use noeviction "
                "or a volatile-* policy"
            )

    def _check_format(self, create: bool) -> None:
        found = self._open(
            keys=[self._format_key, self._index_key], args=[FORMAT_VERSION, "1" if create else "0"]
        )
        if found is None:
            raise StoreError(f"no cache at {self.location}")
        text = _text(found)
        try:
            version = int(text)
        except (TypeError, ValueError):
            version = None
        if version != FORMAT_VERSION:
            self._unsupported(text)

    # -- names -------------------------------------------------------------

    def _samples(self, key: str) -> str:
        return f"{self._prefix}s:{key}"

    def _draws(self, key: str) -> str:
        return f"{self._prefix}d:{key}"

    def _record(self, key: str) -> str:
        return f"{self._prefix}m:{key}"

    # -- SequenceStore -------------------------------------------------------

    def get(self, key: str, index: int) -> Sample | None:
        with self._talking(f"reading sample #{index} of key {key}"):
            raw = self._client.hget(self._samples(key), str(index))
        return None if raw is None else decode_sample(raw, key, index)

    def read(self, key: str, index: int) -> Sample | int:
        # One round trip for both: a miss then needs no second one for the length.
        with self._talking(f"reading sample #{index} of key {key}"):
            pipe = self._client.pipeline(transaction=False)
            pipe.hget(self._samples(key), str(index))
            pipe.hget(self._record(key), "length")
            raw, length = pipe.execute()
        return self._length(key, length) if raw is None else decode_sample(raw, key, index)

    def length(self, key: str) -> int:
        with self._talking(f"reading the length of key {key}"):
            raw = self._client.hget(self._record(key), "length")
        return self._length(key, raw)

    def _length(self, key: str, raw: Any) -> int:
        """The length in ``key``'s record field ``length`` (``None``: no record, so 0)."""
        if raw is None:
            return 0
        try:
            return int(raw)
        except ValueError:
            raise CorruptStoreError(f"the length of key {key} is damaged: {raw!r}") from None

    def has_draw(self, key: str, draw_id: str) -> bool:
        with self._talking(f"reading the draw index of key {key}"):
            return bool(self._client.hexists(self._draws(key), draw_id))

    def check_writable(self, doing: str) -> None:
        """Refuse a refill a server at its ``maxmemory`` (``noeviction``) would refuse to store.

        Such a server takes no write: the samples a provider returned for a miss would
        be paid for and thrown away (law 6). One ``INFO memory`` round trip, asked at
        most once per :data:`ROOM_TTL` seconds (concurrent misses wait for one answer),
        and only before a refill, never on a read. A server that refuses ``INFO`` (an
        ACL) or evicts is not judged: its appends say for themselves.

        Raises:
            StoreFull: The server is (nearly) at its maxmemory and evicts nothing.
            StoreUnreachable: The server cannot be reached.
        """
        with self._room_lock:
            if time.monotonic() - self._room_asked >= ROOM_TTL:
                self._full = self._fullness()
                self._room_asked = time.monotonic()
            full = self._full
        if full is not None:
            raise StoreFull(
                f"Redis at {self.location} is out of memory ({full}), so it cannot {doing}: "
                "raise its maxmemory or `mnimi prune` the cache; until then it can be "
                "replayed and replicated, but not extended"
            )

    def _fullness(self) -> str | None:
        """Why the server would refuse a write now, from ``INFO memory``; ``None`` if not."""
        with self._talking("reading how much memory the server uses"):
            try:
                memory = self._client.info("memory")
            except self._errors.ResponseError:
                return None  # INFO forbidden (an ACL): an append still says if it is full
        try:
            limit = int(memory.get("maxmemory", 0))
            # What Redis weighs against maxmemory: not its replication and AOF buffers.
            used = int(memory.get("used_memory", 0)) - int(
                memory.get("mem_not_counted_for_evict", 0)
            )
        except (TypeError, ValueError):
            return None  # not Redis's figures: nothing to judge by
        policy = str(memory.get("maxmemory_policy", ""))
        if limit <= 0 or policy != "noeviction":
            return None  # no limit, or one it evicts to keep (see _check_eviction)
        if limit - used >= min(ROOM_MARGIN, limit // 100):
            return None
        return f"{used:,} bytes used of maxmemory {limit:,}, policy noeviction"

    def append(self, key: str, samples: Sequence[Sample], record: dict[str, Any]) -> Appended:
        if not samples:
            return Appended()
        args: list[str | int | float] = [
            FORMAT_VERSION,
            key,
            repr(time.time()),
            dump_json(record),
        ]
        for sample in samples:
            value = dump_json(sample.to_dict())
            # Characters, not bytes, like the disk store's record counts them.
            args += [
                sample.draw_id,
                value,
                len(value),
                sample.prompt_tokens,
                sample.completion_tokens,
                repr(float(sample.cost or 0.0)),
            ]
        keys = [
            self._format_key,
            self._index_key,
            self._samples(key),
            self._draws(key),
            self._record(key),
        ]
        with self._talking(f"appending to key {key}"):
            start, *positions = self._append(keys=keys, args=args)
        # Where they went: the caller reads them back from memory, not from the server,
        # and plans its next refill from there (without it, concurrent misses overdrew).
        return Appended((samples[int(position)] for position in positions), int(start))

    def touch(self, key: str) -> None:
        batch = self._usage.note(key)
        if batch:
            self._write_usage(batch)

    def flush(self) -> None:
        """Write the uses noted so far (best effort: a server out of memory drops them)."""
        self._write_usage(self._usage.take())

    def _write_usage(self, batch: dict[str, float]) -> None:
        """Record when keys were last used, in one round trip; a failure drops the batch.

        A use not recorded only makes pruning a little less exact, so neither a
        server at maxmemory nor a lost one may fail the read that noted it.
        """
        if not batch:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for key, used in batch.items():
                self._touch(keys=[self._record(key)], args=[repr(used)], client=pipe)
            pipe.execute(raise_on_error=False)
        except self._errors.RedisError:
            pass

    def close(self) -> None:
        self.flush()
        # The pool reconnects on the next command, so a closed store still works.
        self._client.close()

    def __repr__(self) -> str:
        return f"RedisStore({self.location!r})"

    # -- whole-store operations, used by the `mnimi` command ---------------

    def summaries(self) -> Iterator[Summary]:
        batch: list[str] = []
        for key in self.keys():
            batch.append(key)
            if len(batch) == _BATCH:
                yield from self._summaries(batch)
                batch = []
        yield from self._summaries(batch)

    def summary(self, key: str) -> Summary | None:
        with self._talking(f"reading the record of key {key}"):
            raw = self._client.hgetall(self._record(key))
        return _summary(key, raw) if raw else None

    def _summaries(self, keys: list[str]) -> list[Summary]:
        """The records of ``keys``, read in one round trip."""
        if not keys:
            return []
        with self._talking("reading the records"):
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(self._record(key))
            records = pipe.execute()
        return [_summary(key, raw) for key, raw in zip(keys, records, strict=True)]

    def keys(self) -> Iterator[str]:
        """Every request key that has a sequence."""
        seen: set[str] = set()
        with self._talking("listing the keys"):
            for name in self._client.sscan_iter(self._index_key, count=1000):
                text = _text(name)
                key = text if isinstance(text, str) else text.decode("utf-8", "replace")
                # SSCAN may return an element twice (when the set is rehashed meanwhile).
                if key not in seen:
                    seen.add(key)
                    yield key

    def delete(self, key: str) -> None:
        """Remove ``key``'s whole sequence in one transaction."""
        with self._talking(f"deleting key {key}"):
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(self._samples(key), self._draws(key), self._record(key))
            pipe.srem(self._index_key, key)
            pipe.execute()

    def volume(self) -> int | None:
        """Bytes of server memory the namespace takes, or ``None`` if the server won't say."""
        total = 0
        with self._talking("measuring the store"):
            names = list(self.names())
            for start in range(0, len(names), 500):
                pipe = self._client.pipeline(transaction=False)
                for name in names[start : start + 500]:
                    pipe.memory_usage(self._prefix + name, samples=0)
                try:
                    sizes = pipe.execute()
                except self._errors.ResponseError:
                    return None  # MEMORY may be disabled or forbidden
                total += sum(size or 0 for size in sizes)
        return total

    def names(self) -> Iterator[str]:
        """Every Redis key of the namespace, without the ``mnimi:<namespace>:`` prefix."""
        # The namespace holds no glob characters (see _NAMESPACE), so the prefix
        # is a literal pattern.
        seen: set[str] = set()
        with self._talking("listing the namespace"):
            for name in self._client.scan_iter(match=self._prefix + "*", count=1000):
                text = _text(name)
                full = text if isinstance(text, str) else text.decode("utf-8", "replace")
                if full not in seen:  # SCAN may return a key twice
                    seen.add(full)
                    yield full[len(self._prefix) :]

    def format_marker(self) -> str | bytes | None:
        """The namespace's format marker as stored, or ``None``."""
        with self._talking("reading the format marker"):
            raw = self._client.get(self._format_key)
        return None if raw is None else _text(raw)

    def _read_sequence(self, key: str, transaction: bool) -> list[Any]:
        pipe = self._client.pipeline(transaction=transaction)
        pipe.hgetall(self._samples(key))
        pipe.hgetall(self._draws(key))
        pipe.hgetall(self._record(key))
        pipe.sismember(self._index_key, key)
        return list(pipe.execute())

    def raw_sequence(self, key: str) -> RawSequence:
        """Everything stored for ``key``, read in one transaction: a consistent snapshot."""
        with self._talking(f"reading key {key}"):
            try:
                samples, draws, record, indexed = self._read_sequence(key, transaction=True)
            except self._errors.ResponseError as error:
                if not str(error).partition(" ")[0].endswith("OOM") and "maxmemory" not in str(
                    error
                ):
                    raise
                # A server at maxmemory refuses MULTI; then nobody can write either,
                # so reads one after another see one state all the same.
                samples, draws, record, indexed = self._read_sequence(key, transaction=False)

        return RawSequence(_decoded(samples), _decoded(draws), _decoded(record), bool(indexed))

    @without_cycle_collection
    def check(self, progress: Callable[[int], None] | None = None) -> Check:
        """Check the namespace: each sequence read in one transaction, as the rows of disk.

        Each sequence's snapshot is consistent even while others append, and is
        fed to the verifier as the ``s:``, ``n:``, ``m:`` and ``d:`` rows it would
        have on disk, so both stores get exactly the same checks.

        Raises:
            StoreError: There is no store in the namespace.
            UnsupportedStoreVersion: The namespace was written by another format version.
        """
        verifier = Verifier()
        marker = self.format_marker()
        names = list(self.names())
        if marker is None:
            if not names:
                raise StoreError(f"no cache at {self.location}")
            verifier.report(None, "format", "the format marker is missing")
        version: Any = None
        if marker is not None:
            try:
                version = int(marker)
            except ValueError:
                verifier.report(None, "format", f"the format marker is {marker!r}, not a version")
        if version is not None and version != FORMAT_VERSION:
            self._unsupported(version)
        found: set[str] = set()
        for name in names:
            kind, sep, key = name.partition(":")
            if sep and key and kind in ("s", "d", "m"):
                found.add(key)
            elif name not in ("format", "keys"):
                verifier.report(None, name, "unexpected key (not written by mnimi_adapters)")
        for key in sorted(set(self.keys()) | found):
            self._check_sequence(key, verifier)
            if progress is not None:
                progress(1)
        verifier.finish()
        return verifier.result(version)

    def _check_sequence(self, key: str, verifier: Verifier) -> None:
        # Judged on the snapshot alone: a key appended or pruned since the listing is sound.
        raw = self.raw_sequence(key)
        if not (raw.samples or raw.draws or raw.record):
            if raw.indexed:
                verifier.report(key, None, "in the key index, but nothing is stored for it")
            return
        if not raw.indexed:
            verifier.report(key, None, "missing from the key index: listings and prune miss it")
        for index, value in raw.samples.items():
            verifier.row(f"s:{key}:{index}", value)
        for draw, value in raw.draws.items():
            number = value if not isinstance(value, str) or not value.isdigit() else int(value)
            verifier.row(f"d:{key}:{draw}", number)
        if not raw.record:
            return
        numbers: dict[str, Any] = {}
        for name, value in raw.record.items():
            if name == "request":
                continue
            try:
                numbers[name] = float(value) if name in _FLOAT_FIELDS else int(value)
            except ValueError:
                verifier.report(key, f"m:{key}", f"the record's {name} is {value!r}, not a number")
        if "length" in numbers:
            verifier.row(f"n:{key}", numbers["length"])
        request = raw.record.get("request")
        if request is None:
            verifier.row(f"m:{key}", json.dumps(numbers))  # reported: no request
            return
        try:
            parsed = json.loads(request)
        except ValueError:
            verifier.row(f"m:{key}", request)  # reported: not valid JSON
            return
        verifier.row(f"m:{key}", json.dumps({"request": parsed, **numbers}, ensure_ascii=False))


#: Records read per round trip by a listing.
_BATCH = 1000


def _summary(key: str, raw: dict[Any, Any]) -> Summary:
    """A listing line from a record hash as read; damage noted, not raised."""
    summary = Summary(key)
    if not raw:
        summary.error = f"key {key} has no record"
        return summary
    fields = {_text(name): _text(value) for name, value in raw.items()}
    try:
        request = json.loads(fields["request"])
        if not isinstance(request, dict):
            raise ValueError("the request is not an object")
        meta: dict[str, Any] = {"request": request}
        for name in _INT_FIELDS:
            meta[name] = int(fields.get(name, 0))
        for name in _FLOAT_FIELDS:
            if name in fields:
                meta[name] = float(fields[name])
    except (KeyError, TypeError, ValueError) as error:
        summary.error = f"the record of key {key} is damaged: {error}"
        return summary
    summary.length = meta["length"]
    summary.info = meta
    return summary


def _decoded(raw: dict[bytes, bytes]) -> dict[str, str | bytes]:
    """A hash as read, names as text (``repr`` of the bytes when not UTF-8)."""
    decoded: dict[str, str | bytes] = {}
    for name, value in raw.items():
        text = _text(name)
        decoded[text if isinstance(text, str) else repr(text)] = _text(value)
    return decoded
