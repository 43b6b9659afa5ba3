"""The weekly scoring job: every consented contact scored as of a date by a registered model,
with the batch engine's features (the code the model was trained on, and the service's online
path's twin), written where a CRM imports it (Parquet or CSV), and the funnel's movement since
the previous scores: who moved deeper, who moved back, who is new.

The command is `funnelcast score` (``serving.cli``); this module holds what it computes, so
that a notebook can call the same functions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from features.consent import restrict_to_consented
from features.engine import EventsInput, build_contact_features
from features.errors import InputError
from features.vocabulary import STAGE_MESSAGE, STAGES
from training.pyfunc import PROBABILITY_COLUMNS

# contacts scored at a time: a chunk's reasons read its feature values as Python objects
CHUNK_ROWS = 20_000

# what a scores file holds, in this order (rules_stage only when the model's spec has it)
SCORE_COLUMNS = (
    "contact_id",
    "as_of",
    "stage",
    *PROBABILITY_COLUMNS,
    "propensity",
    "horizon_days",
    "reason_1",
    "reason_2",
    "reason_3",
    "cta",
    "message_type",
    "rules_stage",
    "model_name",
    "model_version",
)
SCORE_FORMATS = (".parquet", ".csv")


@dataclass(frozen=True)
class Scores:
    """One scoring run: a row per consented contact, and the contacts left out for consent."""

    table: pl.DataFrame
    contacts_without_consent: int
    # the model's contact attributes the contacts table does not hold (or all of them, with no
    # table): scored as missing values, as the service scores an attribute not sent
    missing_attributes: tuple[str, ...] = ()


def score_contacts(
    model: Any,
    events: EventsInput,
    contacts: Any,
    *,
    as_of: dt.datetime,
    model_name: str,
    model_version: str,
    assume_consent: bool = False,
    reasons: bool = True,
    built: Callable[[int, int], None] | None = None,
    scored: Callable[[int, int], None] | None = None,
) -> Scores:
    """Every contact the feature engine sees as of ``as_of`` (an event in the longest window,
    or listed in ``contacts``) and who consented to marketing, scored by ``model`` (a
    ``FunnelcastModel``) from features built with the model's own spec and rules. ``built``
    and ``scored`` are told (done, total) as the features' parts and the score chunks end."""
    features = build_contact_features(
        events, contacts, as_of=as_of, spec=model.spec, rules=model.rules, progress=built
    )
    return score_features(
        model,
        features,
        contacts,
        as_of=as_of,
        model_name=model_name,
        model_version=model_version,
        assume_consent=assume_consent,
        reasons=reasons,
        scored=scored,
    )


def score_features(
    model: Any,
    features: pl.DataFrame,
    contacts: Any,
    *,
    as_of: dt.datetime,
    model_name: str,
    model_version: str,
    assume_consent: bool = False,
    reasons: bool = True,
    scored: Callable[[int, int], None] | None = None,
) -> Scores:
    """``score_contacts`` of features built already, by either engine with the model's spec
    and rules as of ``as_of``: the consented contacts' rows scored in chunks."""
    consented = restrict_to_consented(features, contacts, assume_consent=assume_consent)
    kept = consented.kept
    if kept.height == 0:
        days = model.spec.longest_window_days
        lookback = f"the {days}-day lookback" if days else "the events before it"
        raise InputError(
            f"no consented contact to score as of {as_of:%Y-%m-%d}: none has an event in "
            f"{lookback} or is listed in the contacts table "
            f"({consented.contacts_without_consent:,} without marketing consent left out); "
            "give another --as-of, or the contacts table"
        )
    missing = tuple(name for name in model.attribute_features if name not in kept.columns)
    if missing:
        categorical = set(model.categories)
        kept = kept.with_columns(
            pl.lit(None, pl.String if name in categorical else pl.Float64).alias(name)
            for name in missing
        )
    parts = []
    for start in range(0, kept.height, CHUNK_ROWS):
        parts.append(model.predict_frame(kept.slice(start, CHUNK_ROWS), reasons=reasons))
        if scored is not None:
            scored(min(start + CHUNK_ROWS, kept.height), kept.height)
    table = pl.concat(parts, how="vertical")
    extra: list[pl.Expr | pl.Series] = [
        pl.lit(int(model.horizon_days), pl.Int32).alias("horizon_days"),
        pl.col("stage").replace_strict(STAGE_MESSAGE, return_dtype=pl.String).alias("message_type"),
        pl.lit(model_name, pl.String).alias("model_name"),
        pl.lit(model_version, pl.String).alias("model_version"),
    ]
    if "rules_stage" in kept.columns:
        extra.append(kept.get_column("rules_stage").cast(pl.String).alias("rules_stage"))
    table = table.with_columns(extra)
    table = table.with_columns(pl.col("contact_id").cast(pl.String))
    return Scores(
        table=table.select([c for c in SCORE_COLUMNS if c in table.columns]),
        contacts_without_consent=consented.contacts_without_consent,
        missing_attributes=missing,
    )


