"""The least any full check of a disk store can cost: SQLite's and Python's own floors.

Run by hand from the repository root, after ``python bench/bench_stores.py`` built its
stores (it reads ``bench/.work/keys-1000000``, one sample per key, without changing it)::

    python bench/store_floors.py                          # the store of 1M keys
    python bench/store_floors.py bench/.work/keys-100000  # another one

Each figure is the best of three passes (the first warms the page cache). ``mnimi
verify`` must at least read every row, check the JSON of every sample and record, match
the rows of each key and hash each request against its key: these are the costs of
those steps alone, done the cheapest way SQLite or Python can, with no check around them.
"""

from __future__ import annotations

import hashlib
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

WORK = Path(__file__).parent / ".work"
_RECORDS = "key >= 'm:' AND key < 'm;'"
_EVERY_ROW = "SELECT count(*), sum(length(value)) FROM Cache NOT INDEXED"
_JSON_VALID = (
    "SELECT count(*) FROM Cache NOT INDEXED "
    f"WHERE ((key >= 's:' AND key < 's;') OR ({_RECORDS})) AND json_valid(value)"
)
_PROBE = (
    "SELECT count(*) FROM Cache AS m WHERE m.key >= 'm:' AND m.key < 'm;' AND EXISTS "
    "(SELECT 1 FROM Cache WHERE key = 'n:' || substr(m.key, 3) AND raw = 1)"
)


def best(step: Callable[[], object], passes: int = 3) -> float:
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    store = Path(sys.argv[1]) if len(sys.argv) > 1 else WORK / "keys-1000000"
    con = sqlite3.connect(f"file:{store / 'cache.db'}?mode=ro", uri=True)
    rows = con.execute("SELECT count(*) FROM Cache").fetchone()[0]

    def every_row_in_python() -> None:
        for _ in con.execute("SELECT key, value FROM Cache NOT INDEXED"):
            pass

    def hash_every_record() -> None:
        for (value,) in con.execute(f"SELECT value FROM Cache NOT INDEXED WHERE {_RECORDS}"):
            hashlib.sha256(value.encode()).hexdigest()

    def sql(query: str) -> Callable[[], object]:
        return lambda: con.execute(query).fetchone()

    steps: list[tuple[str, Callable[[], object]]] = [
        ("`PRAGMA quick_check` (pages and indexes)", sql("PRAGMA quick_check")),
        ("one SQL pass over every row", sql(_EVERY_ROW)),
        ("`json_valid` of every sample and record, in SQL", sql(_JSON_VALID)),
        ("an index probe per key (its length row), in SQL", sql(_PROBE)),
        ("every row fetched into Python, nothing else", every_row_in_python),
        ("SHA-256 of every record, in Python", hash_every_record),
    ]
    command = " ".join(["python bench/store_floors.py", *sys.argv[1:]])
    print(f"Command: `{command}`")
    print(f"\n{rows:,} rows in {store.name}; best of 3 passes each:\n")
    print("| step | seconds |")
    print("|---|---:|")
    for label, step in steps:
        print(f"| {label} | {best(step):.2f} |")


if __name__ == "__main__":
    main()
