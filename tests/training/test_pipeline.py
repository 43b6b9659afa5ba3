"""The training pipeline's data steps: who is in the training frame, and the minimum-data gate."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from features.consent import ConsentUnknownError
from features.engine import identifying_attributes
from features.errors import InputError
from features.settings import load_rules_settings
from features.simulator import load_simulator_settings, simulate
from features.spec import load_feature_spec
from training.frame import SAMPLE_WEIGHT, split_by_time
from training.pipeline import (
    PURCHASE_LABEL,
    STAGE_LABEL,
    InsufficientDataError,
    build_labelled_frame,
    check_enough_data,
    labels_after,
    require_no_identifying_attributes,
    require_trainable_spec,
    train_models,
)
from training.settings import TrainingSettings, load_training_settings


@pytest.fixture(scope="module")
def small() -> object:
    return simulate(
        load_simulator_settings(), contacts=1500, days=100, seed=4, start=dt.date(2026, 1, 1)
    )


def test_the_training_frame_holds_only_consented_contacts_with_both_labels(small: object) -> None:
    frame, dates, source = build_labelled_frame(
        small.events,  # type: ignore[attr-defined]
        small.contacts,  # type: ignore[attr-defined]
        spec=load_feature_spec(),
        rules=load_rules_settings(),
        settings=load_training_settings(),
    )
    contacts = pl.from_arrow(small.contacts)  # type: ignore[attr-defined]
    assert isinstance(contacts, pl.DataFrame)
    opted_out = set(contacts.filter(~pl.col("marketing_consent"))["contact_id"])
    assert opted_out
    assert not opted_out & set(frame["contact_id"])
    assert source == "revealed"
    assert frame[PURCHASE_LABEL].null_count() == 0
    assert frame[STAGE_LABEL].null_count() == 0
    assert sorted(frame["as_of"].unique().to_list()) == dates
    # snapshots start after the first engagement event, not in the backfilled order history
    first_engagement = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert min(dates) >= first_engagement + dt.timedelta(days=28)


def test_a_listed_contact_is_no_row_before_its_first_event(small: object) -> None:
    """The contacts table lists contacts who arrive later; each was a row at every snapshot
    before its arrival, labelled by it (Olist: 65 % of the training rows, 25 of 132 test
    buyers; review). As in the funnel report, a contact is a row from its first event on;
    a contact with no event at all is still one."""
    events = pl.from_arrow(small.events)  # type: ignore[attr-defined]
    contacts = pl.from_arrow(small.contacts)  # type: ignore[attr-defined]
    assert isinstance(events, pl.DataFrame)
    assert isinstance(contacts, pl.DataFrame)
    silent = pl.DataFrame({"contact_id": ["silent-1"], "marketing_consent": [True]})
    contacts = pl.concat([contacts, silent], how="diagonal_relaxed")
    firsts = events.group_by("contact_id").agg(first=pl.col("timestamp").min())
    counts: dict[str, int] = {}
    frame, dates, _ = build_labelled_frame(
        small.events,  # type: ignore[attr-defined]
        contacts,
        spec=load_feature_spec(),
        rules=load_rules_settings(),
        settings=load_training_settings(),
        counts=counts,
    )
    rows = frame.select("contact_id", "as_of").join(firsts, on="contact_id", how="left")
    assert rows.filter(pl.col("first") >= pl.col("as_of")).height == 0
    # what was left out: the consented and unconsented listed contacts not yet arrived
    arriving = sum(firsts.filter(pl.col("first") >= as_of).height for as_of in dates)
    assert counts["rows_before_first_event"] == arriving > 0
    # a contact with no event at all is a row at every snapshot
    assert frame.filter(pl.col("contact_id") == "silent-1").height == len(dates)


@pytest.mark.parametrize("column", ["purchased", "revealed_stage", "stage_label", "sample_weight"])
def test_a_contacts_column_named_as_a_training_column_is_refused_not_made_the_label(
    small: object, column: str
) -> None:
    """A CRM column `purchased` was an attribute under `attributes: all`, joined beside the
    labels and renamed into the purchase label, the real label a feature (a review; others
    crashed or overwrote the row weight). It is refused before any work, naming it."""
    from features.spec import SpecError

    contacts = pl.from_arrow(small.contacts)  # type: ignore[attr-defined]
    assert isinstance(contacts, pl.DataFrame)
    flagged = contacts.with_columns(pl.lit(True).alias(column))
    with pytest.raises(SpecError, match=f"column `{column}` would be the attribute feature"):
        build_labelled_frame(
            small.events,  # type: ignore[attr-defined]
            flagged,
            spec=load_feature_spec(),
            rules=load_rules_settings(),
            settings=load_training_settings(),
        )


def test_without_a_contacts_table_training_needs_consent_assumed(small: object) -> None:
    """Nobody's consent is known without contacts: training (whose test weeks are scored and
    kept) stops before any work, naming the fix; assumed, every contact is a row."""
    common = {"spec": load_feature_spec(), "rules": load_rules_settings()}
    settings = load_training_settings()
    with pytest.raises(ConsentUnknownError, match="--assume-consent"):
        build_labelled_frame(small.events, None, settings=settings, **common)  # type: ignore[attr-defined]
    with pytest.raises(ConsentUnknownError, match="no marketing consent is known"):
        train_models(small.events, None, settings=settings, **common)  # type: ignore[attr-defined]
    frame, _, _ = build_labelled_frame(
        small.events,  # type: ignore[attr-defined]
        None,
        settings=settings,
        assume_consent=True,
        **common,
    )
    contacts = pl.from_arrow(small.contacts)  # type: ignore[attr-defined]
    assert isinstance(contacts, pl.DataFrame)
    opted_out = set(contacts.filter(~pl.col("marketing_consent"))["contact_id"])
    assert opted_out & set(frame["contact_id"])  # assumed: the table's opt-outs are unknown


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (("rules_stage: true", "rules_stage: false"), "`rules_stage: true`"),
        (
            ('"days_since_last_{event_type}"', '"recency_{event_type}"'),
            "features ['days_since_last_purchase']",
        ),
        (
            # the same names over other events: another baseline under the RFM one's name,
            # and the gate measured against it (spec review)
            (
                '  - name: "purchase_value_sum_{window}"\n    kind: sum\n    column: value\n'
                "    where: {event_type: [purchase]}",
                '  - name: "purchase_value_sum_{window}"\n    kind: sum\n    column: value\n'
                "    where: {event_type: [add_to_cart]}",
            ),
            "features ['purchase_value_sum_all'] as the shipped spec defines them",
        ),
    ],
)
def test_a_spec_without_the_baselines_features_is_refused_before_any_work(
    edit: tuple[str, str], named: str
) -> None:
    """The rules and the RFM baseline read the shipped spec's features by name; a spec that
    drops or renames them failed only after both models were fitted."""
    from features.spec import parse_feature_spec, shipped_spec_text

    old, new = edit
    assert old in shipped_spec_text()
    spec = parse_feature_spec(shipped_spec_text().replace(old, new))
    with pytest.raises(InputError, match=re.escape(named)) as caught:
        # no events at all: the spec is refused before they are read
        train_models(
            None,  # type: ignore[arg-type]
            None,
            spec=spec,
            rules=load_rules_settings(),
            settings=load_training_settings(),
            assume_consent=True,
        )
    assert "keep these entries of the shipped spec" in str(caught.value)
    require_trainable_spec(load_feature_spec())  # the shipped spec has them all
    # a filter that keeps the same events is the same definition (it was refused: diff
    # review): sends left out of the recency of purchases, which holds none
    redundant = shipped_spec_text().replace(
        "                   trial_start, purchase, review, referral, unsubscribe]\n",
        "                   trial_start, purchase, review, referral, unsubscribe]\n"
        "    where_not: {event_type: [message_send]}\n",
    )
    assert redundant != shipped_spec_text()
    require_trainable_spec(parse_feature_spec(redundant))


def test_a_contacts_column_that_identifies_contacts_is_refused_before_any_work(
    small: object,
) -> None:
    """`attributes: all` made an e-mail column a categorical feature: every address went
    into the model (and so MLflow and the Bento), and it was the stage model's top feature."""
    contacts = pl.from_arrow(small.contacts)  # type: ignore[attr-defined]
    assert isinstance(contacts, pl.DataFrame)
    contacts = contacts.with_columns(email=pl.col("contact_id") + "@example.com")
    common = {"rules": load_rules_settings(), "settings": load_training_settings()}
    with pytest.raises(
        InputError,
        match=r"column 'email' \(1,500 distinct values among 1,500 contacts, mostly e-mail",
    ):
        # no events at all: the column is refused before they are read
        train_models(None, contacts, spec=load_feature_spec(), **common)  # type: ignore[arg-type]
    from features.spec import parse_feature_spec, shipped_spec_text

    listed = parse_feature_spec(
        shipped_spec_text().replace("attributes: all", "attributes: [segment, email]")
    )
    with pytest.raises(InputError, match="lists them under `attributes:`"):
        train_models(None, contacts, spec=listed, **common)  # type: ignore[arg-type]
    without = parse_feature_spec(
        shipped_spec_text().replace("attributes: all", "attributes: [segment]")
    )
    require_no_identifying_attributes(contacts, without)  # listed out: trained without it


