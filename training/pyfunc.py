"""The model as MLflow logs and serves it: both models, the feature spec and the stage names in
one ``mlflow.pyfunc.PythonModel``.

MLflow's own flavours return class labels only; this class returns what the CRM needs per
contact: every stage probability, the stage, the purchase propensity, the top three reasons in
the CRM's words, and the call to action for the stage.
"""

from __future__ import annotations

import itertools
import operator
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import polars as pl
from mlflow.pyfunc import PythonModel as _MlflowPythonModel

from features.errors import InputError
from features.settings import RulesSettings
from features.spec import FeatureSpec, parse_feature_spec
from features.vocabulary import STAGE_CTA, STAGES
from training.frame import require_features
from training.models import (
    REASONS_METHODS,
    FloatArray,
    LightGBMPropensityModel,
    LightGBMStageModel,
    ReasonsMethod,
)
from training.reasons import top_reasons

PROBABILITY_COLUMNS = tuple(f"p_{stage}" for stage in STAGES)
OUTPUT_COLUMNS = (
    "stage",
    *PROBABILITY_COLUMNS,
    "propensity",
    "reason_1",
    "reason_2",
    "reason_3",
    "cta",
)
# categorical features whose values are a closed vocabulary: another value is a mistake, not a
# category the model has not seen (which is read as missing, as LightGBM does)
CLOSED_CATEGORIES: dict[str, tuple[str, ...]] = {"rules_stage": STAGES}
FLOAT32_MAX = float(np.finfo(np.float32).max)
# the spec's aggregates that every builder makes as 32-bit integers
_WHOLE_KINDS = frozenset({"count", "distinct_days", "sessions"})
# rows of a feature table encoded at a time (a block of 4 bytes a value besides the matrix's 8)
_SLAB_ROWS = 65_536
# the ``whole`` places of a one-column block: its column, or none
_ONE_COLUMN = np.array([0], dtype=np.intp)
_NO_COLUMN = np.array([], dtype=np.intp)


class FeatureValueError(InputError):
    """A feature value the model cannot read; ``row`` (the record's position) and ``feature``
    say where, ``rows`` how many records hold such a value of that feature."""

    def __init__(self, message: str, *, row: int, feature: str, rows: int = 1) -> None:
        super().__init__(message)
        self.row = row
        self.feature = feature
        self.rows = rows


