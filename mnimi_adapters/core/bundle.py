"""Replication packages: a sliced store with a manifest of checksums.

A bundle is a directory::

    MANIFEST.json   what is in it: one entry per sequence, a SHA-256 per sample
    store/          the sliced cache (open it with ``Persistent(..., replication=True)``)
    run.jsonl       optionally, the record of the run that made it

The manifest ends with a digest over the rest of it, so an edit to the manifest shows
as well as an edit to a sample; it lists the run record's SHA-256 too (``run_record``,
``null`` in a bundle without one; a bundle written before it has no such field). A
record only names samples of the bundle's store. The requests need no digest of their
own: each key the manifest lists is the hash of its request, which the store's check
holds it to, so an edited request (a prompt ``show`` would present) shows as well, in
bundles of every age. A bundle comes from someone else:
:func:`verify_bundle` treats the manifest as untrusted input and never takes a path from
it.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from .errors import CorruptStoreError, MnimiError, StoreError
from .request import Request, canonical_json
from .runs import read_runs
from .sample import Sample
from .stores import SequenceStore, open_store
from .stores.base import Check, Summary, dump_json
from .stores.disk import _private_directory, check_reachable
from .stores.files import write_private

__all__ = [
    "BUNDLE_FORMAT",
    "MANIFEST",
    "RUN_RECORD",
    "STORE",
    "Manifest",
    "create_bundle_store",
    "describe_foreign",
    "foreign_draws",
    "is_bundle",
    "sample_digest",
    "verify_bundle",
    "write_run_record",
]

#: The manifest's format version: a reader refuses any other.
BUNDLE_FORMAT = 1
MANIFEST = "MANIFEST.json"
STORE = "store"
RUN_RECORD = "run.jsonl"

_SHA256 = re.compile(r"[0-9a-f]{64}")


def sample_digest(sample: Sample) -> str:
    """The SHA-256 (hex) of a stored sample's canonical JSON."""
    # surrogatepass: a lone surrogate (see dump_json) gets its own bytes, other text as ever.
    data = canonical_json(sample.to_dict()).encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()


