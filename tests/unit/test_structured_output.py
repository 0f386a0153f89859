"""Tests for mnimi_adapters.structured_output: the spec parser and query_retry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mnimi_adapters.core import (
    BatchedModel,
    Model,
    Persistent,
    ProviderError,
    Repeatable,
    ReplicationCacheMiss,
    Request,
    Sample,
)
from mnimi_adapters.core.model import Prompt
from mnimi_adapters.structured_output import (
    Code,
    LLMOutputError,
    OneOf,
    Repeat,
    Sequence,
    Spec,
    Tag,
    aquery_retry,
    parse,
    query_retry,
)

README_SPEC = Sequence([Tag("problem"), Repeat(Sequence([Tag("algorithm"), Code()]))])

README_RESPONSE = """\
Sure! Here is a classic problem.

<problem>
Given an array of integers, find the maximum sum of a contiguous subarray.
</problem>

Approach 1:
<algorithm>Brute force</algorithm>
```python
def max_subarray(xs):
    return max(sum(xs[i:j]) for i in range(len(xs)) for j in range(i + 1, len(xs) + 1))
```

Approach 2 is much faster:
<algorithm>Kadane's algorithm</algorithm>
```python
def max_subarray(xs):
    best = cur = xs[0]
    for x in xs[1:]:
        cur = max(x, cur + x)
        best = max(best, cur)
    return best
```
Both are correct; the second runs in linear time.
"""

README_EXPECTED = [
    "Given an array of integers, find the maximum sum of a contiguous subarray.",
    [
        [
            "Brute force",
            "def max_subarray(xs):\n    return max(sum(xs[i:j])"
            " for i in range(len(xs)) for j in range(i + 1, len(xs) + 1))",
        ],
        [
            "Kadane's algorithm",
            "def max_subarray(xs):\n"
            "    best = cur = xs[0]\n"
            "    for x in xs[1:]:\n"
            "        cur = max(x, cur + x)\n"
            "        best = max(best, cur)\n"
            "    return best",
        ],
    ],
]

SENTIMENT = OneOf(["positive", "negative", "neutral"])


def parse_error(spec: Spec, text: str) -> LLMOutputError:
    with pytest.raises(LLMOutputError) as info:
        parse(spec, text)
    return info.value


# --------------------------------------------------------------------------- README example


def test_readme_example_parses_into_nested_lists() -> None:
    assert parse(README_SPEC, README_RESPONSE) == README_EXPECTED


def test_readme_example_without_algorithms_names_the_missing_tag() -> None:
    text = "<problem>p</problem>\nI could not think of any approach."
    error = parse_error(README_SPEC, text)
    assert error.expected == "<algorithm>...</algorithm>"
    assert error.position == len("<problem>p</problem>")
    assert str(error) == (
        "expected <algorithm>...</algorithm> after character 20 (line 1), "
        "found: '\\nI could not think of any approach.'"
    )


def test_readme_example_algorithm_without_code_points_at_the_gap() -> None:
    text = "<problem>p</problem>\n<algorithm>Greedy</algorithm>\nJust be greedy."
    error = parse_error(README_SPEC, text)
    assert error.expected == "a fenced code block"
    assert error.position == text.index("\nJust")
    assert "(line 2)" in str(error)


def test_error_is_a_value_error() -> None:
    assert isinstance(parse_error(Tag("a"), ""), ValueError)


# --------------------------------------------------------------------------- Tag


def test_tag_yields_stripped_inner_text() -> None:
    assert parse(Tag("answer"), "blah <answer>\n  42 \n</answer> blah") == "42"


def test_tag_takes_the_first_occurrence_and_allows_attributes() -> None:
    assert parse(Tag("a"), 'x <a id="1">one</a> <a>two</a>') == "one"


def test_tag_keeps_inner_markup() -> None:
    assert parse(Tag("a"), "<a><b>x</b></a>") == "<b>x</b>"


def test_tag_does_not_match_a_longer_name() -> None:
    error = parse_error(Tag("a"), "<ab>x</ab>")
    assert error.expected == "<a>...</a>"


def test_tag_missing() -> None:
    error = parse_error(Tag("answer"), "no tags\nhere at all")
    assert error.expected == "<answer>...</answer>"
    assert error.position == 0
    assert str(error) == (
        "expected <answer>...</answer> after character 0 (line 1), found: 'no tags\\nhere at all'"
    )


def test_tag_unclosed_points_after_the_opening_tag() -> None:
    text = "intro\n<answer>forty-"
    error = parse_error(Tag("answer"), text)
    assert error.expected == "</answer>"
    assert error.position == len(text) - len("forty-")
    assert "(line 2)" in str(error)
    assert "to close <answer>" in str(error)


def test_long_snippets_are_shortened() -> None:
    error = parse_error(Tag("a"), "x" * 100)
    assert "'" + "x" * 40 + "'..." in str(error)


def test_only_whitespace_left_is_reported_as_end_of_text() -> None:
    assert "found: end of text" in str(parse_error(Tag("a"), "  \n "))


@pytest.mark.parametrize("name", ["", "a b", "<a>", "a/b"])
def test_tag_rejects_invalid_names(name: str) -> None:
    with pytest.raises(ValueError, match="invalid tag name"):
        Tag(name)


# --------------------------------------------------------------------------- Code


def test_code_without_language_matches_any_block() -> None:
    text = "Here:\n```rust\nfn main() {}\n```\nDone."
    assert parse(Code(), text) == "fn main() {}"


def test_code_without_info_string() -> None:
    assert parse(Code(), "```\nx = 1\n\n  y = 2\n```") == "x = 1\n\n  y = 2"


def test_code_with_language_skips_other_blocks() -> None:
    text = "```text\noutput\n```\n```Python title=a.py\nprint(1)\n```"
    assert parse(Code("python"), text) == "print(1)"


def test_code_with_language_missing() -> None:
    text = "```java\nclass A {}\n```"
    error = parse_error(Code("python"), text)
    assert error.expected == "a fenced python code block"
    assert error.position == 0


def test_code_empty_block() -> None:
    assert parse(Code(), "```python\n```") == ""


def test_code_keeps_inner_fences_of_a_longer_outer_fence() -> None:
    text = "````markdown\n```python\nx\n```\n````"
    assert parse(Code(), text) == "```python\nx\n```"


def test_code_ignores_inline_triple_backticks() -> None:
    text = "Use ```x``` inline.\n```sh\nls\n```"
    assert parse(Code(), text) == "ls"


def test_code_closing_fence_must_be_on_its_own_line() -> None:
    text = "```python\ns = '```'\n```"
    assert parse(Code(), text) == "s = '```'"


def test_code_handles_windows_line_endings() -> None:
    assert parse(Code(), "```py\r\nx = 1\r\n```\r\n") == "x = 1"


def test_code_missing() -> None:
    error = parse_error(Code(), "no code here")
    assert error.expected == "a fenced code block"
    assert str(error).startswith("expected a fenced code block after character 0 (line 1)")


def test_code_unclosed() -> None:
    text = "```python\ndef f(:\n"
    error = parse_error(Code(), text)
    assert error.expected == "```"
    assert error.position == len("```python\n")
    assert "to close the code block" in str(error)


# --------------------------------------------------------------------------- Sequence


def test_sequence_skips_free_text_between_items() -> None:
    text = "First <a>1</a>, then some chatter:\n```\ncode\n```\nand finally <b>2</b>."
    assert parse(Sequence([Tag("a"), Code(), Tag("b")]), text) == ["1", "code", "2"]


def test_sequence_items_must_be_in_order() -> None:
    error = parse_error(Sequence([Tag("a"), Tag("b")]), "<b>2</b> <a>1</a>")
    assert error.expected == "<b>...</b>"
    assert error.position == len("<b>2</b> <a>1</a>")


def test_empty_sequence_yields_empty_list() -> None:
    assert parse(Sequence([]), "anything") == []


def test_nested_sequences() -> None:
    spec = Sequence([Sequence([Tag("a"), Tag("b")]), Sequence([Tag("c")])])
    assert parse(spec, "<a>1</a><b>2</b><c>3</c>") == [["1", "2"], ["3"]]


# --------------------------------------------------------------------------- Repeat


def test_repeat_is_greedy() -> None:
    assert parse(Repeat(Tag("s")), "<s>1</s> x <s>2</s>\n<s>3</s>") == ["1", "2", "3"]


def test_repeat_needs_one_match_by_default() -> None:
    error = parse_error(Repeat(Tag("s")), "nothing")
    assert error.expected == "<s>...</s>"


def test_repeat_min_count_zero_is_optional() -> None:
    assert parse(Sequence([Repeat(Tag("s"), min_count=0), Tag("e")]), "<e>!</e>") == [[], "!"]


def test_repeat_min_count_reports_the_missing_item() -> None:
    error = parse_error(Repeat(Tag("s"), min_count=3), "<s>1</s><s>2</s> done")
    assert error.expected == "<s>...</s>"
    assert error.position == len("<s>1</s><s>2</s>")


def test_combinators_reject_what_is_not_a_spec() -> None:
    with pytest.raises(TypeError, match="expected a Spec"):
        Sequence([Tag("a"), "b"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="expected a Spec"):
        Repeat("a")  # type: ignore[arg-type]


def test_repeat_rejects_negative_min_count() -> None:
    with pytest.raises(ValueError, match="min_count"):
        Repeat(Tag("s"), min_count=-1)


def test_repeat_gives_back_matches_for_what_follows() -> None:
    text = "<s>1</s><s>2</s><end>!</end> P.S. <s>3</s>"
    assert parse(Sequence([Repeat(Tag("s")), Tag("end")]), text) == [["1", "2"], "!"]


def test_repeat_ignores_a_trailing_partial_item() -> None:
    # An output cut short in its third approach still holds two complete ones.
    text = README_RESPONSE + "<algorithm>Divide and conquer</algorithm>\n```python\ndef"
    assert parse(README_SPEC, text) == README_EXPECTED


def test_repeat_of_empty_match_terminates() -> None:
    assert parse(Repeat(Sequence([])), "x") == [[]]
    assert parse(Repeat(Sequence([]), min_count=2), "x") == [[], []]
    assert parse(Repeat(Repeat(Tag("s"), min_count=0)), "x") == [[]]


def test_failure_after_repeat_names_all_equally_far_expectations() -> None:
    error = parse_error(Sequence([Repeat(Tag("s")), Tag("e")]), "<s>1</s><s>2</s>")
    assert error.expected == "<s>...</s> or <e>...</e>"
    assert error.position == len("<s>1</s><s>2</s>")
    assert "found: end of text" in str(error)


# --------------------------------------------------------------------------- OneOf


@pytest.mark.parametrize("text", ["negative", "  negative", "\nnegative. Because...", "negative!"])
def test_oneof_exact(text: str) -> None:
    assert parse(SENTIMENT, text) == "negative"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("neg", "negative"), ("neu", "neutral"), ("p", "positive"), ("negativ\n", "negative")],
)
def test_oneof_truncated_prefix_at_end_resolves(text: str, expected: str) -> None:
    assert parse(SENTIMENT, text) == expected


def test_oneof_long_options_short_circuit() -> None:
    options = OneOf(
        [
            "Option A with a whole lot of extra context",
            "Option B with context",
            "Another Option, also with a lot of additional text",
        ]
    )
    assert parse(options, "Option A") == "Option A with a whole lot of extra context"
    assert parse(options, "An") == "Another Option, also with a lot of additional text"
    assert "a prefix of several options" in str(parse_error(options, "Option"))


def test_oneof_ambiguous_prefix() -> None:
    error = parse_error(SENTIMENT, "ne")
    assert error.expected == "one of 'positive', 'negative', 'neutral'"
    assert error.position == 0
    assert str(error) == (
        "expected one of 'positive', 'negative', 'neutral' after character 0 (line 1), "
        "found: 'ne' (a prefix of several options)"
    )


def test_oneof_prefix_in_the_middle_of_a_text_does_not_resolve() -> None:
    error = parse_error(SENTIMENT, "neg is my answer")
    assert error.position == 0
    assert "several" not in str(error)


def test_oneof_no_match() -> None:
    error = parse_error(SENTIMENT, "  mixed feelings")
    assert error.position == 2
    assert "found: 'mixed feelings'" in str(error)


def test_oneof_empty_text() -> None:
    assert "found: end of text" in str(parse_error(SENTIMENT, ""))


def test_oneof_does_not_run_into_a_longer_word() -> None:
    assert parse(OneOf(["yes", "yesterday"]), "yesterday") == "yesterday"
    assert parse(OneOf(["no", "none"]), "no, none") == "no"
    assert parse(OneOf(["no", "none"]), "non") == "none"
    parse_error(OneOf(["a", "b"]), "apple pie")


def test_oneof_option_ending_in_punctuation_may_be_followed_by_anything() -> None:
    assert parse(OneOf(["A)", "B)"]), "B)foo") == "B)"


def test_oneof_is_anchored_after_previous_item() -> None:
    spec = Sequence([Tag("reasoning"), OneOf(["yes", "no"])])
    assert parse(spec, "<reasoning>because</reasoning>\n yes") == ["because", "yes"]
    error = parse_error(spec, "<reasoning>because</reasoning> I say yes")
    assert error.position == len("<reasoning>because</reasoning> ")


def test_oneof_rejects_empty_options() -> None:
    with pytest.raises(ValueError):
        OneOf([])
    with pytest.raises(ValueError):
        OneOf(["a", ""])


def test_nested_specs() -> None:
    spec = Sequence(
        [
            Tag("title"),
            Repeat(Sequence([Tag("q"), OneOf(["yes", "no"]), Sequence([Code("python")])])),
            Tag("summary"),
        ]
    )
    text = (
        "<title>Quiz</title>\n"
        "<q>one</q> yes\n```text\nnot python\n```\n```python\nb\n```\n"
        "<q>two</q>\nno, because\n```python\nc\n```\n"
        "<summary>done</summary>"
    )
    assert parse(spec, text) == [
        "Quiz",
        [["one", "yes", ["b"]], ["two", "no", ["c"]]],
        "done",
    ]


def test_greedy_inner_repeat_skips_over_free_text_like_a_regex() -> None:
    # Free text between repetitions is skipped, so a greedy inner Repeat takes the next
    # item's code too, as `(q.*?(code.*?)+verdict.*?)+` would: the whole text still fits.
    spec = Repeat(Sequence([Tag("q"), Repeat(Code()), Tag("verdict")]))
    text = (
        "<q>1</q>\n```\na\n```\n<verdict>ok</verdict>\n"
        "<q>2</q>\n```\nb\n```\n<verdict>bad</verdict>"
    )
    assert parse(spec, text) == [["1", ["a", "b"], "bad"]]


# --------------------------------------------------------------------------- properties

_words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz .,!?0123456789", min_size=0, max_size=30)
_inner = _words.map(str.strip).filter(lambda s: "<" not in s)
_code = st.lists(
    st.text(alphabet="abcxyz =+()[]'\"#:\t", max_size=20).filter(lambda s: "```" not in s),
    max_size=5,
).map("\n".join)
_language = st.sampled_from(["python", "js", "rust", ""])


@given(
    problem=_inner,
    pairs=st.lists(st.tuples(_inner, _language, _code), min_size=1, max_size=5),
    chatter=_words,
)
def test_round_trip_of_rendered_answers(
    problem: str, pairs: list[tuple[str, str, str]], chatter: str
) -> None:
    parts = [chatter, f"<problem>{problem}</problem>"]
    for name, language, code in pairs:
        parts += [
            chatter,
            f"<algorithm> {name} </algorithm>",
            f"```{language}\n{code}\n```",
            chatter,
        ]
    text = "\n".join(parts)
    expected = [problem, [[name, code] for name, _, code in pairs]]
    assert parse(README_SPEC, text) == expected


@given(
    options=st.lists(
        st.text(alphabet="abc", min_size=1, max_size=6), min_size=1, max_size=5, unique=True
    ),
    data=st.data(),
)
def test_oneof_prefix_resolution_is_sound(options: list[str], data: st.DataObject) -> None:
    option = data.draw(st.sampled_from(options))
    prefix = option[: data.draw(st.integers(1, len(option)))]
    try:
        value = parse(OneOf(options), prefix)
    except LLMOutputError:
        # Failing is only allowed when the prefix does not single out one option.
        assert len([o for o in options if o.startswith(prefix)]) > 1
        assert prefix not in options
    else:
        # The value is the typed option itself or the only option the prefix can grow into.
        assert value.startswith(prefix)
        assert value == prefix or [o for o in options if o.startswith(prefix)] == [value]


@given(st.text(max_size=200))
def test_parse_either_succeeds_or_raises_llm_output_error(text: str) -> None:
    try:
        parse(README_SPEC, text)
    except LLMOutputError as error:
        assert 0 <= error.position <= len(text)


# --------------------------------------------------------------------------- query_retry

GOOD = "<answer>42</answer>"
BAD = "I am not sure."


class Scripted(Model):
    """A provider whose draws are a fixed script; counts every draw it makes."""

    def __init__(self, script: list[str], name: str = "scripted") -> None:
        super().__init__(name, 1.0)
        self.script = script
        self.draws = 0
        self.batches: list[int] = []

    def sample(self, prompt: Prompt, batch: int = 1) -> Iterator[str]:
        self.batches.append(batch)
        for text in self.script:
            self.draws += 1
            yield text
        raise AssertionError("the script ran out of samples")


class Unreachable(Model):
    """A provider that must not be called (a rerun should be served from the cache)."""

    def sample(self, prompt: Prompt, batch: int = 1) -> Iterator[str]:
        raise AssertionError("the model was called")


class Failing(Model):
    """A provider whose every draw fails."""

    def __init__(self) -> None:
        super().__init__("failing", 1.0)
        self.draws = 0

    def sample(self, prompt: Prompt, batch: int = 1) -> Iterator[str]:
        self.draws += 1
        raise ProviderError("rate limited")
        yield ""  # makes this a generator, so the error comes at the first draw


class Batched(BatchedModel):
    """A batching provider serving a script; records the size of each request."""

    def __init__(self, script: list[str]) -> None:
        super().__init__("batched", 1.0, max_batch=10)
        self.script = iter(script)
        self.requests: list[int] = []

    def query(self, request: Request, n: int) -> list[str | Sample]:
        self.requests.append(n)
        return [next(self.script) for _ in range(n)]


def test_first_success_returns_immediately() -> None:
    model = Scripted([GOOD, BAD])
    assert query_retry(model, "q", Tag("answer")) == "42"
    assert model.draws == 1


def test_each_retry_draws_a_new_sample() -> None:
    model = Scripted([BAD, "<answer>x</answer>", "<answer>7</answer>", GOOD])
    result = query_retry(model, "q", Tag("answer"), retries=5, validator=str.isdigit)
    assert result == "7"
    assert model.draws == 3


def test_readme_validator_example() -> None:
    one_approach = "<problem>p</problem><algorithm>a</algorithm>\n```\nx\n```"
    model = Scripted([BAD, one_approach, README_RESPONSE])
    result = query_retry(model, "q", README_SPEC, retries=5, validator=lambda x: len(x[1]) >= 2)
    assert result == README_EXPECTED
    assert model.draws == 3


def test_validator_may_reject_with_its_own_llm_output_error() -> None:
    def at_most_ten(value: str) -> bool:
        if int(value) > 10:
            raise LLMOutputError("too big", expected="a number up to 10", position=0)
        return True

    model = Scripted([GOOD, "<answer>3</answer>"])
    assert query_retry(model, "q", Tag("answer"), validator=at_most_ten) == "3"
    assert model.draws == 2


def test_exhausted_retries_name_the_attempts_and_the_last_error() -> None:
    model = Scripted([BAD, BAD, "<answer>"])
    with pytest.raises(LLMOutputError) as info:
        query_retry(model, "q", Tag("answer"), retries=3)
    message = str(info.value)
    assert message.startswith("no acceptable output after 3 attempts; last error: ")
    assert "expected </answer> after character 8" in message
    assert info.value.expected == "</answer>"
    assert info.value.position == 8
    assert isinstance(info.value.__cause__, LLMOutputError)
    assert model.draws == 3


def test_exhausted_retries_after_validator_rejections() -> None:
    model = Scripted([GOOD] * 2)
    with pytest.raises(LLMOutputError, match=r"after 2 attempts; .*validator rejected .*'42'"):
        query_retry(model, "q", Tag("answer"), retries=2, validator=lambda x: x == "0")
    assert model.draws == 2


def test_single_attempt() -> None:
    with pytest.raises(LLMOutputError, match="after 1 attempt;"):
        query_retry(Scripted([BAD]), "q", Tag("answer"), retries=1)


@pytest.mark.parametrize("retries", [0, -1])
def test_retries_must_be_positive(retries: int) -> None:
    model = Scripted([GOOD])
    with pytest.raises(ValueError, match="retries must be at least 1"):
        query_retry(model, "q", Tag("answer"), retries=retries)
    assert model.draws == 0


def test_provider_errors_propagate_without_retry() -> None:
    model = Failing()
    with pytest.raises(ProviderError, match="rate limited"):
        query_retry(model, "q", Tag("answer"), retries=5)
    assert model.draws == 1


def test_validator_bugs_propagate_without_retry() -> None:
    model = Scripted([GOOD, GOOD])
    with pytest.raises(TypeError):
        query_retry(model, "q", Tag("answer"), validator=lambda x: x + 1)
    assert model.draws == 1


def test_validator_value_error_is_not_an_output_error() -> None:
    model = Scripted([GOOD, GOOD])
    with pytest.raises(ValueError, match="invalid literal") as info:
        query_retry(model, "q", Tag("answer"), validator=lambda x: float(x) > int("x"))
    assert not isinstance(info.value, LLMOutputError)
    assert model.draws == 1


def test_batch_is_passed_to_the_provider() -> None:
    model = Scripted([GOOD])
    query_retry(model, "q", Tag("answer"), batch=4)
    assert model.batches == [4]


def test_batched_retries_come_from_one_request(tmp_path: Path) -> None:
    model = Batched([BAD, BAD, GOOD, BAD])
    assert query_retry(Persistent(model, tmp_path), "q", Tag("answer"), batch=4) == "42"
    assert model.requests == [4]


def test_batched_retries_keep_the_refill_without_a_cache() -> None:
    # A paid sample is never thrown away: later attempts use the rest of the refill.
    model = Batched([BAD, BAD, GOOD, BAD])
    assert query_retry(model, "q", Tag("answer"), batch=4) == "42"
    assert model.requests == [4]


def test_calls_over_a_repeatable_layer_replay_the_same_attempts() -> None:
    # Each query_retry call starts from the first sample again: the query is repeatable
    # as a whole, and independent only across its own attempts.
    provider = Scripted([BAD, GOOD])
    model = Repeatable(provider)
    assert query_retry(model, "q", Tag("answer")) == "42"
    assert query_retry(model, "q", Tag("answer")) == "42"
    assert provider.draws == 2


def test_rerun_over_a_persistent_cache_replays_the_same_attempts(tmp_path: Path) -> None:
    spec = Tag("answer")
    script = [BAD, "<answer>-1</answer>", "<answer>5</answer>", GOOD]

    def valid(x: str) -> bool:
        return x.isdigit()

    first_model = Scripted(script)
    first = query_retry(Persistent(first_model, tmp_path), "q", spec, validator=valid)
    assert first == "5"
    assert first_model.draws == 3

    second = query_retry(
        Persistent(Unreachable("scripted", 1.0), tmp_path), "q", spec, validator=valid
    )
    assert second == first

    # Replication mode confirms it: the cache holds exactly the attempts the run needed.
    replay = Persistent(Unreachable("scripted", 1.0), tmp_path, replication=True)
    assert query_retry(replay, "q", spec, validator=valid) == first


def test_a_rerun_needing_more_attempts_draws_only_the_missing_ones(tmp_path: Path) -> None:
    spec = Tag("answer")
    first_model = Scripted([BAD, GOOD])
    assert query_retry(Persistent(first_model, tmp_path), "q", spec) == "42"
    # A stricter validator rejects the cached attempts and continues the same sequence.
    second_model = Scripted(["<answer>7</answer>"])
    result = query_retry(
        Persistent(second_model, tmp_path), "q", spec, validator=lambda x: x == "7"
    )
    assert result == "7"
    assert second_model.draws == 1


def test_replication_cache_miss_propagates_without_retry(tmp_path: Path) -> None:
    query_retry(Persistent(Scripted([BAD, GOOD]), tmp_path), "q", Tag("answer"))
    replay = Persistent(Unreachable("scripted", 1.0), tmp_path, replication=True)
    with pytest.raises(ReplicationCacheMiss):
        query_retry(replay, "q", Tag("answer"), validator=lambda x: x == "never")


# --------------------------------------------------------------------------- aquery_retry


async def test_async_retries_draw_new_samples() -> None:
    model = Scripted([BAD, "<answer>x</answer>", GOOD])
    assert await aquery_retry(model, "q", Tag("answer"), validator=str.isdigit) == "42"
    assert model.draws == 3


async def test_async_exhausted_retries() -> None:
    with pytest.raises(LLMOutputError, match="after 2 attempts"):
        await aquery_retry(Scripted([BAD, BAD]), "q", Tag("answer"), retries=2)


async def test_async_argument_and_provider_errors() -> None:
    with pytest.raises(ValueError, match="retries must be at least 1"):
        await aquery_retry(Scripted([GOOD]), "q", Tag("answer"), retries=0)
    model = Failing()
    with pytest.raises(ProviderError):
        await aquery_retry(model, "q", Tag("answer"))
    assert model.draws == 1


async def test_async_rerun_over_a_persistent_cache_makes_no_model_calls(tmp_path: Path) -> None:
    first_model = Scripted([BAD, BAD, GOOD])
    first = await aquery_retry(Persistent(first_model, tmp_path), "q", Tag("answer"))
    second = await aquery_retry(
        Persistent(Unreachable("scripted", 1.0), tmp_path), "q", Tag("answer")
    )
    assert first == second == "42"
    assert first_model.draws == 3


async def test_sync_and_async_runs_share_the_cache(tmp_path: Path) -> None:
    spec = Tag("answer")
    first = query_retry(Persistent(Scripted([BAD, GOOD]), tmp_path), "q", spec)
    rerun = Persistent(Unreachable("scripted", 1.0), tmp_path, replication=True)
    assert await aquery_retry(rerun, "q", spec) == first


def test_output_errors_are_mnimi_errors_and_value_errors() -> None:
    from mnimi_adapters import MnimiError

    with pytest.raises(MnimiError) as caught:
        parse(Tag("answer"), "I don't know")
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, LLMOutputError)
