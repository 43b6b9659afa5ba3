"""The declarative feature spec: loaded from YAML, checked, and expanded into a flat list of
aggregates and derived features that every engine compiles the same way.

``features/config/feature_spec.yaml`` documents the format. Loading expands every template
(``{event_type}_count_{window}d`` for each event type and window) so engines never see a
template, and parses each derived expression once into a small arithmetic tree.
"""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import itertools
import json
import keyword
import math
import string
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache, cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, Field, PlainValidator, field_validator

from features.errors import InputError
from features.settings import FrozenSettings, parse_yaml_model
from features.vocabulary import CHANNELS, EVENT_TYPES

AggregateKind = Literal[
    "count", "sum", "distinct_days", "sessions", "days_since_last", "days_since_first"
]
_WINDOWED: Final = frozenset({"count", "sum", "distinct_days", "sessions"})
_VOCABULARY: Final[dict[str, tuple[str, ...]]] = {"event_type": EVENT_TYPES, "channel": CHANNELS}
_SUMMABLE: Final = frozenset({"value"})
MICROS_PER_DAY: Final = 86_400 * 1_000_000
MAX_WINDOW_DAYS: Final = 36_500  # a window longer than a century is a typo (all history: `all`)
# contact columns that are never features: the key, and consent (a legal flag, not behaviour)
_NOT_ATTRIBUTES: Final = frozenset({"contact_id", "marketing_consent"})


class SpecError(InputError):
    """The feature spec is invalid; the message names the entry and the fix."""


# --- the YAML, as written ---------------------------------------------------------------------


class _Filter(FrozenSettings):
    # an empty list would match nothing (in where) or remove nothing (in where_not): a slip,
    # not a feature; leave the key out instead
    event_type: list[str] | None = Field(default=None, min_length=1)
    channel: list[str] | None = Field(default=None, min_length=1)


def _window(value: object) -> int | Literal["all"]:
    """A window as written: whole days (a YAML integer) or ``all``; anything else is named
    with the fix (``7d`` is the likeliest slip, since feature names read ``_7d``)."""
    if value == "all" or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ValueError(
        f"window {value!r} is not whole days or `all`; write a number of days, e.g. 7 "
        "(not '7d', 7.5 or \"7\")"
    )


Window = Annotated[int | Literal["all"], PlainValidator(_window)]


def _once(windows: list[int | Literal["all"]] | None) -> list[int | Literal["all"]] | None:
    repeated = [w for i, w in enumerate(windows or []) if w in (windows or [])[:i]]
    if repeated:
        raise ValueError(f"window {repeated[0]!r} is listed twice; list each window once")
    return windows


Windows = Annotated[list[Window] | None, AfterValidator(_once)]


class _AggregateEntry(FrozenSettings):
    name: str
    kind: AggregateKind
    column: str | None = None
    for_each: dict[str, list[str] | Literal["all"]] = Field(default_factory=dict)
    where: _Filter = Field(default_factory=_Filter)
    where_not: _Filter = Field(default_factory=_Filter)
    windows: Windows = None


class _DerivedEntry(FrozenSettings):
    name: str
    expr: str
    for_each: dict[str, list[str] | Literal["all"]] = Field(default_factory=dict)
    windows: Windows = None


class _SpecFile(FrozenSettings):
    session_gap_minutes: float
    aggregates: list[_AggregateEntry]
    derived: list[_DerivedEntry] = Field(default_factory=list)
    attributes: Literal["all"] | list[str] = "all"
    rules_stage: bool = True

    @field_validator("aggregates")
    @classmethod
    def _not_empty(cls, value: list[_AggregateEntry]) -> list[_AggregateEntry]:
        if not value:
            raise ValueError("the spec declares no aggregates")
        return value

    @field_validator("session_gap_minutes")
    @classmethod
    def _a_usable_gap(cls, value: float) -> float:
        # the engines count in whole microseconds: a gap under a second is a typo, as is one
        # longer than the longest window
        longest = MAX_WINDOW_DAYS * 24 * 60
        if not (math.isfinite(value) and 1 / 60 <= value <= longest):
            raise ValueError(
                f"{value} is not a usable gap between sessions; give minutes from 0.0167 (one "
                f"second) to {longest:,} (e.g. 30)"
            )
        return value

    @field_validator("attributes")
    @classmethod
    def _attributes_once(cls, value: Literal["all"] | list[str]) -> Literal["all"] | list[str]:
        if value == "all":
            return value
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"attribute(s) {repeated} are listed more than once; list each once")
        never = sorted(_NOT_ATTRIBUTES & set(value))
        if never:
            raise ValueError(
                f"{never} cannot be attributes: contact_id identifies the contact, and consent "
                "decides who is scored, never how (`all` leaves them out too)"
            )
        internal = sorted(name for name in value if name.startswith("_"))
        if internal:
            raise ValueError(
                f"{internal} cannot be attributes: names starting with '_' are the engines' own "
                "(`all` leaves such columns out); rename the column in the contacts table"
            )
        return value