def _manifest_digest(manifest: Mapping[str, Any]) -> str:
    body = {name: value for name, value in manifest.items() if name != "digest"}
    return hashlib.sha256(canonical_json(body).encode("utf-8", "surrogatepass")).hexdigest()


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a bundle's manifest.

    ``False`` for a path this user may not look into (Python 3.11's ``is_file`` raises
    there): opening it as a cache then says which folder to open up.
    """
    try:
        return (Path(path).expanduser() / MANIFEST).is_file()
    except OSError:
        return False


@dataclass
class Manifest:
    """A bundle's manifest, built one sequence at a time as the store is sliced.

    Example:
        >>> manifest = Manifest()
        >>> manifest.to_dict()["sequences"]
        []
    """

    sequences: list[dict[str, Any]] = field(default_factory=list)
    #: The run record the bundle carries (see :func:`write_run_record`), if any.
    run_record: dict[str, Any] | None = None

    def add(self, summary: Summary, samples: Iterable[Sample]) -> None:
        """List one sequence: its key, model, request, and a digest per sample."""
        samples = list(samples)
        request = Request(tuple(summary.messages), summary.request.get("params", {}))
        self.sequences.append(
            {
                "key": summary.key,
                "model": summary.model,
                "request": request.describe({"model": summary.model}, width=200),
                "samples": len(samples),
                "sha256": [sample_digest(s) for s in samples],
                "prompt_tokens": sum(s.prompt_tokens for s in samples),
                "completion_tokens": sum(s.completion_tokens for s in samples),
                "cost": sum(s.cost or 0.0 for s in samples),
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """The manifest as written, its digest last."""
        manifest: dict[str, Any] = {
            "format": BUNDLE_FORMAT,
            "library_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "sequences": self.sequences,
            "samples": sum(s["samples"] for s in self.sequences),
            # Under the digest: an altered or swapped record shows like an altered sample.
            "run_record": self.run_record,
        }
        manifest["digest"] = _manifest_digest(manifest)
        return manifest

    def write(self, bundle: Path) -> None:
        """Write ``MANIFEST.json`` into the bundle directory (mode 0600, a new file).

        Raises:
            StoreError: The file cannot be written, or something is there already.
        """
        text = dump_json(self.to_dict(), indent=1) + "\n"
        _write_new(bundle / MANIFEST, text.encode("utf-8"))  # dump_json's text always encodes


def _write_new(path: Path, data: bytes) -> None:
    """Write a new file of a bundle, private (0600) whatever the umask.

    A bundle is a copy of a cache's samples: under umask 000 a plain write made its
    files world-writable, so any local user could alter a paper's record unseen.

    Raises:
        StoreError: It cannot be written, or something is at ``path`` already.
    """
    try:
        write_private(path, data)
    except OSError as error:
        raise StoreError(
            f"cannot write {path}: {error.strerror or error}; export the bundle again into "
            "a new directory"
        ) from None


def create_bundle_store(bundle: Path) -> SequenceStore:
    """Make the bundle directory and open the new store in it.

    The directory, and each folder missing on the way, is made mode 0700 by the helper
    that makes a cache's own: a bundle holds a cache's samples, private until shared.

    Raises:
        StoreError: A folder or the store cannot be made.
    """
    _private_directory(bundle, create=True)
    return open_store(bundle / STORE)


def write_run_record(bundle: Path, draws: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Write one run's draws as the bundle's ``run.jsonl``; return its manifest entry.

    The lines are spelled as :class:`~mnimi_adapters.core.runs.RunRecorder` spells them,
    numbered anew: a run that several worker processes recorded holds each one's
    numbers, and the bundle's record is one run, numbered as one recorder numbers it.

    Raises:
        StoreError: The file cannot be written, or something is there already.
    """
    lines = [
        json.dumps({**draw, "draw": number}, separators=(",", ":")) + "\n"
        for number, draw in enumerate(draws)
    ]
    data = "".join(lines).encode()
    _write_new(bundle / RUN_RECORD, data)
    return {"file": RUN_RECORD, "draws": len(lines), "sha256": hashlib.sha256(data).hexdigest()}


def foreign_draws(
    draws: Iterable[Mapping[str, Any]], lengths: Mapping[str, int], store: SequenceStore
) -> Iterator[tuple[Mapping[str, Any], str]]:
    """The draws of a run that are not samples of a slice, each with what it lacks.

    Args:
        draws: The run's draws (see :func:`~mnimi_adapters.core.runs.read_run`).
        lengths: How many samples the slice holds of each of its keys.
        store: Where the slice's samples are read, to compare draw ids.

    Yields:
        Each such draw, and why: ``"no key"`` (the slice lacks the key), ``"past the end"``
        (its index is past the slice's samples of that key), or ``"draw id D"`` (the slice
        holds another sample, draw id D, at that index), or ``"damaged"`` (its sample
        there cannot be read).
    """
    held: dict[tuple[str, int], str | None] = {}  # a run may consume a sample many times
    for draw in draws:
        key, index = draw["key"], draw["index"]
        if key not in lengths:
            yield draw, "no key"
        elif index >= lengths[key]:
            yield draw, "past the end"
        else:
            if (key, index) not in held:
                try:
                    sample = store.get(key, index)
                except CorruptStoreError:  # the store's own check reports the damage
                    sample = None
                held[key, index] = None if sample is None else sample.draw_id
            if held[key, index] is None:
                yield draw, "damaged"
            elif held[key, index] != draw["draw_id"]:
                yield draw, f"draw id {held[key, index]}"