class _PythonModel(_MlflowPythonModel):
    """MLflow's PythonModel, minus its warning at subclass time that ``predict`` has no type
    hints: the input is a feature table whose columns the spec decides, checked by the model."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # MLflow wraps its check in its own "show once" filter, so a filter cannot silence
        # it; not showing warnings for the length of this one call does (restored on exit)
        with warnings.catch_warnings():
            warnings.showwarning = _shown_nowhere
            super().__init_subclass__(**kwargs)


def _shown_nowhere(*args: Any, **kwargs: Any) -> None:
    del args, kwargs


class FunnelcastModel(_PythonModel):
    """Stage and propensity for each row of a feature table (``build_contact_features``'s
    columns; contact_id and as_of are passed through when present), or for feature records
    (one mapping per contact: the service's requests).

    Both forms are encoded into one numeric matrix in the model's column order (numbers
    rounded to float32 as in training, categoricals as the category codes LightGBM learned,
    unknown categories as missing) and scored by one function, so a batch score and an online
    score of the same features are the same numbers; and both are checked alike, so a value
    one refuses (a 'rules_stage' that is no stage, a negative count, a number beyond float32)
    the other refuses too, rather than scoring it."""

    # a model logged before the choice existed has no such attribute: it was explained by
    # TreeSHAP, and still is
    reasons_method: ReasonsMethod = "treeshap"
    # and one logged before the date attributes were recorded has none (attribute_dates)
    date_attributes: list[str] | None = None

    def __init__(
        self,
        *,
        stage_model: LightGBMStageModel,
        propensity_model: LightGBMPropensityModel,
        spec_text: str,
        rules: RulesSettings,
        feature_names: list[str],
        horizon_days: int,
        reasons_method: ReasonsMethod = "path",
        date_attributes: list[str] | None = None,
    ) -> None:
        if reasons_method not in REASONS_METHODS:
            raise ValueError(
                f"reasons_method must be one of {REASONS_METHODS}; got {reasons_method!r}"
            )
        self.stage_model = stage_model
        self.reasons_method = reasons_method
        self.propensity_model = propensity_model
        self.spec_text = spec_text
        self.rules = rules
        self.feature_names = feature_names
        self.horizon_days = horizon_days
        self.date_attributes = None if date_attributes is None else list(date_attributes)
        self.stages = STAGES
        self.ctas = dict(STAGE_CTA)
        self._spec: FeatureSpec | None = None
        # the features the spec produced when the model was trained; a service whose feature
        # code produces other names from the same spec must refuse the model (spec_mismatch)
        self.spec_features = list(self.spec.names) + (
            ["rules_stage"] if self.spec.rules_stage else []
        )

    @property
    def spec(self) -> FeatureSpec:
        if self._spec is None:
            self._spec = parse_feature_spec(
                self.spec_text, origin="the model's feature spec", logged=True
            )
        return self._spec

    @property
    def attribute_features(self) -> list[str]:
        """The model's features that come from the contacts table, not from events."""
        computed = set(self.spec_features)
        return [name for name in self.feature_names if name not in computed]

    @property
    def attribute_dates(self) -> list[str]:
        """The contacts columns the model reads as dates, each its feature ``days_since_``
        the name (a number column named ``days_since_...`` is not one). A model that did not
        record them read every ``days_since_`` attribute feature as a date."""
        if self.date_attributes is not None:
            return list(self.date_attributes)
        return [
            name.removeprefix("days_since_")
            for name in self.attribute_features
            if name.startswith("days_since_")
        ]

    @property
    def categories(self) -> dict[str, list[Any]]:
        """Categorical feature -> its categories, in the order LightGBM codes them."""
        found = getattr(self.stage_model, "categories_", None)
        if found is None:
            # a model trained before the categories were recorded: LightGBM's own record, the
            # categorical features (those with category values) in column order
            booster = self.stage_model.booster_
            infos = booster.dump_model()["feature_infos"]
            names = [n for n in self.feature_names if infos.get(n, {}).get("values")]
            found = dict(zip(names, booster.pandas_categorical or [], strict=False))
        return dict(found)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_spec"] = None  # parsed again after loading; the text is the source of truth
        state.pop("_codes", None)
        state.pop("_positions", None)
        state.pop("_floor_values", None)
        state.pop("_whole_places", None)
        return state

    # model_input is left unannotated on purpose: MLflow reads the annotation as a schema and
    # warns on anything but list[...]; the input is a feature table (pandas or Polars)
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """MLflow's entry point: a pandas feature table in, a pandas prediction table out."""
        return self.predict_frame(model_input).to_pandas()

    # --- encoding -------------------------------------------------------------------------------

    def _category_codes(self) -> dict[str, dict[str, int]]:
        codes: dict[str, dict[str, int]] | None = self.__dict__.get("_codes")
        if codes is None:
            codes = {
                name: {str(value): k for k, value in enumerate(values)}
                for name, values in self.categories.items()
            }
            self.__dict__["_codes"] = codes
        return codes

    def encode_frame(self, frame: pl.DataFrame, *, first_row: int = 0) -> FloatArray:
        """A feature table as the model's matrix, checked as ``encode_records`` checks records
        (null, and NaN, are missing values) but a column at a time: a column of another kind
        than in training is an ``InputError`` naming it; a number beyond float32's range or
        infinite, a negative count, recency, active days or sessions, one of those three that
        is not a whole number below 2**31, or a 'rules_stage' that is no stage name is a
        ``FeatureValueError`` naming the feature, the first row that holds one (counting
        from ``first_row``: a chunk's place in the whole table), how many of the rows encoded
        with it do, and the fix."""
        require_features(frame, self.feature_names)
        codes = self._category_codes()
        for name in self.feature_names:  # each column's kind, over the whole table
            _check_kind(frame.get_column(name), codes.get(name))
        X = np.empty((frame.height, len(self.feature_names)), dtype=np.float64)
        for start in range(0, frame.height, _SLAB_ROWS):
            rows = frame.slice(start, _SLAB_ROWS)
            try:
                X[start : start + rows.height] = self._encoded_slab(rows).T
            except FeatureValueError as error:
                raise self._in_table(error, first_row + start, rows.height) from None
        return X

    def _encoded_slab(self, frame: pl.DataFrame) -> npt.NDArray[np.float32]:
        """Some rows of a table, checked, as a block of a row per feature: filled a column of
        the table at a time, then copied into the matrix's rows at once (filling the matrix's
        columns in place, a write every row's width apart, cost more than the checks); a
        slab at a time, so that the block adds a slab's memory, not a table's."""
        numeric, categorical = self._columns()
        floors, whole = self._floors(), set(self._whole().tolist())
        block = np.empty((len(self.feature_names), frame.height), dtype=np.float32)
        for j in categorical:  # category codes are small whole numbers: exact in float32
            block[j] = self._category_codes_of(frame.get_column(self.feature_names[j]))
        for k, j in enumerate(numeric):  # each checked as encode_records checks its numbers
            column = frame.get_column(self.feature_names[j])
            values = _as_float32(column).to_numpy().reshape(-1, 1)
            counted = _ONE_COLUMN if k in whole else _NO_COLUMN
            _check_numbers(values, [column.name], floors[k : k + 1], counted, _row_of(column))
            block[j] = values[:, 0]
        return block

    def _category_codes_of(self, column: pl.Series) -> npt.NDArray[np.float64]:
        """A table's categorical column (of text, ``_check_kind``'s) as the model's category
        codes, as ``_category_column`` reads a record's values, over the whole column at
        once: null, and a value not seen in training, as missing (NaN), unless the feature's
        values are a closed vocabulary (``CLOSED_CATEGORIES``) that the value is not in."""
        name = column.name
        text = column.cast(pl.String)
        codes = text.replace_strict(
            self._category_codes()[name], default=None, return_dtype=pl.Float64
        )
        vocabulary = CLOSED_CATEGORIES.get(name)
        if vocabulary is not None:
            wrong = (
                codes.is_null() & text.is_not_null() & ~text.is_in(list(vocabulary))
            ).arg_true()
            if len(wrong):
                row = int(wrong[0])
                _check_closed(name, text[row], row=row, rows=len(wrong))
        return codes.to_numpy()

    def _in_table(self, error: FeatureValueError, first_row: int, height: int) -> FeatureValueError:
        """A value ``encode_frame`` refused, said as a table's: its row, how many of the
        ``height`` rows from ``first_row`` (those encoded with it) hold one, and where to fix
        it (a computed feature is made by the feature engine, which never makes one; an
        attribute comes from the contacts table)."""
        row = first_row + error.row
        which = "the only one" if error.rows == 1 else f"the first of {error.rows:,}"
        where = (
            f"row {row:,} of the feature table, counting from 0, {which} in rows "
            f"{first_row:,} to {first_row + height - 1:,}"
        )
        if error.feature in self.attribute_features:
            date = error.feature.removeprefix("days_since_")
            column = date if date in self.attribute_dates else error.feature
            fix = f"correct the contacts table's column '{column}', an attribute"
        else:
            fix = (
                "build the features with funnelcast's feature engine and the model's own spec "
                "(`funnelcast features --version N`), which never makes such a value"
            )
        return FeatureValueError(
            f"{error} ({where}); {fix}", row=row, feature=error.feature, rows=error.rows
        )

    def encode_records(
        self, records: Sequence[Mapping[str, Any]], *, complete: bool = False
    ) -> FloatArray:
        """Feature mappings (one per contact) as the model's matrix; a missing key or None is a
        missing value. A number where a category is expected, or text where a number is, is an
        ``InputError`` naming the feature.

        ``complete=True`` (the service's requests, whose names it has checked): every record
        must hold every feature, and a missing one, or text where a number goes, is an
        ``InputError`` that names neither the feature nor the record, at a third of the cost
        of looking (the caller then looks, record by record).

        A number beyond float32's range (it would be read as infinite), a value of the wrong
        kind, or a 'rules_stage' that is no stage name is a ``FeatureValueError`` naming the
        record and the feature."""
        numeric, categorical = self._columns()
        X = np.empty((len(records), len(self.feature_names)), dtype=np.float64)
        names = [self.feature_names[j] for j in numeric]
        try:
            values = _complete_values_of(records, names) if complete else _values_of(records, names)
            # numpy reads None as NaN; float32 is the precision the model was trained at; a
            # number beyond its range becomes inf here, and is refused just below
            with np.errstate(over="ignore"):
                block = np.array(values, dtype=np.float32)
        except (KeyError, TypeError, ValueError):  # KeyError: a name missing (complete only)
            if complete:
                raise InputError("a feature is missing, or text where a number goes") from None
            block = _numbers_one_by_one(records, names, names, _get)
        if names:
            block = block.reshape(len(records), len(names))
            _check_numbers(
                block, names, self._floors(), self._whole(), lambda i, k: records[i].get(names[k])
            )
            X[:, numeric] = block
        for j in categorical:
            name = self.feature_names[j]
            if complete:
                try:
                    column = [record[name] for record in records]
                except KeyError:
                    raise InputError(f"feature '{name}' is missing") from None
            else:
                column = [record.get(name) for record in records]
            X[:, j] = self._category_column(name, column)
        return X

    def encode_rows(self, rows: Sequence[Sequence[Any]], positions: Sequence[int]) -> FloatArray:
        """The compact form of a batch: rows of values, ``positions[j]`` the place of the
        model's feature j in every row (each row holds every feature). Checked as
        ``encode_records`` checks: text where a number goes, a number beyond float32, a
        category that is not text or a 'rules_stage' that is no stage name is a
        ``FeatureValueError`` naming the row and the feature."""
        if not rows:
            return np.empty((0, len(self.feature_names)), dtype=np.float64)
        numeric, categorical = self._columns()
        copied = [list(row) for row in rows]  # the rows' text stays as given (the reasons)
        for j in categorical:  # each category's code in its place, so every value is a number
            place = positions[j]
            codes = self._category_column(self.feature_names[j], [row[place] for row in rows])
            for row, code in zip(copied, codes, strict=True):
                row[place] = code
        names = [self.feature_names[j] for j in numeric]
        places = [positions[j] for j in numeric]
        try:
            # text left is among the numbers: the sum stops at it (numpy would read "3.5" as
            # a number); numpy reads None as NaN
            sum(filter(None, itertools.chain.from_iterable(copied)))
            with np.errstate(over="ignore"):  # beyond float32: inf, refused just below
                block = np.array(copied, dtype=np.float32)
        except (TypeError, ValueError):  # text among the numbers: find it
            _numbers_one_by_one(rows, places, names, operator.getitem)
            raise
        if np.isinf(block).any():  # a category's code is never infinite
            raise _beyond_float32(block[:, places], names, lambda i, k: rows[i][places[k]])
        floors = np.full(block.shape[1], -np.inf, dtype=np.float32)  # a category's code: none
        floors[places] = self._floors()
        if (block < floors).any():
            raise _below_zero(
                block[:, places], floors[places], names, lambda i, k: rows[i][places[k]]
            )
        whole = self._whole()
        if whole.size:
            _check_whole(block[:, places], whole, names, lambda i, k: rows[i][places[k]])
        return block[:, positions].astype(np.float64)

    def _category_column(self, name: str, values: Sequence[Any]) -> list[float]:
        """One categorical feature's values as the model's category codes: None, and a value
        not seen in training, as missing (NaN); anything but text is a ``FeatureValueError``."""
        mapping = self._category_codes()[name]
        out: list[float] = []
        for row, value in enumerate(values):
            if value is None:
                out.append(np.nan)
            elif not isinstance(value, str):
                closed = CLOSED_CATEGORIES.get(name)  # public names, not training data
                raise FeatureValueError(  # not the training data's values: see runtime
                    f"feature '{name}' is a category; give it as text"
                    + (
                        f", one of {list(closed)}"
                        if closed is not None
                        else " (a value the model did not see in training is scored as missing)"
                    ),
                    row=row,
                    feature=name,
                )
            else:
                code = mapping.get(value)
                if code is None:  # a category not seen in training: missing, unless ...
                    _check_closed(name, value, row=row)  # ... there is no such category
                out.append(np.nan if code is None else code)
        return out

    def _floors(self) -> npt.NDArray[np.float32]:
        """The least value of each numeric feature (``_columns``' order): 0 for the spec's
        counts, recencies, active days and sessions, which no builder makes negative (a
        recency counts back from as_of to events before it); -inf for the others. Sums are
        not held to it: the contract has no negative money value, but a builder given
        events directly (a refund of -25) sums what it is given; nor are attributes: a
        numeric column may be named ``days_since_...`` and be negative."""
        cached: npt.NDArray[np.float32] | None = self.__dict__.get("_floor_values")
        if cached is None:
            numeric, _ = self._columns()
            counted = {a.name for a in self.spec.aggregates if a.kind != "sum"}
            cached = np.array(
                [0.0 if self.feature_names[j] in counted else -np.inf for j in numeric],
                dtype=np.float32,
            )
            self.__dict__["_floor_values"] = cached
        return cached

    def _whole(self) -> npt.NDArray[np.intp]:
        """Places (in ``_columns``' numeric order) of the features that are whole numbers in
        every builder: counts, active days and sessions (32-bit integers)."""
        cached: npt.NDArray[np.intp] | None = self.__dict__.get("_whole_places")
        if cached is None:
            numeric, _ = self._columns()
            whole = {a.name for a in self.spec.aggregates if a.kind in _WHOLE_KINDS}
            cached = np.array(
                [k for k, j in enumerate(numeric) if self.feature_names[j] in whole],
                dtype=np.intp,
            )
            self.__dict__["_whole_places"] = cached
        return cached

    def _columns(self) -> tuple[list[int], list[int]]:
        """Positions of the numeric and of the categorical features."""
        cached: tuple[list[int], list[int]] | None = self.__dict__.get("_positions")
        if cached is None:
            codes = self._category_codes()
            cached = (
                [j for j, n in enumerate(self.feature_names) if n not in codes],
                [j for j, n in enumerate(self.feature_names) if n in codes],
            )
            self.__dict__["_positions"] = cached
        return cached

    # --- scoring --------------------------------------------------------------------------------

    def score_matrix(
        self, X: FloatArray, values: Sequence[Mapping[str, Any]] | None
    ) -> dict[str, Any]:
        """Stage probabilities, stage, propensity and (given each row's feature values) the
        three reasons, for an encoded matrix: the one scoring function of every path."""
        leaves = None
        if values is not None and self.reasons_method == "path":
            proba, leaves = self.stage_model.predict_proba_and_leaves(X)
        else:
            proba = self.stage_model.predict_proba(X)
        codes = self.stage_model.decide(proba)
        propensity = self.propensity_model.predict_proba(X)
        phrases: list[list[str]] = [[] for _ in range(len(X))]
        if values is not None:
            contributions = self.stage_model.class_contributions(
                X, codes, method=self.reasons_method, leaves=leaves
            )
            phrases = top_reasons(contributions, self.feature_names, values, self.spec, k=3)
        stage = [self.stages[k] for k in codes]
        return {
            "proba": proba,
            "stage": stage,
            "propensity": propensity,
            "reasons": phrases,
            "cta": [self.ctas[s] for s in stage],
        }

    def predict_records(
        self, records: Sequence[Mapping[str, Any]], *, reasons: bool = True
    ) -> dict[str, Any]:
        """``score_matrix`` of feature mappings (the service's path: no DataFrame built)."""
        if not records:
            raise InputError("no rows to predict; give at least one contact's features")
        return self.score_matrix(self.encode_records(records), records if reasons else None)

    def predict_frame(
        self, features: pd.DataFrame | pl.DataFrame, *, reasons: bool = True, first_row: int = 0
    ) -> pl.DataFrame:
        """The predictions for a feature table, as a Polars frame (the batch path's form).
        ``reasons=False`` leaves the reason columns empty and skips their cost (per-feature
        contributions of every tree), for evaluation. A value the model cannot read is
        refused as ``encode_frame`` says, its row counted from ``first_row`` (a chunk's
        place in the whole table)."""
        if len(features) == 0:
            raise InputError("no rows to predict; give at least one contact's features")
        frame = features if isinstance(features, pl.DataFrame) else self._from_pandas(features)
        X = self.encode_frame(frame, first_row=first_row)
        values = None
        if reasons:
            # the reasons read numbers as int or float: true/false and decimals are given as
            # the numbers the model read (true is 1, as the service reads a JSON true)
            schema = frame.schema  # a new Schema at each reading (0.1 ms): read once
            values = _ColumnRows(
                frame.select(
                    pl.col(name).cast(pl.Float64)
                    if schema[name] == pl.Boolean or schema[name].is_decimal()
                    else pl.col(name)
                    for name in self.feature_names
                ).to_dict(as_series=False)
            )
        scored = self.score_matrix(X, values)
        out: dict[str, Any] = {}
        for key in ("contact_id", "as_of"):
            if key in frame.columns:
                out[key] = frame[key]
        out["stage"] = scored["stage"]
        for k, name in enumerate(PROBABILITY_COLUMNS):
            out[name] = scored["proba"][:, k]
        out["propensity"] = scored["propensity"]
        phrases = scored["reasons"]
        for k in range(3):
            out[f"reason_{k + 1}"] = [r[k] if len(r) > k else None for r in phrases]
        out["cta"] = scored["cta"]
        return pl.DataFrame(out, schema_overrides={f"reason_{k}": pl.String for k in (1, 2, 3)})

    def _from_pandas(self, features: pd.DataFrame) -> pl.DataFrame:
        """The columns of a pandas feature table that the model reads (and contact_id and
        as_of, passed through) as a Polars frame; a column Arrow cannot read as one kind (a
        pandas object column of text among numbers) is an ``InputError`` naming it."""
        wanted = {"contact_id", "as_of", *self.feature_names}
        names = [name for name in features.columns if name in wanted]
        try:
            return pl.from_pandas(features[names])
        except (TypeError, ValueError, pl.exceptions.PolarsError):  # Arrow's are among them
            for name in names:  # the culprit, looked for only now
                try:
                    pl.from_pandas(features[[name]])
                except (TypeError, ValueError, pl.exceptions.PolarsError) as error:
                    raise InputError(
                        f"the feature table's column '{name}' cannot be read as one kind of "
                        f"value ({type(error).__name__}: text among numbers?); give each "
                        "column one kind: numbers (or true/false) for a number, text for a "
                        "category"
                    ) from None
            raise


