"""The journey simulator: deterministic, calibrated, non-linear, and valid by the data contract."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pydantic
import pytest
import yaml

from features.errors import InputError
from features.schema import EVENTS_SCHEMA, validate
from features.settings import load_defaults
from features.simulator import (
    Simulation,
    SimulatorSettings,
    count_stages_by_day,
    load_simulator_settings,
    measure_rates,
    simulate,
    true_stage_on,
    write_simulation,
)
from features.vocabulary import STAGES, stage_rank

START = dt.date(2024, 1, 1)
DAYS = 120
CONTACTS = 20_000
CLICKS = ["email_click", "push_click", "sms_click"]


@pytest.fixture(scope="module")
def settings() -> SimulatorSettings:
    return load_simulator_settings()


@pytest.fixture(scope="module")
def sim(settings: SimulatorSettings) -> Simulation:
    return simulate(settings, contacts=CONTACTS, days=DAYS, seed=11, start=START)


@pytest.fixture(scope="module")
def events(sim: Simulation) -> pl.DataFrame:
    frame = pl.from_arrow(sim.events)
    assert isinstance(frame, pl.DataFrame)
    return frame.with_columns(date=pl.col("timestamp").dt.date())


@pytest.fixture(scope="module")
def moves(sim: Simulation) -> pl.DataFrame:
    """Every stage change: (contact_id, date, previous, stage, is_customer)."""
    history = pl.from_arrow(sim.stage_history)
    assert isinstance(history, pl.DataFrame)
    return (
        history.sort("contact_id", "date")
        .with_columns(previous=pl.col("stage").shift(1).over("contact_id"))
        .filter(pl.col("previous").is_not_null())
    )


def _small(settings: SimulatorSettings, seed: int) -> Simulation:
    return simulate(settings, contacts=2_000, days=30, seed=seed, start=START)


# --- determinism -------------------------------------------------------------------------------


def test_the_same_seed_gives_identical_tables_and_another_seed_different_ones(
    settings: SimulatorSettings,
) -> None:
    first, again, other = _small(settings, 1), _small(settings, 1), _small(settings, 2)
    for name in ("events", "contacts", "stage_history"):
        assert getattr(first, name).equals(getattr(again, name)), name
        assert not getattr(first, name).equals(getattr(other, name)), name


def test_progress_is_reported_once_per_day(settings: SimulatorSettings) -> None:
    calls: list[tuple[int, int]] = []
    simulate(
        settings, contacts=100, days=5, seed=1, start=START, progress=lambda *a: calls.append(a)
    )
    assert calls == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def test_a_simulation_without_a_start_ends_yesterday(settings: SimulatorSettings) -> None:
    result = simulate(settings, contacts=50, days=3, seed=1)
    assert result.start == dt.datetime.now(dt.UTC).date() - dt.timedelta(days=3)
    assert validate(result.events, result.contacts).rejects.num_rows == 0


def test_a_single_contact_for_a_single_day_is_a_valid_simulation(
    settings: SimulatorSettings,
) -> None:
    result = simulate(settings, contacts=1, days=1, seed=1, start=START)
    assert result.contacts.num_rows == 1
    assert result.stage_history.num_rows == 1
    assert result.events.schema.equals(EVENTS_SCHEMA)


@pytest.mark.parametrize(("contacts", "days"), [(0, 10), (10, 0)])
def test_an_empty_simulation_is_refused(
    settings: SimulatorSettings, contacts: int, days: int
) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        simulate(settings, contacts=contacts, days=days, seed=1, start=START)


# --- the data contract -------------------------------------------------------------------------


def test_the_events_pass_validation_with_zero_rejects(sim: Simulation) -> None:
    assert sim.events.schema.equals(EVENTS_SCHEMA)
    result = validate(sim.events, sim.contacts, now=dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    assert result.rejects.num_rows == 0
    assert result.events.num_rows == sim.events.num_rows
    assert result.contacts is not None
    assert result.contacts.num_rows == CONTACTS


def test_events_fall_within_the_simulated_days_and_only_purchases_carry_a_value(
    events: pl.DataFrame,
) -> None:
    in_period = events.filter(pl.col("date") >= START)
    assert in_period["date"].min() == START
    assert events["date"].max() == START + dt.timedelta(days=DAYS - 1)
    purchases = events.filter(pl.col("event_type") == "purchase")
    assert purchases.height > 0
    assert purchases["value"].null_count() == 0
    assert (purchases["value"] > 0).all()
    assert events.filter(pl.col("event_type") != "purchase")["value"].null_count() == (
        events.height - purchases.height
    )


def test_only_day_zero_customers_have_an_order_history_before_the_period(
    sim: Simulation, events: pl.DataFrame, settings: SimulatorSettings
) -> None:
    history = pl.from_arrow(sim.stage_history)
    contacts = pl.from_arrow(sim.contacts)
    assert isinstance(history, pl.DataFrame)
    assert isinstance(contacts, pl.DataFrame)
    day_zero_customers = set(
        history.filter((pl.col("date") == START) & pl.col("is_customer"))["contact_id"]
    )
    before = events.filter(pl.col("date") < START)
    assert set(before["event_type"]) == {"purchase"}
    assert set(before["contact_id"]) == day_zero_customers
    oldest = START - dt.timedelta(days=settings.contacts.prior_history_days)
    assert before["date"].min() >= oldest
    signed_up = before.join(contacts.select("contact_id", "signup_date"), on="contact_id")
    assert (signed_up["date"] >= signed_up["signup_date"]).all()
    per_customer = before.group_by("contact_id").len()["len"].mean()
    assert per_customer is not None
    assert abs(float(per_customer) - settings.contacts.prior_purchases_mean) < 0.2  # type: ignore[arg-type]


def test_contacts_have_sortable_ids_consent_and_attributes(sim: Simulation) -> None:
    contacts = pl.from_arrow(sim.contacts)
    assert isinstance(contacts, pl.DataFrame)
    assert contacts.columns == [
        "contact_id",
        "marketing_consent",
        "signup_date",
        "acquisition_source",
        "segment",
    ]
    ids = contacts["contact_id"]
    assert ids[0] == "sim-0000000"
    assert ids.is_unique().all()
    assert ids.to_list() == sorted(ids.to_list())
    assert ids.str.contains(r"^sim-\d{7}$").all()
    assert 0.7 < contacts["marketing_consent"].mean() < 0.9  # type: ignore[operator]
    assert (contacts["signup_date"] < START).all()
    assert contacts["segment"].n_unique() == 3


def test_campaign_ids_name_channel_cta_and_day_and_every_response_has_a_send(
    events: pl.DataFrame,
) -> None:
    sends = events.filter(pl.col("event_type") == "message_send")
    assert sends["campaign_id"].str.contains(r"^(email|sms|push)-(soft|deepen|act)-d\d{3}$").all()
    responses = events.filter(
        pl.col("event_type").is_in(["email_open", "push_open", *CLICKS, "unsubscribe"])
    )
    assert responses.height > 0
    unmatched = responses.join(sends, on=["contact_id", "campaign_id"], how="anti")
    assert unmatched.height == 0


# --- calibration -------------------------------------------------------------------------------


def test_rates_measured_from_the_events_lie_in_the_documented_ranges(
    sim: Simulation, events: pl.DataFrame
) -> None:
    rates = measure_rates(sim.events, since=sim.start)
    assert 0.15 <= rates["open_rate"] <= 0.25
    assert 0.015 <= rates["click_rate"] <= 0.04
    assert 0.02 <= rates["conversion_rate"] <= 0.03
    # the open rate again, counted by hand: e-mail and push opens over their sends
    counts = dict(events["event_type"].value_counts().iter_rows())
    sends = events.filter(
        (pl.col("event_type") == "message_send") & pl.col("channel").is_in(["email", "push"])
    ).height
    assert rates["open_rate"] == pytest.approx((counts["email_open"] + counts["push_open"]) / sends)


def test_fewer_than_five_percent_are_in_buying_mode_on_any_day(sim: Simulation) -> None:
    counts = count_stages_by_day(sim.stage_history, days=DAYS)
    assert counts.height == DAYS
    assert (counts.select(STAGES).sum_horizontal() == CONTACTS).all()
    buying = (counts["intent"] + counts["conversion"]) / CONTACTS
    assert buying.max() < 0.05  # type: ignore[operator]
    assert buying.min() > 0.005  # type: ignore[operator]


# --- the hidden journey ------------------------------------------------------------------------


def test_every_stage_appears_in_the_history(sim: Simulation) -> None:
    assert set(sim.stage_history.column("stage").to_pylist()) == set(STAGES)


def test_the_journeys_skip_go_back_lapse_and_cross_sell(moves: pl.DataFrame) -> None:
    rank = {stage: stage_rank(stage) for stage in STAGES}
    moved = moves.with_columns(
        step=pl.col("stage").replace_strict(rank) - pl.col("previous").replace_strict(rank)
    )
    funnel = ["awareness", "consideration", "intent", "conversion"]
    in_funnel = pl.col("previous").is_in(funnel) & pl.col("stage").is_in(funnel)
    skips = moved.filter(in_funnel & (pl.col("step") >= 2))
    backwards = moved.filter(in_funnel & (pl.col("step") < 0))
    lapses = moved.filter(
        ~pl.col("is_customer")
        & pl.col("previous").is_in(["awareness", "consideration", "intent"])
        & (pl.col("stage") == "dormant")
    )
    cross_sell = moved.filter(
        pl.col("previous").is_in(["retention", "advocacy"])
        & pl.col("stage").is_in(["awareness", "consideration"])
    )
    assert skips.height > 0
    assert backwards.filter(pl.col("previous") == "intent").height > 0
    assert lapses.height > 0
    assert cross_sell.height > 0


def test_conversion_is_a_purchase_day_that_makes_a_customer(
    moves: pl.DataFrame, events: pl.DataFrame
) -> None:
    entered = moves.filter(pl.col("stage") == "conversion")
    assert entered["is_customer"].all()
    bought = events.filter(pl.col("event_type") == "purchase").select("contact_id", "date")
    missing = entered.select("contact_id", "date").join(
        bought, on=["contact_id", "date"], how="anti"
    )
    assert missing.height == 0
    # most conversions are over in a day
    after = moves.filter(pl.col("previous") == "conversion")
    assert after["stage"].is_in(["retention", "advocacy"]).mean() > 0.9  # type: ignore[operator]


def _click_through(sim: Simulation, events: pl.DataFrame, cta: str) -> dict[str, float]:
    """Click-through of sends with this CTA, by the recipient's hidden stage on the send day."""
    sends = events.filter(
        (pl.col("event_type") == "message_send") & pl.col("campaign_id").str.contains(f"-{cta}-")
    ).select("contact_id", "campaign_id", "date")
    clicks = (
        events.filter(pl.col("event_type").is_in(CLICKS))
        .select("contact_id", "campaign_id", clicked=pl.lit(1))
        .unique()
    )
    stages = true_stage_on(sim.stage_history, sorted(sends["date"].unique().to_list()))
    joined = sends.join(stages, on=["contact_id", "date"]).join(
        clicks, on=["contact_id", "campaign_id"], how="left"
    )
    by_stage = joined.group_by("stage").agg(
        ctr=pl.col("clicked").fill_null(0).mean(), sends=pl.len()
    )
    return {row["stage"]: row["ctr"] for row in by_stage.iter_rows(named=True)}


