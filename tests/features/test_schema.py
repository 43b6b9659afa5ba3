"""The event data contract: every reject reason, every whole-file error, nothing dropped."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

from features.schema import (
    CLOCK_SKEW,
    CONTACT_REJECT_REASONS,
    EVENT_REJECT_REASONS,
    EVENTS_SCHEMA,
    SchemaError,
    validate,
)

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def _event(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "contact_id": "c1",
        "timestamp": "2024-06-01T12:00:00Z",
        "channel": "web",
        "event_type": "page_view",
        "value": None,
    }
    row.update(overrides)
    return row


def _reasons(events: list[dict[str, object]], **kwargs: object) -> list[str]:
    result = validate(pd.DataFrame(events), now=NOW, **kwargs)  # type: ignore[arg-type]
    return result.rejects.column("reason").to_pylist()


@pytest.mark.parametrize(
    ("bad_row", "reason"),
    [
        (_event(contact_id=None), "missing_contact_id"),
        (_event(contact_id="   "), "missing_contact_id"),
        (_event(timestamp="yesterday-ish"), "unparseable_timestamp"),
        (_event(timestamp="2031-01-01T00:00:00Z"), "future_timestamp"),
        (_event(timestamp="3000-01-01T00:00:00Z"), "future_timestamp"),
        (_event(event_type="teleport"), "unknown_event_type"),
        (_event(event_type=None), "unknown_event_type"),
        (_event(channel="carrier_pigeon"), "unknown_channel"),
        (_event(event_type="purchase", value="twelve"), "unparseable_value"),
        (_event(event_type="purchase", value=-3.0), "negative_value"),
    ],
)
def test_each_unusable_event_row_is_set_aside_with_its_reason(
    bad_row: dict[str, object], reason: str
) -> None:
    assert _reasons([_event(), bad_row]) == [reason]


def test_an_empty_or_blank_value_is_no_value_not_an_unreadable_one() -> None:
    """A CSV that quotes every field writes a missing amount as `""`: its view and basket
    events were set aside as unparseable_value, where an unquoted empty field is no value
    (review). Text that is empty once its spaces are cut is no value; other text still does
    not read."""
    values = ["", "   ", " 12.5 ", None]
    rows = [_event(value=v, contact_id=f"c{i}") for i, v in enumerate(values)]
    result = validate(pd.DataFrame([*rows, _event(value="12,5")]), now=NOW)
    assert result.rejects.column("reason").to_pylist() == ["unparseable_value"]
    assert result.events.column("value").to_pylist() == [None, None, 12.5, None]


def test_an_event_within_the_clock_skew_is_kept_and_one_past_it_is_future() -> None:
    """ingest and validate set aside an event 90 s ahead of the clock, which score, funnel and
    the service accept (time review): every reader now allows the same skew."""
    ahead = [NOW + dt.timedelta(seconds=90), NOW + CLOCK_SKEW]
    past = NOW + CLOCK_SKEW + dt.timedelta(microseconds=1)
    rows = [_event(timestamp=moment.isoformat()) for moment in [*ahead, past]]
    result = validate(pd.DataFrame(rows), now=NOW)
    assert result.rejects.column("reason").to_pylist() == ["future_timestamp"]
    assert result.rejects.column("row_number").to_pylist() == [2]
    assert result.events.num_rows == 2


def test_an_exact_duplicate_is_set_aside_and_its_first_copy_kept() -> None:
    result = validate(pd.DataFrame([_event(), _event(), _event(channel="email")]), now=NOW)
    assert result.rejects.column("reason").to_pylist() == ["duplicate"]
    assert result.rejects.column("row_number").to_pylist() == [1]
    assert result.events.num_rows == 2


def test_rows_that_differ_in_any_column_are_not_duplicates() -> None:
    rows = [_event(), _event(value=1.0), _event(campaign_id="x"), _event(contact_id="c2")]
    assert validate(pd.DataFrame(rows), now=NOW).rejects.num_rows == 0


def test_every_event_reject_reason_is_counted_even_when_zero() -> None:
    counts = validate(pd.DataFrame([_event()]), now=NOW).reject_counts()
    assert {reason for (_, reason) in counts} == set(EVENT_REJECT_REASONS)
    assert sum(counts.values()) == 0


def test_no_row_is_ever_dropped_silently() -> None:
    rows = [
        _event(),
        _event(),
        _event(contact_id=None),
        _event(event_type="nope"),
        _event(value=-1),
        _event(timestamp="garbage"),
    ]
    result = validate(pd.DataFrame(rows), now=NOW)
    assert result.events.num_rows + result.rejects.num_rows == len(rows)
    assert sorted(result.rejects.column("row_number").to_pylist()) == [1, 2, 3, 4, 5]


def test_a_reject_keeps_the_original_row_as_json() -> None:
    result = validate(pd.DataFrame([_event(event_type="Teleport!")]), now=NOW)
    assert '"Teleport!"' in result.rejects.column("record")[0].as_py()


def test_valid_events_conform_exactly_to_the_canonical_schema() -> None:
    result = validate(pd.DataFrame([_event(value=2.5, campaign_id="spring")]), now=NOW)
    assert result.events.schema.equals(EVENTS_SCHEMA)
    assert result.events.column("timestamp")[0].as_py() == dt.datetime(
        2024, 6, 1, 12, tzinfo=dt.UTC
    )


def test_event_names_are_matched_case_and_space_insensitively() -> None:
    result = validate(pd.DataFrame([_event(event_type=" Page_View ", channel="WEB")]), now=NOW)
    assert result.events.column("event_type").to_pylist() == ["page_view"]
    assert result.events.column("channel").to_pylist() == ["web"]


@pytest.mark.parametrize(
    "text",
    [
        "2024-06-01T17:00:00+05",
        "2024-06-01T17:00:00+0500",
        "2024-06-01 12:00:00 UTC",
        # RFC 3339's letters in either case, as the service reads them (set aside before)
        "2024-06-01T12:00:00z",
        "2024-06-01t12:00:00Z",
        "20240601t120000z",
    ],
)
def test_every_iso_offset_form_is_understood(text: str) -> None:
    result = validate(pd.DataFrame([_event(timestamp=text)]), now=NOW)
    assert result.events.column("timestamp")[0].as_py() == dt.datetime(
        2024, 6, 1, 12, tzinfo=dt.UTC
    )


def test_a_bare_date_is_naive_not_an_offset() -> None:
    with pytest.raises(SchemaError, match="no time zone"):
        validate(pd.DataFrame([_event(timestamp="2024-06-01")]), now=NOW)


def test_offsets_are_converted_to_utc() -> None:
    result = validate(pd.DataFrame([_event(timestamp="2024-06-01T14:00:00+02:00")]), now=NOW)
    assert result.events.column("timestamp")[0].as_py() == dt.datetime(
        2024, 6, 1, 12, tzinfo=dt.UTC
    )


def test_naive_timestamps_are_an_error_unless_the_time_zone_is_named() -> None:
    naive = pd.DataFrame([_event(timestamp="2024-06-01 14:00:00")])
    with pytest.raises(SchemaError, match=r"timestamp.*no time zone.*timezone:"):
        validate(naive, now=NOW)
    result = validate(naive, now=NOW, timezone="Europe/Stockholm")
    assert result.events.column("timestamp")[0].as_py() == dt.datetime(
        2024, 6, 1, 12, tzinfo=dt.UTC
    )


def test_naive_datetime_columns_follow_the_same_rule() -> None:
    frame = pd.DataFrame([_event(timestamp=pd.Timestamp("2024-01-15 09:00"))])
    with pytest.raises(SchemaError, match="no time zone"):
        validate(frame, now=NOW)
    result = validate(frame, now=NOW, timezone="America/New_York")
    assert result.events.column("timestamp")[0].as_py() == dt.datetime(
        2024, 1, 15, 14, tzinfo=dt.UTC
    )


@pytest.mark.parametrize("form", ["pandas", "arrow"])
def test_times_at_an_offset_polars_has_no_zone_for_are_validated_as_their_instants(
    form: str,
) -> None:
    """pandas holds India's times as datetime64[ns, UTC+05:30], Arrow as '+05:30', a zone
    Polars cannot read (it failed with a ComputeError); validation reads their instants, in
    the events and in a contacts attribute."""
    local = pd.Timestamp("2024-06-01 17:30", tz="UTC+05:30")
    events = pd.DataFrame([_event(timestamp=local)])
    contacts = pd.DataFrame(
        {"contact_id": ["c1"], "marketing_consent": [True], "signed_up": [local]}
    )
    assert str(pa.Table.from_pandas(events).schema.field("timestamp").type.tz) == "+05:30"
    given = (
        (events, contacts)
        if form == "pandas"
        else tuple(map(pa.Table.from_pandas, (events, contacts)))
    )
    result = validate(given[0], given[1], now=NOW)
    noon = dt.datetime(2024, 6, 1, 12, tzinfo=dt.UTC)
    assert result.events.column("timestamp").to_pylist() == [noon]
    assert result.contacts is not None
    assert result.contacts.column("signed_up").to_pylist() == [noon]


@pytest.mark.parametrize("timezone", [None, "Europe/Stockholm"])
def test_iso_times_in_the_basic_form_keep_their_zone(timezone: str | None) -> None:
    """20240301T100000Z was taken for a naive time: read an hour off in Stockholm, or a
    traceback (review); with and without a naive row beside it."""
    stamps = ["20240301T100000Z", "20240301T100000+0100", "2024-03-01T11Z", "20240301T1000-0030"]
    expected = [
        dt.datetime(2024, 3, 1, 10, tzinfo=dt.UTC),
        dt.datetime(2024, 3, 1, 9, tzinfo=dt.UTC),
        dt.datetime(2024, 3, 1, 11, tzinfo=dt.UTC),
        dt.datetime(2024, 3, 1, 10, 30, tzinfo=dt.UTC),
    ]
    zoned = validate(
        pd.DataFrame([_event(timestamp=s) for s in stamps]), now=NOW, timezone=timezone
    )
    assert zoned.events.column("timestamp").to_pylist() == expected
    mixed = validate(
        pd.DataFrame([_event(timestamp=s) for s in ["2024-03-01 14:00:00", *stamps]]),
        now=NOW,
        timezone="Europe/Stockholm",
    )
    assert mixed.events.column("timestamp").to_pylist() == [
        dt.datetime(2024, 3, 1, 13, tzinfo=dt.UTC),
        *expected,
    ]


def test_a_zone_in_a_form_not_recognised_is_an_error_naming_it_not_a_shifted_time() -> None:
    """pandas reads an offset this code does not see as one (a one-digit hour, "+1"):
    localising it would shift it by its zone again, so it is refused."""
    stamp = "2024-03-01T10:00:00+1"
    frame = pd.DataFrame([_event(timestamp="2024-03-01 10:00:00"), _event(timestamp=stamp)])
    # the value is the row's own text: pandas gives the zone to every row it reads with it,
    # and its reading of the first, zoneless row was quoted (README review)
    with pytest.raises(SchemaError, match=r"cannot place \('2024-03-01T10:00:00\+1'\).*Z, \+02"):
        validate(frame, now=NOW, timezone="Europe/Stockholm")


def test_a_naive_row_among_zoned_rows_is_set_aside() -> None:
    rows = [_event(), _event(timestamp="2024-06-01 14:00:00")]
    assert _reasons(rows) == ["timestamp_without_time_zone"]


@pytest.mark.parametrize("column", ["contact_id", "timestamp", "channel", "event_type"])
def test_a_missing_required_column_is_an_error_naming_it_and_the_fix(column: str) -> None:
    frame = pd.DataFrame([_event()]).drop(columns=[column])
    with pytest.raises(SchemaError, match=f"missing column '{column}'.*mapping"):
        validate(frame, now=NOW)


def test_numeric_timestamps_are_an_error_asking_for_a_unix_format() -> None:
    frame = pd.DataFrame([_event(timestamp=1_700_000_000)])
    with pytest.raises(SchemaError, match=r"timestamp.*numbers.*unix_s"):
        validate(frame, now=NOW)


def test_whole_number_ids_stored_as_floats_because_of_a_gap_are_read_as_integers() -> None:
    # pandas makes an integer column float as soon as one id is missing
    frame = pd.DataFrame([_event(contact_id=17), _event(contact_id=None)])
    assert frame["contact_id"].dtype == float
    result = validate(frame, now=NOW)
    assert result.events.column("contact_id").to_pylist() == ["17"]
    assert result.rejects.column("reason").to_pylist() == ["missing_contact_id"]


def test_decimal_contact_ids_are_an_error() -> None:
    frame = pd.DataFrame([_event(contact_id=1.5)])
    with pytest.raises(SchemaError, match=r"contact_id.*decimal"):
        validate(frame, now=NOW)


CONTROL_IDS = ["nul\x00id", "new\nline", "cr\rinside", "del\x7f", "\x01start", "unit\x1fsep"]


@pytest.mark.parametrize("contact_id", CONTROL_IDS)
def test_a_contact_id_holding_a_control_character_is_an_error_counting_them(
    contact_id: str,
) -> None:
    """Export review: they were kept as they were and written raw into the scores CSV, where
    pandas reads "x\\x00nul" back as "x", another contact. Refused, in the events and in the
    contacts, with the count, the first row and the character, never the id; a control
    character around an id that is whitespace (a tab, a line break) is trimmed as ever."""
    events = [_event(), _event(contact_id=contact_id), _event(contact_id=contact_id, value=1.0)]
    contacts = pd.DataFrame({"contact_id": ["c1", contact_id], "marketing_consent": [True] * 2})
    for frame, table in (
        (pd.DataFrame(events), "the events"),
        (pl.DataFrame(events), "the events"),
        (pa.Table.from_pylist(events), "the events"),
    ):
        with pytest.raises(SchemaError, match=f"^1 contact id\\(s\\) in {table} hold a control"):
            validate(frame, now=NOW)
    with pytest.raises(SchemaError) as refused:
        validate(pd.DataFrame([_event()]), contacts, now=NOW)
    said = str(refused.value)
    assert said.startswith("1 contact id(s) in the contacts table hold a control character")
    assert "row 1, counting from 0, is one" in said
    assert contact_id not in said
    assert contact_id.encode("unicode_escape").decode() not in said
    assert all(c.isprintable() for c in said)  # one line, the character shown escaped
    trimmed = validate(pd.DataFrame([_event(contact_id="\tc1\r\n")]), now=NOW)
    assert trimmed.events.column("contact_id").to_pylist() == ["c1"]


def test_the_control_character_is_named_by_its_escape() -> None:
    frame = pd.DataFrame([_event(), _event(contact_id="x\x00nul")])
    with pytest.raises(SchemaError, match=r"\(such as '\\x00'; row 1, counting from 0, is one\)"):
        validate(frame, now=NOW)
    frame = pd.DataFrame([_event(contact_id="new\nline")])
    with pytest.raises(SchemaError, match=r"\(such as '\\n'; row 0, counting from 0, is one\)"):
        validate(frame, now=NOW)


def test_a_value_column_of_the_wrong_kind_is_an_error() -> None:
    frame = pl.DataFrame([_event()]).with_columns(value=pl.lit([1, 2]))
    with pytest.raises(SchemaError, match="'value'"):
        validate(frame, now=NOW)


def test_properties_dicts_become_json_text() -> None:
    result = validate(pd.DataFrame([_event(properties={"page": "/pricing"})]), now=NOW)
    assert result.events.column("properties").to_pylist() == ['{"page": "/pricing"}']


def test_polars_and_arrow_inputs_give_the_same_result_as_pandas() -> None:
    rows = [_event(), _event(contact_id="c2", event_type="purchase", value=9.5)]
    from_pandas = validate(pd.DataFrame(rows), now=NOW).events
    from_polars = validate(pl.DataFrame(rows), now=NOW).events
    from_arrow = validate(pa.Table.from_pylist(rows), now=NOW).events
    assert from_pandas.equals(from_polars)
    assert from_pandas.equals(from_arrow)


def test_integer_contact_ids_become_text() -> None:
    result = validate(pd.DataFrame([_event(contact_id=42)]), now=NOW)
    assert result.events.column("contact_id").to_pylist() == ["42"]


# --- contacts ----------------------------------------------------------------------------------


def test_contacts_are_validated_with_consent_parsed_and_attributes_kept() -> None:
    contacts = pd.DataFrame(
        {
            "contact_id": ["a", "b", "c", "", "a", "e"],
            "marketing_consent": ["yes", "No", None, "yes", "yes", "perhaps"],
            "segment": ["smb", "ent", "smb", "smb", "ent", "smb"],
        }
    )
    result = validate(pd.DataFrame([_event()]), contacts, now=NOW)
    assert result.contacts is not None
    kept = result.contacts.to_pydict()
    assert kept == {
        "contact_id": ["a", "b", "c"],
        "marketing_consent": [True, False, False],  # no recorded consent is no consent
        "segment": ["smb", "ent", "smb"],
    }
    counts = result.reject_counts()
    assert counts[("contacts", "missing_contact_id")] == 1
    assert counts[("contacts", "duplicate_contact_id")] == 1
    assert counts[("contacts", "unparseable_consent")] == 1
    assert {r for (t, r) in counts if t == "contacts"} == set(CONTACT_REJECT_REASONS)


@pytest.mark.parametrize(
    "consent",
    [pa.array([True, None, False], pa.bool_()), pa.array([1, None, 0], pa.int64())],
    ids=["booleans", "integers"],
)
def test_a_missing_consent_among_booleans_or_numbers_is_no_consent(consent: pa.Array) -> None:
    """Only text nulls were held to mean no consent; a null in a boolean column read as
    consent would have survived (mutation review)."""
    contacts = pa.table({"contact_id": ["a", "b", "c"], "marketing_consent": consent})
    result = validate(pd.DataFrame([_event()]), contacts, now=NOW)
    assert result.contacts is not None
    assert result.contacts.column("marketing_consent").to_pylist() == [True, False, False]
    assert result.reject_counts()[("contacts", "unparseable_consent")] == 0


def test_a_later_opt_out_is_never_lost_to_a_duplicate_contact_row() -> None:
    contacts = pd.DataFrame(
        {"contact_id": ["a", "a", "b", "b"], "marketing_consent": ["yes", "no", "yes", "maybe"]}
    )
    result = validate(pd.DataFrame([_event()]), contacts, now=NOW)
    assert result.contacts is not None
    assert result.contacts.to_pydict() == {
        "contact_id": ["a", "b"],
        "marketing_consent": [False, False],
    }
    assert result.rejects.column("reason").to_pylist() == [
        "duplicate_contact_id",
        "unparseable_consent",
    ]


def test_contacts_without_a_consent_column_are_an_error_naming_the_fix() -> None:
    with pytest.raises(SchemaError, match=r"marketing_consent.*consent_default"):
        validate(pd.DataFrame([_event()]), pd.DataFrame({"contact_id": ["a"]}), now=NOW)


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        validate(pd.DataFrame([_event()]), now=dt.datetime(2025, 1, 1))


def test_a_local_time_in_the_spring_forward_gap_moves_forward_instead_of_being_lost() -> None:
    # 2024-03-31 02:30 does not exist in Stockholm: clocks jump from 02:00 to 03:00 (01:00
    # UTC); it moves forward by that hour, to 03:30 CEST (01:30 UTC)
    frame = pd.DataFrame([_event(timestamp="2024-03-31 02:30:00")])
    result = validate(frame, now=NOW, timezone="Europe/Stockholm")
    assert result.rejects.num_rows == 0
    assert result.events.column("timestamp")[0].as_py() == dt.datetime(
        2024, 3, 31, 1, 30, tzinfo=dt.UTC
    )


def test_distinct_times_in_the_spring_forward_gap_stay_distinct_and_in_order() -> None:
    """pandas' shift_forward put every time of the skipped hour at 03:00: 02:10 and 02:50 of
    one contact became one instant, and validation dropped the second as an exact repeat
    (README review: the README said they move forward by the hour)."""
    from features.schema import localise_to_utc

    naive = pl.Series(
        "t",
        [
            dt.datetime(2026, 3, 29, 2, 10),  # in the gap
            dt.datetime(2026, 3, 29, 2, 50),  # in the gap
            dt.datetime(2026, 3, 29, 1, 59, 59),  # just before it
            dt.datetime(2026, 3, 29, 3, 0),  # the first time after it
            dt.datetime(2026, 10, 25, 2, 30),  # repeated in autumn: the earlier instant
            None,
        ],
    )
    assert localise_to_utc(naive, "Europe/Stockholm").to_list() == [
        dt.datetime(2026, 3, 29, 1, 10, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 29, 1, 50, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 29, 0, 59, 59, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 29, 1, 0, tzinfo=dt.UTC),
        dt.datetime(2026, 10, 25, 0, 30, tzinfo=dt.UTC),
        None,
    ]
    # a date-only source in Sao Paulo: the day summer time started has no midnight
    midnight = pl.Series("t", [dt.datetime(2018, 11, 4)])
    assert localise_to_utc(midnight, "America/Sao_Paulo").to_list() == [
        dt.datetime(2018, 11, 4, 3, tzinfo=dt.UTC)  # 01:00 at -02:00
    ]
    two = pd.DataFrame(
        [_event(timestamp="2024-03-31 02:10:00"), _event(timestamp="2024-03-31 02:50:00")]
    )
    result = validate(two, now=NOW, timezone="Europe/Stockholm")
    assert result.events.num_rows == 2
    assert result.rejects.num_rows == 0


def test_reasons_added_after_validation_are_counted_too() -> None:
    result = validate(pd.DataFrame([_event()]), now=NOW)
    extra = pa.table(
        {
            "table": ["events"],
            "row_number": pa.array([1], pa.int64()),
            "reason": ["excluded_by_mapping"],
            "contact_id": ["x"],
            "record": ["{}"],
            "source": pa.nulls(1, pa.string()),
            "source_row": pa.nulls(1, pa.int64()),
        },
        schema=result.rejects.schema,
    )
    combined = type(result)(
        events=result.events,
        contacts=None,
        rejects=pa.concat_tables([result.rejects, extra]),
        rows_in=result.rows_in,
    )
    assert combined.reject_counts()[("events", "excluded_by_mapping")] == 1


def test_validation_in_slices_finds_duplicates_and_rejects_across_slices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import features.schema as schema

    rows = [
        _event(contact_id="a"),
        _event(contact_id="b"),
        _event(contact_id="c", event_type="nope"),
        _event(contact_id="a"),  # a copy of row 0, two slices later
        _event(contact_id="d"),
        _event(contact_id="b"),  # a copy of row 1
        _event(contact_id="e", value=-1),
    ]
    whole = validate(pd.DataFrame(rows), now=NOW)
    monkeypatch.setattr(schema, "_CHUNK_ROWS", 2)
    sliced = validate(pd.DataFrame(rows), now=NOW)
    expected = [
        (2, "unknown_event_type"),
        (3, "duplicate"),
        (5, "duplicate"),
        (6, "negative_value"),
    ]
    for result in (whole, sliced):
        pairs = list(
            zip(
                result.rejects.column("row_number").to_pylist(),
                result.rejects.column("reason").to_pylist(),
                strict=True,
            )
        )
        assert pairs == expected
        assert result.events.column("contact_id").to_pylist() == ["a", "b", "d"]
    assert '"contact_id": "a"' in sliced.rejects.column("record")[1].as_py()


def test_a_conforming_arrow_table_comes_back_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    import features.schema as schema

    monkeypatch.setattr(schema, "_CHUNK_ROWS", 2)
    clean = validate(pd.DataFrame([_event(contact_id=str(i)) for i in range(5)]), now=NOW).events
    again = validate(clean, now=NOW)
    assert again.rejects.num_rows == 0
    assert again.events.equals(clean)
    messy = clean.set_column(2, "channel", pa.array(["WEB"] * 5))
    assert validate(messy, now=NOW).events.column("channel").to_pylist() == ["web"] * 5


def test_properties_that_are_not_a_json_object_are_set_aside() -> None:
    rows = [_event(properties='{"sku": "A1"}'), _event(contact_id="c2", properties="not json")]
    assert _reasons(rows) == ["unparseable_properties"]


@pytest.mark.parametrize("column", ["channel", "event_type", "properties"])
def test_a_text_column_of_the_wrong_kind_is_an_error_naming_it(column: str) -> None:
    frame = pl.DataFrame([_event()]).with_columns(pl.lit([1.5]).alias(column))
    with pytest.raises(SchemaError, match=f"'{column}'"):
        validate(frame, now=NOW)