class _ColumnRows(Sequence[Mapping[str, Any]]):
    """A table's rows, each read by name, over its columns as Python lists: the reasons read
    three values of a row, and a dict of every feature per row (``to_dicts``) cost a third of
    the batch path's scoring with reasons (0.25 s of 0.78 s for 20,000 contacts); the lists
    take a tenth of that."""

    def __init__(self, columns: dict[str, list[Any]]) -> None:
        self._columns = columns
        self._rows = len(next(iter(columns.values()))) if columns else 0

    def __len__(self) -> int:
        return self._rows

    def __getitem__(self, row: int) -> _ColumnRow:  # type: ignore[override]
        if not -self._rows <= row < self._rows:
            raise IndexError(f"row {row} of {self._rows}")
        return _ColumnRow(self._columns, row % self._rows)

    def __iter__(self) -> Iterator[_ColumnRow]:
        columns = self._columns
        return (_ColumnRow(columns, row) for row in range(self._rows))


class _ColumnRow(Mapping[str, Any]):
    """One row of ``_ColumnRows``, by name."""

    __slots__ = ("_columns", "_row")

    def __init__(self, columns: dict[str, list[Any]], row: int) -> None:
        self._columns = columns
        self._row = row

    def __getitem__(self, name: str) -> Any:
        return self._columns[name][self._row]

    def __contains__(self, name: object) -> bool:
        return name in self._columns

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)


