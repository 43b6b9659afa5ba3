"""The Spark engine compiles the same feature spec as the Polars engine and gives the same
features, value for value: on simulated journeys at several moments, and on hand-made edges."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from features.engine import build_contact_features
from features.io import write_parquet_atomic
from features.schema import validate
from features.simulator import load_simulator_settings, simulate
from features.spec import load_feature_spec

pytestmark = [pytest.mark.slow, pytest.mark.integration]  # a JVM, started by the tests

SPEC = load_feature_spec()
AS_OF = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

SparkFeatures = Callable[..., pl.DataFrame]


@pytest.fixture(scope="module")
def spark(spark_installed: None) -> Iterator[Any]:
    from features.spark_engine import spark_session

    session = spark_session(cores=2, memory="2g")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def spark_features(spark: Any) -> SparkFeatures:
    """The Spark engine's features, converted to the Polars engine's types."""
    from features.spark_engine import build_contact_features_spark, spark_features_to_polars

    def build(events: Path | pa.Table, contacts: Any, *, as_of: dt.datetime) -> pl.DataFrame:
        source = spark.createDataFrame(events) if isinstance(events, pa.Table) else events
        frame = build_contact_features_spark(source, contacts, as_of=as_of, spec=SPEC, spark=spark)
        return spark_features_to_polars(frame)

    return build


def _assert_identical(actual: pl.DataFrame, expected: pl.DataFrame) -> None:
    assert actual.schema == expected.schema
    assert actual["contact_id"].to_list() == expected["contact_id"].to_list()
    # every value equal, nulls in the same places; floats to 1e-12 relative (a division may be
    # computed as a multiplication by the reciprocal)
    assert_frame_equal(actual, expected, rel_tol=1e-12, abs_tol=0.0)


# --- simulated journeys -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pl.DataFrame]:
    """A folder of simulated events (read as Parquet by both engines), and the contacts with
    attributes of every kind: text, date, naive and aware times, numbers, a flag."""
    sim = simulate(
        load_simulator_settings(), contacts=300, days=60, seed=5, start=dt.date(2024, 1, 1)
    )
    folder = tmp_path_factory.mktemp("simulated")
    write_parquet_atomic(sim.events, folder / "events.parquet")
    contacts = pl.from_arrow(sim.contacts)
    assert isinstance(contacts, pl.DataFrame)
    row = pl.int_range(pl.len())
    contacts = contacts.with_columns(
        lifetime_value=pl.when(row % 5 == 0).then(None).otherwise(row * 12.5),
        orders=(row % 4).cast(pl.Int64),
        vip=row % 3 == 0,
        last_login_at=pl.lit(dt.datetime(2024, 1, 1, tzinfo=dt.UTC)) + pl.duration(hours=row * 6),
        trial_ends_on=pl.lit(dt.datetime(2024, 1, 20)) + pl.duration(minutes=row * 997),
    )
    listed_only = contacts.head(1).with_columns(contact_id=pl.lit("zz-listed-without-events"))
    return folder, pl.concat([contacts, listed_only])


@pytest.mark.parametrize(
    "as_of",
    [
        dt.datetime(2024, 2, 1, tzinfo=dt.UTC),
        dt.datetime(2024, 2, 20, 7, 31, 12, 345678, tzinfo=dt.UTC),
        dt.datetime(2024, 3, 1, tzinfo=dt.UTC),
    ],
)
def test_the_spark_engine_equals_the_polars_engine_on_simulated_journeys(
    simulated: tuple[Path, pl.DataFrame], spark_features: SparkFeatures, as_of: dt.datetime
) -> None:
    folder, contacts = simulated
    expected = build_contact_features(folder, contacts, as_of=as_of, spec=SPEC)
    actual = spark_features(folder, contacts, as_of=as_of)
    _assert_identical(actual, expected)
    # the data exercises what is compared: several stages, sessions, missing and present dates
    assert expected.height == contacts.height
    assert expected["rules_stage"].n_unique() >= 4
    assert expected["session_count_28d"].sum() > 0
    assert 0 < expected["days_since_last_login_at"].null_count() < expected.height
    assert expected["days_since_trial_ends_on"].null_count() < expected.height


def test_both_engines_read_times_at_an_offset_polars_has_no_zone_for_as_their_instants(
    simulated: tuple[Path, pl.DataFrame], spark_features: SparkFeatures, tmp_path: Path
) -> None:
    """Events and a contacts time attribute at '+05:30' (pandas' India times), a zone Polars
    has none for: the Polars engine panicked (review); both engines give the features of
    the same instants in UTC."""
    folder, contacts = simulated
    as_of = dt.datetime(2024, 2, 20, tzinfo=dt.UTC)
    expected = build_contact_features(folder, contacts, as_of=as_of, spec=SPEC)
    events = pq.read_table(folder / "events.parquet")
    india = pa.timestamp("us", "+05:30")
    position = events.schema.get_field_index("timestamp")
    local = tmp_path / "events.parquet"
    pq.write_table(events.set_column(position, "timestamp", events["timestamp"].cast(india)), local)
    table = contacts.to_arrow()
    position = table.schema.get_field_index("last_login_at")
    local_contacts = table.set_column(position, "last_login_at", table["last_login_at"].cast(india))
    assert local_contacts.schema.field("last_login_at").type.tz == "+05:30"
    polars_engine = build_contact_features(local, local_contacts, as_of=as_of, spec=SPEC)
    _assert_identical(polars_engine, expected)
    _assert_identical(spark_features(local, local_contacts, as_of=as_of), expected)
    assert expected["days_since_last_login_at"].null_count() < expected.height


def test_both_engines_read_events_in_a_folder_named_with_a_glob_s_characters(
    simulated: tuple[Path, pl.DataFrame], spark_features: SparkFeatures, tmp_path: Path
) -> None:
    """Review: Polars and then Hadoop read the files found in `exports [2024]` as globs
    again, and matched nothing ("Path does not exist"); a glob under it reads them too."""
    import shutil

    folder, contacts = simulated
    as_of = dt.datetime(2024, 2, 20, tzinfo=dt.UTC)
    expected = build_contact_features(folder, contacts, as_of=as_of, spec=SPEC)
    named = tmp_path / "exports [2024]{a,b}*"
    named.mkdir()
    shutil.copy(folder / "events.parquet", named / "part-0.parquet")
    for events in (named, named / "*.parquet"):
        _assert_identical(
            build_contact_features(events, contacts, as_of=as_of, spec=SPEC), expected
        )
        _assert_identical(spark_features(events, contacts, as_of=as_of), expected)


def test_both_engines_read_the_int96_timestamps_spark_writes_as_their_instants(
    simulated: tuple[Path, pl.DataFrame], spark: Any, spark_features: SparkFeatures, tmp_path: Path
) -> None:
    """Spark writes timestamps to Parquet as INT96 unless told otherwise: UTC instants, though
    the footer names no zone. The Spark engine read them as instants and the Polars engine
    refused them as naive times (review); both give the features of the same instants."""
    folder, contacts = simulated
    as_of = dt.datetime(2024, 2, 20, tzinfo=dt.UTC)
    expected = build_contact_features(folder, contacts, as_of=as_of, spec=SPEC)
    written = tmp_path / "written_by_spark"
    spark.read.parquet(str(folder / "events.parquet")).write.parquet(str(written))
    parts = sorted(written.glob("*.parquet"))
    footer = pq.read_metadata(parts[0]).schema
    types = {footer.column(i).path: footer.column(i).physical_type for i in range(len(footer))}
    assert types["timestamp"] == "INT96"
    _assert_identical(build_contact_features(written, contacts, as_of=as_of, spec=SPEC), expected)
    _assert_identical(spark_features(written, contacts, as_of=as_of), expected)


# --- hand-made edges --------------------------------------------------------------------------

EDGE = AS_OF - dt.timedelta(days=7)  # the 7-day window's first moment


def _at(moment: dt.datetime, **delta: float) -> str:
    return (moment + dt.timedelta(**delta)).isoformat()


EDGE_EVENTS: list[tuple[str, str, str, str, float | None]] = [
    # an event exactly at as_of is not seen; a contact with only such events is not eligible
    ("at_as_of", AS_OF.isoformat(), "web", "add_to_cart", None),
    ("at_as_of", "2024-02-28T10:00:00Z", "web", "page_view", None),
    ("only_at_as_of", AS_OF.isoformat(), "web", "page_view", None),
    # exactly at the window start is inside it, a microsecond earlier is not
    ("at_edge", EDGE.isoformat(), "web", "page_view", None),
    ("at_edge", _at(EDGE, microseconds=-1), "web", "product_view", None),
    ("single", "2024-02-10T08:00:00Z", "email", "email_open", None),
    # sessions: one begun before the window is not counted in it; a tie starts at most one;
    # a gap of exactly 30 minutes continues a session, a microsecond more starts one; an
    # impression (not a session event) does not bridge a gap
    ("sessions", _at(EDGE, minutes=-10), "web", "page_view", None),
    ("sessions", _at(EDGE, minutes=5), "web", "product_view", None),
    ("sessions", _at(EDGE, minutes=40), "web", "page_view", None),
    ("sessions", _at(EDGE, minutes=40), "web", "add_to_cart", None),
    ("sessions", "2024-02-28T12:00:00Z", "web", "page_view", None),
    ("sessions", "2024-02-28T12:30:00Z", "web", "page_view", None),
    ("sessions", "2024-02-28T12:59:00Z", "ads", "impression", None),
    ("sessions", "2024-02-28T13:00:00.000001Z", "web", "page_view", None),
    # two UTC days a microsecond apart
    ("midnight", "2024-02-27T23:59:59.999999Z", "web", "page_view", None),
    ("midnight", "2024-02-28T00:00:00Z", "web", "page_view", None),
    # zero denominators: clicks without opens or sends, a purchase without a cart
    ("no_opens", "2024-02-27T09:00:00Z", "email", "email_click", None),
    ("no_opens", "2024-02-27T09:10:00Z", "web", "purchase", 40.0),
    ("sends_only", "2024-02-26T09:00:00Z", "email", "message_send", None),
    # the rules: a returning customer who reviews; a prospect who reviews; a missing value
    ("customer", "2024-01-05T12:00:00Z", "web", "purchase", 10.0),
    ("customer", "2024-02-20T12:00:00Z", "web", "purchase", None),
    ("customer", "2024-02-21T12:00:00Z", "web", "review", None),
    ("prospect", "2024-02-21T12:00:00Z", "web", "review", None),
    # events only before the longest window: eligible only because the contact is listed
    ("old", "2023-06-01T10:00:00Z", "web", "purchase", 25.0),
    ("old_unlisted", "2023-06-01T10:00:00Z", "web", "page_view", None),
]


def test_the_spark_engine_equals_the_polars_engine_on_edge_cases(
    spark_features: SparkFeatures,
) -> None:
    frame = pd.DataFrame(
        EDGE_EVENTS, columns=["contact_id", "timestamp", "channel", "event_type", "value"]
    )
    validated = validate(frame, now=NOW)
    assert validated.rejects.num_rows == 0
    contacts = pl.DataFrame(
        {
            "contact_id": ["old", "listed_only", "single"],
            "marketing_consent": [True, False, True],
            "segment": ["b2b", None, "b2c"],
            "signup_date": [dt.date(2023, 1, 1), dt.date(2024, 3, 1), dt.date(2024, 5, 1)],
        }
    )
    expected = build_contact_features(validated.events, contacts, as_of=AS_OF, spec=SPEC)
    actual = spark_features(validated.events, contacts, as_of=AS_OF)
    _assert_identical(actual, expected)

    def row(contact: str) -> dict[str, Any]:
        return actual.filter(pl.col("contact_id") == contact).row(0, named=True)

    ids = actual["contact_id"].to_list()
    assert "only_at_as_of" not in ids
    assert "old_unlisted" not in ids
    assert {"old", "listed_only"} <= set(ids)
    assert row("at_as_of")["add_to_cart_count_7d"] == 0
    assert row("at_edge")["page_view_count_7d"] == 1
    assert row("at_edge")["product_view_count_7d"] == 0
    assert row("single")["days_since_last_email_open"] == pytest.approx(19 + 16 / 24)
    assert (row("sessions")["session_count_7d"], row("sessions")["session_count_28d"]) == (3, 4)
    assert row("midnight")["active_days_7d"] == 2
    assert row("no_opens")["open_without_click_ratio_7d"] is None
    assert row("no_opens")["click_through_ratio_7d"] is None
    assert row("no_opens")["cart_to_purchase_ratio_28d"] is None
    assert row("sends_only")["click_through_ratio_7d"] == 0.0
    assert row("sends_only")["days_since_last_event"] is None
    assert row("customer")["purchase_value_sum_all"] == 10.0
    assert row("customer")["rules_stage"] == "advocacy"
    assert row("prospect")["rules_stage"] == "consideration"
    assert row("listed_only")["rules_stage"] == "dormant"
    assert row("listed_only")["event_count_90d"] == 0
    assert row("old")["days_since_last_purchase"] is not None
    assert row("old")["days_since_signup_date"] is not None
    assert row("single")["days_since_signup_date"] is None  # signed up after the snapshot
    # on the snapshot's own day, so not strictly before it (it was 0: time review)
    assert row("listed_only")["days_since_signup_date"] is None


def _first_edge_events() -> pa.Table:
    """The first three edge-case events, validated as ingest writes them."""
    frame = pd.DataFrame(
        EDGE_EVENTS[:3], columns=["contact_id", "timestamp", "channel", "event_type", "value"]
    )
    return validate(frame, now=NOW).events


def test_the_spark_engine_refuses_timestamps_without_a_zone(spark: Any, tmp_path: Path) -> None:
    from features.errors import InputError
    from features.spark_engine import build_contact_features_spark

    events = pl.from_arrow(_first_edge_events())
    assert isinstance(events, pl.DataFrame)
    path = tmp_path / "events.parquet"
    events.with_columns(pl.col("timestamp").dt.replace_time_zone(None)).write_parquet(path)
    with pytest.raises(InputError, match=r"has no time zone.*timezone-aware"):
        build_contact_features_spark(path, as_of=AS_OF, spec=SPEC, spark=spark)
    # the other contract columns, as the Polars engine names them
    numbered = events.with_columns(pl.lit(7, pl.Int64).alias("contact_id"))
    numbered.write_parquet(path)
    with pytest.raises(InputError, match="`contact_id` is bigint, not text"):
        build_contact_features_spark(path, as_of=AS_OF, spec=SPEC, spark=spark)
    events.drop("channel").write_parquet(path)
    with pytest.raises(InputError, match="no `channel` column"):
        build_contact_features_spark(path, as_of=AS_OF, spec=SPEC, spark=spark)
    # nanoseconds, which Polars writes and reads, Spark cannot read: said, with the way out
    events.with_columns(pl.col("timestamp").dt.cast_time_unit("ns")).write_parquet(path)
    with pytest.raises(InputError, match=r"Spark cannot read.*microseconds.*--engine polars"):
        build_contact_features_spark(path, as_of=AS_OF, spec=SPEC, spark=spark)


def test_the_spark_engine_refuses_a_contacts_column_named_like_a_feature(
    spark_features: SparkFeatures,
) -> None:
    from features.spec import SpecError

    events = _first_edge_events()
    ids = sorted(set(events.column("contact_id").to_pylist()))
    for column, value, named in (
        ("purchase_count_all", 3, "`purchase_count_all`"),
        ("last_event", dt.date(2024, 1, 1), "`days_since_last_event`"),
    ):
        contacts = pl.DataFrame(
            {"contact_id": ids, "marketing_consent": [True] * len(ids), column: [value] * len(ids)}
        )
        with pytest.raises(SpecError, match=named):
            spark_features(events, contacts, as_of=AS_OF)


@pytest.mark.parametrize(
    ("columns", "says"),
    [
        (
            {"signup": dt.date(2023, 5, 1), "days_since_signup": 3.0},
            "`signup` and `days_since_signup` would both be",
        ),
        (
            {"Segment": "smb", "segment": "b2b"},
            "`Segment` and `segment`, which differ only in case",
        ),
    ],
)
def test_the_spark_engine_refuses_two_contacts_columns_giving_one_feature(
    spark_features: SparkFeatures, columns: dict[str, object], says: str
) -> None:
    """Two columns that would be one feature, or two names Spark reads as one: refused naming
    both, as every builder refuses them."""
    from features.spec import SpecError

    events = _first_edge_events()
    with pytest.raises(SpecError, match=says):
        spark_features(events, _contacts_of(events, columns), as_of=AS_OF)


def _contacts_of(events: pa.Table, columns: dict[str, object]) -> pl.DataFrame:
    """A consented contacts row for each contact of ``events``, each with ``columns``' values."""
    ids = sorted(set(events.column("contact_id").to_pylist()))
    listed = {name: [value] * len(ids) for name, value in columns.items()}
    return pl.DataFrame({"contact_id": ids, "marketing_consent": [True] * len(ids), **listed})


def test_the_spark_engine_reads_contacts_columns_with_dots_and_backticks_as_polars_does(
    spark_features: SparkFeatures,
) -> None:
    """``F.col`` reads a dot as a struct's field: a column named ``crm.segment`` is an
    attribute in Spark as in Polars, not an unresolved column."""
    events = _first_edge_events()
    contacts = _contacts_of(events, {"crm.segment": "smb", "score`x": 1.5})
    expected = build_contact_features(pl.from_arrow(events), contacts, as_of=AS_OF, spec=SPEC)
    actual = spark_features(events, contacts, as_of=AS_OF)
    assert {"crm.segment", "score`x"} <= set(actual.columns)
    _assert_identical(actual, expected)


def test_a_listed_contacts_column_with_no_value_is_a_missing_attribute_in_spark_too(
    spark: Any,
) -> None:
    from features.spark_engine import build_contact_features_spark, spark_features_to_polars
    from features.spec import parse_feature_spec, shipped_spec_text

    spec = parse_feature_spec(
        shipped_spec_text().replace("attributes: all", "attributes: [region]")
    )
    events = _first_edge_events()
    contacts = _contacts_of(events, {"region": None})
    expected = build_contact_features(pl.from_arrow(events), contacts, as_of=AS_OF, spec=spec)
    frame = build_contact_features_spark(
        spark.createDataFrame(events), contacts, as_of=AS_OF, spec=spec, spark=spark
    )
    actual = spark_features_to_polars(frame)
    assert actual.schema["region"] == pl.Float64
    assert actual["region"].null_count() == actual.height > 0
    _assert_identical(actual, expected)


def test_the_spark_engine_runs_a_spec_of_all_history_windows_as_polars_does(spark: Any) -> None:
    """No aggregate with a window of days: every contact with an event before as_of is
    eligible in both engines, however old the event."""
    from features.spark_engine import build_contact_features_spark, spark_features_to_polars
    from features.spec import parse_feature_spec

    spec = parse_feature_spec(
        "session_gap_minutes: 30\nrules_stage: false\naggregates:\n"
        "  - {name: 'events_{window}', kind: count, windows: [all]}\n"
        "  - {name: days_since_last_event, kind: days_since_last}\n"
    )
    events = pd.DataFrame(
        EDGE_EVENTS, columns=["contact_id", "timestamp", "channel", "event_type", "value"]
    )
    validated = validate(events, now=NOW).events
    expected = build_contact_features(validated, as_of=AS_OF, spec=spec)
    frame = build_contact_features_spark(
        spark.createDataFrame(validated), None, as_of=AS_OF, spec=spec, spark=spark
    )
    actual = spark_features_to_polars(frame)
    _assert_identical(actual, expected)
    assert {"old", "old_unlisted"} <= set(actual["contact_id"].to_list())


def test_the_spark_engine_refuses_a_money_value_no_sum_can_hold(
    spark_features: SparkFeatures,
) -> None:
    from features.errors import InputError

    events = pl.from_arrow(_first_edge_events())
    assert isinstance(events, pl.DataFrame)
    bad = events.with_columns(pl.lit(float("nan")).alias("value"))
    with pytest.raises(InputError, match="`value` holds NaN or an infinite number"):
        spark_features(bad.to_arrow(), None, as_of=AS_OF)


def test_the_spark_engine_refuses_contact_ids_with_whitespace_around_them(
    spark_features: SparkFeatures,
) -> None:
    from features.errors import InputError

    events = _first_edge_events()
    ids = events.column("contact_id").to_pylist()
    padded = events.set_column(
        events.schema.get_field_index("contact_id"),
        "contact_id",
        pa.array([f"{i}\u00a0" for i in ids]),  # a no-break space: Java's \s needs (?U)
    )
    with pytest.raises(InputError, match="contact ids in the events start or end with whitespace"):
        spark_features(padded, None, as_of=AS_OF)
    # one padded id, on an event older than every window: its contact is not eligible, but
    # the event would be lost from the contact's all-history features
    frame = pl.from_arrow(events)
    assert isinstance(frame, pl.DataFrame)
    older = frame.slice(1, 1).with_columns(
        pl.lit(f"{ids[1]} ").alias("contact_id"),
        pl.lit(dt.datetime(2023, 1, 1, tzinfo=dt.UTC)).dt.cast_time_unit("us").alias("timestamp"),
    )
    old = pl.concat([frame, older]).to_arrow()
    with pytest.raises(InputError, match="contact ids in the events start or end with whitespace"):
        spark_features(old, None, as_of=AS_OF)


def test_the_spark_engine_refuses_contact_ids_holding_a_control_character(
    spark: Any, spark_features: SparkFeatures
) -> None:
    """As the Polars engine does, in the same words and with the character shown escaped
    (export review): in the events, on an event older than every window too, and in a
    contacts table given as a Spark DataFrame; a padded one is refused as padded."""
    from features.errors import InputError

    events = _first_edge_events()
    frame = pl.from_arrow(events)
    assert isinstance(frame, pl.DataFrame)
    ids = frame["contact_id"].to_list()
    says = "contact ids in the events hold a control character (such as '\\x00'); "
    held = frame.with_columns(pl.lit(f"{ids[1]}\x00nul").alias("contact_id"))
    with pytest.raises(InputError) as refused:
        spark_features(held.to_arrow(), None, as_of=AS_OF)
    assert str(refused.value).startswith(says)
    with pytest.raises(InputError) as polars_refused:
        build_contact_features(held, None, as_of=AS_OF, spec=SPEC)
    assert str(polars_refused.value).startswith("1 " + says.replace("ids", "id(s)", 1))
    older = frame.slice(1, 1).with_columns(
        pl.lit(f"{ids[1]}\x7f").alias("contact_id"),
        pl.lit(dt.datetime(2023, 1, 1, tzinfo=dt.UTC)).dt.cast_time_unit("us").alias("timestamp"),
    )
    with pytest.raises(InputError, match=r"hold a control character \(such as '\\x7f'\)"):
        spark_features(pl.concat([frame, older]).to_arrow(), None, as_of=AS_OF)
    padded = frame.with_columns(pl.lit(f"\t{ids[1]}\x00").alias("contact_id"))
    with pytest.raises(InputError, match="contact ids in the events start or end with whitespace"):
        spark_features(padded.to_arrow(), None, as_of=AS_OF)

    listed = sorted(set(ids))
    table = spark.createDataFrame(
        [(i, True) for i in [*listed[1:], f"{listed[0]}\nline"]],
        "contact_id string, marketing_consent boolean",
    )
    with pytest.raises(InputError) as refused:
        spark_features(events, table, as_of=AS_OF)
    assert str(refused.value).startswith(
        "1 contact id(s) in the contacts table hold a control character (such as '\\n'); "
    )


@pytest.mark.parametrize("column", ["contact_id", "timestamp"])
def test_the_spark_engine_refuses_events_without_an_id_or_a_timestamp(
    spark_features: SparkFeatures, column: str
) -> None:
    """A Spark DataFrame given to the engine (no files, so no statistics to count from): an
    event without an id was a contact of its own, one without a timestamp vanished."""
    from features.errors import InputError

    events = _first_edge_events()
    values = events.column(column).to_pylist()
    kind = events.schema.field(column).type
    emptied = events.set_column(
        events.schema.get_field_index(column),
        pa.field(column, kind, nullable=True),
        pa.array([*values[:-1], None], type=kind),
    )
    with pytest.raises(InputError, match=f"event.* have no {column}; they cannot be counted"):
        spark_features(emptied, None, as_of=AS_OF)


def test_a_spark_contacts_table_is_checked_as_the_other_builders_check_it(
    spark: Any, spark_features: SparkFeatures
) -> None:
    """A contacts table given as a Spark DataFrame: a contact on two rows (two answers about
    its consent), a row without an id or a padded id is refused, as every builder refuses it."""
    from features.errors import InputError

    events = _first_edge_events()
    ids = sorted(set(events.column("contact_id").to_pylist()))
    for contact_ids, says in (
        ([*ids, ids[0]], "gives 1 contact.* more than one row"),
        ([*ids, None], "1 row.* without a contact_id"),
        ([*ids[1:], f" {ids[0]}"], "1 contact id.* in the contacts table start or end"),
    ):
        table = spark.createDataFrame(
            [(i, True) for i in contact_ids], "contact_id string, marketing_consent boolean"
        )
        with pytest.raises(InputError, match=says):
            spark_features(events, table, as_of=AS_OF)
    fine = spark.createDataFrame(
        [(i, True) for i in ids], "contact_id string, marketing_consent boolean"
    )
    assert spark_features(events, fine, as_of=AS_OF).height > 0


def test_the_spark_engine_refuses_event_types_outside_the_contract(
    spark_features: SparkFeatures,
) -> None:
    from features.errors import InputError
    from features.vocabulary import NOT_A_NAME

    events = _first_edge_events()
    kinds = events.column("event_type").to_pylist()
    # the second event, before as_of (the first is at as_of: no builder reads it)
    bad = events.set_column(
        events.schema.get_field_index("event_type"),
        "event_type",
        pa.array([kinds[0], "page_veiw", *kinds[2:]]),
    )
    with pytest.raises(InputError, match="`event_type` holds 'page_veiw', not among"):
        spark_features(bad, None, as_of=AS_OF)
    # a value that is not a name is not quoted, as by the other engines (export review)
    mailed = events.set_column(
        events.schema.get_field_index("event_type"),
        "event_type",
        pa.array([kinds[0], "jane.doe@victim.example", *kinds[2:]]),
    )
    with pytest.raises(InputError, match=f"holds {NOT_A_NAME}, not among") as refused:
        spark_features(mailed, None, as_of=AS_OF)
    assert "victim" not in str(refused.value)


def test_without_java_the_spark_session_names_the_fix(
    spark_installed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from features.errors import InputError
    from features.spark_engine import spark_session

    monkeypatch.setattr("shutil.which", lambda _name: None)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(InputError, match="make java"):
        spark_session()


def _fake_java(folder: Path, says: str) -> Path:
    """A JAVA_HOME whose bin/java prints ``says`` as `java -version` does (on stderr)."""
    java = folder / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text(f"#!/bin/sh\necho '{says}' >&2\n", "utf-8")
    java.chmod(0o755)
    return folder


@pytest.mark.parametrize(
    ("says", "words"),
    [
        ('openjdk version "11.0.22" 2024-01-16', r"JAVA_HOME's \(.*java\) is Java 11; install"),
        ('java version "1.8.0_392"', r"is Java 8; install Java 17"),
        # newer than PySpark 4.0 is made for: Hadoop fails on it (diff review)
        ('openjdk version "25" 2025-09-16 LTS', r"runs on Java 17 to 21, .* is Java 25"),
    ],
)
def test_a_java_home_of_an_older_java_is_named_before_spark_starts(
    spark_installed: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    says: str,
    words: str,
) -> None:
    """A JAVA_HOME left pointing at a removed or older Java was PySpark's 60-line traceback
    ending in JAVA_GATEWAY_EXITED (spark review)."""
    from features.spark_engine import JavaNotFoundError, spark_session

    monkeypatch.setenv("JAVA_HOME", str(_fake_java(tmp_path, says)))
    with pytest.raises(JavaNotFoundError, match=words):
        spark_session()
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "removed"))
    with pytest.raises(JavaNotFoundError, match=r"JAVA_HOME=.*removed holds no Java"):
        spark_session()