def test_an_act_cta_gets_more_clicks_from_intent_than_from_awareness(
    sim: Simulation, events: pl.DataFrame
) -> None:
    act = _click_through(sim, events, "act")
    assert act["intent"] > 3 * act["awareness"]
    # and a soft CTA wastes the intent: fewer clicks than the act CTA from the same stage
    soft = _click_through(sim, events, "soft")
    assert soft["intent"] < act["intent"]
    assert soft["awareness"] > act["awareness"]


def test_opted_out_contacts_get_no_message_send(sim: Simulation, events: pl.DataFrame) -> None:
    contacts = pl.from_arrow(sim.contacts)
    assert isinstance(contacts, pl.DataFrame)
    opted_out = contacts.filter(~pl.col("marketing_consent"))
    assert opted_out.height > 0
    unsubscribed = (
        events.filter(pl.col("event_type") == "unsubscribe")
        .group_by("contact_id")
        .agg(unsubscribed_at=pl.col("timestamp").min())
    )
    sends = events.filter(pl.col("event_type") == "message_send").join(
        opted_out.select("contact_id"), on="contact_id", how="semi"
    )
    # never consented: not one send; unsubscribed during the period: nothing after it, not
    # even later the same day (another channel's send of that day)
    never = sends.join(unsubscribed, on="contact_id", how="anti")
    assert never.height == 0
    after = sends.join(unsubscribed, on="contact_id").filter(
        pl.col("timestamp") > pl.col("unsubscribed_at")
    )
    assert after.height == 0
    assert unsubscribed.height > 0
    # opted-out contacts still act on their own
    organic = events.join(opted_out.select("contact_id"), on="contact_id", how="semi")
    assert organic.filter(pl.col("event_type") == "page_view").height > 0