def _check_kind(column: pl.Series, categories: Mapping[str, int] | None) -> None:
    """A feature table's column holds the kind of value the model read in training: text for
    a category, a number (or true/false, read as 1 and 0) otherwise; a column with no value
    at all is all missing, whatever its type (an export that left it empty; pandas reads one
    as float NaN). Otherwise an ``InputError`` naming the feature: a category's numbers cast
    to text ("2.0") would match none of its categories and be scored as missing, each
    contact without a word, and text, a date or an object cannot be a number (a date cast
    to one is its microseconds since 1970); the service refuses them all with a 400."""
    dtype = column.dtype
    text = dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum)
    wanted = text if categories is not None else _is_number(dtype)
    if wanted or column.null_count() == column.len():
        return
    name = column.name
    fix = "as when the model was trained (an attribute: the contacts table's column"
    # the kinds in a user's words, not the feature table's types: a contacts column of whole
    # numbers is Float64 there, and one of text Categorical (README review)
    if categories is not None:
        raise InputError(
            f"feature '{name}' is {value_kind(dtype)}, but "
            f"the model reads it as a category (it was text in training, one of "
            f"{sorted(categories)[:8]}); give it as text, {fix} as text)"
        )
    date = "; a date as the days from it to as_of, as the feature engine makes days_since_"
    date = date if dtype.is_temporal() else ""
    raise InputError(
        f"feature '{name}' is {value_kind(dtype)}, but the model reads it as a number; give it "
        f"as numbers (or true/false), {fix} as numbers){date}"
    )


