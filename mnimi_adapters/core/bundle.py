"""Replication packages: a sliced store with a manifest of checksums.

A bundle is a directory::

    MANIFEST.json   what is in it: one entry per sequence, a SHA-256 per sample
    store/          the sliced cache (open it with ``Persistent(..., replication=True)``)
    run.jsonl       optionally, the record of the run that made it

The manifest ends with a digest over the rest of it, so an edit to the manifest shows
as well as an edit to a sample. A bundle comes from someone else: :func:`verify_bundle`
treats the manifest as untrusted input and never takes a path from it.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from .errors import CorruptStoreError, StoreError
from .request import Request, canonical_json
from .sample import Sample
from .stores import SequenceStore, open_store
from .stores.base import Check, Summary

__all__ = [
    "BUNDLE_FORMAT",
    "MANIFEST",
    "RUN_RECORD",
    "STORE",
    "Manifest",
    "is_bundle",
    "sample_digest",
    "verify_bundle",
]

#: The manifest's format version: a reader refuses any other.
BUNDLE_FORMAT = 1
MANIFEST = "MANIFEST.json"
STORE = "store"
RUN_RECORD = "run.jsonl"

_SHA256 = re.compile(r"[0-9a-f]{64}")


def sample_digest(sample: Sample) -> str:
    """The SHA-256 (hex) of a stored sample's canonical JSON."""
    return hashlib.sha256(canonical_json(sample.to_dict()).encode()).hexdigest()


def _manifest_digest(manifest: Mapping[str, Any]) -> str:
    body = {name: value for name, value in manifest.items() if name != "digest"}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a bundle's manifest."""
    return (Path(path).expanduser() / MANIFEST).is_file()


@dataclass
class Manifest:
    """A bundle's manifest, built one sequence at a time as the store is sliced.

    Example:
        >>> manifest = Manifest()
        >>> manifest.to_dict()["sequences"]
        []
    """

    sequences: list[dict[str, Any]] = field(default_factory=list)

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
        }
        manifest["digest"] = _manifest_digest(manifest)
        return manifest

    def write(self, bundle: Path) -> None:
        """Write ``MANIFEST.json`` into the bundle directory."""
        text = json.dumps(self.to_dict(), indent=1, ensure_ascii=False)
        (bundle / MANIFEST).write_text(text + "\n", encoding="utf-8")


def _problem(key: str | None, problem: str) -> dict[str, str | None]:
    return {"key": key, "row": None, "problem": problem}


def _read_manifest(bundle: Path) -> tuple[list[dict[str, Any]], list[dict[str, str | None]]]:
    """The manifest's sequences once it is shown sound, else the problem with it."""
    try:
        manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return [], [_problem(None, f"{MANIFEST} cannot be read: {error}")]
    if not isinstance(manifest, dict):
        return [], [_problem(None, f"{MANIFEST} is not a JSON object")]
    if manifest.get("format") != BUNDLE_FORMAT:
        return [], [_problem(None, f"{MANIFEST} has format {manifest.get('format')!r}, not 1")]
    if manifest.get("digest") != _manifest_digest(manifest):
        return [], [_problem(None, f"{MANIFEST} was altered: its digest does not match")]
    sequences = manifest.get("sequences")
    if not isinstance(sequences, list) or not all(_well_formed(s) for s in sequences):
        return [], [_problem(None, f"{MANIFEST} lists a sequence that is not well formed")]
    return sequences, []


def _well_formed(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("key"), str)
        and isinstance(entry.get("sha256"), list)
        and all(isinstance(h, str) and _SHA256.fullmatch(h) for h in entry["sha256"])
    )


def _first_difference(store: SequenceStore, entry: Mapping[str, Any]) -> str | None:
    """How ``entry``'s sequence first departs from the manifest, or ``None``."""
    key, digests = entry["key"], entry["sha256"]
    length = store.length(key)
    for index, expected in enumerate(digests):
        if index >= length:
            return f"sample #{index} (index {index}) is missing; the manifest lists {len(digests)}"
        try:
            sample = store.get(key, index)
        except CorruptStoreError as error:
            return f"sample #{index} (index {index}) is damaged: {error}"
        if sample is None or sample_digest(sample) != expected:
            return f"sample #{index} (index {index}) differs from {MANIFEST}"
    if length > len(digests):
        return f"holds {length} samples; {MANIFEST} lists {len(digests)}"
    return None


def verify_bundle(bundle: str | Path, progress: Callable[[int], None] | None = None) -> Check:
    """Check every sample of a bundle's store against its manifest.

    Args:
        bundle: The bundle directory. Its store is opened read-only at ``bundle/store``,
            never at a path read from the manifest.
        progress: Called with a count of sequences as they are checked.

    Returns:
        The store's own check, plus a problem for each sequence that departs from the
        manifest (its first differing sample, named by key and index), and for each
        stored sequence the manifest does not list.
    """
    directory = Path(bundle).expanduser()
    sequences, problems = _read_manifest(directory)
    if problems:
        return Check(problems=problems)
    try:
        store = open_store(directory / STORE, create=False, read_only=True)
    except StoreError as error:
        return Check(problems=[_problem(None, f"the bundle's store cannot be opened: {error}")])
    with store:
        check = store.check()
        listed = set()
        for entry in sequences:
            listed.add(entry["key"])
            difference = _first_difference(store, entry)
            if difference is not None:
                check.problems.append(_problem(entry["key"], difference))
            if progress is not None:
                progress(1)
        for summary in store.summaries():
            if summary.key not in listed:
                check.problems.append(
                    _problem(summary.key, f"is stored but not listed in {MANIFEST}")
                )
    return check