def test_the_java_version_is_read_as_java_says_it(spark_installed: None, tmp_path: Path) -> None:
    from features.spark_engine import _java_major

    home = _fake_java(tmp_path / "17", 'openjdk version "17.0.15" 2025-04-15')
    assert _java_major(home / "bin" / "java") == 17
    home = _fake_java(tmp_path / "21", 'openjdk version "21" 2023-09-19')
    assert _java_major(home / "bin" / "java") == 21
    home = _fake_java(tmp_path / "odd", "something else")
    assert _java_major(home / "bin" / "java") is None  # Spark's start says what is wrong


def test_the_spark_engine_checks_only_the_rows_it_reads_and_makes_attributes_alike(
    spark: Any,
) -> None:
    """Found in a parity review (2026-12-05). Events from an in-memory DataFrame: a NaN value
    or an unknown event type after as_of was refused (Spark checked rows its filter drops),
    and so was a NaN value when no feature sums values. A 4.1-minute session gap: 246 s,
    as every builder now reads it. A time-of-day contacts column crashed the conversion to
    Spark; a column named like one of Spark's working columns (`_last`) was an ambiguous
    reference: both are left out, as the Polars engine leaves them out."""
    from features.spark_engine import build_contact_features_spark, spark_features_to_polars
    from features.spec import parse_feature_spec

    def both(events: pl.DataFrame, contacts: Any, spec: Any) -> pl.DataFrame:
        expected = build_contact_features(events, contacts, as_of=AS_OF, spec=spec)
        frame = build_contact_features_spark(
            spark.createDataFrame(events.to_arrow()), contacts, as_of=AS_OF, spec=spec, spark=spark
        )
        actual = spark_features_to_polars(frame)
        _assert_identical(actual, expected)
        return actual

    def event(when: str, kind: str, value: float | None = None) -> dict[str, Any]:
        moment = dt.datetime.fromisoformat(when)
        return {
            "contact_id": "a",
            "timestamp": moment,
            "channel": "web",
            "event_type": kind,
            "value": value,
        }

    schema = {"timestamp": pl.Datetime("us", "UTC"), "value": pl.Float64}
    later = pl.DataFrame(
        [
            event("2024-02-28T10:00:00+00:00", "page_view"),
            event("2024-02-28T10:04:06+00:00", "page_view"),
            event("2024-03-02T10:00:00+00:00", "purchase", float("nan")),
            event("2024-03-03T10:00:00+00:00", "teleport"),
        ],
        schema_overrides=schema,
    )
    contacts = pl.DataFrame(
        {
            "contact_id": ["a"],
            "tier": pl.Series(["gold"], dtype=pl.Enum(["gold", "silver"])),
            "opens_at": [dt.time(9, 30)],
            "_last": [3.0],
        }
    )
    shipped = both(later, contacts, SPEC)
    assert shipped["tier"].to_list() == ["gold"]
    assert not {"opens_at", "_last"} & set(shipped.columns)
    gap = parse_feature_spec(
        "session_gap_minutes: 4.1\nrules_stage: false\naggregates:\n"
        "  - {name: 'sessions_{window}', kind: sessions, windows: [7]}\n"
    )
    assert both(later, None, gap)["sessions_7d"].to_list() == [1]
    unsummed = later.with_columns(pl.lit(float("nan")).alias("value"))
    both(unsummed.filter(pl.col("event_type") != "teleport"), None, gap)  # no sum reads it