@pytest.mark.parametrize(
    ("values", "identifying"),
    [
        ([f"v{i}" for i in range(100)], True),  # 100 values, each once
        ([f"v{i}" for i in range(19)], False),  # too few values to say
        # 99 ids filled for 99 contacts among many: each names its contact (privacy review:
        # 99 e-mail addresses went into the model's categories, MLflow and the Bento)
        ([f"v{i}" for i in range(99)] + [None] * 2000, True),
        ([f"v{i // 2}" for i in range(200)], False),  # 100 values over 200: a half, not more
        ([f"v{i // 2}" for i in range(199)] + [None] * 50, True),  # nulls have no value
        # e-mail addresses and international phone numbers name people however few and
        # shared they are
        (["info@acme.example", " sales@beta.example"] * 100, True),
        (["+44 20 7946 0018", "+1 (555) 010-0001", "x"] * 100, True),
        # ... but not what only looks like a number (diff review: postcodes, compact dates,
        # product codes, amounts and times written as text were refused as phone numbers),
        # dates written as text, short codes, or a few addresses among categories
        (["01310-100", "100-0001", "20240105", "4006381333931"] * 100, False),
        (["0.1234567", "1 250 000", "1700000000", "(555) 010-0001"] * 100, False),
        (["2024-01-05", "05/01/2024", "2024.1.5"] * 100, False),
        (["75001", "AB-12", "10115"] * 100, False),
        (["a@b.example", "retail", "retail"] * 100, False),
    ],
)
def test_which_text_attributes_identify_contacts(
    values: list[str | None], identifying: bool
) -> None:
    contacts = pl.DataFrame(
        {
            "contact_id": [f"c{i}" for i in range(len(values))],
            "marketing_consent": [True] * len(values),
            "text": values,
            "category": pl.Series(values, dtype=pl.Categorical),
            # a whole number most contacts share with another: a measure, not an id
            "number": [i // 2 for i in range(len(values))],
        }
    )
    found = {c.name for c in identifying_attributes(contacts, load_feature_spec())}
    assert found == ({"text", "category"} if identifying else set())


@pytest.mark.parametrize(
    ("values", "dtype", "identifying"),
    [
        # a CRM customer number, as an integer and as the double a pandas export with nulls
        # makes of it: it went into the test set logged to MLflow, joining back to every contact
        ([100_000 + i for i in range(200)], pl.Int64, True),
        ([100_000.0 + i for i in range(200)] + [None] * 20, pl.Float64, True),
        ([4_915_112_345_000 + i for i in range(150)], pl.UInt64, True),  # numbers in turn
        ([10**20 + i for i in range(150)], pl.Decimal(38, 0), True),  # beyond a double's 2^53
        # as distinct, but spread wide: measures (spend in cents, a signup time in seconds;
        # a diff review found them refused)
        ([(i * 7919) % 500_000 for i in range(1000)], pl.Int64, False),
        ([1_600_000_000 + i * 86_413 for i in range(1000)], pl.Int64, False),
        (list(range(99)), pl.Int32, False),  # too few values to say
        # a measure filled for a few contacts is as distinct and packed (diff review)
        (list(range(1, 31)) + [None] * 2000, pl.Int32, False),
        ([i // 2 for i in range(300)], pl.Int64, False),  # each value twice: a measure
        (list(range(180)) + [0] * 20, pl.Int64, False),  # 180 values over 200: 0.9, not more
        ([i + 0.25 for i in range(200)], pl.Float64, False),  # fractions: an amount
        ([i + 0.25 for i in range(200)], pl.Decimal(10, 2), False),
        (list(range(200)), pl.Decimal(10, 0), True),
    ],
)
def test_which_number_attributes_identify_contacts(
    values: list[float | None], dtype: pl.DataType, identifying: bool
) -> None:
    """A review trained with a whole-number customer number among the contacts' columns: it
    became the stage model's fifth feature and a column of the test set in MLflow."""
    contacts = pl.DataFrame(
        {
            "contact_id": [f"c{i}" for i in range(len(values))],
            "marketing_consent": [True] * len(values),
            "number": pl.Series(values).cast(dtype),
        }
    )
    found = identifying_attributes(contacts, load_feature_spec())
    assert [c.name for c in found] == (["number"] if identifying else [])


SPREAD_IDS = [1_000_000 + (i * 7919) % 1_000_000 for i in range(300)]  # Taobao's, say


@pytest.mark.parametrize(
    ("copy", "identifying"),
    [
        # the contact's own id as a number: spread wide, it passed for a measure, went into
        # the model and every row of the test set logged to MLflow (privacy review, Taobao)
        (pl.Series(SPREAD_IDS, dtype=pl.Int64), True),
        (pl.Series([float(i) for i in SPREAD_IDS[:200]] + [None] * 100), True),  # pandas' export
        (pl.Series(SPREAD_IDS).cast(pl.Decimal(20, 2)), True),
        (pl.Series([f" {i}" for i in SPREAD_IDS], dtype=pl.Categorical), True),
        # the id for only some contacts, or too few to say: not by this test
        (pl.Series(SPREAD_IDS[:150] + [7] * 150), False),
        (pl.Series(SPREAD_IDS[:19] + [None] * 281), False),
        (pl.Series([i + 0.5 for i in SPREAD_IDS]), False),  # not the id
    ],
)
def test_a_copy_of_the_contacts_own_id_is_identifying_however_spread(
    copy: pl.Series, identifying: bool
) -> None:
    contacts = pl.DataFrame(
        {
            "contact_id": [str(i) for i in SPREAD_IDS],
            "marketing_consent": [True] * len(SPREAD_IDS),
            "customer_number": copy,
        }
    )
    found = identifying_attributes(contacts, load_feature_spec())
    assert [(c.name, c.why) for c in found] == (
        [("customer_number", "the contacts' own ids")] if identifying else []
    )


def _train_small(small: object, settings: TrainingSettings) -> object:
    return train_models(
        small.events,  # type: ignore[attr-defined]
        small.contacts,  # type: ignore[attr-defined]
        spec=load_feature_spec(),
        rules=load_rules_settings(),
        settings=settings,
    )


def test_too_few_buyers_stop_training_with_a_report_per_split(small: object) -> None:
    settings = load_training_settings(min_train_positives=10**6)
    with pytest.raises(InsufficientDataError, match="buyers in the train snapshots") as caught:
        _train_small(small, settings)
    report = caught.value.report
    assert report["minimums"]["train_positives"] == 10**6
    for split in ("train", "validation", "test"):
        assert report[split]["rows"] > 0
        assert sum(report[split]["stages"].values()) == report[split]["rows"]


def test_the_minimum_data_check_passes_when_every_split_has_enough(small: object) -> None:
    frame, dates, _ = build_labelled_frame(
        small.events,  # type: ignore[attr-defined]
        small.contacts,  # type: ignore[attr-defined]
        spec=load_feature_spec(),
        rules=load_rules_settings(),
        settings=load_training_settings(),
    )
    split = split_by_time(dates, horizon_days=14, validation=2, test=2)
    settings = load_training_settings(min_train_positives=1, min_eval_positives=1)
    report = check_enough_data(frame, split, settings)
    for name in ("train", "validation", "test"):
        rows = frame.filter(pl.col("as_of").is_in(list(getattr(split, name))))
        assert report[name]["rows"] == rows.height > 0
        assert report[name]["positives"] == int(rows[PURCHASE_LABEL].sum()) >= 1
    # each minimum is a rule of its own, named when it is not met
    for overrides, says in (
        ({"min_eval_positives": 10**6}, "buyers in the validation snapshots"),
        ({"min_eval_positives": 10**6}, "buyers in the test snapshots"),
        ({"min_stage_rows": 10**9}, "fewer than two stages with 1000000000+ rows"),
    ):
        strict = load_training_settings(
            **{"min_train_positives": 1, "min_eval_positives": 1, **overrides}
        )
        with pytest.raises(InsufficientDataError, match=re.escape(says)):
            check_enough_data(frame, split, strict)
    # counted after sampling to the row budgets: with the buyers the whole snapshots held
    # estimated (each kept one weighs 1 / its chance), a shortfall sampling made is the
    # budget's to raise, not more contacts to bring (README review); one the whole snapshots
    # have too is not (diff review)
    train = frame.filter(pl.col("as_of").is_in(list(split.train)))
    buyers = int(train[PURCHASE_LABEL].sum())
    weighed = frame.with_columns(
        pl.when(pl.col("as_of").is_in(list(split.train)))
        .then(4.0)
        .otherwise(1.0)
        .alias(SAMPLE_WEIGHT)
    )
    for needed in (buyers * 2, buyers * 8):  # the estimate is noisy: the budget said either way
        strict = load_training_settings(min_train_positives=needed, max_training_rows=5_000)
        with pytest.raises(InsufficientDataError) as caught:
            check_enough_data(weighed, split, strict)
        said = " ".join(str(caught.value).split())
        assert (
            f"{buyers} buyers kept by sampling in the train snapshots, of about "
            f"{buyers * 4:,} (at least {needed})"
        ) in said
        assert (
            "Raise max_training_rows (5,000) under `training:` in your --config or your source "
            "mapping (the snapshots were sampled to fit them), or bring a longer history or "
            "more contacts."
        ) in said
    strict = load_training_settings(min_train_positives=buyers * 2)
    with pytest.raises(InsufficientDataError) as caught:
        check_enough_data(frame, split, strict)  # not sampled: no budget to raise
    assert "Raise" not in str(caught.value)
    assert "Bring a longer history or more contacts" in str(caught.value)
    # a validation snapshot sampled to a share: its buyers over that share
    [first, *_] = sorted(split.validation)
    kept = int(frame.filter(pl.col("as_of") == first)[PURCHASE_LABEL].sum())
    others = int(
        frame.filter(pl.col("as_of").is_in(list(split.validation)) & (pl.col("as_of") != first))[
            PURCHASE_LABEL
        ].sum()
    )
    strict = load_training_settings(min_train_positives=1, min_eval_positives=10**6)
    with pytest.raises(InsufficientDataError) as caught:
        check_enough_data(frame, split, strict, validation_rates={f"{first:%Y-%m-%d}": 0.5})
    assert f"of about {kept * 2 + others:,} (at least 1000000)" in str(caught.value)


def test_provided_labels_replace_the_revealed_ones_for_the_contacts_they_list(
    small: object,
) -> None:
    events = pl.from_arrow(small.events)  # type: ignore[attr-defined]
    assert isinstance(events, pl.DataFrame)
    # a CRM's won/lost list: the first purchase in the period is "won", a few others "lost"
    won = (
        events.filter(
            (pl.col("event_type") == "purchase")
            & (pl.col("timestamp") >= dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
        )
        .group_by("contact_id")
        .agg(label_date=pl.col("timestamp").min())
        .with_columns(outcome=pl.lit("won"))
    )
    lost = (
        events.select("contact_id")
        .unique()
        .join(won, on="contact_id", how="anti")
        .head(300)
        .with_columns(label_date=pl.lit(None, pl.Datetime("us", "UTC")), outcome=pl.lit("lost"))
    )
    labels = pl.concat([won.select("contact_id", "label_date", "outcome"), lost])
    frame, _, source = build_labelled_frame(
        small.events,  # type: ignore[attr-defined]
        small.contacts,  # type: ignore[attr-defined]
        spec=load_feature_spec(),
        rules=load_rules_settings(),
        settings=load_training_settings(),
        labels=labels,
    )
    assert source == "provided"
    assert set(frame["contact_id"]) <= set(labels["contact_id"])
    # a won contact is positive exactly at the snapshots whose horizon holds its won date
    row = frame.filter(pl.col(PURCHASE_LABEL)).row(0, named=True)
    when = won.filter(pl.col("contact_id") == row["contact_id"])["label_date"][0]
    assert row["as_of"] <= when < row["as_of"] + dt.timedelta(days=14)
    assert not frame.filter(pl.col("contact_id").is_in(lost["contact_id"].to_list()))[
        PURCHASE_LABEL
    ].any()


def test_provided_labels_of_contacts_that_are_no_row_are_counted(small: object) -> None:
    """Labels of contacts unknown to the events, or without consent, were lost uncounted."""
    contacts = pl.from_arrow(small.contacts)  # type: ignore[attr-defined]
    assert isinstance(contacts, pl.DataFrame)
    events = pl.from_arrow(small.events)  # type: ignore[attr-defined]
    assert isinstance(events, pl.DataFrame)
    with_events = set(events["contact_id"])
    consented = sorted(
        set(contacts.filter(pl.col("marketing_consent"))["contact_id"]) & with_events
    )[:5]
    opted_out = sorted(
        set(contacts.filter(~pl.col("marketing_consent"))["contact_id"]) & with_events
    )[:2]
    ids = [*consented, *opted_out, "ghost-1", "ghost-2", "ghost-3"]
    labels = pl.DataFrame(
        {"contact_id": ids, "label_date": [None] * len(ids), "outcome": ["lost"] * len(ids)},
        schema={
            "contact_id": pl.String,
            "label_date": pl.Datetime("us", "UTC"),
            "outcome": pl.String,
        },
    )
    counts: dict[str, int] = {}
    frame, _, _ = build_labelled_frame(
        small.events,  # type: ignore[attr-defined]
        small.contacts,  # type: ignore[attr-defined]
        spec=load_feature_spec(),
        rules=load_rules_settings(),
        settings=load_training_settings(),
        labels=labels,
        counts=counts,
    )
    rows = set(frame["contact_id"])
    assert rows <= set(consented)
    assert counts["labelled_contacts_without_rows"] == len(ids) - len(rows)
    assert counts["labelled_contacts_without_rows"] >= 5  # the opted-out and the ghosts


def test_too_few_buyers_says_the_won_labels_set_aside_for_want_of_a_date(
    small: object,
) -> None:
    """Every won deal undated: all set aside, 0 buyers, and the report advised a longer
    history, never naming the labels it had set aside (README review)."""
    events = pl.from_arrow(small.events)  # type: ignore[attr-defined]
    assert isinstance(events, pl.DataFrame)
    ids = events["contact_id"].unique().sort()
    labels = pl.DataFrame(
        {
            "contact_id": ids,
            "label_date": [None] * ids.len(),
            "outcome": ["won" if n % 3 == 0 else "lost" for n in range(ids.len())],
        },
        schema={
            "contact_id": pl.String,
            "label_date": pl.Datetime("us", "UTC"),
            "outcome": pl.String,
        },
    )
    won = sum(1 for n in range(ids.len()) if n % 3 == 0)
    with pytest.raises(InsufficientDataError) as caught:
        train_models(
            small.events,  # type: ignore[attr-defined]
            small.contacts,  # type: ignore[attr-defined]
            spec=load_feature_spec(),
            rules=load_rules_settings(),
            settings=load_training_settings(),
            labels=labels,
        )
    said = str(caught.value)
    assert "0 buyers in the train snapshots" in said
    assert f"{won:,} provided labels were set aside without a label_date" in said


def test_the_stage_model_has_its_own_patience_and_falls_back_to_the_shared_one() -> None:
    lightgbm = load_training_settings().lightgbm
    assert lightgbm.stage_early_stopping_rounds is not None
    assert lightgbm.patience("stage") == lightgbm.stage_early_stopping_rounds
    assert lightgbm.patience("propensity") == lightgbm.early_stopping_rounds
    shared = lightgbm.model_copy(update={"stage_early_stopping_rounds": None})
    assert shared.patience("stage") == lightgbm.early_stopping_rounds


@pytest.mark.parametrize(
    ("every", "horizon", "needed"),
    [(7, 14, 7), (1, 14, 31), (7, 7, 5), (3, 14, 13)],
)
def test_too_few_snapshots_say_how_many_the_split_needs(
    every: int, horizon: int, needed: int
) -> None:
    """Daily snapshots with a 14-day horizon need 31, and the report said 7 with advice that
    did not name the `snapshots:` setting (training review)."""
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    enough = [start + dt.timedelta(days=every * n) for n in range(needed)]
    split_by_time(enough, horizon_days=horizon, validation=2, test=2)  # exactly enough
    with pytest.raises(InputError, match=f"it needs at least {needed} .*raise `snapshots:`"):
        split_by_time(enough[1:], horizon_days=horizon, validation=2, test=2)


def test_observe_until_trains_as_if_the_log_had_been_exported_that_day(small: object) -> None:
    """A source whose outcomes run on after its flow of new contacts ends (Olist's won dates,
    months after its last lead) is observed up to a day: the events at or after it (one exactly
    at midnight included) change no snapshot, row or label, they are counted, not silently
    dropped, and a listed contact first seen on or after that day is no row: unknown then."""
    events = pl.from_arrow(small.events)  # type: ignore[attr-defined]
    contacts = pl.from_arrow(small.contacts)  # type: ignore[attr-defined]
    assert isinstance(events, pl.DataFrame)
    assert isinstance(contacts, pl.DataFrame)
    day = dt.date(2026, 4, 5)  # the log runs to 2026-04-10
    cut = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    # a consented contact whose first event is exactly at the cut
    late = events.head(1).with_columns(
        contact_id=pl.lit("late-1").cast(events.schema["contact_id"]),
        timestamp=pl.lit(cut).cast(events.schema["timestamp"]),
    )
    events = pl.concat([events, late])
    contacts = pl.concat(
        [contacts, pl.DataFrame({"contact_id": ["late-1"], "marketing_consent": [True]})],
        how="diagonal_relaxed",
    )
    before = events.filter(pl.col("timestamp") < cut)
    later = events.height - before.height
    assert later > 1
    firsts = events.group_by("contact_id").agg(first=pl.col("timestamp").min())
    unknown = firsts.filter(pl.col("first") >= cut)["contact_id"]
    assert "late-1" in unknown.to_list()
    common = {"spec": load_feature_spec(), "rules": load_rules_settings()}
    observed = load_training_settings(observe_until=day)
    counts: dict[str, int] = {}
    frame, dates, _ = build_labelled_frame(
        events, contacts, settings=observed, counts=counts, **common
    )
    # the log as exported that day, beside today's contacts table: its rows, less the contacts
    # nobody had seen by then (there, silent listed contacts: a row at every snapshot)
    exported_counts: dict[str, int] = {}
    exported, exported_dates, _ = build_labelled_frame(
        before, contacts, settings=load_training_settings(), counts=exported_counts, **common
    )
    assert exported.filter(pl.col("contact_id") == "late-1").height == len(dates)
    # left out: what the export leaves out, and every listed contact unknown by the day at
    # every snapshot (counted before consent, as the rows are)
    listed_unknown = set(unknown.to_list()) & set(contacts["contact_id"].to_list())
    assert counts["rows_before_first_event"] == (
        exported_counts["rows_before_first_event"] + len(listed_unknown) * len(dates)
    )
    assert dates == exported_dates
    assert max(dates) + dt.timedelta(days=observed.horizon_days) <= cut
    assert frame.equals(exported.filter(~pl.col("contact_id").is_in(unknown.implode())))

    result = train_models(
        events,
        contacts,
        settings=load_training_settings(
            observe_until=day, min_train_positives=1, min_eval_positives=1
        ),
        **common,
    )
    summary = result.data_summary
    assert summary["observed_until"] == cut.isoformat()
    assert summary["events_after_observed"] == later
    assert {*result.split.train, *result.split.validation, *result.split.test} <= set(dates)
    assert max(result.split.test) + dt.timedelta(days=observed.horizon_days) <= cut


def test_observe_until_before_every_event_says_so(small: object) -> None:
    settings = load_training_settings(observe_until=dt.date(2000, 1, 1))
    rows = small.events.num_rows  # type: ignore[attr-defined]
    with pytest.raises(InsufficientDataError) as caught:
        _train_small(small, settings)
    said = str(caught.value)
    assert f"no events before observe_until 2000-01-01 ({rows:,} events, all of them later)" in said
    assert "set observe_until after the data's start" in said


def test_labels_dated_after_observe_until_are_counted_in_any_zone() -> None:
    """Provided labels dated on or after the day are counted (none is trained on); a zone
    other than UTC is compared as the instant it is, and a label_date that is no zoned
    timestamp counts none here (``label_from_provided`` refuses it, naming the fix)."""
    cut = dt.datetime(2018, 7, 1, tzinfo=dt.UTC)
    paris = [
        dt.datetime(2018, 7, 1, 1, 59),  # 23:59 UTC the day before: not after
        dt.datetime(2018, 7, 1, 2, 0),  # midnight UTC: at the cut
        dt.datetime(2018, 9, 1),
        None,  # no date: set aside elsewhere, not counted here
    ]
    labels = pl.DataFrame(
        {"contact_id": ["a", "b", "c", "d"], "outcome": ["won"] * 4, "label_date": paris}
    ).with_columns(pl.col("label_date").dt.replace_time_zone("Europe/Paris"))
    assert labels_after(labels, cut) == 2
    assert labels_after(labels.to_arrow(), cut) == 2
    assert labels_after(None, cut) == 0
    naive = labels.with_columns(pl.col("label_date").dt.replace_time_zone(None))
    assert labels_after(naive, cut) == 0
    assert labels_after(labels.with_columns(pl.col("label_date").cast(pl.String)), cut) == 0


def test_damaged_events_pages_stop_training_in_one_line(small: object, tmp_path: Path) -> None:
    """Review: `train` on events whose pages were damaged (footer intact) was a Polars
    traceback; the feature builders already said it in one line."""
    path = tmp_path / "events.parquet"
    pq.write_table(small.events, path)  # type: ignore[attr-defined]
    damaged = bytearray(path.read_bytes())
    for i in range(200, min(20_000, len(damaged) - 2_000), 7):
        damaged[i] = 0
    path.write_bytes(bytes(damaged))
    with pytest.raises(InputError, match="the events Parquet is damaged"):
        train_models(
            path,
            small.contacts,  # type: ignore[attr-defined]
            spec=load_feature_spec(),
            rules=load_rules_settings(),
            settings=load_training_settings(),
        )