# --- the expanded spec, as engines read it ---------------------------------------------------


@dataclass(frozen=True)
class Aggregate:
    """One base feature: a kind of aggregate over the events matching a filter in a window."""

    name: str
    kind: AggregateKind
    event_types: frozenset[str] | None  # None: any
    channels: frozenset[str] | None
    exclude_event_types: frozenset[str]
    exclude_channels: frozenset[str]
    window_days: int | None  # None: all history before as_of
    column: str | None = None

    def matches(self, event_type: str, channel: str) -> bool:
        """Whether one event passes this aggregate's filter (used by the online path)."""
        return (
            (self.event_types is None or event_type in self.event_types)
            and (self.channels is None or channel in self.channels)
            and event_type not in self.exclude_event_types
            and channel not in self.exclude_channels
        )


@dataclass(frozen=True)
class Derived:
    """A feature computed from other features by a small arithmetic expression."""

    name: str
    expr: str
    tree: ast.expr
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class FeatureSpec:
    aggregates: tuple[Aggregate, ...]
    derived: tuple[Derived, ...]
    attributes: Literal["all"] | tuple[str, ...]
    rules_stage: bool
    session_gap_minutes: float
    fingerprint: str  # sha256 of the expanded spec: equal specs, equal fingerprints
    # a spec a model was trained with, read back to serve it: rules added since (names that
    # differ only in case) do not refuse the contacts columns it was trained on
    logged: bool = field(default=False, compare=False)

    @property
    def names(self) -> tuple[str, ...]:
        """Event-derived feature names, in output order (attributes and rules stage follow)."""
        return tuple(a.name for a in self.aggregates) + tuple(d.name for d in self.derived)

    def attribute_names(self, available: Iterable[str]) -> list[str]:
        """The contact attributes that become features, given the columns a contact has; one
        rule for every engine."""
        if self.attributes == "all":
            # names starting with '_' are the engines' own working columns (a MongoDB `_id`
            # would be no feature either)
            return [
                name
                for name in available
                if name not in _NOT_ATTRIBUTES and not name.startswith("_")
            ]
        return list(self.attributes)

    @cached_property
    def session_gap_us(self) -> int:
        """The session gap in whole microseconds, as ``datetime.timedelta`` rounds it (4.1
        minutes is 246 s, not 246 s less a microsecond): the one value every engine compares
        the time between two events with."""
        return dt.timedelta(minutes=self.session_gap_minutes) // dt.timedelta(microseconds=1)

    @cached_property
    def sums_values(self) -> bool:
        """Whether a feature sums the events' ``value``: then every builder refuses a NaN or
        infinite value before as_of (each event's value is summed in its atom), and otherwise
        none reads it."""
        return any(a.kind == "sum" for a in self.aggregates)

    @cached_property
    def taken_names(self) -> frozenset[str]:
        """The names no attribute feature may take: the spec's features and the reserved."""
        return frozenset(self.names) | _RESERVED_NAMES

    @cached_property
    def taken_without_case(self) -> dict[str, str]:
        """``taken_names`` by their names without case (Spark reads names so): the name."""
        return {name.lower(): name for name in self.taken_names}

    def check_attribute_columns(self, columns: Iterable[tuple[str, str]]) -> None:
        """The attribute features' names (``columns``: each output name and the contacts column
        it comes from) clash with no feature of the spec, no reserved name and each other (a
        date column ``signup`` and a number column ``days_since_signup``); a clash is a
        ``SpecError`` naming the column(s), for every engine (a join would otherwise rename
        one side, or fail)."""
        fix = "list the attributes to use under `attributes:` in your copy of the spec"
        seen: dict[str, tuple[str, str]] = {}  # by the name without case: Spark reads it so
        for output, column in columns:
            earlier = seen.get(output.lower())
            if earlier is not None and earlier[0] == output:
                raise SpecError(
                    f"the contacts table's columns `{earlier[1]}` and `{column}` would both be "
                    f"the attribute feature `{output}`; rename one, or {fix}"
                )
            if earlier is not None and not self.logged:
                raise SpecError(
                    f"the contacts table's columns `{earlier[1]}` and `{column}` would be the "
                    f"attribute features `{earlier[0]}` and `{output}`, which differ only in "
                    f"case (Spark reads them as one name); rename one, or {fix}"
                )
            seen[output.lower()] = (output, column)
            taken = self.taken_without_case.get(output.lower())
            if taken is not None and (taken == output or not self.logged):
                alike = (
                    "" if taken == output else f" (`{taken}`, but for case, which Spark ignores)"
                )
                why = (
                    f"a reserved name ({_RESERVED_SAID})"
                    if taken in _RESERVED_NAMES
                    else "a name the spec already gives a feature"
                )
                raise SpecError(
                    f"the contacts table's column `{column}` would be the attribute feature "
                    f"`{output}`, {why}{alike}; rename the column, or {fix}"
                )

    @property
    def history_days(self) -> int | None:
        """How far back before as_of the features read events, in whole days: the longest
        window, a sessions window with the session gap before it (whether an event in the
        window starts a session depends on the matching event before it), or None when a
        feature reads all history (a window of `all`, a recency, or the rules stage, whose
        'ever purchased' decides retention)."""
        if self.rules_stage or any(a.window_days is None for a in self.aggregates):
            return None
        gap_days = math.ceil(self.session_gap_minutes / (24 * 60))
        return max(
            (a.window_days or 0) + (gap_days if a.kind == "sessions" else 0)
            for a in self.aggregates
        )

    def derived_in_batches(self, known: Iterable[str]) -> list[list[Derived]]:
        """The derived features in batches, each the largest whose inputs are ``known`` columns
        or earlier batches' features: every engine adds one batch at a time, reading the
        inputs by name (inlining each into the next grew Spark's plan sixfold per level)."""
        pending, ready_names, batches = list(self.derived), set(known), []
        while pending:
            ready = [d for d in pending if all(name in ready_names for name in d.inputs)]
            if not ready:  # the spec loader guarantees an order exists
                raise AssertionError(f"derived features {[d.name for d in pending]} never ready")
            batches.append(ready)
            ready_names.update(d.name for d in ready)
            pending = [d for d in pending if d not in ready]
        return batches

    @property
    def longest_window_days(self) -> int | None:
        """The longest lookback of the spec's aggregates, in days; None when every aggregate
        looks at all history (a contact with any event before ``as_of`` is then eligible)."""
        windows = [a.window_days for a in self.aggregates if a.window_days is not None]
        return max(windows) if windows else None


