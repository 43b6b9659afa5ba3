"""The funnel report counts every consented contact once, and nobody without consent."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.consent import ConsentUnknownError, restrict_to_consented
from features.engine import EventsInput, build_contact_features
from features.errors import InputError
from features.schema import validate
from features.settings import load_rules_settings
from features.spec import load_feature_spec
from serving.funnel import FunnelSummary, summarise_funnel

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


def test_contacts_first_seen_after_the_snapshot_are_counted_by_consent_too() -> None:
    """One without consent, first seen after the snapshot, was counted as not yet active in a
    report of consented contacts, and not among those without consent (export review)."""
    events = pd.DataFrame(
        [
            ("a", "2024-01-20T10:00:00Z", "web", "add_to_cart"),
            ("late", "2024-02-10T10:00:00Z", "web", "purchase"),
            ("late-no", "2024-02-10T10:00:00Z", "web", "purchase"),
            ("no", "2024-01-20T10:00:00Z", "web", "purchase"),
        ],
        columns=["contact_id", "timestamp", "channel", "event_type"],
    )
    contacts = pd.DataFrame(
        {
            "contact_id": ["a", "late", "late-no", "no"],
            "marketing_consent": [True, True, False, False],
        }
    )
    result = validate(events, contacts, now=dt.datetime(2024, 3, 1, tzinfo=dt.UTC))
    summary = summarise_funnel(
        result.events, result.contacts, as_of=AS_OF, settings=load_rules_settings()
    )
    assert summary.contacts_scored == 1
    assert summary.contacts_not_yet_active == 1
    assert summary.contacts_without_consent == 2


# --- the funnel reads and checks its input as the feature builders do ---------------------------

LATER = dt.datetime(2024, 1, 25, 9, tzinfo=dt.UTC)  # after AS_OF's lookback start, before it


def _events_table(
    ids: list[str | None] | None = None,
    times: list[dt.datetime | None] | None = None,
    types: list[str | None] | None = None,
) -> pa.Table:
    """Three events of two contacts (a: a cart, then a purchase; b: an open), every column as
    the contract has it unless given."""
    ids = ids or ["a", "a", "b"]
    times = times or [LATER, LATER + dt.timedelta(hours=1), LATER]
    types = types or ["add_to_cart", "purchase", "email_open"]
    return pa.table(
        {
            "contact_id": pa.array(ids, pa.string()),
            "timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
            "channel": pa.array(["web", "web", "email"], pa.string()),
            "event_type": pa.array(types, pa.string()),
        }
    )


def _contacts_table(ids: list[str] | None = None) -> pa.Table:
    ids = ids or ["a", "b", "q"]  # q: listed, no events
    return pa.table(
        {
            "contact_id": pa.array(ids, pa.string()),
            "marketing_consent": pa.array([True] * len(ids), pa.bool_()),
        }
    )


def _with(table: pa.Table, name: str, column: pa.Array | pa.ChunkedArray) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, column)


def _features_error(events: EventsInput, contacts: pa.Table) -> str:
    with pytest.raises(InputError) as refused:
        build_contact_features(events, contacts, as_of=AS_OF, spec=load_feature_spec())
    return str(refused.value)


def _funnel(
    events: EventsInput,
    contacts: pa.Table,
    *,
    as_of: dt.datetime = AS_OF,
    true_stages: pl.DataFrame | None = None,
) -> FunnelSummary:
    settings = load_rules_settings()
    return summarise_funnel(
        events, contacts, as_of=as_of, settings=settings, true_stages=true_stages
    )


def _broken(case: str) -> tuple[pa.Table, pa.Table]:
    events, contacts = _events_table(), _contacts_table()
    if case == "naive timestamps":
        events = _with(events, "timestamp", events["timestamp"].cast(pa.timestamp("us")))
    elif case == "integer ids in the events":
        events = _with(events, "contact_id", pa.array([1, 1, 2], pa.int64()))
    elif case == "integer ids in the contacts":
        contacts = _with(contacts, "contact_id", pa.array([1, 2, 3], pa.int64()))
    elif case == "a capitalised event type":
        events = _events_table(types=["add_to_cart", "Purchase", "email_open"])
    elif case == "an event without a type":
        events = _events_table(types=["add_to_cart", None, "email_open"])
    elif case == "an event without a time":
        events = _events_table(times=[LATER, None, LATER])
    elif case == "an event without a contact":
        events = _events_table(ids=["a", None, "b"])
    elif case == "an id padded in the events":
        events = _events_table(ids=["a", "a ", "b"])
    elif case == "an id padded in the contacts":
        contacts = _contacts_table(ids=["a", "b ", "q"])
    elif case == "dictionary ids with a padded one":
        events = _with(events, "contact_id", pa.array(["a", "a", "b "]).dictionary_encode())
    elif case == "an id with a control character in the events":
        events = _events_table(ids=["a", "a\x00b", "b"])
    elif case == "an id with a control character in the contacts":
        contacts = _contacts_table(ids=["a", "b\nq", "q"])
    else:
        raise AssertionError(case)
    return events, contacts


@pytest.mark.parametrize(
    "case",
    [
        "naive timestamps",
        "integer ids in the events",
        "integer ids in the contacts",
        "a capitalised event type",
        "an event without a type",
        "an event without a time",
        "an event without a contact",
        "an id padded in the events",
        "an id padded in the contacts",
        "dictionary ids with a padded one",
        "an id with a control character in the events",
        "an id with a control character in the contacts",
    ],
)
def test_the_funnel_refuses_what_the_feature_builder_refuses_in_the_same_words(
    case: str,
) -> None:
    """Review: the funnel read the raw table, so these were tracebacks (naive times, ids of
    two kinds) or wrong counts with no word (every 'Purchase' no purchase, an event without a
    type or time left out, an event without a contact or with ' a' a phantom contact)."""
    events, contacts = _broken(case)
    expected = _features_error(events, contacts)
    with pytest.raises(InputError) as refused:
        _funnel(events, contacts)
    assert str(refused.value) == expected


def test_the_funnel_refuses_a_parquet_file_as_features_does_naming_it(tmp_path: Path) -> None:
    events, contacts = _broken("an event without a time")
    path = tmp_path / "events.parquet"
    pq.write_table(events, path)
    expected = _features_error(path, contacts)
    assert str(path) in expected
    with pytest.raises(InputError) as refused:
        _funnel(path, contacts)
    assert str(refused.value) == expected


def _same_counts(got: FunnelSummary, expected: FunnelSummary) -> None:
    for name in (
        "events",
        "first_event",
        "last_event",
        "contacts_scored",
        "contacts_without_consent",
        "contacts_not_yet_active",
        "rules_counts",
        "event_mix",
    ):
        assert getattr(got, name) == getattr(expected, name), name


@pytest.mark.parametrize(
    "case",
    [
        "times in New York",
        "dictionary ids in the events",
        "dictionary ids in the events, large text in the contacts",
        "dictionary ids in the contacts",
        "dictionary event types and channels",
    ],
)
def test_the_funnel_reads_other_zones_and_id_encodings_as_the_same_events(case: str) -> None:
    """Review: a zone other than UTC was a Polars SchemaError, and ids written as categories
    (pandas) on one side only "datatypes of join keys don't match"; features reads them."""
    events, contacts = _events_table(), _contacts_table()
    expected = _funnel(events, contacts)
    assert expected.rules_counts["conversion"] == 1
    if case == "times in New York":
        zone = pa.timestamp("us", tz="America/New_York")
        events = _with(events, "timestamp", events["timestamp"].cast(zone))
    elif case.startswith("dictionary ids in the events"):
        events = _with(events, "contact_id", events["contact_id"].dictionary_encode())
        if case.endswith("large text in the contacts"):
            contacts = _with(contacts, "contact_id", contacts["contact_id"].cast(pa.large_string()))
    elif case == "dictionary ids in the contacts":
        contacts = _with(contacts, "contact_id", contacts["contact_id"].dictionary_encode())
    else:
        for name in ("event_type", "channel"):
            events = _with(events, name, events[name].dictionary_encode())
    got = _funnel(events, contacts)
    _same_counts(got, expected)
    assert got.first_event is not None
    assert got.first_event.utcoffset() == dt.timedelta(0)  # read in UTC, as features reads it


def test_a_funnel_before_any_event_has_no_rules_accuracy_over_nobody() -> None:
    """Review: it said "The rules put 0.0% of contacts in their true hidden stage" of none."""
    events = _events_table()
    truth = pl.DataFrame({"contact_id": ["a", "b"], "stage": ["conversion", "awareness"]})
    summary = _funnel(events, _contacts_table(["a", "b"]), as_of=LATER, true_stages=truth)
    assert summary.contacts_scored == 0
    assert summary.contacts_not_yet_active == 2
    assert summary.rules_accuracy is None


def test_without_events_every_listed_consented_contact_is_dormant_as_features_has_them() -> None:
    """features writes a row for every listed contact, dormant, when there are no events; the
    funnel counts the same contacts (it said "no funnel to show")."""
    events, contacts = _events_table().slice(0, 0), _contacts_table()
    contacts = _with(contacts, "marketing_consent", pa.array([True, False, True]))
    summary = _funnel(events, contacts)
    built = build_contact_features(events, contacts, as_of=AS_OF, spec=load_feature_spec())
    written = restrict_to_consented(built, contacts)
    assert summary.contacts_scored == written.kept.height == 2
    assert summary.rules_counts["dormant"] == 2
    assert summary.contacts_without_consent == written.contacts_without_consent == 1
    assert summary.events == 0


def test_a_write_into_the_folder_while_the_funnel_reads_it_shows_no_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The funnel read the contacts, then the events twice: an ingest into the folder in
    between showed counts of two exports mixed. It is said instead, with no table."""
    from typer.testing import CliRunner

    from features.io import InputsChangedError, write_tables_atomic
    from serving import funnel
    from serving.cli import app

    events, contacts = _data()
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(events, data / "events.parquet")
    pq.write_table(contacts, data / "contacts.parquet")
    real = funnel.summarise_funnel

    def ingest_meanwhile(*args: object, **kwargs: object) -> FunnelSummary:
        summary = real(*args, **kwargs)  # type: ignore[arg-type]
        write_tables_atomic({"contacts": pq.read_table(data / "contacts.parquet")}, data)
        return summary

    monkeypatch.setattr(funnel, "summarise_funnel", ingest_meanwhile)
    result = CliRunner().invoke(app, ["funnel", "--data", str(data), "--as-of", "2024-02-01"])
    assert isinstance(result.exception, InputsChangedError), result.output
    assert f"{data / 'contacts.parquet'} changed while it was read" in str(result.exception)
    assert "consented contacts shown" not in result.output
    monkeypatch.setattr(funnel, "summarise_funnel", real)
    again = CliRunner().invoke(app, ["funnel", "--data", str(data), "--as-of", "2024-02-01"])
    assert again.exit_code == 0, again.output
    assert "4 consented contacts shown; 1 without marketing consent left out." in again.output
