"""The rules baseline: deepest signal in the lookback, point in time."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from features.schema import validate
from features.settings import RulesSettings, load_rules_settings
from features.stages import rules_stage_as_of

AS_OF = dt.datetime(2024, 2, 1, tzinfo=dt.UTC)
RULES = load_rules_settings()


def _stages(rows: list[tuple[str, str, str]], *, as_of: dt.datetime = AS_OF) -> dict[str, str]:
    frame = pd.DataFrame(
        [(c, t, "web", e) for c, t, e in rows],
        columns=["contact_id", "timestamp", "channel", "event_type"],
    )
    events = validate(frame, now=dt.datetime(2030, 1, 1, tzinfo=dt.UTC)).events
    result = rules_stage_as_of(events, as_of=as_of, settings=RULES)
    return dict(result.iter_rows())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rows", "stage"),
    [
        ([("a", "2024-01-20T00:00:00Z", "email_open")], "awareness"),
        ([("a", "2024-01-20T00:00:00Z", "page_view")], "awareness"),
        (
            [
                ("a", "2024-01-20T00:00:00Z", "page_view"),
                ("a", "2024-01-22T00:00:00Z", "page_view"),
            ],
            "consideration",
        ),
        ([("a", "2024-01-20T00:00:00Z", "email_click")], "consideration"),
        ([("a", "2024-01-20T00:00:00Z", "pricing_view")], "intent"),
        ([("a", "2024-01-20T00:00:00Z", "purchase")], "conversion"),
        (
            [("a", "2023-06-01T00:00:00Z", "purchase"), ("a", "2024-01-20T00:00:00Z", "purchase")],
            "retention",
        ),
        (
            [("a", "2023-06-01T00:00:00Z", "purchase"), ("a", "2024-01-20T00:00:00Z", "review")],
            "advocacy",
        ),
        ([("a", "2024-01-20T00:00:00Z", "review")], "consideration"),
        ([("a", "2023-01-20T00:00:00Z", "add_to_cart")], "dormant"),
        ([("a", "2024-01-20T00:00:00Z", "message_send")], "dormant"),
    ],
)
def test_the_rules_stage_is_the_deepest_signal_in_the_lookback(
    rows: list[tuple[str, str, str]], stage: str
) -> None:
    assert _stages(rows) == {"a": stage}


def test_rules_ignore_events_at_or_after_as_of() -> None:
    rows = [("a", "2024-01-20T00:00:00Z", "email_open"), ("a", "2024-02-01T00:00:00Z", "purchase")]
    assert _stages(rows) == {"a": "awareness"}


def test_a_contact_whose_only_events_are_after_as_of_is_not_listed() -> None:
    assert _stages([("a", "2024-03-01T00:00:00Z", "purchase")]) == {}


def test_the_window_edge_is_inclusive_at_the_start() -> None:
    start = (AS_OF - dt.timedelta(days=RULES.lookback_days)).isoformat()
    just_before = (AS_OF - dt.timedelta(days=RULES.lookback_days, seconds=1)).isoformat()
    assert _stages([("a", start, "add_to_cart")]) == {"a": "intent"}
    assert _stages([("a", just_before, "add_to_cart")]) == {"a": "dormant"}


def test_the_lookback_is_configurable() -> None:
    rows = [("a", "2024-01-20T00:00:00Z", "add_to_cart")]
    frame = pd.DataFrame(
        [(c, t, "web", e) for c, t, e in rows],
        columns=["contact_id", "timestamp", "channel", "event_type"],
    )
    events = validate(frame).events
    short = RulesSettings(lookback_days=7, repeat_visit_min_days=2)
    result = rules_stage_as_of(events, as_of=AS_OF, settings=short)
    assert result["stage"].to_list() == ["dormant"]


def test_as_of_must_carry_a_time_zone() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        rules_stage_as_of(
            validate(
                pd.DataFrame(columns=["contact_id", "timestamp", "channel", "event_type"]).astype(
                    str
                )
            ).events,
            as_of=dt.datetime(2024, 1, 1),
            settings=RULES,
        )