def redefined_features(ours: FeatureSpec, theirs: FeatureSpec) -> list[str]:
    """The event features both specs have, by name, that they define otherwise (another
    filter, window, kind or expression, a derived feature's inputs included, and the session
    gap for session counts): a model of ``theirs`` fed ``ours``' values of such a feature
    reads something else under its name."""
    if ours.fingerprint == theirs.fingerprint:
        return []
    mine, other = _definitions(ours), _definitions(theirs)
    return [name for name in ours.names if name in other and mine[name] != other[name]]


def _definitions(spec: FeatureSpec) -> dict[str, tuple[object, ...]]:
    """Each event feature's full definition, comparable across specs: its filters as the
    event types and channels they keep, so that a filter that changes nothing (a `where_not`
    of sends on purchases) is the same definition (it read as another: diff review)."""
    found: dict[str, tuple[object, ...]] = {}
    for a in spec.aggregates:
        found[a.name] = (
            a.kind,
            _kept(a.event_types, a.exclude_event_types, EVENT_TYPES),
            _kept(a.channels, a.exclude_channels, CHANNELS),
            a.window_days,
            a.column,
            spec.session_gap_us if a.kind == "sessions" else None,
        )
    for d in spec.derived:  # in order: each one's inputs are defined before it
        found[d.name] = (ast.dump(d.tree), *(found.get(name) for name in d.inputs))
    return found


def _kept(
    included: frozenset[str] | None, excluded: frozenset[str], vocabulary: tuple[str, ...]
) -> list[str]:
    """The values a filter keeps: those it names (every one when it names none), less those
    it leaves out."""
    return sorted(set(vocabulary if included is None else included) - excluded)


