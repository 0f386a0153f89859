"""A sample's stored form: every field but ``origin``, plain JSON, and back."""

from __future__ import annotations

import dataclasses
import json

from mnimi_adapters.core.sample import Sample


def _sample() -> Sample:
    return Sample(
        text="42",
        message={"role": "assistant", "content": "42", "tool_calls": [{"id": "c1"}]},
        finish_reason="stop",
        usage={"prompt_tokens": 3, "completion_tokens": 1},
        model="m",
        response_id="r1",
        cost=0.25,
    ).served("k", 0, hit=False)


def test_the_stored_form_holds_every_field_but_origin() -> None:
    sample = dataclasses.replace(
        _sample(), logprobs={"content": [{"token": "4", "logprob": -0.1}]}, system_fingerprint="fp"
    )
    names = {f.name for f in dataclasses.fields(Sample)} - {"origin"}
    assert set(sample.to_dict()) == names
    assert sample.to_dict() == {n: v for n, v in dataclasses.asdict(sample).items() if n in names}
    assert Sample.from_dict(json.loads(json.dumps(sample.to_dict()))) == sample


def test_a_sample_without_logprobs_is_stored_as_before() -> None:
    # An earlier version of the library reads it: no field it does not know.
    stored = _sample().to_dict()
    assert "logprobs" not in stored and "system_fingerprint" not in stored


def test_the_stored_form_round_trips_through_json() -> None:
    sample = _sample()
    back = Sample.from_dict(json.loads(json.dumps(sample.to_dict())))
    assert back == sample
    assert back.origin is None
