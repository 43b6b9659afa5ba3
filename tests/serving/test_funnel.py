"""The funnel report counts every consented contact once, and nobody without consent."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import polars as pl
import pytest

from features.consent import ConsentUnknownError
from features.schema import validate
from features.settings import load_rules_settings
from serving.funnel import summarise_funnel

AS_OF = dt.datetime(2024, 2, 1, tzinfo=dt.UTC)


def _data() -> tuple[object, object]:
    events = pd.DataFrame(
        [
            ("a", "2024-01-20T10:00:00Z", "web", "add_to_cart"),
            ("b", "2024-01-21T10:00:00Z", "email", "email_open"),
            ("c", "2024-01-22T10:00:00Z", "web", "purchase"),
            ("d", "2024-01-22T10:00:00Z", "web", "pricing_view"),
        ],
        columns=["contact_id", "timestamp", "channel", "event_type"],
    )
    contacts = pd.DataFrame(
        {
            "contact_id": ["a", "b", "c", "d", "e"],
            "marketing_consent": [True, True, False, True, True],
        }
    )
    result = validate(events, contacts, now=AS_OF)
    return result.events, result.contacts


def test_the_funnel_counts_consented_contacts_and_silent_ones_as_dormant() -> None:
    events, contacts = _data()
    summary = summarise_funnel(
        events,  # type: ignore[arg-type]
        contacts,  # type: ignore[arg-type]
        as_of=AS_OF,
        settings=load_rules_settings(),
    )
    # c bought but opted out: left out, and counted as left out; e has no events: dormant
    assert summary.contacts_without_consent == 1
    assert summary.contacts_scored == 4
    assert summary.rules_counts["intent"] == 2
    assert summary.rules_counts["awareness"] == 1
    assert summary.rules_counts["dormant"] == 1
    assert summary.rules_counts["conversion"] == 0
    assert sum(summary.rules_counts.values()) == summary.contacts_scored


def test_the_funnel_compares_the_rules_with_true_stages_when_known() -> None:
    events, contacts = _data()
    truth = pl.DataFrame(
        {
            "contact_id": ["a", "b", "d", "e"],
            "stage": ["intent", "consideration", "intent", "dormant"],
        }
    )
    summary = summarise_funnel(
        events,  # type: ignore[arg-type]
        contacts,  # type: ignore[arg-type]
        as_of=AS_OF,
        settings=load_rules_settings(),
        true_stages=truth,
    )
    assert summary.rules_accuracy == pytest.approx(3 / 4)
    assert summary.true_counts is not None
    assert summary.true_counts["consideration"] == 1


def test_a_funnel_without_contacts_needs_consent_assumed_explicitly() -> None:
    events, _ = _data()
    with pytest.raises(ConsentUnknownError):
        summarise_funnel(events, None, as_of=AS_OF, settings=load_rules_settings())  # type: ignore[arg-type]
    summary = summarise_funnel(
        events,  # type: ignore[arg-type]
        None,
        as_of=AS_OF,
        settings=load_rules_settings(),
        assume_consent=True,
    )
    assert summary.contacts_scored == 4


def test_contacts_first_seen_after_the_snapshot_are_not_counted_as_dormant() -> None:
    events = pd.DataFrame(
        [
            ("a", "2024-01-20T10:00:00Z", "web", "add_to_cart"),
            ("late", "2024-02-10T10:00:00Z", "web", "purchase"),
        ],
        columns=["contact_id", "timestamp", "channel", "event_type"],
    )
    contacts = pd.DataFrame(
        {"contact_id": ["a", "late", "quiet"], "marketing_consent": [True, True, True]}
    )
    result = validate(events, contacts, now=dt.datetime(2024, 3, 1, tzinfo=dt.UTC))
    summary = summarise_funnel(
        result.events, result.contacts, as_of=AS_OF, settings=load_rules_settings()
    )
    assert summary.contacts_not_yet_active == 1
    assert summary.contacts_scored == 2  # a (intent) and quiet (no events at all: dormant)
    assert summary.rules_counts["dormant"] == 1
    assert summary.events == 1  # the header counts only what was known at the snapshot