def load_feature_spec(path: Path | None = None) -> FeatureSpec:
    """The shipped spec, or a user's YAML file, checked and expanded."""
    if path is None:
        text = _shipped_text()
        origin = "the shipped feature spec"
    else:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"feature spec {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise SpecError(
                f"feature spec {path} is not UTF-8 text; save the YAML file as UTF-8"
            ) from error
        except OSError as error:  # a folder, no permission
            raise SpecError(
                f"feature spec {path} cannot be read ({error.strerror or error}); give the YAML "
                "file itself"
            ) from error
        origin = str(path)
    return parse_feature_spec(text, origin=origin)


def parse_feature_spec(
    text: str, *, origin: str = "feature spec", logged: bool = False
) -> FeatureSpec:
    """A spec's text, checked and expanded. ``logged``: the spec a model was trained with,
    read back to serve it; checks added after a model was trained to catch a slip in a new
    spec (a ``for_each`` value its own filter leaves out) do not refuse a model that has it:
    it was trained, tested and registered with those features."""
    try:
        spec_file = parse_yaml_model(text, _SpecFile, origin=origin, error=SpecError)
    except SpecError as exc:
        if "`aggregates`: Field required" in str(exc):  # a snippet, not a whole spec
            raise SpecError(
                f"{exc}. A spec is a whole file: copy features/config/feature_spec.yaml and "
                "add your features to it"
            ) from exc
        raise
    try:
        aggregates, derived = _expand(spec_file, origin, lint=not logged)
    except SpecError as exc:  # every problem names the file, as the YAML's own do
        if str(exc).startswith(origin):
            raise
        raise SpecError(f"{origin}: {exc}") from exc
    attributes = (
        spec_file.attributes if spec_file.attributes == "all" else tuple(spec_file.attributes)
    )
    fingerprint = _fingerprint(
        aggregates,
        derived,
        attributes,
        rules_stage=spec_file.rules_stage,
        session_gap_minutes=spec_file.session_gap_minutes,
    )
    return FeatureSpec(
        aggregates=aggregates,
        derived=tuple(derived),
        attributes=attributes,
        rules_stage=spec_file.rules_stage,
        session_gap_minutes=spec_file.session_gap_minutes,
        fingerprint=fingerprint,
        logged=logged,
    )


def _expand(
    spec_file: _SpecFile, origin: str, *, lint: bool = True
) -> tuple[tuple[Aggregate, ...], list[Derived]]:
    """The spec's aggregates and derived features, one per expansion of its entries."""
    made: list[tuple[str, str]] = []  # each feature's name, and the entry that made it
    aggregates: list[Aggregate] = []
    for i, entry in enumerate(spec_file.aggregates):
        for aggregate in _expand_aggregate(entry, lint=lint):
            aggregates.append(aggregate)
            made.append((aggregate.name, f"aggregates[{i}] {entry.name!r}"))
    known = _unique_names(made, origin, lint=lint)
    derived: list[Derived] = []
    for j, derived_entry in enumerate(spec_file.derived):
        for item in _expand_derived(derived_entry, known, origin, lint=lint):
            derived.append(item)
            known.add(item.name)
            made.append((item.name, f"derived[{j}] {derived_entry.name!r}"))
    _unique_names(made, origin, lint=lint)
    return tuple(aggregates), derived


def shipped_spec_text() -> str:
    """The shipped spec's YAML text (what a model logs beside itself)."""
    return _shipped_text()


@cache
def _shipped_text() -> str:
    return resources.files("features").joinpath("config/feature_spec.yaml").read_text("utf-8")


# --- expansion -------------------------------------------------------------------------------


def _expand_aggregate(entry: _AggregateEntry, *, lint: bool = True) -> Iterator[Aggregate]:
    where = f"aggregate '{entry.name}'"
    if entry.kind == "sum" and entry.column not in _SUMMABLE:
        raise SpecError(f"{where}: kind sum needs `column: value` (got {entry.column!r})")
    if entry.kind != "sum" and entry.column is not None:
        raise SpecError(f"{where}: `column` is only for kind sum")
    if entry.kind in _WINDOWED and not entry.windows:
        listed = ": `windows: []` lists none" if entry.windows == [] else ""
        raise SpecError(f"{where}: kind {entry.kind} needs `windows:` (days, or all){listed}")
    # `windows: []` was taken as none, without a word (a spec a model was trained with keeps
    # loading as it was trained)
    if entry.kind not in _WINDOWED and (entry.windows or (lint and entry.windows == [])):
        raise SpecError(f"{where}: kind {entry.kind} looks at all history; remove `windows`")
    include_types = _checked(entry.where.event_type, "event_type", where)
    include_channels = _checked(entry.where.channel, "channel", where)
    exclude_types = frozenset(_checked(entry.where_not.event_type, "event_type", where) or ())
    exclude_channels = frozenset(_checked(entry.where_not.channel, "channel", where) or ())
    if lint:
        _refuse_void_for_each(
            entry,
            where,
            {
                "event_type": (include_types, exclude_types),
                "channel": (include_channels, exclude_channels),
            },
        )
    for binding in _bindings(entry.for_each, where):
        event_types = _narrow(include_types, binding.get("event_type"))
        channels = _narrow(include_channels, binding.get("channel"))
        windows: list[int | str | None] = [*entry.windows] if entry.windows else [None]
        for window in windows:
            window_days = _window_days(window, where)
            yield Aggregate(
                name=_fill(entry.name, binding, window, where, lint=lint),
                kind=entry.kind,
                event_types=event_types,
                channels=channels,
                exclude_event_types=exclude_types,
                exclude_channels=exclude_channels,
                window_days=window_days,
                column=entry.column,
            )


