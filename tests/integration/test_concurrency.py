"""Law 7: threads and processes sharing one store; a killed process loses nothing.

Every test runs over both persistent stores, a cache directory and a Redis namespace.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import workers
from support import Locations, open_location

PROCESSES = 4
THREADS = 8
PER_THREAD = 6


def test_processes_and_threads_share_one_store(locations: Locations) -> None:
    path = locations.new()
    context = multiprocessing.get_context("spawn")
    with context.Pool(PROCESSES) as pool:
        runs = pool.starmap(workers.draw_independently, [(path, PER_THREAD, THREADS)] * PROCESSES)
    store = open_location(path)
    (key,) = list(store.keys())
    length = store.length(key)
    sequence = [store.get(key, i) for i in range(length)]
    ids = [s.draw_id for s in sequence if s is not None]
    assert len(ids) == length and len(set(ids)) == length, "no gap, no sample twice"
    for served in runs:
        indices = [index for index, _ in served]
        # One Independent cursor per process: no index handed out twice, none skipped.
        assert sorted(indices) == list(range(THREADS * PER_THREAD))
        # A reader at index i always gets the sample stored at i.
        assert all(ids[index] == draw_id for index, draw_id in served)
    # Every process reads the same sequence when it re-reads it.
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        assert pool.starmap(workers.replay, [(path, length)] * 2) == [ids, ids]


def test_killed_writer_leaves_a_readable_store(locations: Locations) -> None:
    path = locations.new()
    open_location(path).close()
    key = "m1-crash"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=workers.append_forever, args=(path, key)) for _ in range(2)]
    for writer in writers:
        writer.start()
    store = open_location(path)
    deadline = time.monotonic() + 60
    while store.length(key) < 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    for writer in writers:
        assert writer.pid is not None
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
    reopened = open_location(path)
    length = reopened.length(key)
    assert length >= 200
    samples = [reopened.get(key, i) for i in range(length)]
    assert all(s is not None and s.text.startswith("sample ") for s in samples)
    assert reopened.get(key, length) is None
    info = reopened.info(key)
    assert info is not None and info["length"] == length
    assert len({s.draw_id for s in samples if s}) == length