def value_kind(dtype: pl.DataType) -> str:
    """What a column of ``dtype`` holds, in a user's words."""
    if dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum):
        return "text"
    if dtype == pl.Boolean:
        return "true/false"
    if dtype.is_numeric():
        return "numbers"
    if dtype.is_temporal():
        return "dates or times"
    return f"neither numbers nor text ({dtype})"


def _is_number(dtype: pl.DataType) -> bool:
    """A column the model reads as numbers: integers, floats, decimals, true/false."""
    return dtype.is_numeric() or dtype == pl.Boolean


def _as_float32(column: pl.Series) -> pl.Series:
    """A numeric column (``_check_kind``'s) as float32, the precision the model was trained
    at, null as NaN; a number beyond float32's range becomes infinite here, and is refused
    (``_check_numbers``). Decimals are read as the float64 numbers the reasons quote, then
    rounded, as a record's numbers are. A column of no value at all, whatever its type, is
    all missing."""
    if column.dtype.is_decimal():
        return column.cast(pl.Float64).cast(pl.Float32)
    if _is_number(column.dtype) or column.dtype == pl.Null:
        return column.cast(pl.Float32)
    return pl.Series(column.name, np.full(column.len(), np.nan, dtype=np.float32))


def _row_of(column: pl.Series) -> Callable[[int, int], Any]:
    """``value_of`` for the checks of one column: the value given in a row."""
    return lambda row, _: column[row]


