"""Properties over generated data: point-in-time correctness and row conservation."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import polars as pl
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from features.schema import validate
from features.settings import load_rules_settings
from features.stages import rules_stage_as_of
from features.vocabulary import CHANNELS, EVENT_TYPES

AS_OF = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
RULES = load_rules_settings()

contact_ids = st.sampled_from(["a", "b", "c", "d"])
event_types = st.sampled_from(EVENT_TYPES)
channels = st.sampled_from(CHANNELS[:6])


def _events(offset_range: tuple[int, int]) -> st.SearchStrategy[list[dict[str, object]]]:
    """Events at AS_OF + seconds drawn from the range (AS_OF itself often, when in it)."""
    offsets = st.integers(*offset_range)
    if offset_range[0] <= 0 <= offset_range[1]:
        offsets = offsets | st.just(0)  # the moment a leak would most likely slip through
    row = st.fixed_dictionaries(
        {
            "contact_id": contact_ids,
            "timestamp": offsets.map(lambda s: (AS_OF + dt.timedelta(seconds=s)).isoformat()),
            "channel": channels,
            "event_type": event_types,
        }
    )
    return st.lists(row, max_size=40)


def _stages(rows: list[dict[str, object]]) -> dict[str, str]:
    frame = pd.DataFrame(rows, columns=["contact_id", "timestamp", "channel", "event_type"])
    events = validate(frame.astype(str), now=NOW).events
    return dict(rules_stage_as_of(events, as_of=AS_OF, settings=RULES).iter_rows())  # type: ignore[arg-type]


PAST = (-120 * 86_400, -1)
FUTURE = (0, 60 * 86_400)
quick = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _event(contact: str, seconds: int, channel: str, kind: str) -> dict[str, object]:
    moment = (AS_OF + dt.timedelta(seconds=seconds)).isoformat()
    return {"contact_id": contact, "timestamp": moment, "channel": channel, "event_type": kind}


@quick
@given(past=_events(PAST), future=_events(FUTURE))
@example(
    past=[_event("a", -3_600, "email", "email_open")], future=[_event("a", 0, "web", "purchase")]
)
def test_the_rules_stage_never_sees_events_at_or_after_as_of(
    past: list[dict[str, object]], future: list[dict[str, object]]
) -> None:
    assert _stages(past + future) == _stages(past)


@quick
@given(past=_events(PAST), seed=st.randoms(use_true_random=False))
def test_the_order_of_the_input_changes_nothing(
    past: list[dict[str, object]], seed: object
) -> None:
    shuffled = list(past)
    seed.shuffle(shuffled)  # type: ignore[attr-defined]
    assert _stages(shuffled) == _stages(past)


@quick
@given(past=_events(PAST))
def test_a_contacts_stage_depends_on_its_own_events_only(past: list[dict[str, object]]) -> None:
    together = _stages(past)
    for contact in {str(row["contact_id"]) for row in past}:
        alone = _stages([row for row in past if row["contact_id"] == contact])
        assert alone == {contact: together[contact]}


messy_rows = st.lists(
    st.fixed_dictionaries(
        {
            "contact_id": st.one_of(contact_ids, st.just(""), st.none()),
            "timestamp": st.one_of(
                st.integers(-(10**6), 10**6).map(
                    lambda s: (AS_OF + dt.timedelta(seconds=s)).isoformat()
                ),
                st.just("not a time"),
                st.just("2999-01-01T00:00:00Z"),
            ),
            "channel": st.one_of(channels, st.just("fax")),
            "event_type": st.one_of(event_types, st.just("teleport")),
            "value": st.one_of(st.none(), st.floats(-10, 100, allow_nan=False)),
        }
    ),
    max_size=30,
)


@quick
@given(rows=messy_rows)
def test_validation_keeps_or_sets_aside_every_row_exactly_once(
    rows: list[dict[str, object]],
) -> None:
    frame = pd.DataFrame(
        rows, columns=["contact_id", "timestamp", "channel", "event_type", "value"]
    )
    result = validate(frame, now=NOW)
    rejected = result.rejects.column("row_number").to_pylist()
    assert len(rejected) == len(set(rejected))
    assert result.events.num_rows + len(rejected) == len(rows)
    kept = pl.from_arrow(result.events)
    assert isinstance(kept, pl.DataFrame)
    assert kept.filter(pl.col("timestamp") > NOW).height == 0
    assert kept.filter(pl.col("value") < 0).height == 0
    assert kept.is_duplicated().sum() == 0