def describe_foreign(draw: Mapping[str, Any], why: str, lengths: Mapping[str, int]) -> str:
    """A sentence: which sample a draw consumed and what the slice holds instead."""
    consumed = (
        f"draw {draw.get('draw', '?')} consumed sample {draw['index']} of {draw['key']} "
        f"(draw id {draw['draw_id']})"
    )
    if why == "no key":
        return f"{consumed}, a request it does not hold"
    if why == "past the end":
        held = lengths[draw["key"]]
        return f"{consumed}; it holds {held} sample{'' if held == 1 else 's'} of that request"
    if why == "damaged":
        return f"{consumed}; its sample there is damaged"
    return f"{consumed}; it holds {why} there"


def _unreadable(file: Path, error: OSError) -> StoreError:
    """The error for a file of a bundle this user may not read (``verify`` exits 2)."""
    return StoreError(
        f"{file} cannot be read ({error.strerror or error}): give this user read access "
        f"(`chmod u+r {file}` if it is yours, or ask its owner), then verify again"
    )


def _problem(key: str | None, problem: str) -> dict[str, str | None]:
    return {"key": key, "row": None, "problem": problem}


def _read_manifest(
    bundle: Path,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, str | None]]]:
    """The manifest and its sequences once it is shown sound, else the problem with it."""
    try:
        manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    except PermissionError as error:  # not damage: the bundle is whole, only out of reach
        raise _unreadable(bundle / MANIFEST, error) from None
    except (OSError, ValueError, RecursionError) as error:  # json's on deep nesting
        return {}, [], [_problem(None, f"{MANIFEST} cannot be read: {error}")]
    if not isinstance(manifest, dict):
        return {}, [], [_problem(None, f"{MANIFEST} is not a JSON object")]
    if manifest.get("format") != BUNDLE_FORMAT:
        return {}, [], [_problem(None, f"{MANIFEST} has format {manifest.get('format')!r}, not 1")]
    if manifest.get("digest") != _manifest_digest(manifest):
        return {}, [], [_problem(None, f"{MANIFEST} was altered: its digest does not match")]
    sequences = manifest.get("sequences")
    if not isinstance(sequences, list) or not all(_well_formed(s) for s in sequences):
        return {}, [], [_problem(None, f"{MANIFEST} lists a sequence that is not well formed")]
    record = manifest.get("run_record")
    if record is not None and not (
        isinstance(record, dict)
        and isinstance(record.get("sha256"), str)
        and _SHA256.fullmatch(record["sha256"])
    ):
        return {}, [], [_problem(None, f"{MANIFEST} lists a run record that is not well formed")]
    return manifest, sequences, []


def _well_formed(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("key"), str)
        and isinstance(entry.get("sha256"), list)
        and all(isinstance(h, str) and _SHA256.fullmatch(h) for h in entry["sha256"])
    )


def _first_difference(store: SequenceStore, entry: Mapping[str, Any]) -> tuple[str | None, int]:
    """How ``entry``'s sequence first departs from the manifest (or ``None``), and how
    many of its samples are sound: stored, readable and as the manifest lists them."""
    key, digests = entry["key"], entry["sha256"]
    length = store.length(key)
    difference: str | None = None
    sound = 0
    # Every sample is read, past the first that differs, so the count leaves out each
    # altered one: the store's own check reads them well formed, and counts them.
    for index, expected in enumerate(digests):
        if index >= length:
            difference = difference or (
                f"sample #{index} (index {index}) is missing; the manifest lists {len(digests)}"
            )
            break
        try:
            sample = store.get(key, index)
        except CorruptStoreError as error:
            difference = difference or f"sample #{index} (index {index}) is damaged: {error}"
            continue
        if sample is None or sample_digest(sample) != expected:
            difference = difference or f"sample #{index} (index {index}) differs from {MANIFEST}"
            continue
        sound += 1
    if difference is None and length > len(digests):
        difference = f"holds {length} samples; {MANIFEST} lists {len(digests)}"
    return difference, sound