def _refuse_void_for_each(
    entry: _AggregateEntry,
    where: str,
    filters: Mapping[str, tuple[list[str] | None, frozenset[str]]],
) -> None:
    """A ``for_each`` value, listed or under ``all``, that the entry's own filter leaves out,
    and a ``where`` its ``where_not`` takes whole: those features would never see an event
    (``all`` with such a filter, and the two filters, were taken without a word: spec
    review)."""
    for key, (included, excluded) in filters.items():
        if included is not None and not set(included) - excluded:
            raise SpecError(
                f"{where}: its where and where_not both name every {key} it keeps "
                f"({', '.join(included)}), so it would never see an event; remove them from "
                "one of the two"
            )
        listed = entry.for_each.get(key)
        if listed is None:
            continue
        values = list(_VOCABULARY[key]) if listed == "all" else listed
        void = [v for v in values if v in excluded or (included is not None and v not in included)]
        if void and listed == "all":
            raise SpecError(
                f"{where}: for_each {{{key}: all}} makes features for {void}, which its "
                "where/where_not filter leaves out, so they would never see an event; list "
                f"the {key}s to expand over instead of all"
            )
        if void:
            raise SpecError(
                f"{where}: for_each {key} {void} names what its where/where_not filter leaves "
                "out, so those features would never see an event; remove them from for_each "
                "or from the filter"
            )


def _expand_derived(
    entry: _DerivedEntry, known: set[str], origin: str, *, lint: bool = True
) -> Iterator[Derived]:
    where = f"derived '{entry.name}'"
    if lint and entry.windows == []:  # taken as none (one feature) without a word
        raise SpecError(
            f"{where}: `windows: []` lists no window; list the days (e.g. [7, 28]), or remove "
            "`windows` for one feature"
        )
    windows: list[int | str | None] = [*entry.windows] if entry.windows else [None]
    if lint:  # as an aggregate's: 0 named the features it read ("no aggregate defines") instead
        for window in windows:
            _window_days(window, where)
    for binding in _bindings(entry.for_each, where):
        for window in windows:
            name = _fill(entry.name, binding, window, where, lint=lint)
            expr = _fill(entry.expr, binding, window, where, lint=lint)
            tree, inputs = _parse_expression(expr, where, lint=lint)
            missing = [n for n in inputs if n not in known]
            if missing:
                raise SpecError(
                    f"{origin}: {where} uses {missing}, which no aggregate or earlier derived "
                    "feature defines"
                )
            yield Derived(name=name, expr=expr, tree=tree, inputs=inputs)


def _bindings(for_each: Mapping[str, list[str] | str], where: str) -> list[dict[str, str]]:
    keys = list(for_each)
    for key in keys:
        if key not in _VOCABULARY:
            raise SpecError(f"{where}: for_each over {key!r}; use event_type or channel")
    values = [
        list(_VOCABULARY[k])
        if for_each[k] == "all"
        else _checked(list(for_each[k]), k, where) or []
        for k in keys
    ]
    empty = [k for k, listed in zip(keys, values, strict=True) if not listed]
    if empty:
        raise SpecError(f"{where}: for_each over {empty[0]} lists nothing; list values, or `all`")
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def _checked(values: list[str] | None, key: str, where: str) -> list[str] | None:
    if values is None:
        return None
    unknown = [v for v in values if v not in _VOCABULARY[key]]
    if unknown:
        raise SpecError(f"{where}: unknown {key} {unknown}; known: {', '.join(_VOCABULARY[key])}")
    return list(values)