def test_a_naive_time_attribute_is_read_as_utc_whatever_the_sessions_time_zone(
    spark: Any,
) -> None:
    """On a cluster the caller passes its own session, whose time zone need not be UTC. A
    naive contacts time is read as UTC by every builder (found in a parity review: in a New
    York session Spark gave 9.29 days where Polars gave 9.5; in Tokyo, 9.875)."""
    from features.spark_engine import build_contact_features_spark, spark_features_to_polars

    events = pl.from_arrow(_first_edge_events())
    assert isinstance(events, pl.DataFrame)
    ids = sorted(set(events["contact_id"].to_list()))
    logins = [
        dt.datetime(2024, 2, 20, 12, 0, 0, 123_456),
        dt.datetime(2024, 2, 29, 22, 0),  # a UTC day before as_of; not so in Tokyo
        dt.datetime(2023, 3, 12, 2, 30),  # does not exist in New York (clocks went forward)
    ]
    contacts = pl.DataFrame(
        {
            "contact_id": ids,
            "marketing_consent": [True] * len(ids),
            "last_login": (logins * len(ids))[: len(ids)],
        }
    )
    expected = build_contact_features(events, contacts, as_of=AS_OF, spec=SPEC)
    assert expected["days_since_last_login"].null_count() == 0
    from pyspark.sql import types as spark_types

    # a caller's own contacts DataFrame, its times naive (TIMESTAMP_NTZ)
    spark_contacts = spark.createDataFrame(
        contacts.rows(),
        spark_types.StructType(
            [
                spark_types.StructField("contact_id", spark_types.StringType()),
                spark_types.StructField("marketing_consent", spark_types.BooleanType()),
                spark_types.StructField("last_login", spark_types.TimestampNTZType()),
            ]
        ),
    )
    zone = spark.conf.get("spark.sql.session.timeZone")
    try:
        for other in ("America/New_York", "Asia/Tokyo"):
            spark.conf.set("spark.sql.session.timeZone", other)
            for given in (contacts, spark_contacts):
                frame = build_contact_features_spark(
                    spark.createDataFrame(events.to_arrow()),
                    given,
                    as_of=AS_OF,
                    spec=SPEC,
                    spark=spark,
                )
                _assert_identical(spark_features_to_polars(frame), expected)
    finally:
        spark.conf.set("spark.sql.session.timeZone", zone)


