"""Property tests of the laws (docs/laws.md, laws 1-4) over random interleavings.

The oracle tracks, for every item a layer hands out, which position of the
persistent base sequence ``P`` it must be; the real draws are then checked
against what ``P`` actually stored. Both persistent stores, disk and Redis, run
the same programs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import Locations, NumberModel

from mnimi_adapters.core import Independent, Layer, Persistent, Repeatable, Sample
from mnimi_adapters.core.stores import open_store

PROMPTS = ["Choose a number between 1 and 1000.", "Pick a colour."]
LAYERS = ["P", "R", "B", "I", "I2", "R2"]

open_op = st.tuples(
    st.just("open"), st.sampled_from(LAYERS), st.sampled_from(PROMPTS), st.integers(1, 3)
)
next_op = st.tuples(st.just("next"), st.integers(0, 50))
# Draws far outnumber opens and restarts, so that iterators get deep enough to interleave.
op = st.one_of(open_op, next_op, next_op, next_op, st.tuples(st.just("run")))

#: Programs per store. A Redis program takes no longer than a disk one (a local
#: round trip costs about what a SQLite transaction does), so both get as many.
EXAMPLES = {"disk": 200, "redis": 200}


@dataclass
class Run:
    """One program run: the layers, rebuilt over the same directories."""

    layers: dict[str, Layer]
    #: Oracle state: next P position of the shared I/I2 cursor, R2's sequence.
    independent_next: dict[str, int] = field(default_factory=dict)
    r2_sequence: dict[str, list[int]] = field(default_factory=dict)


def build(base: str, sliced: str) -> Run:
    p = Persistent(NumberModel(), base)
    i = Independent(p)
    return Run(
        {
            "P": p,
            "R": Repeatable(p),
            "B": Persistent(p, sliced),
            "I": i,
            "I2": Independent(i),
            "R2": Repeatable(i),
        }
    )


@dataclass
class Open:
    layer: str
    prompt: str
    items: Iterator[Sample]
    position: int = 0


def test_laws_hold_for_any_interleaving(locations: Locations) -> None:
    @settings(
        max_examples=EXAMPLES[locations.backend],
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(st.lists(op, min_size=4, max_size=40))
    def check(program: list[tuple[object, ...]]) -> None:
        # Fresh stores for every program: directories, or Redis namespaces.
        run_program(program, locations.new("P"), locations.new("B"))

    check()


def run_program(program: list[tuple[object, ...]], base: str, sliced_at: str) -> None:
    run = build(base, sliced_at)
    iterators: list[Open] = []
    served: list[tuple[str, int, Sample]] = []  # (prompt, expected P position, sample)
    for step in program:
        if step[0] == "open":
            _, name, prompt, batch = step
            assert isinstance(name, str) and isinstance(prompt, str)
            assert isinstance(batch, int)
            iterators.append(Open(name, prompt, run.layers[name].samples(prompt, batch)))
        elif step[0] == "next" and iterators:
            assert isinstance(step[1], int)
            it = iterators[step[1] % len(iterators)]
            served.append((it.prompt, expected_position(run, it), next(it.items)))
            it.position += 1
        elif step[0] == "run":
            run, iterators = build(base, sliced_at), []

    store = open_store(base)
    for prompt in PROMPTS:
        key = next(iter(_keys(run, prompt)))
        sequence = [store.get(key, i) for i in range(store.length(key))]
        draw_ids = [s.draw_id for s in sequence if s]
        assert len(draw_ids) == len(set(draw_ids)), "law 3: a draw stored twice"
        for served_prompt, position, sample in served:
            if served_prompt == prompt:
                assert sample.draw_id == draw_ids[position], "laws 1-2: wrong sample served"
        sliced = open_store(sliced_at)
        prefix = [sliced.get(key, i) for i in range(sliced.length(key))]
        assert [s.draw_id for s in prefix if s] == draw_ids[: len(prefix)], "law 4"
        sliced.close()
    store.close()


def _keys(run: Run, prompt: str) -> Iterator[str]:
    from mnimi_adapters.core import Request, request_key

    yield request_key(run.layers["P"].identity(), Request.of(prompt))


def expected_position(run: Run, it: Open) -> int:
    """Which position of P the next item of ``it`` must be."""
    if it.layer in ("P", "R", "B"):  # law 1: every iterator replays from 0
        return it.position
    if it.layer in ("I", "I2"):  # law 2: one shared cursor continues
        return _advance(run, it.prompt)
    sequence = run.r2_sequence.setdefault(it.prompt, [])
    if it.position == len(sequence):  # R2 extends from the shared cursor
        sequence.append(_advance(run, it.prompt))
    return sequence[it.position]


def _advance(run: Run, prompt: str) -> int:
    position = run.independent_next.get(prompt, 0)
    run.independent_next[prompt] = position + 1
    return position
