"""Bad input gets a clear exception naming the problem; failures are never stored."""

from __future__ import annotations

import pickle
import stat
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import diskcache
import pytest
from support import NumberModel

from mnimi_adapters.core import (
    BatchedModel,
    CorruptStoreError,
    DiskStore,
    LLMOutputError,
    MnimiError,
    Model,
    Persistent,
    ProviderError,
    ReplicationCacheMiss,
    Request,
    Sample,
    StoreError,
    UnsupportedStoreVersion,
)

PROMPT = "Choose a number between 1 and 1000."


@pytest.mark.parametrize("batch", [0, -3])
def test_batch_below_one(number_model: NumberModel, batch: int) -> None:
    with pytest.raises(ValueError, match="batch must be at least 1"):
        number_model.sample(PROMPT, batch=batch)


def test_a_count_past_a_million_is_refused_before_it_fills_the_memory(tmp_path: Path) -> None:
    # A refill plans every sample of a call at once: 10**12 spun for seconds, then raised
    # MemoryError (or the kernel killed the process), with nothing sent.
    model = Persistent(NumberModel(max_batch=4), tmp_path)
    with pytest.raises(
        ValueError, match=r"batch must be at most 1,000,000 .* got 1,000,000,000,000"
    ):
        next(model.sample(PROMPT, batch=10**12))
    with pytest.raises(ValueError, match="count must be at most 1,000,000"):
        model.draw(PROMPT, 10**7)
    assert model.stats()["samples_stored"] == 0


def test_an_empty_message_list_is_refused_before_it_is_sent(number_model: NumberModel) -> None:
    # Every provider refuses it (HTTP 400, after LiteLLM's banner).
    with pytest.raises(ValueError, match="prompt has no messages"):
        number_model.sample([])


def test_batch_of_wrong_type(number_model: NumberModel) -> None:
    with pytest.raises(TypeError, match="batch must be an int"):
        number_model.sample(PROMPT, batch="2")  # type: ignore[arg-type]


@pytest.mark.parametrize("prompt", [42, {"role": "user"}, None, b"bytes"])
def test_prompt_of_wrong_type(number_model: NumberModel, prompt: object) -> None:
    with pytest.raises(TypeError, match="prompt must be a str"):
        number_model.sample(prompt)  # type: ignore[arg-type]


def test_message_without_role(number_model: NumberModel) -> None:
    with pytest.raises(TypeError, match=r"message #1 must be a dict with a 'role'"):
        number_model.sample([{"role": "user", "content": "a"}, {"content": "b"}])


@pytest.mark.parametrize(
    ("index", "cached", "words"),
    [
        (0, 0, "the 1st sample (index 0) of key k is not cached; 0 are cached"),
        (1, 1, "the 2nd sample (index 1) of key k is not cached; 1 is cached"),
        (3, 3, "the 4th sample (index 3) of key k is not cached; 3 are cached"),
        (10, 10, "the 11th sample (index 10)"),
        (12, 12, "the 13th sample (index 12)"),
        (20, 20, "the 21st sample (index 20)"),
        (111, 111, "the 112th sample (index 111)"),
        (122, 122, "the 123rd sample (index 122)"),
    ],
)
def test_replication_miss_counts_like_people(index: int, cached: int, words: str) -> None:
    summary = "(model=m) 'p'"
    miss = ReplicationCacheMiss("k", summary, cached, index)
    assert str(miss).startswith(f"replication mode: {words}")
    assert str(miss).endswith(f" cached for request {summary}")
    assert (miss.key, miss.summary, miss.cached, miss.index) == ("k", summary, cached, index)


def test_bad_model_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model_name"):
        NumberModel("", 1.0)
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        NumberModel("m", -1.0)
    with pytest.raises(ValueError, match="max_batch must be at least 1"):
        NumberModel("m", 1.0, max_batch=0)
    # Refused before the store opens: nothing is left behind.
    with pytest.raises(TypeError, match="expected a model or layer"):
        Persistent("gpt-4o", tmp_path / "cache")  # type: ignore[arg-type]
    with pytest.raises(MnimiError, match=r"cannot record the run .* it is a directory"):
        Persistent(NumberModel(), tmp_path / "cache", record=tmp_path)
    # "no" is truthy: taken as it is, it would make a replication cache.
    with pytest.raises(TypeError, match="replication must be True or False, got 'no'"):
        Persistent(NumberModel(), tmp_path / "cache", replication="no")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_cache_path_is_a_file(tmp_path: Path, number_model: NumberModel) -> None:
    path = tmp_path / "file"
    path.write_text("not a cache")
    with pytest.raises(StoreError, match="exists and is not a directory"):
        Persistent(number_model, path)


def test_cache_path_cannot_be_created(tmp_path: Path, number_model: NumberModel) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="cannot create cache directory"):
        Persistent(number_model, tmp_path / "file" / "cache")