# --- reading the truth -------------------------------------------------------------------------


def test_true_stage_on_agrees_with_the_change_log(sim: Simulation) -> None:
    history = pl.from_arrow(sim.stage_history)
    assert isinstance(history, pl.DataFrame)
    some = history.filter(
        pl.col("contact_id").is_in([f"sim-{i:07d}" for i in range(0, 20_000, 97)])
    )
    dates = [START, START + dt.timedelta(days=37), START + dt.timedelta(days=DAYS - 1)]
    found = true_stage_on(sim.stage_history, dates)
    assert found.height == CONTACTS * len(dates)
    lookup = {(r["contact_id"], r["date"]): r["stage"] for r in found.iter_rows(named=True)}
    for contact_id, rows in some.sort("date").group_by("contact_id"):
        for day in dates:
            expected = rows.filter(pl.col("date") <= day)["stage"][-1]
            assert lookup[(contact_id[0], day)] == expected
    # and the daily counts agree with it
    counts = count_stages_by_day(sim.stage_history, days=DAYS).filter(pl.col("date") == dates[1])
    on_day = dict(found.filter(pl.col("date") == dates[1])["stage"].value_counts().iter_rows())
    assert {s: counts[s][0] for s in STAGES} == {s: on_day.get(s, 0) for s in STAGES}