def test_unsigned_and_decimal_numbers_read_alike_in_both_engines(
    spark_features: SparkFeatures, tmp_path: Path
) -> None:
    """Money values as unsigned integers (which Spark reads from Parquet as decimal(20,0)) or
    as decimals, and an unsigned contacts column (which Spark cannot take from Arrow), give
    the same features in both engines as plain floats do. Spark refused the first and
    crashed on the last, found in a parity review."""
    events = pl.from_arrow(_first_edge_events())
    assert isinstance(events, pl.DataFrame)
    # every event a purchase worth 12
    events = events.with_columns(event_type=pl.lit("purchase"), value=pl.lit(12.0))
    ids = sorted(set(events["contact_id"].to_list()))
    contacts = pl.DataFrame(
        {
            "contact_id": ids,
            "marketing_consent": [True] * len(ids),
            # one above 2**53: the nearest double, as Polars casts it (a safe Arrow cast
            # refused it with a traceback on Spark; parity review)
            "visits": pl.Series([2**53 + 1, *range(1, len(ids))], dtype=pl.UInt64),
            # no attributes in any builder, and nothing Spark can take from Arrow
            "scores": [[1, 2]] * len(ids),
            "place": [{"floor": 3}] * len(ids),
            "waited": [dt.timedelta(minutes=5)] * len(ids),
        },
        schema_overrides={
            "scores": pl.List(pl.UInt8),
            "place": pl.Struct({"floor": pl.UInt8}),
        },
    )
    plain = contacts.with_columns(pl.col("visits").cast(pl.Float64))
    expected = build_contact_features(events, plain, as_of=AS_OF, spec=SPEC)
    assert expected["purchase_value_sum_all"].max() == 12.0
    for name, kind in (("unsigned", pl.UInt64), ("decimal", pl.Decimal(20, 2))):
        path = tmp_path / f"events-{name}.parquet"
        typed = events.with_columns(pl.col("value").cast(kind))
        assert typed.schema["value"] == kind
        typed.write_parquet(path)
        _assert_identical(build_contact_features(path, contacts, as_of=AS_OF, spec=SPEC), expected)
        _assert_identical(spark_features(path, contacts, as_of=AS_OF), expected)