def _check_numbers(
    block: npt.NDArray[np.float32],
    names: list[str],
    floors: npt.NDArray[np.float32],
    whole: npt.NDArray[np.intp],
    value_of: Callable[[int, int], Any],
) -> None:
    """The numeric features of a block (a row per record, a column per name) within
    float32's range, at or above their ``floors`` and whole in the ``whole`` columns;
    ``value_of(row, k)`` is the value given, quoted by the error."""
    if np.isinf(block).any():  # one pass over the block; the culprit is looked for only now
        raise _beyond_float32(block, names, value_of)
    if (block < floors).any():  # NaN is below nothing
        raise _below_zero(block, floors, names, value_of)
    if whole.size:
        _check_whole(block, whole, names, value_of)


def _get(record: Mapping[str, Any], name: str) -> Any:
    return record.get(name)


def _numbers_one_by_one(
    records: Sequence[Any],
    keys: Sequence[Any],
    names: list[str],
    get: Callable[[Any, Any], Any],
) -> npt.NDArray[np.float32]:
    """The slow path, taken only to name the feature that is not a number: ``get(record,
    key)`` is the value of feature ``names[k]`` at ``keys[k]`` (a name, or a place in a row)."""
    out = np.empty((len(records), len(names)), dtype=np.float32)
    with np.errstate(over="ignore"):  # beyond float32: inf, refused by the caller
        for i, record in enumerate(records):
            for j, (key, name) in enumerate(zip(keys, names, strict=True)):
                value = get(record, key)
                if value is not None and (
                    isinstance(value, bool) or not isinstance(value, int | float)
                ):
                    raise FeatureValueError(
                        f"feature '{name}' is a number; got {value!r}", row=i, feature=name
                    )
                out[i, j] = np.nan if value is None else value
    return out