def _narrow(included: list[str] | None, bound: str | None) -> frozenset[str] | None:
    if bound is None:
        return None if included is None else frozenset(included)
    return frozenset({bound}) if included is None or bound in included else frozenset()


def _window_days(window: int | str | None, where: str) -> int | None:
    if window is None or window == "all":
        return None
    if not isinstance(window, int) or window <= 0:
        raise SpecError(f"{where}: window {window!r} is not a positive number of days or all")
    if window > MAX_WINDOW_DAYS:
        raise SpecError(
            f"{where}: window {window} is longer than {MAX_WINDOW_DAYS:,} days; use `all` for "
            "all history"
        )
    return window


_PLACEHOLDERS: Final = frozenset({"window", "event_type", "channel"})


def _fill(
    template: str,
    binding: Mapping[str, str],
    window: int | str | None,
    where: str,
    *,
    lint: bool = True,
) -> str:
    """The template filled for one expansion. ``lint`` False (a spec a model was trained
    with): Python's formatting as it was before placeholders were held to their three names,
    so a stored model keeps its features' names."""
    values = dict(binding)
    if window is not None:
        values["window"] = "all" if window == "all" else f"{window}d"
    fix = (
        "write placeholders as {window}, {event_type} or {channel}, with nothing else between "
        "the braces, and other braces doubled ({{ or }})"
    )
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:  # "{window", "}"
        raise SpecError(f"{where}: {template!r} is not a name template ({error}); {fix}") from None
    for _, placeholder, format_spec, conversion in parsed:
        if placeholder is None or not lint:
            continue
        if placeholder not in _PLACEHOLDERS or format_spec or conversion:
            # "{}", "{window.x}", "{event_type[0]}", "{window:>4}", "{window!r}": Python's
            # formatting would make a name of them that no one wrote
            shown = "{" + placeholder + (f"!{conversion}" if conversion else "")
            shown += (f":{format_spec}" if format_spec else "") + "}"
            raise SpecError(
                f"{where}: {template!r} is not a name template ({shown} is no placeholder); {fix}"
            )
        if placeholder not in values:
            raise SpecError(
                f"{where}: the name uses {{{placeholder}}}, which neither for_each nor windows "
                "gives"
            )
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError, AttributeError) as error:  # lint False only
        raise SpecError(f"{where}: {template!r} is not a name template ({error}); {fix}") from None


# the columns training puts beside the features: the labels table's and the label join's
# (purchased, revealed_stage, provided_stage), the training frame's labels and row weight. A
# feature or contacts column of one of these names was joined beside them and renamed into the
# label (a review: a CRM column `purchased` became the purchase label, and the real label a
# feature), so no feature may take one
TRAINING_COLUMNS = frozenset(
    {"purchased", "revealed_stage", "provided_stage", "stage_label", "purchase_label"}
    | {"sample_weight"}
)
# the feature table's own columns, and training's; names starting with "_" are the engines'
# working columns (their internal signals, atoms, runs and packed sums), which a feature must
# not shadow
_RESERVED_NAMES = frozenset({"contact_id", "as_of", "rules_stage"}) | TRAINING_COLUMNS
_RESERVED_SAID = (
    "contact_id, as_of and rules_stage are the feature table's columns, "
    + ", ".join(sorted(TRAINING_COLUMNS))
    + " training's labels and row weight, and names starting with '_' the engines' own"
)