def test_min_and_max_of_a_nan_are_nan_on_spark_as_in_polars(spark: Any) -> None:
    """Spark's greatest ranks NaN above every number and least skips it; the engines agree
    on NaN (tests/features/test_features.py holds the Polars builders and the online path)."""
    from features.spark_engine import build_contact_features_spark, spark_features_to_polars
    from features.spec import parse_feature_spec

    spec = parse_feature_spec(
        "session_gap_minutes: 30\nrules_stage: false\naggregates:\n"
        "  - {name: 'spend_{window}', kind: sum, column: value, where: {event_type: [purchase]},"
        " windows: [all]}\nderived:\n"
        "  - {name: nan_first, expr: 'max(spend_all - spend_all, 1)'}\n"
        "  - {name: nan_last, expr: 'max(1, spend_all - spend_all)'}\n"
        "  - {name: nan_low, expr: 'min(spend_all - spend_all, 1)'}\n"
    )
    moment = dt.datetime(2024, 2, 20, 12, tzinfo=dt.UTC)
    events = pl.DataFrame(
        {
            "contact_id": ["huge", "huge", "fine"],
            "timestamp": [moment, moment + dt.timedelta(days=1), moment],
            "channel": ["web"] * 3,
            "event_type": ["purchase"] * 3,
            "value": [1e308, 1e308, 25.0],  # the first contact's sum overflows
        },
        schema_overrides={"timestamp": pl.Datetime("us", "UTC")},
    )
    expected = build_contact_features(events, as_of=AS_OF, spec=spec)
    actual = spark_features_to_polars(
        build_contact_features_spark(
            spark.createDataFrame(events.to_arrow()), None, as_of=AS_OF, spec=spec, spark=spark
        )
    )
    assert_frame_equal(actual, expected)  # NaN equals NaN here
    huge = actual.filter(pl.col("contact_id") == "huge")
    assert huge.select(pl.col("nan_first", "nan_last", "nan_low").is_nan().all()).row(0) == (
        True,
        True,
        True,
    )


