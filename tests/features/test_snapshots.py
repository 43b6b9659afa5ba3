"""The training frame: many snapshot dates in one pass, equal at every date to the features as
of that date, and point-in-time correct by the same properties."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import polars as pl
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from features import snapshots
from features.engine import build_contact_features
from features.errors import InputError
from features.schema import validate
from features.simulator import load_simulator_settings, simulate
from features.snapshots import build_training_frame
from features.spec import load_feature_spec
from features.vocabulary import CHANNELS, EVENT_TYPES

SPEC = load_feature_spec()
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
FIRST = dt.date(2024, 3, 1)


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(0), dt.UTC)


def _assert_same(left: pl.DataFrame, right: pl.DataFrame) -> None:
    # running totals and direct sums may differ in the last bits of a float
    assert_frame_equal(left, right, rel_tol=1e-9, abs_tol=1e-9, categorical_as_str=True)


def _assert_each_date_equals_the_engine(
    events: pl.DataFrame, contacts: pl.DataFrame | None, dates: list[dt.date]
) -> pl.DataFrame:
    frame = build_training_frame(events, contacts, as_of_dates=dates, spec=SPEC)
    for day in dates:
        expected = build_contact_features(events, contacts, as_of=_midnight(day), spec=SPEC)
        _assert_same(frame.filter(pl.col("as_of") == _midnight(day)), expected)
    return frame


@pytest.fixture(scope="module")
def simulated() -> tuple[pl.DataFrame, pl.DataFrame]:
    sim = simulate(
        load_simulator_settings(), contacts=2000, days=120, seed=11, start=dt.date(2024, 1, 1)
    )
    events, contacts = pl.from_arrow(sim.events), pl.from_arrow(sim.contacts)
    assert isinstance(events, pl.DataFrame)
    assert isinstance(contacts, pl.DataFrame)
    return events, contacts


def test_every_weekly_snapshot_equals_the_features_as_of_that_date(
    simulated: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    events, contacts = simulated
    dates = [FIRST + dt.timedelta(weeks=w) for w in range(8)]
    frame = _assert_each_date_equals_the_engine(events, contacts, dates)
    assert frame.height == 8 * contacts.height  # every listed contact, every date
    # a date attribute is measured from each row's own snapshot
    one_contact = frame.filter(pl.col("contact_id") == contacts["contact_id"][0])
    assert one_contact["days_since_signup_date"].diff().drop_nulls().to_list() == [7.0] * 7


def test_without_a_contacts_table_only_recently_active_contacts_are_rows(
    simulated: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    events, _ = simulated
    before_any = events["timestamp"].min().date()  # type: ignore[union-attr]
    # unevenly spaced, unsorted, with a duplicate and a date on the first event's day
    dates = [dt.date(2024, 4, 20), before_any, FIRST, dt.date(2024, 3, 4), FIRST]
    frame = build_training_frame(events, as_of_dates=dates, spec=SPEC)
    assert frame.filter(pl.col("as_of") == _midnight(before_any)).height == 0
    assert frame["as_of"].unique().sort().to_list() == [
        _midnight(d) for d in sorted(set(dates) - {before_any})
    ]
    _assert_each_date_equals_the_engine(events, None, sorted(set(dates)))


def test_a_shuffled_event_log_gives_the_same_frame(
    simulated: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    events, contacts = simulated
    dates = [FIRST, FIRST + dt.timedelta(days=30)]
    ordered = build_training_frame(events, contacts, as_of_dates=dates, spec=SPEC)
    shuffled = build_training_frame(
        events.sample(fraction=1.0, shuffle=True, seed=3), contacts, as_of_dates=dates, spec=SPEC
    )
    _assert_same(ordered, shuffled)


def test_64_bit_totals_for_huge_logs_give_the_same_frame(
    simulated: tuple[pl.DataFrame, pl.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    # integer totals are 32-bit below 2^31 events and 64-bit above: the same features
    events, contacts = simulated
    dates = [FIRST, FIRST + dt.timedelta(weeks=1), FIRST + dt.timedelta(weeks=5)]
    narrow = build_training_frame(events, contacts, as_of_dates=dates, spec=SPEC)
    monkeypatch.setattr(snapshots, "_INT32_EVENTS", 0)
    wide = build_training_frame(events, contacts, as_of_dates=dates, spec=SPEC)
    assert_frame_equal(narrow, wide, categorical_as_str=True)


def test_a_parquet_path_is_read_like_a_frame(
    simulated: tuple[pl.DataFrame, pl.DataFrame], tmp_path: object
) -> None:
    events, _ = simulated
    path = f"{tmp_path}/events.parquet"
    events.write_parquet(path)
    dates = [FIRST]
    _assert_same(
        build_training_frame(path, as_of_dates=dates, spec=SPEC),
        build_training_frame(events, as_of_dates=dates, spec=SPEC),
    )


def test_recency_of_one_matching_event_when_some_contacts_are_not_eligible() -> None:
    # recency gathers from the times of the matching events, numbered by the running count:
    # here one email click, and more running rows than eligible contacts (a is out of window)
    seconds = 86_400
    events = _events(
        [
            ("a", -95 * seconds, "web", "page_view"),
            ("b", -1 * seconds, "web", "page_view"),
            ("c", -6 * seconds, "email", "email_click"),
            ("c", -1 * seconds, "web", "page_view"),
            ("c", 2 * seconds, "email", "email_click"),
        ]
    )
    frame = _assert_each_date_equals_the_engine(events, None, [FIRST, FIRST + dt.timedelta(7)])
    assert frame.get_column("days_since_last_email_click").to_list() == [None, 6.0, None, 5.0]
    assert frame.get_column("days_since_first_event").to_list() == [1.0, 6.0, 8.0, 13.0]


def test_an_event_without_a_type_is_refused_by_both_builders() -> None:
    # ingest rejects such events, but frames and Parquet files given directly are not checked;
    # counted by some features and not others (or leaking through a null running total into
    # the next contact), it is refused instead, naming the value
    at = [dt.datetime(2024, 3, day, hour, tzinfo=dt.UTC) for day, hour in [(1, 10), (2, 10)]]
    events = pl.DataFrame(
        {
            "contact_id": ["a", "a", "b", "b"],
            "timestamp": [*at, *(dt.datetime(2024, 3, day, 9, tzinfo=dt.UTC) for day in (1, 3))],
            "channel": ["web"] * 4,
            "event_type": ["page_view", None, "page_view", "page_view"],
            "value": [None] * 4,
        },
        schema_overrides={"value": pl.Float64, "timestamp": pl.Datetime("us", "UTC")},
    )
    as_of = dt.datetime(2024, 3, 5, tzinfo=dt.UTC)
    with pytest.raises(InputError, match="`event_type` holds None"):
        build_training_frame(events, as_of_dates=[as_of.date()], spec=SPEC)
    with pytest.raises(InputError, match="`event_type` holds None"):
        build_contact_features(events, as_of=as_of, spec=SPEC)


# --- point in time, as properties ---------------------------------------------------------------

# every event type and channel of the contract, purchases of varied value; times at any second
# or at a midnight, where snapshots and their windows begin (a random second almost never
# lands on one: a day boundary off by one was caught only when Hypothesis shrank to second 0,
# mutation review)
rows = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.integers(-100 * 86_400, 30 * 86_400) | st.integers(-100, 30).map(lambda d: d * 86_400),
        st.sampled_from(CHANNELS),
        st.sampled_from(EVENT_TYPES),
        st.integers(1, 50_000),  # cents, read for purchases only
    ),
    min_size=1,
    max_size=40,
)
snapshot_days = st.lists(st.integers(-95, 30), min_size=1, max_size=4, unique=True)
Row = tuple[str, int, str, str, int]


def _seconds(day: dt.date) -> float:
    return (_midnight(day) - _midnight(FIRST)).total_seconds()


def _active_at(generated: list[Row], day: dt.date) -> set[str]:
    """Contacts with an event in the longest window before the snapshot (eligible then)."""
    cut = _seconds(day)
    return {r[0] for r in generated if cut - SPEC.longest_window_days * 86_400 <= r[1] < cut}


def _events(generated: list[Row] | list[tuple[str, int, str, str]]) -> pl.DataFrame:
    origin = _midnight(FIRST)
    frame = pd.DataFrame(
        [
            (
                c,
                (origin + dt.timedelta(seconds=s)).isoformat(),
                ch,
                e,
                (rest[0] if rest else 500) / 100 if e == "purchase" else None,
            )
            for c, s, ch, e, *rest in generated  # rest: the purchase's cents, if given
        ],
        columns=["contact_id", "timestamp", "channel", "event_type", "value"],
    )
    result = pl.from_arrow(validate(frame, now=NOW).events)
    assert isinstance(result, pl.DataFrame)
    return result


# the property tests keep only examples that can show what they test (assume): in a random
# log that is often a minority, which Hypothesis' filter health check failed on now and then
# (7 kept of 57, a full run on 2026-12-06); each test still runs on 30 kept examples
quick = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@quick
@given(generated=rows, offsets=snapshot_days)
def test_random_logs_and_dates_equal_the_engine_at_every_date(
    generated: list[Row], offsets: list[int]
) -> None:
    dates = sorted(FIRST + dt.timedelta(days=d) for d in offsets)
    assume(any(_active_at(generated, day) for day in dates))  # some date with rows to compare
    frame = _assert_each_date_equals_the_engine(_events(generated), None, dates)
    assert frame.height == sum(len(_active_at(generated, day)) for day in dates)


@quick
@given(generated=rows, offsets=snapshot_days)
def test_events_on_or_after_a_snapshot_day_change_nothing_in_it(
    generated: list[Row], offsets: list[int]
) -> None:
    dates = sorted(FIRST + dt.timedelta(days=d) for d in offsets)
    # only examples that can show a leak: at some date, an eligible contact with later events
    assume(
        any(
            _active_at(generated, day) & {r[0] for r in generated if r[1] >= _seconds(day)}
            for day in dates
        )
    )
    full = build_training_frame(_events(generated), as_of_dates=dates, spec=SPEC)
    for day in dates:
        cut = _seconds(day)
        past = build_training_frame(
            _events([r for r in generated if r[1] < cut]), as_of_dates=[day], spec=SPEC
        )
        assert past.height == len(_active_at(generated, day))
        _assert_same(full.filter(pl.col("as_of") == _midnight(day)), past)


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dates", "message"),
    [
        ([], "as_of_dates is empty"),
        (iter([]), "as_of_dates is empty"),  # any iterable: it failed with an IndexError
        ([dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)], "not at midnight UTC"),
        ([dt.datetime(2024, 3, 1)], "has no time zone"),
    ],
)
def test_snapshot_dates_that_are_not_whole_utc_days_are_refused(
    dates: list[dt.date], message: str
) -> None:
    events = _events([("a", 0, "web", "page_view")])
    with pytest.raises(InputError, match=message):
        build_training_frame(events, as_of_dates=dates, spec=SPEC)


def test_a_midnight_in_another_time_zone_is_taken_as_its_utc_moment() -> None:
    events = _events([("a", -3600, "web", "page_view")])
    paris = dt.timezone(dt.timedelta(hours=1))
    with pytest.raises(InputError, match="not at midnight UTC"):
        build_training_frame(events, as_of_dates=[dt.datetime(2024, 3, 1, tzinfo=paris)], spec=SPEC)
    utc_midnight = dt.datetime(2024, 3, 1, 1, tzinfo=paris)
    frame = build_training_frame(events, as_of_dates=[utc_midnight], spec=SPEC)
    assert frame["as_of"].to_list() == [_midnight(FIRST)]


def test_an_attribute_the_contacts_table_lacks_is_refused_before_the_events_are_read(
    tmp_path: object,
) -> None:
    """A typo in `attributes:` was found after the whole build (when the table was joined);
    both builders now refuse it first: here the events do not even exist."""
    from pathlib import Path

    from features.spec import SpecError, parse_feature_spec, shipped_spec_text

    text = shipped_spec_text()
    spec = parse_feature_spec(text.replace("attributes: all", "attributes: [segmnt]"))
    assert spec.attributes == ("segmnt",)
    contacts = pl.DataFrame({"contact_id": ["c1"], "marketing_consent": [True], "segment": ["a"]})
    nowhere = Path(str(tmp_path)) / "no-events.parquet"
    as_of = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    message = r"lists attributes \['segmnt'\] that the contacts table lacks"
    with pytest.raises(SpecError, match=message):
        build_contact_features(nowhere, contacts, as_of=as_of, spec=spec)
    with pytest.raises(SpecError, match=message):
        build_training_frame(nowhere, contacts.to_arrow(), as_of_dates=[as_of], spec=spec)
    with pytest.raises(FileNotFoundError):  # listed as the table has it: on to the events
        build_contact_features(
            nowhere,
            contacts,
            as_of=as_of,
            spec=parse_feature_spec(text.replace("attributes: all", "attributes: [segment]")),
        )