def _first_named(
    wrong: npt.NDArray[np.bool_],
    names: list[str],
    value_of: Callable[[int, int], Any],
    says: str,
    columns: npt.NDArray[np.intp] | None = None,
) -> FeatureValueError:
    """The first ``wrong`` value (row by row), named: ``value_of(row, k)`` is the value given
    for ``names[k]`` (quoted in the message, then ``says``); ``columns[c]`` is the ``k`` of
    the mask's column ``c`` when the mask covers only some features."""
    rows, places = np.nonzero(wrong)
    row, place = int(rows[0]), int(places[0])
    column = place if columns is None else int(columns[place])
    name = names[column]
    return FeatureValueError(
        f"feature '{name}' is {value_of(row, column)!r}{says}",
        row=row,
        feature=name,
        rows=int(np.count_nonzero(wrong[:, place])),
    )


def _beyond_float32(
    block: npt.NDArray[np.float32], names: list[str], value_of: Callable[[int, int], Any]
) -> FeatureValueError:
    """The first value that became infinite in the float32 block, named."""
    return _first_named(
        np.isinf(block.reshape(-1, len(names))),
        names,
        value_of,
        f", beyond the float32 range the model reads numbers in (\u00b1{FLOAT32_MAX:.4g})",
    )


def _below_zero(
    block: npt.NDArray[np.float32],
    floors: npt.NDArray[np.float32],
    names: list[str],
    value_of: Callable[[int, int], Any],
) -> FeatureValueError:
    """The first value of the block below its feature's floor (``_floors``), named."""
    return _first_named(
        block < floors,
        names,
        value_of,
        "; a count, active days, sessions or days since an event is never negative",
    )