def test_a_window_reaching_back_past_year_1_is_counted_on_spark_too(spark: Any) -> None:
    """Spark review: as of year 90, a 36,500-day window's start overflowed a Python datetime
    in the Spark engine as in the Polars one (the online path counted)."""
    from features.spark_engine import build_contact_features_spark, spark_features_to_polars
    from features.spec import parse_feature_spec

    spec = parse_feature_spec(
        "session_gap_minutes: 30\nrules_stage: false\naggregates:\n"
        "  - {name: 'events_{window}', kind: count, windows: [all, 36500]}\n"
        "  - {name: 'active_days_{window}', kind: distinct_days, windows: [all, 36500]}\n"
        "  - {name: 'sessions_{window}', kind: sessions, windows: [all, 36500]}\n"
    )
    as_of = dt.datetime(90, 1, 1, tzinfo=dt.UTC)
    moments = [dt.datetime(1, 1, 1, tzinfo=dt.UTC), dt.datetime(80, 1, 1, tzinfo=dt.UTC)]
    events = pa.table(
        {
            "contact_id": ["a", "a"],
            "timestamp": pa.array(moments, pa.timestamp("us", tz="UTC")),
            "channel": ["web", "web"],
            "event_type": ["page_view", "page_view"],
            "value": pa.array([None, None], pa.float64()),
        }
    )
    expected = build_contact_features(events, as_of=as_of, spec=spec)
    assert expected["events_36500d"].to_list() == [2]
    frame = build_contact_features_spark(
        spark.createDataFrame(events), None, as_of=as_of, spec=spec, spark=spark
    )
    _assert_identical(spark_features_to_polars(frame), expected)


def test_derived_features_built_on_each_other_stay_small_on_spark(spark: Any) -> None:
    """Spark review: each derived feature was inlined into every later one that uses it, and
    min and max read each argument three times, so a chain of six derived features ran a
    2 GB driver out of memory (Polars and the online path read the earlier column)."""
    from features.spark_engine import build_contact_features_spark, spark_features_to_polars
    from features.spec import parse_feature_spec, shipped_spec_text

    chain = ['  - {name: "level_0", expr: "event_count_7d / 7"}']
    chain += [
        f'  - {{name: "level_{i}", expr: "max(level_{i - 1}, 0.5) - min(level_{i - 1}, 0.5)"}}'
        for i in range(1, 9)
    ]
    spec = parse_feature_spec(
        shipped_spec_text().replace("derived:\n", "derived:\n" + "\n".join(chain) + "\n", 1)
    )
    events = _first_edge_events()
    expected = build_contact_features(events, as_of=AS_OF, spec=spec)
    frame = build_contact_features_spark(
        spark.createDataFrame(events), None, as_of=AS_OF, spec=spec, spark=spark
    )
    actual = spark_features_to_polars(frame)
    assert actual.columns == expected.columns  # the spec's order, derived ones in place
    _assert_identical(actual, expected)
