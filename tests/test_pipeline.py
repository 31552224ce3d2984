"""Pipeline strings print back to themselves; bad ones point at the bad token; passes are listed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afmc.errors import ParseError, UsageError
from afmc.pipeline import PASSES, describe_passes, load_passes, parse_pipeline

load_passes()


@pytest.mark.parametrize(
    "spec",
    [
        "canonicalize",
        "canonicalize,fold-constants,fold-batchnorm",
        "canonicalize{max-rounds=3},fold-constants{max-bytes=1024}",
        "partition{min-macs=4096 keep-digital=fc1*,head min-utilization=0.25 min-fan-in=16},canonicalize",
        'partition{keep-digital="a b"}',
    ],
)
def test_pipeline_round_trip(spec: str) -> None:
    assert str(parse_pipeline(spec)) == spec


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(sorted(PASSES)), min_size=1, max_size=6))
def test_any_sequence_of_passes_round_trips(names: list[str]) -> None:
    spec = ",".join(names)
    assert str(parse_pipeline(spec)) == spec
    assert [p.name for p in parse_pipeline(spec).instantiate()] == names


@pytest.mark.parametrize(
    ("spec", "column", "message"),
    [
        ("canonicalize,tilee", 13, "unknown pass 'tilee'"),
        ("canonicalize{max-roundz=3}", 13, "no option 'max-roundz'"),
        ("canonicalize{max-rounds=x}", 13, "bad value 'x'"),
        ("canonicalize;fold-constants", 12, "expected ','"),
        ("canonicalize,", 13, "expected a pass name"),
    ],
)
def test_bad_pipeline_shows_a_caret(spec: str, column: int, message: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_pipeline(spec)
    text = info.value.message
    assert message in text
    _, echoed, caret = text.split("\n")
    assert echoed.strip() == spec
    assert caret.index("^") - 2 == column


def test_passes_options_are_typed() -> None:
    passes = parse_pipeline("partition{min-macs=10 keep-digital=a*,b min-utilization=0.5 min-fan-in=16}").instantiate()
    partition = passes[0]
    assert partition.min_macs == 10 and partition.keep_digital == ("a*", "b") and partition.min_utilization == 0.5
    assert partition.min_fan_in == 16


def test_every_pass_is_described() -> None:
    rows = describe_passes()
    assert {row["name"] for row in rows} == set(PASSES)
    assert all(row["summary"] for row in rows)


@pytest.mark.parametrize("spec", [
    "partition{min-fan-in=-3}", "partition{min-macs=-1}", "partition{min-utilization=nan}",
    "partition{min-utilization=1.5}", "place{time-limit=inf}", "place{time-limit=0}",
])
def test_out_of_range_pass_options_are_usage_errors(spec: str) -> None:
    with pytest.raises(UsageError, match=spec.split("{")[1].split("=")[0]):
        parse_pipeline(spec).instantiate()