def test_cache_directory_is_private(tmp_path: Path, number_model: NumberModel) -> None:
    Persistent(number_model, tmp_path / "new" / "cache")
    # The folder made on the way (a cache root such as ~/.llm_cache) is private too.
    for made in (tmp_path / "new" / "cache", tmp_path / "new"):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700


def test_unknown_format_version(tmp_path: Path, number_model: NumberModel) -> None:
    with diskcache.Cache(str(tmp_path)) as raw:
        raw.set("__mnimi_format__", 99)
    with pytest.raises(UnsupportedStoreVersion, match="format 99"):
        Persistent(number_model, tmp_path)


def test_foreign_diskcache(tmp_path: Path, number_model: NumberModel) -> None:
    with diskcache.Cache(str(tmp_path)) as raw:
        raw.set("someone else's", "data")
    with pytest.raises(StoreError, match="not written by mnimi_adapters"):
        Persistent(number_model, tmp_path)


def _fill(path: Path) -> str:
    model = Persistent(NumberModel(), path)
    sample = next(model.samples(PROMPT))
    assert sample.origin is not None
    return str(sample.origin["key"])


def test_corrupt_value(tmp_path: Path) -> None:
    key = _fill(tmp_path)
    with diskcache.Cache(str(tmp_path)) as raw:
        raw.set(f"s:{key}:0", "{not json")
    with pytest.raises(CorruptStoreError, match=f"sample #0 of key {key} is damaged"):
        next(Persistent(NumberModel(), tmp_path).sample(PROMPT))


def test_pickled_value_is_refused(tmp_path: Path) -> None:
    key = _fill(tmp_path)
    with diskcache.Cache(str(tmp_path)) as raw:
        raw.set(f"s:{key}:0", {"text": "would be unpickled"})  # diskcache pickles dicts
    with pytest.raises(CorruptStoreError, match="pickled value"):
        next(Persistent(NumberModel(), tmp_path).sample(PROMPT))


def test_store_refuses_to_write_anything_but_json_text(tmp_path: Path) -> None:
    store = DiskStore(tmp_path)
    with pytest.raises(TypeError, match="str or int"):
        store._cache.set("x", {"a": 1})


class Flaky(BatchedModel):
    """Fails on chosen calls; answers empty text on others."""

    def __init__(self, script: list[str]) -> None:
        super().__init__("flaky", 1.0, max_batch=1)
        self.script = script

    def query(self, request: Request, n: int) -> list[str | Sample]:
        step = self.script.pop(0)
        if step == "error":
            raise ProviderError("rate limited")
        if step == "empty":
            return [""]
        if step == "filtered":
            return [Sample(text="", finish_reason="content_filter")]
        return [step]


def test_failures_are_never_stored(tmp_path: Path) -> None:
    model = Persistent(Flaky(["error", "empty", "filtered", "ok"]), tmp_path)
    for expected in ("rate limited", "no usable sample", "no usable sample"):
        with pytest.raises(ProviderError, match=expected):
            next(model.sample(PROMPT))
        assert model.stats()["samples_stored"] == 0
    assert next(model.sample(PROMPT)) == "ok"
    assert next(Persistent(Flaky([]), tmp_path).sample(PROMPT)) == "ok"


def test_partial_refill_keeps_what_was_paid(tmp_path: Path) -> None:
    provider = Flaky(["a", "error", "b"])
    provider.max_batch = 1
    model = Persistent(provider, tmp_path)
    # Three concurrent requests, one fails: the two paid samples are stored.
    assert sorted(islice(model.sample(PROMPT, batch=3), 2)) == ["a", "b"]
    assert model.stats()["samples_stored"] == 2


def test_custom_model_implementing_sample(tmp_path: Path) -> None:
    class Counter(Model):
        def sample(self, prompt: object, batch: int = 1) -> Iterator[str]:
            assert prompt == PROMPT  # the wrapper passes the prompt as it got it
            yield from ("same", "same", "other")

    model = Persistent(Counter("counter", 0.0), tmp_path)
    assert list(islice(model.sample(PROMPT), 3)) == ["same", "same", "other"]
    # Equal strings are still distinct draws.
    assert model.stats()["samples_stored"] == 3
    with pytest.raises(ProviderError, match="stopped yielding"):
        list(islice(model.sample(PROMPT), 4))


def test_model_without_sample_says_what_to_implement() -> None:
    with pytest.raises(NotImplementedError, match="implement sample"):
        next(Model("m", 1.0).sample(PROMPT))


async def test_asample_continues_like_sample(tmp_path: Path) -> None:
    model = Persistent(NumberModel(max_batch=2), tmp_path)
    sync = list(islice(model.sample(PROMPT, batch=4), 6))
    replay = []
    async for text in model.asample(PROMPT, batch=4):
        replay.append(text)
        if len(replay) == 6:
            break
    assert replay == sync