def check_scores_path(path: Path, option: str) -> None:
    """A scores file is Parquet or CSV, told by its name."""
    if path.suffix.lower() not in SCORE_FORMATS:
        raise InputError(
            f"{option} {path}: scores are written as Parquet or CSV; give a file name ending "
            "in .parquet or .csv"
        )


def read_scores(path: Path, option: str = "--previous") -> pl.DataFrame:
    """Earlier scores (a file `funnelcast score` wrote, or one of the same columns): at least
    ``contact_id`` and ``stage``, the stages funnelcast's; ``as_of`` when the file has it."""
    check_scores_path(path, option)
    if not path.is_file():
        raise InputError(f"{option} {path} does not exist; give the scores file of a run before")
    try:
        if path.suffix.lower() == ".csv":
            frame = pl.read_csv(path, infer_schema=False)  # every column as text
        else:
            frame = pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as error:
        raise InputError(f"{option} {path} cannot be read as scores ({error})") from error
    missing = [c for c in ("contact_id", "stage") if c not in frame.columns]
    if missing:
        raise InputError(
            f"{option} {path} has no {' or '.join(missing)} column; give a scores file written "
            "by `funnelcast score`"
        )
    frame = frame.with_columns(pl.col("contact_id", "stage").cast(pl.String))
    unknown = frame.filter(~pl.col("stage").is_in(STAGES))["stage"].unique().sort()
    if len(unknown):
        shown = ", ".join(repr(s) for s in unknown.head(3).to_list())
        raise InputError(
            f"{option} {path} holds stage(s) {shown} that are not funnelcast's stages "
            f"({', '.join(STAGES)}); give a scores file written by `funnelcast score`"
        )
    doubled = frame["contact_id"].is_duplicated().sum()
    if doubled:
        raise InputError(
            f"{option} {path} holds {doubled:,} rows of contacts listed more than once; give "
            "one scores file of one run"
        )
    return frame


def previous_as_of(previous: pl.DataFrame) -> dt.datetime | None:
    """The moment earlier scores were for (their ``as_of``), when they say it."""
    if "as_of" not in previous.columns or previous.height == 0:
        return None
    column = previous.get_column("as_of")
    if column.dtype == pl.String:
        column = column.str.to_datetime(time_zone="UTC", strict=False)
    moment = column.max()
    if not isinstance(moment, dt.datetime):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class StageMovement:
    """The contacts of one stage in the previous scores, and where they are now."""

    stage: str
    then: int
    stayed: int
    deeper: int
    back: int
    not_scored_now: int


@dataclass(frozen=True)
class Movement:
    by_stage: list[StageMovement]
    new: int  # scored now, not before

    @property
    def leak(self) -> StageMovement | None:
        """The stage (dormant aside) that lost the largest share of its contacts to a
        shallower one; none when nobody moved back."""
        leaking = [m for m in self.by_stage if m.stage != "dormant" and m.back]
        return max(leaking, key=lambda m: (m.back / m.then, m.back), default=None)


def movement(current: pl.DataFrame, previous: pl.DataFrame) -> Movement:
    """Where the previous scores' contacts are now, stage by stage (deeper and back by the
    funnel's order, dormant first: a contact who went dormant moved back)."""
    rank = {stage: k for k, stage in enumerate(STAGES)}
    now = current.select(pl.col("contact_id").cast(pl.String), pl.col("stage").alias("now"))
    then = previous.select("contact_id", pl.col("stage").alias("then"))
    joined = then.join(now, on="contact_id", how="left").with_columns(
        pl.col("then").replace_strict(rank, return_dtype=pl.Int32).alias("then_rank"),
        pl.col("now").replace_strict(rank, default=None, return_dtype=pl.Int32).alias("now_rank"),
    )
    counts = joined.group_by("then").agg(
        pl.len().alias("then_count"),
        (pl.col("now_rank") == pl.col("then_rank")).sum().alias("stayed"),
        (pl.col("now_rank") > pl.col("then_rank")).sum().alias("deeper"),
        (pl.col("now_rank") < pl.col("then_rank")).sum().alias("back"),
        pl.col("now").is_null().sum().alias("not_scored_now"),
    )
    found = {row["then"]: row for row in counts.iter_rows(named=True)}
    by_stage = [
        StageMovement(
            stage=stage,
            then=int(found[stage]["then_count"]),
            stayed=int(found[stage]["stayed"]),
            deeper=int(found[stage]["deeper"]),
            back=int(found[stage]["back"]),
            not_scored_now=int(found[stage]["not_scored_now"]),
        )
        for stage in STAGES
        if stage in found
    ]
    new = now.join(then, on="contact_id", how="anti").height
    return Movement(by_stage=by_stage, new=new)
