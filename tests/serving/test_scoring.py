"""The weekly scoring job (`funnelcast score`): every consented contact scored as the batch
pipeline scores it, written whole as Parquet or CSV, and the movement since the previous
scores."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from click.testing import Result
from conftest import Served, contact_body
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from features.consent import restrict_to_consented
from features.engine import build_contact_features
from features.errors import InputError
from features.vocabulary import STAGE_MESSAGE, STAGES
from serving.cli import app
from serving.runtime import ServiceSettings, load_scorer, registered_model
from serving.schemas import MAX_EVENTS_PER_CONTACT, ContactRequest
from serving.scoring import SCORE_COLUMNS, movement, previous_as_of, read_scores

pytestmark = pytest.mark.slow

AS_OF = dt.datetime(2026, 4, 20, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def data(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scoring") / "data"
    folder.mkdir()
    pq.write_table(served.events, folder / "events.parquet")
    pq.write_table(served.contacts, folder / "contacts.parquet")
    return folder


def _score(served: Served, *args: str) -> Result:
    return CliRunner().invoke(app, ["score", "--tracking-uri", served.store, *args])


@pytest.fixture(scope="module")
def scored(served: Served, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scores") / "scores-2026-04-20.parquet"
    result = _score(served, "--events", str(data), "--as-of", "2026-04-20", "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def test_every_consented_contact_is_scored_as_the_batch_pipeline_scores_it(
    served: Served, scored: Path
) -> None:
    """The scores equal the registered model's on the batch engine's features (which the
    service's tests hold equal to its online path), reasons included; contacts without
    consent are neither scored nor written."""
    model, _ = registered_model(ServiceSettings(tracking_uri=served.store))
    features = build_contact_features(
        served.events, served.contacts, as_of=AS_OF, spec=model.spec, rules=model.rules
    )
    consented = restrict_to_consented(features, served.contacts)
    assert consented.contacts_without_consent > 0  # the data has some to leave out
    expected = model.predict_frame(consented.kept).with_columns(pl.col("contact_id").cast(str))
    got = pl.read_parquet(scored)
    assert got.columns == list(SCORE_COLUMNS)
    assert got.height == expected.height == consented.kept.height
    assert_frame_equal(got.select(expected.columns), expected, check_dtypes=False)
    refused = pl.from_arrow(served.contacts).filter(~pl.col("marketing_consent"))  # type: ignore[union-attr]
    assert not set(refused["contact_id"].cast(str)) & set(got["contact_id"])
    assert got["message_type"].to_list() == [STAGE_MESSAGE[s] for s in got["stage"]]
    assert set(got["model_name"]) == {"funnelcast"}
    assert set(got["model_version"]) == {"1"}
    assert set(got["as_of"]) == {AS_OF}
    assert set(got["horizon_days"]) == {int(model.horizon_days)}
    assert got["rules_stage"].to_list() == consented.kept["rules_stage"].cast(str).to_list()
    assert got["reason_1"].null_count() < got.height  # reasons were computed


def test_csv_scores_and_the_movement_since_the_previous_scores(
    served: Served, data: Path, scored: Path, tmp_path: Path
) -> None:
    """A CSV for the CRM, the same contacts; with --previous, the funnel beside it and where
    the previous contacts are now, counted as the movement function counts them."""
    now = pl.read_parquet(scored)
    awake = now.filter(pl.col("stage") != "dormant")["contact_id"].head(2).to_list()
    asleep = now.filter(pl.col("stage") == "dormant")["contact_id"].head(1).to_list()
    previous = pl.DataFrame(
        {
            "contact_id": [*awake, *asleep, "left-since"],
            "as_of": [dt.datetime(2026, 4, 13, tzinfo=dt.UTC)] * 4,
            "stage": ["dormant", "dormant", "advocacy", "awareness"],
        }
    )
    previous.write_parquet(tmp_path / "previous.parquet")
    out = tmp_path / "scores.csv"
    result = _score(
        served,
        "--events",
        str(data),
        "--as-of",
        "2026-04-20",
        "--out",
        str(out),
        "--previous",
        str(tmp_path / "previous.parquet"),
        "--no-reasons",
    )
    assert result.exit_code == 0, result.output
    csv = pl.read_csv(out, infer_schema=False)
    assert csv.columns == list(SCORE_COLUMNS)
    assert csv["contact_id"].to_list() == now["contact_id"].to_list()
    assert csv["stage"].to_list() == now["stage"].to_list()
    assert csv["reason_1"].null_count() == csv.height  # --no-reasons
    said = " ".join(result.output.split())
    assert "Where the previous scores' contacts are now" in said
    # dormant: 2 then, both moved deeper; advocacy: 1, moved back; awareness: 1, gone
    assert "│ dormant │ 2 │ 0 │ 2 │ 0 │ 0 │" in said
    assert "│ advocacy │ 1 │ 0 │ 0 │ 1 │ 0 │" in said
    assert "│ awareness │ 1 │ 0 │ 0 │ 0 │ 1 │" in said
    assert f"{now.height - 3:,} contacts are scored now and were not in the previous" in said
    assert "Where the funnel leaks most: advocacy, 1 of its 1 contacts (100.0%)" in said


def test_the_movement_counts_each_previous_stage_by_where_its_contacts_are_now() -> None:
    previous = pl.DataFrame(
        {
            "contact_id": ["a", "b", "c", "d", "e", "f"],
            "stage": ["awareness", "awareness", "awareness", "intent", "intent", "dormant"],
        }
    )
    current = pl.DataFrame(
        {
            "contact_id": ["a", "b", "c", "d", "g"],
            "stage": ["awareness", "intent", "dormant", "consideration", "awareness"],
        }
    )
    moved = movement(current, previous)
    table = {
        m.stage: (m.then, m.stayed, m.deeper, m.back, m.not_scored_now) for m in moved.by_stage
    }
    assert table == {
        "dormant": (1, 0, 0, 0, 1),
        "awareness": (3, 1, 1, 1, 0),
        "intent": (2, 0, 0, 1, 1),
    }
    assert [m.stage for m in moved.by_stage] == ["dormant", "awareness", "intent"]  # funnel order
    assert moved.new == 1
    assert moved.leak is not None
    assert moved.leak.stage == "intent"
    stayed = movement(previous, previous)
    assert stayed.leak is None
    assert stayed.new == 0


def test_the_default_as_of_is_the_day_after_the_last_event(
    served: Served, data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scores.parquet"
    result = _score(served, "--events", str(data), "--out", str(out), "--no-reasons")
    assert result.exit_code == 0, result.output
    last = pl.from_arrow(served.events)["timestamp"].max()  # type: ignore[index]
    day_after = dt.datetime.combine(last.date() + dt.timedelta(days=1), dt.time(), dt.UTC)
    assert set(pl.read_parquet(out)["as_of"]) == {day_after}
    assert f"as of {day_after:%Y-%m-%d}" in " ".join(result.output.split())


def _previous(tmp_path: Path, frame: pl.DataFrame, name: str = "previous.parquet") -> Path:
    path = tmp_path / name
    frame.write_csv(path) if path.suffix == ".csv" else frame.write_parquet(path)
    return path


@pytest.mark.parametrize(
    ("previous", "out", "words"),
    [
        (None, "scores.txt", "scores are written as Parquet or CSV; give a file name ending in"),
        ("same", "scores.parquet", "is the --out file: this run would write over the scores"),
        (
            pl.DataFrame({"contact_id": ["a"]}),
            "scores.parquet",
            "has no stage column; give a scores file written by `funnelcast score`",
        ),
        (
            pl.DataFrame({"contact_id": ["a"], "stage": ["hot lead"]}),
            "scores.parquet",
            "holds stage(s) 'hot lead' that are not funnelcast's stages",
        ),
        (
            pl.DataFrame({"contact_id": ["a", "a"], "stage": ["intent", "dormant"]}),
            "scores.parquet",
            "holds 2 rows of contacts listed more than once",
        ),
        (
            pl.DataFrame({"contact_id": ["a"], "stage": ["intent"], "as_of": ["2026-04-20"]}),
            "scores.parquet",
            "holds scores as of 2026-04-20, not before --as-of 2026-04-20",
        ),
    ],
)
def test_unusable_options_are_refused_before_any_work(
    served: Served,
    data: Path,
    tmp_path: Path,
    previous: pl.DataFrame | str | None,
    out: str,
    words: str,
) -> None:
    args = ["--events", str(data), "--as-of", "2026-04-20", "--out", str(tmp_path / out)]
    if isinstance(previous, str):
        args += ["--previous", str(tmp_path / out)]
    elif previous is not None:
        args += ["--previous", str(_previous(tmp_path, previous, "previous.csv"))]
    result = _score(served, *args)
    assert isinstance(result.exception, InputError), result.output
    assert words in str(result.exception)
    assert not (tmp_path / out).exists()
    assert "Scoring with" not in result.output  # refused before the model was loaded


def test_no_consent_known_no_model_or_an_unknown_alias_is_refused(
    served: Served, data: Path, tmp_path: Path
) -> None:
    events_only = tmp_path / "events"
    events_only.mkdir()
    (events_only / "events.parquet").symlink_to(data / "events.parquet")
    out = tmp_path / "scores.parquet"
    result = _score(served, "--events", str(events_only), "--out", str(out))
    assert isinstance(result.exception, InputError)
    assert "no contact may be scored; give --contacts, or pass --assume-consent" in str(
        result.exception
    )
    result = _score(served, "--events", str(data), "--out", str(out), "--alias", "nope")
    assert isinstance(result.exception, InputError)
    assert "nope" in str(result.exception)
    result = CliRunner().invoke(
        app,
        [
            "score",
            "--events",
            str(data),
            "--out",
            str(out),
            "--tracking-uri",
            f"sqlite:///{tmp_path}/none/mlflow.db",
        ],
    )
    assert isinstance(result.exception, InputError)
    assert not out.exists()


def test_scores_read_back_from_csv_keep_their_moment(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {
            "contact_id": [1, 2],
            "stage": list(STAGES[:2]),
            "as_of": [dt.datetime(2026, 4, 13, tzinfo=dt.UTC)] * 2,
        }
    )
    for name in ("s.csv", "s.parquet"):
        read = read_scores(_previous(tmp_path, frame, name))
        assert read["contact_id"].to_list() == ["1", "2"]  # ids as text, as the scores hold
        assert previous_as_of(read) == dt.datetime(2026, 4, 13, tzinfo=dt.UTC)


def test_without_a_contacts_table_the_attributes_are_missing_values_and_said(
    served: Served, data: Path, tmp_path: Path
) -> None:
    """--assume-consent with no contacts table: the model's contact attributes are scored as
    missing, as the service scores an attribute not sent (before, the feature table "lacked
    the model's features" and nothing was scored)."""
    events_only = tmp_path / "events"
    events_only.mkdir()
    (events_only / "events.parquet").symlink_to(data / "events.parquet")
    out = tmp_path / "scores.parquet"
    args = ["--events", str(events_only), "--as-of", "2026-04-20", "--out", str(out)]
    result = _score(served, *args, "--assume-consent", "--no-reasons")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    model, _ = registered_model(ServiceSettings(tracking_uri=served.store))
    assert model.attribute_features  # the served model reads some
    listed = ", ".join(model.attribute_features)
    assert f"contacts table does not hold ({listed}): scored as missing values" in said
    got = pl.read_parquet(out)
    features = build_contact_features(
        served.events, None, as_of=AS_OF, spec=model.spec, rules=model.rules
    )
    assert got["contact_id"].to_list() == features["contact_id"].cast(str).to_list()
    blank = features.with_columns(
        pl.lit(None, pl.String if n in model.categories else pl.Float64).alias(n)
        for n in model.attribute_features
    )
    expected = model.predict_frame(blank, reasons=False)
    assert got["stage"].to_list() == expected["stage"].to_list()
    assert got["propensity"].to_list() == expected["propensity"].to_list()
    # as the service scores the same contacts' events sent without attributes
    scorer = load_scorer(ServiceSettings(tracking_uri=served.store))
    active = got.join(
        pl.from_arrow(served.events)  # type: ignore[arg-type]
        .filter(pl.col("timestamp") < AS_OF)
        .group_by(pl.col("contact_id").cast(str))
        .len(),
        on="contact_id",
    ).filter(pl.col("len").is_between(5, MAX_EVENTS_PER_CONTACT))
    for row in active.head(5).iter_rows(named=True):
        body = contact_body(served, row["contact_id"], last=MAX_EVENTS_PER_CONTACT)
        body = {k: v for k, v in body.items() if k != "attributes"} | {
            "as_of": "2026-04-20T00:00:00Z"
        }
        (answer,) = scorer.predict([ContactRequest.model_validate(body)])
        assert answer.stage == row["stage"]
        assert answer.propensity == pytest.approx(row["propensity"], abs=1e-12)
