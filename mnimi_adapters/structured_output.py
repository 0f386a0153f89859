"""Declarative parsing of LLM output, and retries until an output fits.

A *spec* describes the parts of an answer that matter; the free text an LLM
writes around them is skipped. `parse` turns a text into nested Python values,
and `query_retry` keeps drawing samples until one parses and passes a validator.

Example:
    >>> spec = Sequence([Tag("problem"), Repeat(Sequence([Tag("algorithm"), Code()]))])
    >>> text = '''<problem>Sort a list.</problem>
    ... Sure! <algorithm>Bubble sort</algorithm>
    ... ```python
    ... bubble(xs)
    ... ```'''
    >>> parse(spec, text)
    ['Sort a list.', [['Bubble sort', 'bubble(xs)']]]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mnimi_adapters.core.errors import LLMOutputError

if TYPE_CHECKING:
    from mnimi_adapters.core import Layer
    from mnimi_adapters.core.model import Prompt

__all__ = [
    "Code",
    "LLMOutputError",
    "OneOf",
    "Repeat",
    "Sequence",
    "Spec",
    "Tag",
    "aquery_retry",
    "parse",
    "query_retry",
]

_SNIPPET_CHARS = 40


# --------------------------------------------------------------------------- matching machinery


@dataclass
class _Failures:
    """The furthest point any alternative reached before failing.

    Specs backtrack (a `Repeat` may give back items), so a single failure is not
    the answer to "why did parsing fail". The failure that got furthest into the
    text is the most informative one, as in most parser-combinator libraries.
    """

    position: int = -1
    expected: list[str] = field(default_factory=list)
    note: str = ""

    def add(self, position: int, expected: str, note: str = "") -> None:
        if position > self.position:
            self.position, self.expected, self.note = position, [expected], note
        elif position == self.position and expected not in self.expected:
            # Equally far alternatives are all valid continuations: name them all.
            self.expected.append(expected)
            self.note = self.note or note

    def error(self, text: str) -> LLMOutputError:
        expected = " or ".join(self.expected)
        line = text.count("\n", 0, self.position) + 1
        rest = text[self.position :]
        found = repr(rest[:_SNIPPET_CHARS]) + ("..." if len(rest) > _SNIPPET_CHARS else "")
        if not rest.strip():
            found = "end of text"
        note = f" ({self.note})" if self.note else ""
        message = (
            f"expected {expected} after character {self.position} (line {line}), "
            f"found: {found}{note}"
        )
        return LLMOutputError(message, expected=expected, position=self.position)


class Spec:
    """Base class of output specifications; combine its subclasses to describe an answer.

    Example:
        >>> isinstance(Tag("answer"), Spec)
        True
    """

    def _matches(self, text: str, pos: int, failures: _Failures) -> Iterator[tuple[Any, int]]:
        """Yield ``(value, end)`` for each way to match at or after ``pos``, best first.

        A spec that cannot match records why in ``failures`` and yields nothing.
        """
        raise NotImplementedError


def parse(spec: Spec, text: str) -> Any:
    """Parse an LLM output according to a spec.

    Args:
        spec: The expected structure.
        text: The LLM output.

    Returns:
        The nested value the spec yields, e.g. a list for a `Sequence`.

    Raises:
        LLMOutputError: If the text does not fit the spec; the message says what was
            expected and where.

    Example:
        >>> parse(Sequence([Tag("a"), Tag("b")]), "<a> 1 </a> and <b>2</b>")
        ['1', '2']
    """
    failures = _Failures()
    for value, _end in spec._matches(text, 0, failures):
        return value
    raise failures.error(text)


# --------------------------------------------------------------------------- combinators


@dataclass(frozen=True)
class Tag(Spec):
    """Matches the next ``<name>...</name>`` and yields the inner text, stripped.

    Args:
        name: The tag name; an opening tag may carry attributes (``<name id="1">``).

    Example:
        >>> parse(Tag("answer"), "So: <answer>\\n42\\n</answer>")
        '42'
    """

    name: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[^\s<>/]+", self.name):
            raise ValueError(f"invalid tag name: {self.name!r}")

    def _matches(self, text: str, pos: int, failures: _Failures) -> Iterator[tuple[str, int]]:
        name = re.escape(self.name)
        opening = re.compile(rf"<{name}(?:\s[^>]*)?>").search(text, pos)
        if opening is None:
            failures.add(pos, f"<{self.name}>...</{self.name}>")
            return
        closing = re.compile(rf"</{name}\s*>").search(text, opening.end())
        if closing is None:
            failures.add(opening.end(), f"</{self.name}>", f"to close <{self.name}>")
            return
        yield text[opening.end() : closing.start()].strip(), closing.end()


# As in CommonMark, fences start a line (indentation allowed) and an opening fence's info
# string has no backticks, so inline ```code``` in prose is never taken for a block.
_FENCE_OPEN = re.compile(r"^[ \t]*(`{3,})[ \t]*([^`\n]*)\n", re.MULTILINE)


@dataclass(frozen=True)
class Code(Spec):
    """Matches the next fenced Markdown code block and yields the code without fences.

    Args:
        language: If given, only blocks whose info string starts with this language
            (case-insensitive) match; other blocks are skipped like free text.

    Example:
        >>> parse(Code("python"), "```text\\nhi\\n```\\n```Python\\nprint(1)\\n```")
        'print(1)'
    """

    language: str | None = None

    def _matches(self, text: str, pos: int, failures: _Failures) -> Iterator[tuple[str, int]]:
        start = pos
        while (opening := _FENCE_OPEN.search(text, pos)) is not None:
            # A closing fence sits on its own line and is at least as long as the opening.
            fence = opening.group(1)
            closing = re.compile(rf"^[ \t]*{fence}`*[ \t]*\r?$", re.MULTILINE).search(
                text, opening.end()
            )
            words = opening.group(2).split()
            language = words[0].lower() if words else None
            if self.language is None or language == self.language.lower():
                if closing is None:
                    failures.add(opening.end(), fence, "to close the code block")
                    return
                code = text[opening.end() : closing.start()]
                yield code.removesuffix("\n").removesuffix("\r"), closing.end()
                return
            if closing is None:
                break
            pos = closing.end()
        failures.add(start, self._describe())

    def _describe(self) -> str:
        if self.language is None:
            return "a fenced code block"
        return f"a fenced {self.language} code block"


@dataclass(frozen=True)
class Sequence(Spec):
    """Matches its items in order, each after the previous one, and yields a list.

    Args:
        items: The specs to match; free text between them is skipped.

    Example:
        >>> parse(Sequence([Tag("q"), Tag("a")]), "<q>2+2?</q> Let me think. <a>4</a>")
        ['2+2?', '4']
    """

    items: list[Spec]

    def __post_init__(self) -> None:
        _check_specs(self.items)

    def _matches(self, text: str, pos: int, failures: _Failures) -> Iterator[tuple[list[Any], int]]:
        yield from self._matches_from(0, text, pos, failures)

    def _matches_from(
        self, index: int, text: str, pos: int, failures: _Failures
    ) -> Iterator[tuple[list[Any], int]]:
        if index == len(self.items):
            yield [], pos
            return
        # Backtracking: if the rest fails after one way of matching this item, try the next
        # way (e.g. a `Repeat` that took one item too many).
        for value, end in self.items[index]._matches(text, pos, failures):
            for rest, final in self._matches_from(index + 1, text, end, failures):
                yield [value, *rest], final


@dataclass(frozen=True)
class Repeat(Spec):
    """Matches a spec as many times as possible (greedy) and yields a list of its values.

    If what follows the `Repeat` then fails, it gives back matches one at a time,
    like a greedy regular expression, so a stray late match cannot swallow the
    rest of the answer. As free text between repetitions is skipped, a nested
    `Repeat` may also take matches meant for the next outer repetition whenever
    the whole text still fits (again like a regular expression); start each
    repeated group with a distinct item, as in ``Sequence([Tag("q"), Code()])``.

    Args:
        spec: The repeated spec.
        min_count: The fewest matches accepted; ``0`` makes the repetition optional.

    Example:
        >>> parse(Repeat(Tag("step")), "<step>a</step> then <step>b</step>")
        ['a', 'b']
        >>> parse(Sequence([Repeat(Tag("s")), Tag("end")]), "<s>1</s><end>!</end> <s>2</s>")
        [['1'], '!']
    """

    spec: Spec
    min_count: int = 1

    def __post_init__(self) -> None:
        _check_specs([self.spec])
        if self.min_count < 0:
            raise ValueError(f"min_count must be >= 0, got {self.min_count}")

    def _matches(self, text: str, pos: int, failures: _Failures) -> Iterator[tuple[list[Any], int]]:
        # Each repetition takes the spec's first (best) match only: backtracking inside
        # repetitions too would make failing parses exponential in the number of items.
        values: list[Any] = []
        ends = [pos]
        while (match := next(self.spec._matches(text, ends[-1], failures), None)) is not None:
            value, end = match
            if end == ends[-1]:
                # An empty match would repeat forever: repeat it just often enough instead.
                count = max(self.min_count - len(values), 1)
                values += [value] * count
                ends += [end] * count
                break
            values.append(value)
            ends.append(end)
        for count in range(len(values), self.min_count - 1, -1):
            yield values[:count], ends[count]


@dataclass(frozen=True)
class OneOf(Spec):
    """Matches one of several literal options right at the current position.

    Leading whitespace is skipped, and an option must not run on into a word
    (``"yes"`` does not match ``"yesterday"``); the longest matching option wins.
    An answer cut short (e.g. by ``max_tokens``) still parses: if the rest of the
    text is a prefix of exactly one option, that option is the value, because the
    remaining characters are fully determined (the short-circuiting of long
    constraints from LMQL). A truncated prefix can only occur at the end of the
    text, so in the middle of a text only whole options match.

    Args:
        options: The literal options, matched case-sensitively.

    Example:
        >>> parse(OneOf(["positive", "negative", "neutral"]), " negative, clearly")
        'negative'
        >>> parse(OneOf(["positive", "negative", "neutral"]), "neg")
        'negative'
    """

    options: list[str]

    def __post_init__(self) -> None:
        if not self.options or not all(self.options):
            raise ValueError("OneOf needs at least one option and no empty options")

    def _matches(self, text: str, pos: int, failures: _Failures) -> Iterator[tuple[str, int]]:
        start = len(text) - len(text[pos:].lstrip())
        whole = [option for option in self.options if self._ends_at(text, start, option)]
        if whole:
            option = max(whole, key=len)
            yield option, start + len(option)
            return
        rest = text[start:].rstrip()
        candidates = [option for option in self.options if rest and option.startswith(rest)]
        if len(candidates) == 1:
            yield candidates[0], len(text)
            return
        note = "a prefix of several options" if candidates else ""
        failures.add(start, "one of " + ", ".join(map(repr, self.options)), note)

    @staticmethod
    def _ends_at(text: str, start: int, option: str) -> bool:
        if not text.startswith(option, start):
            return False
        after = start + len(option)
        # Only an option ending in a word character can run on into a longer word.
        return not (_is_word(option[-1]) and after < len(text) and _is_word(text[after]))


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


def _check_specs(specs: list[Any]) -> None:
    # Fail where the spec is written, not at the first parse: a bare string is a common
    # slip for what `OneOf([...])` or `Tag(...)` expresses.
    for spec in specs:
        if not isinstance(spec, Spec):
            raise TypeError(f"expected a Spec such as Tag(...) or Code(), got {spec!r}")


# --------------------------------------------------------------------------- retries


def query_retry(
    model: Layer,
    prompt: Prompt,
    spec: Spec,
    retries: int = 5,
    validator: Callable[[Any], object] | None = None,
    batch: int = 1,
) -> Any:
    """Draw samples until one parses according to ``spec`` and passes ``validator``.

    Each attempt draws a new sample, while a rerun of the whole program over a
    `Persistent` cache replays exactly the same attempts (and makes no model
    calls). This is the Mnimi retry pattern with one sample per attempt: one
    `Independent` cursor for the call, over a `Repeatable` that keeps the rest
    of a batched refill for the later attempts.

    Only output errors are retried: an `LLMOutputError` from `parse`, a falsy
    validator result, or an `LLMOutputError` raised by the validator. Anything
    else (provider errors, `ReplicationCacheMiss`, a bug in the validator)
    propagates at once.

    Args:
        model: The layer to sample from, typically a `Persistent` model.
        prompt: The prompt, as accepted by ``model.sample``.
        spec: The expected structure of the output.
        retries: The most attempts to make (at least 1).
        validator: Optional check of the parsed value; return a falsy value or raise
            `LLMOutputError` to reject it.
        batch: Samples to ask for per request, so later attempts may come from one
            batched request.

    Returns:
        The parsed value of the first acceptable sample.

    Raises:
        ValueError: If ``retries`` is less than 1.
        LLMOutputError: If no attempt gave an acceptable output; the message names
            the number of attempts and the last error.

    Example:
        >>> spec = Sequence([Tag("problem"), Repeat(Sequence([Tag("algorithm"), Code()]))])
        >>> result = query_retry(model, prompt, spec, retries=5,
        ...                      validator=lambda x: len(x[1]) >= 2)  # doctest: +SKIP
    """
    attempts = _attempts(model, retries)
    for attempt in range(1, retries + 1):
        text = next(attempts.sample(prompt, batch=batch))
        done, value = _judge(attempt, retries, spec, text, validator)
        if done:
            return value
    raise AssertionError("unreachable: the last attempt returns or raises")


async def aquery_retry(
    model: Layer,
    prompt: Prompt,
    spec: Spec,
    retries: int = 5,
    validator: Callable[[Any], object] | None = None,
    batch: int = 1,
) -> Any:
    """Async `query_retry`: same arguments, results, errors and cache behaviour.

    Attempts are drawn with ``asample``, so the event loop is free while a
    provider answers.

    Example:
        >>> result = await aquery_retry(model, prompt, Tag("answer"))  # doctest: +SKIP
    """
    attempts = _attempts(model, retries)
    for attempt in range(1, retries + 1):
        text = await anext(attempts.asample(prompt, batch=batch))
        done, value = _judge(attempt, retries, spec, text, validator)
        if done:
            return value
    raise AssertionError("unreachable: the last attempt returns or raises")


def _attempts(model: Layer, retries: int) -> Layer:
    """The layer a retry loop draws its attempts from (the decisions both loops share)."""
    if retries < 1:
        raise ValueError(f"retries must be at least 1, got {retries}")
    # Imported here so that parsing alone does not load the cache machinery.
    from mnimi_adapters.core import Independent, Repeatable

    # One cursor for the whole call: every attempt reads the next sample of the sequence,
    # so a retry never sees a failed sample again, yet a rerun over a persistent model
    # reads the same samples in the same order. The Repeatable below it keeps the rest of
    # a batched refill for later attempts even when `model` has no cache of its own.
    return Independent(Repeatable(model))


def _judge(
    attempt: int,
    retries: int,
    spec: Spec,
    text: str,
    validator: Callable[[Any], object] | None,
) -> tuple[bool, Any]:
    """``(True, value)`` for an accepted attempt, ``(False, None)`` to try again.

    Raises:
        LLMOutputError: The last attempt was not accepted either.
    """
    try:
        return True, _accept(spec, text, validator)
    except LLMOutputError as error:
        if attempt == retries:
            raise _exhausted(retries, error) from error
        return False, None


def _accept(spec: Spec, text: str, validator: Callable[[Any], object] | None) -> Any:
    value = parse(spec, text)
    if validator is not None and not validator(value):
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise LLMOutputError(
            f"the validator rejected the parsed output {shown}",
            expected="an output accepted by the validator",
            position=0,
        )
    return value


def _exhausted(attempts: int, last: LLMOutputError) -> LLMOutputError:
    plural = "attempt" if attempts == 1 else "attempts"
    return LLMOutputError(
        f"no acceptable output after {attempts} {plural}; last error: {last}",
        expected=last.expected,
        position=last.position,
    )