def _fingerprint(
    aggregates: Iterable[Aggregate],
    derived: Iterable[Derived],
    attributes: tuple[str, ...] | Literal["all"],
    *,
    rules_stage: bool,
    session_gap_minutes: float,
) -> str:
    """SHA-256 of the expanded spec in a canonical form: event types and channels as sorted
    lists (a frozenset's order changes with each process's string hashing), so the same spec
    has the same fingerprint in every process and on every machine."""

    def names(values: frozenset[str] | None) -> list[str] | None:
        return None if values is None else sorted(values)

    canonical = {
        "aggregates": [
            [
                a.name,
                a.kind,
                names(a.event_types),
                names(a.channels),
                names(a.exclude_event_types),
                names(a.exclude_channels),
                a.window_days,
                a.column,
            ]
            for a in aggregates
        ],
        "derived": [[d.name, d.expr] for d in derived],
        "attributes": attributes if attributes == "all" else list(attributes),
        "rules_stage": rules_stage,
        "session_gap_minutes": session_gap_minutes,
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def _unique_names(made: list[tuple[str, str]], origin: str, *, lint: bool = True) -> set[str]:
    """The feature names are names (letters, digits and '_', not starting with a digit: each
    is a column in every engine, a LightGBM feature and a word in derived expressions), each
    declared once, and no two differ only in case (Spark, and many CRM imports, read column
    names without case). Otherwise a ``SpecError`` naming them. ``lint`` False (a spec a model
    was trained with): the names and their case are not held to this, as before the rule, so
    a stored model still loads. ``made``: each name with the entry that made it, named when
    two entries make one name (the hint was only the placeholders, which the name had: spec
    review)."""
    seen: dict[str, str] = {}  # name -> the entry that made it
    lowered: dict[str, str] = {}  # Spark lowercases names (Java's Locale.ROOT): as str.lower
    for name, entry in made:
        if name in seen and seen[name] != entry:
            raise SpecError(
                f"{origin}: feature {name!r} is made by {seen[name]} and by {entry}; rename "
                "one (or drop it, where the other already makes it)"
            )
        if name in seen:
            raise SpecError(
                f"{origin}: feature {name!r} is declared twice by {entry} (a name over several "
                "windows or event types needs {window}, {event_type} or {channel} in it)"
            )
        if lint and not name.isidentifier():
            raise SpecError(
                f"{origin}: feature name {name!r} is not a name; use letters, digits and '_' "
                "only, not starting with a digit (e.g. email_click_count_7d): it is a column "
                "in every engine, a LightGBM feature and a word in derived expressions"
            )
        reserved = name in _RESERVED_NAMES or (lint and name.lower() in _RESERVED_NAMES)
        if name.startswith("_") or reserved:
            raise SpecError(
                f"{origin}: feature name {name!r} is reserved ({_RESERVED_SAID}); rename the "
                "feature"
            )
        if lint and unicodedata.normalize("NFKC", name) != name:
            # Python's parser reads a name in derived expressions in this form: 'ﬁle_7d' (a
            # ligature) as 'file_7d', another feature's name, or none
            raise SpecError(
                f"{origin}: feature name {name!r} reads as "
                f"{unicodedata.normalize('NFKC', name)!r} in derived expressions (Unicode's "
                "NFKC form); write it that way"
            )
        if lint and keyword.iskeyword(name):  # True, None, class: no name in expressions
            raise SpecError(
                f"{origin}: feature name {name!r} is a Python keyword, which derived "
                "expressions cannot name; rename the feature"
            )
        if lint and name in _FUNCTIONS:
            raise SpecError(
                f"{origin}: feature name {name!r} is a function of derived expressions (min, "
                "max); rename the feature"
            )
        other = lowered.get(name.lower())
        if lint and other is not None:
            raise SpecError(
                f"{origin}: features {other!r} and {name!r} differ only in case; Spark reads "
                "column names without case (so do many CRM imports): rename one"
            )
        seen[name] = entry
        lowered.setdefault(name.lower(), name)
    return set(seen)


# --- the expression language ------------------------------------------------------------------

_FUNCTIONS: Final = frozenset({"min", "max"})


# how deeply a derived expression may nest, in operations and calls (``a + b + c`` is 2 deep):
# every engine builds and evaluates the tree recursively, and a thousand terms overflowed
# Python's stack in them with a traceback (a review), long after the spec loaded
MAX_EXPRESSION_DEPTH = 200
_TOO_DEEP = (
    f"the expression nests more than {MAX_EXPRESSION_DEPTH} operations deep (a sum of more "
    f"than {MAX_EXPRESSION_DEPTH + 1} terms, say); split it into derived features that build "
    "on each other, or use an aggregate over several event types or channels"
)


def _depth(tree: ast.AST) -> int:
    """How many operations and calls deep ``tree`` nests (a name or a number is 0), counted
    without recursion."""
    deepest, stack = 0, [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, ast.BinOp | ast.UnaryOp | ast.Call):
            depth += 1
        deepest = max(deepest, depth)
        stack.extend((child, depth) for child in ast.iter_child_nodes(node))
    return deepest


def _parse_expression(
    text: str, where: str, *, lint: bool = True
) -> tuple[ast.expr, tuple[str, ...]]:
    """Parse ``text`` into a tree of numbers, names, + - * /, unary minus, min() and max()."""
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError as error:
        raise SpecError(f"{where}: expression {text!r} does not parse: {error.msg}") from error
    except (RecursionError, MemoryError):  # Python's parser gives up on thousands of terms
        raise SpecError(f"{where}: {_TOO_DEEP}") from None
    # a stored model's spec built such a tree before the limit (to about 950 terms): read back
    if lint and _depth(tree) > MAX_EXPRESSION_DEPTH:
        raise SpecError(f"{where}: {_TOO_DEEP}")
    names: list[str] = []
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if (
                not (isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS)
                or node.keywords
            ):
                raise SpecError(f"{where}: only min() and max() may be called in {text!r}")
            if len(node.args) < 2:
                raise SpecError(f"{where}: min() and max() take two or more arguments")
        elif isinstance(node, ast.Name):
            if node.id not in _FUNCTIONS:
                names.append(node.id)
            elif id(node) not in called:  # read as a feature, it crashed every engine
                raise SpecError(
                    f"{where}: {node.id} in {text!r} is a function; call it, e.g. "
                    f"{node.id}(event_count_7d, 1)"
                )
        elif isinstance(node, ast.BinOp):
            if not isinstance(node.op, ast.Add | ast.Sub | ast.Mult | ast.Div):
                raise SpecError(f"{where}: only + - * / are allowed in {text!r}")
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.USub):
                raise SpecError(f"{where}: only unary minus is allowed in {text!r}")
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, int | float) or isinstance(node.value, bool):
                raise SpecError(f"{where}: only numbers may appear as constants in {text!r}")
            try:
                finite = math.isfinite(float(node.value))
            except OverflowError:  # an integer beyond any float
                finite = False
            if not finite:
                raise SpecError(
                    f"{where}: the constant in {text!r} is beyond the range of a number "
                    "(about 1.8e308); write a smaller one"
                )
        elif not isinstance(node, ast.Load | ast.operator | ast.unaryop):
            raise SpecError(f"{where}: {type(node).__name__} is not allowed in {text!r}")
    return tree, tuple(dict.fromkeys(names))