def _record_problems(
    directory: Path,
    manifest: Mapping[str, Any],
    sequences: list[dict[str, Any]],
    store: SequenceStore,
    note: Callable[[str], None] | None,
) -> list[dict[str, str | None]]:
    """What is wrong with the bundle's run record: against the manifest, and the store."""
    path = directory / RUN_RECORD
    listed = manifest.get("run_record")
    problems = []
    if "run_record" not in manifest:
        # Written before manifests listed the record: its bytes cannot be checked, what
        # it names still can.
        if path.exists() and note is not None:
            note(
                f"{MANIFEST} predates run record checksums: {RUN_RECORD} is checked "
                "against the store only"
            )
    elif listed is None:
        if path.exists():
            problems.append(_problem(None, f"{RUN_RECORD} is not listed in {MANIFEST}"))
    elif not path.is_file():
        return [_problem(None, f"{RUN_RECORD} is missing; {MANIFEST} lists it")]
    else:
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except PermissionError as error:
            raise _unreadable(path, error) from None
        except OSError as error:
            return [_problem(None, f"{RUN_RECORD} cannot be read: {error}")]
        if digest != listed["sha256"]:
            problems.append(
                _problem(None, f"{RUN_RECORD} was altered: its SHA-256 differs from {MANIFEST}")
            )
    if not path.exists():
        return problems
    try:
        runs = read_runs(path)
    except PermissionError as error:
        raise _unreadable(path, error) from None
    except (OSError, MnimiError) as error:
        return [*problems, _problem(None, f"{RUN_RECORD} cannot be read: {error}")]
    lengths = {entry["key"]: len(entry["sha256"]) for entry in sequences}
    foreign = [found for run in runs for found in foreign_draws(run, lengths, store)]
    if foreign:
        more = len(foreign) - 1
        problems.append(
            _problem(
                None,
                f"{RUN_RECORD} names samples the bundle does not hold: "
                + describe_foreign(*foreign[0], lengths)
                + (f" (and {more} more draw{'' if more == 1 else 's'})" if more else ""),
            )
        )
    return problems


def verify_bundle(
    bundle: str | Path,
    progress: Callable[[int], None] | None = None,
    note: Callable[[str], None] | None = None,
) -> Check:
    """Check every sample of a bundle's store, and its run record, against its manifest.

    Args:
        bundle: The bundle directory. Its store is opened read-only at ``bundle/store``,
            never at a path read from the manifest.
        progress: Called with a count of sequences as they are checked.
        note: Called with what is worth knowing but no problem (a bundle written before
            manifests listed the run record).

    Raises:
        StoreError: This user may not read the manifest, the record or the store.

    Returns:
        The store's own check (which reports a request that is not the one its key is
        the hash of), plus a problem for each sequence that departs from the
        manifest (its first differing sample, named by key and index), for each stored
        sequence the manifest does not list, and for a run record that the manifest does
        not list as it is, or that names a sample the store does not hold.
    """
    directory = Path(bundle).expanduser()
    manifest, sequences, problems = _read_manifest(directory)
    if problems:
        return Check(problems=problems)
    # A store this user may not look into is out of reach, not missing: an error, where
    # a store that cannot be opened (gone, not a cache) is the bundle's damage.
    check_reachable(directory / STORE)
    try:
        store = open_store(directory / STORE, create=False, read_only=True)
    except StoreError as error:
        return Check(problems=[_problem(None, f"the bundle's store cannot be opened: {error}")])
    with store:
        check = store.check()
        listed = set()
        # Only what the manifest vouches for is sound: a sample altered after the export
        # reads as well formed to the store's own check.
        check.samples = 0
        for entry in sequences:
            listed.add(entry["key"])
            difference, sound = _first_difference(store, entry)
            check.samples += sound
            if difference is not None:
                check.problems.append(_problem(entry["key"], difference))
            if progress is not None:
                progress(1)
        for summary in store.summaries():
            if summary.key not in listed:
                check.problems.append(
                    _problem(summary.key, f"is stored but not listed in {MANIFEST}")
                )
        check.problems += _record_problems(directory, manifest, sequences, store, note)
    return check