def _check_whole(
    block: npt.NDArray[np.float32],
    whole: npt.NDArray[np.intp],
    names: list[str],
    value_of: Callable[[int, int], Any],
) -> None:
    """Counts, active days and sessions (the ``whole`` columns of the block) are whole numbers
    that fit 32 bits, as every builder makes them (a null is a missing value); otherwise a
    ``FeatureValueError`` naming the first that is not."""
    part = block.take(whole, axis=1)
    # the common case in two reductions (a few us a request): all whole, none missing (NaN
    # fails ==), none too large; otherwise look for the culprit, missing values allowed
    if (np.floor(part) == part).all() and part.max(initial=0.0) < 2.0**31:
        return
    with np.errstate(invalid="ignore"):
        wrong = ((part != np.floor(part)) | (part >= 2.0**31)) & ~np.isnan(part)
    if wrong.any():
        raise _first_named(
            wrong,
            names,
            value_of,
            "; a count, active days or sessions is a whole number below 2**31 as the model "
            "reads it (in float32, where 2,147,483,584 and above round to 2**31)",
            columns=whole,
        )


def _check_closed(name: str, value: str, *, row: int, rows: int = 1) -> None:
    vocabulary = CLOSED_CATEGORIES.get(name)
    if vocabulary is not None and value not in vocabulary:
        raise FeatureValueError(
            f"feature '{name}' is {value!r}, not one of its values {list(vocabulary)} (give "
            "null when it is undefined)",
            row=row,
            feature=name,
            rows=rows,
        )


def _complete_values_of(records: Sequence[Mapping[str, Any]], names: list[str]) -> list[Any]:
    """Each record's values of ``names`` (numbers or None), by one C-level getter; a name
    missing is a ``KeyError``, text among the values a ``TypeError``. The text is found by
    summing the values that are not None or zero, which stops at the first text: numpy would
    read "3.5" as a number, and looking at each value's type costs three times as much."""
    if not names:
        return [() for _ in records]
    getter = operator.itemgetter(*names) if len(names) > 1 else (lambda r: (r[names[0]],))
    rows = [getter(record) for record in records]
    sum(filter(None, itertools.chain.from_iterable(rows)))
    return rows


def _values_of(records: Sequence[Mapping[str, Any]], names: list[str]) -> list[Any]:
    """Each record's values of ``names`` in order, None where a name is absent. Records that
    hold every name (a table's rows) are read by one C-level getter: a third of the cost of a
    1,000-contact batch went to a per-name ``get``."""
    if len(names) > 1:
        getter = operator.itemgetter(*names)
        try:
            return [getter(record) for record in records]
        except KeyError:
            pass
    return [[record.get(name) for name in names] for record in records]