def evaluate(tree: ast.expr, value_of: Callable[[str], float | None]) -> float | None:
    """Evaluate an expression tree on plain numbers: a missing input or a division by zero gives
    None, exactly as the batch engines give a missing value."""
    if isinstance(tree, ast.Constant):
        return _constant(tree)
    if isinstance(tree, ast.Name):
        return value_of(tree.id)
    if isinstance(tree, ast.UnaryOp):
        operand = evaluate(tree.operand, value_of)
        return None if operand is None else -operand
    if isinstance(tree, ast.BinOp):
        left, right = evaluate(tree.left, value_of), evaluate(tree.right, value_of)
        if left is None or right is None:
            return None
        if isinstance(tree.op, ast.Add):
            return left + right
        if isinstance(tree.op, ast.Sub):
            return left - right
        if isinstance(tree.op, ast.Mult):
            return left * right
        return None if right == 0 else left / right
    if isinstance(tree, ast.Call):
        args = [evaluate(a, value_of) for a in tree.args]
        if any(a is None for a in args):
            return None
        numbers = [a for a in args if a is not None]
        assert isinstance(tree.func, ast.Name)
        if any(math.isnan(a) for a in numbers):  # NaN in, NaN out, whatever the order
            return math.nan
        return max(numbers) if tree.func.id == "max" else min(numbers)
    raise AssertionError(f"unchecked expression node {type(tree).__name__}")  # parse forbids it


def compile_expression(tree: ast.expr, *, leaf: Callable[[str], Any], ops: Any) -> Any:
    """Compile an expression tree for an engine. ``leaf(name)`` makes a column; ``ops`` gives
    ``constant``, ``neg``, ``add``, ``sub``, ``mul``, ``div`` (null on zero or null), ``max``
    and ``min`` (null when any argument is null)."""
    if isinstance(tree, ast.Constant):
        return ops.constant(_constant(tree))
    if isinstance(tree, ast.Name):
        return leaf(tree.id)
    if isinstance(tree, ast.UnaryOp):
        return ops.neg(compile_expression(tree.operand, leaf=leaf, ops=ops))
    if isinstance(tree, ast.BinOp):
        left = compile_expression(tree.left, leaf=leaf, ops=ops)
        right = compile_expression(tree.right, leaf=leaf, ops=ops)
        kind = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div"}[type(tree.op)]
        return getattr(ops, kind)(left, right)
    if isinstance(tree, ast.Call):
        assert isinstance(tree.func, ast.Name)
        args = [compile_expression(a, leaf=leaf, ops=ops) for a in tree.args]
        return getattr(ops, tree.func.id)(args)
    raise AssertionError(f"unchecked expression node {type(tree).__name__}")


def _constant(node: ast.Constant) -> float:
    assert isinstance(node.value, int | float)  # parse allows numbers only
    return float(node.value)