def test_true_stage_on_a_date_before_the_history_is_null(sim: Simulation) -> None:
    found = true_stage_on(sim.stage_history, START - dt.timedelta(days=1))
    assert found["stage"].null_count() == CONTACTS


# --- settings and files ------------------------------------------------------------------------


def _raw() -> dict[str, Any]:
    return copy.deepcopy(load_defaults()["simulator"])


def test_a_misspelt_setting_is_an_error_not_a_default(tmp_path: Path) -> None:
    raw = _raw()
    raw["marketing"]["cta"]["matched_nuge_probability"] = 0.5
    with pytest.raises(pydantic.ValidationError, match="matched_nuge_probability"):
        SimulatorSettings.model_validate(raw)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"simulator": {**_raw(), "contactz": 5}}), encoding="utf-8")
    with pytest.raises(InputError, match=r"config.yaml, `simulator:`: contactz: Extra inputs"):
        load_simulator_settings(path)


@pytest.mark.parametrize(
    ("section", "change", "message"),
    [
        ("transitions", lambda t: t["prospect"]["awareness"].update(intnet=0.1), "intnet"),
        ("transitions", lambda t: t["prospect"]["dormant"].update(retention=0.1), "prospect"),
        ("transitions", lambda t: t["customer"]["intent"].update(dormant=0.95), "more than 1"),
        ("organic", lambda o: o["per_active_day"].update(page_veiw={"awareness": 1}), "page_veiw"),
        ("organic", lambda o: o["channels"]["share"].update(tiktok=1.0), "tiktok"),
    ],
)
def test_settings_that_break_the_model_are_refused(section: str, change: Any, message: str) -> None:
    raw = _raw()
    change(raw[section])
    with pytest.raises(pydantic.ValidationError, match=message):
        SimulatorSettings.model_validate(raw)


def test_write_simulation_writes_three_readable_parquet_files(tmp_path: Path) -> None:
    small = _small(load_simulator_settings(), 3)
    written = write_simulation(small, tmp_path)
    assert set(written) == {"events", "contacts", "stage_history"}
    for name, path in written.items():
        assert path == tmp_path / f"{name}.parquet"
        assert pq.read_table(path).equals(getattr(small, name))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "contacts.parquet",
        "events.parquet",
        "stage_history.parquet",
    ]