def test_pydantic_response_format_is_keyed_by_its_schema() -> None:
    from pydantic import BaseModel

    from mnimi_adapters.core import request_key

    class Answer(BaseModel):
        value: int

    class Other(BaseModel):
        value: str

    identity = {"model": "m", "params": {}}

    def key(response_format: type) -> str:
        return request_key(
            identity,
            Request(({"role": "user", "content": "q"},), {"response_format": response_format}),
        )

    assert key(Answer) == key(Answer)
    assert key(Answer) != key(Other)


def test_a_request_reused_across_models_gets_each_models_key(tmp_path: Path) -> None:
    request = Request.of(PROMPT)
    keys = set()
    for temperature in (0.0, 0.5, 1.0):
        # Models made and dropped in a loop often reuse one id: the key must not.
        model = Persistent(NumberModel("m", temperature), tmp_path)
        keys.add(model.key_of(request))
        del model
    assert len(keys) == 3


def test_draw_takes_exactly_what_a_call_needs(tmp_path: Path) -> None:
    provider = NumberModel(max_batch=10)
    model = Persistent(provider, tmp_path)
    first = model.draw(PROMPT, 3)
    assert provider.calls == [3]  # only the missing samples are asked for
    assert model.draw(PROMPT, 5)[:3] == first and provider.calls == [3, 2]
    assert len(model.draw(PROMPT, 4, batch=8)) == 4 and provider.calls == [3, 2]


async def test_adraw_replays_like_draw(tmp_path: Path) -> None:
    model = Persistent(NumberModel(), tmp_path)
    assert await model.adraw(PROMPT, 4) == model.draw(PROMPT, 4)


def test_one_error_tree_exported_from_one_place() -> None:
    import mnimi_adapters
    import mnimi_adapters.core.errors as errors

    classes = [
        value
        for value in vars(errors).values()
        if isinstance(value, type)
        and issubclass(value, Exception)
        and value.__module__ == errors.__name__
    ]
    assert len(classes) == 11
    for cls in classes:
        assert issubclass(cls, errors.MnimiError), cls
        assert getattr(mnimi_adapters, cls.__name__) is cls, f"{cls.__name__} is not exported"
        assert cls.__name__ in mnimi_adapters.__all__
    # The modules that raise them re-export the same classes.
    from mnimi_adapters.providers import ProviderRequestError
    from mnimi_adapters.structured_output import LLMOutputError

    assert ProviderRequestError is errors.ProviderRequestError
    assert LLMOutputError is errors.LLMOutputError


def test_replication_on_a_path_without_a_cache_says_so_and_creates_nothing(
    tmp_path: Path,
) -> None:
    typo = tmp_path / "paper-bundel" / "store"
    with pytest.raises(StoreError, match="no cache at"):
        Persistent(NumberModel(), typo, replication=True)
    assert not typo.exists() and not typo.parent.exists()


@pytest.mark.parametrize(
    ("count", "batch", "error", "words"),
    [
        (-1, None, ValueError, "count must be at least 0"),
        ("3", None, TypeError, "count must be an int"),
        (2, 0, ValueError, "batch must be at least 1"),
    ],
)
def test_draw_refuses_bad_counts(
    tmp_path: Path, count: object, batch: object, error: type[Exception], words: str
) -> None:
    model = Persistent(NumberModel(), tmp_path)
    with pytest.raises(error, match=words):
        model.draw(PROMPT, count, batch)  # type: ignore[arg-type]


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), -0.5])
def test_a_temperature_must_be_a_finite_number(temperature: float) -> None:
    # NaN would reach the key and the JSON Lines export as a bare NaN, which JSON forbids.
    with pytest.raises(ValueError, match="finite number >= 0"):
        NumberModel(temperature=temperature)


def test_a_replication_miss_in_a_process_pool_reaches_the_parent_whole(tmp_path: Path) -> None:
    # The pool sends a worker's error pickled: rebuilding it called __init__ with the
    # message alone, so the parent got a TypeError in place of the miss.
    from concurrent.futures import ProcessPoolExecutor

    from workers import replicate_missing

    Persistent(NumberModel(), tmp_path / "c").close()  # a store, with nothing in it
    with ProcessPoolExecutor(1) as pool, pytest.raises(ReplicationCacheMiss) as raised:
        pool.submit(replicate_missing, str(tmp_path / "c")).result()
    assert (raised.value.index, raised.value.cached) == (0, 0)
    assert "index 0" in str(raised.value)
    assert isinstance(raised.value, LookupError)
    copied = pickle.loads(pickle.dumps(LLMOutputError("no tag", expected="<a>", position=3)))
    assert (str(copied), copied.expected, copied.position) == ("no tag", "<a>", 3)
