"""The Spark engine: the same feature spec as ``features.engine``, for data larger than one
machine (the scale path).

The embedded Polars engine streams one machine's events; years of events for tens of millions
of contacts need a cluster. This engine compiles the SAME ``FeatureSpec``, never a second list of
features:

* every aggregate becomes one conditional aggregate (``count(when(...))``, ``max(when(...))``)
  in a single ``groupBy("contact_id")`` over the events before ``as_of``;
* sessions and distinct days look at each event's predecessor: one window over each contact's
  events in time order gives every event the time of the previous event matching each such
  filter, so both become plain conditional counts (Spark runs ``count(DISTINCT ...)`` as an
  extra pass that multiplies the rows, and the window shares the ``groupBy``'s shuffle);
* derived features are compiled by ``features.spec.compile_expression`` with Spark column
  operations (``_SparkOps``, the twin of the Polars engine's ``_PolarsOps``);
* the rules stage is ``features.stages.rules_stage_as_of`` ported to the same ``groupBy``.

Times are compared as integer microseconds since the epoch, as the Polars engine compares them,
so window edges, UTC days and recency agree to the bit; a parity test holds the two engines
equal. Tests and ``funnelcast features --engine spark`` run Spark in local mode
(``spark_session``); on a cluster, pass your own session.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import TypeAlias

import polars as pl
import pyarrow as pa
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F  # noqa: N812 (Spark's own convention)
from pyspark.sql import types as T  # noqa: N812

from features.consent import (
    PADDED_ID,
    check_contact_ids,
    id_kind_message,
    ids_missing_message,
    ids_repeated_message,
    no_column_message,
    padded_ids_message,
)
from features.engine import (
    NAIVE_TIMESTAMP,
    NO_TIMESTAMP,
    NOT_FINITE_VALUE,
    check_event_kinds,
    damaged_parquet_message,
    events_path,
    missing_message,
    not_a_datetime,
)
from features.errors import InputError
from features.schema import CONTROL_IN_ID, as_utc, control_ids_message
from features.settings import RulesSettings, load_rules_settings
from features.spec import MICROS_PER_DAY, Aggregate, FeatureSpec, SpecError, compile_expression
from features.stages import BASE_RANK
from features.vocabulary import (
    ADVOCACY_EVENTS,
    CHANNELS,
    EVENT_TYPES,
    PURCHASE_EVENTS,
    STAGES,
    stage_rank,
    unknown_vocabulary_message,
)

SparkEvents: TypeAlias = DataFrame | Path | str
SparkContacts: TypeAlias = pa.Table | pl.DataFrame | DataFrame | None

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_TIME = "_t"  # an event's time in microseconds since the epoch
_LAST = "_last"  # a contact's last event before as_of (eligibility)
_LISTED = "_listed"  # the contact is in the contacts table
_SEQUENTIAL = frozenset({"sessions", "distinct_days"})  # kinds that look at the previous event


class JavaNotFoundError(InputError):
    """Spark runs on Java, and none was found."""


def spark_session(*, cores: int = 2, memory: str = "4g") -> SparkSession:
    """A local Spark session (``local[cores]``) for tests, the command line and one-machine runs:
    bound to 127.0.0.1 only, no web UI, UTC, Arrow transfers, errors-only logging."""
    _check_java()
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"  # never listen beyond this machine
    logging_config = resources.files("features").joinpath("config/spark-log4j2.properties")
    try:
        session = _local_session(cores, memory, str(logging_config))
    except Exception as error:  # PySpark's PySparkRuntimeError, a 60-line traceback
        if "JAVA_GATEWAY_EXITED" not in str(error):
            raise
        raise JavaNotFoundError(
            "Spark's Java process stopped as it started (its own words are above); check the "
            "Java installation Spark runs (JAVA_HOME, else `java` on PATH: `java -version` "
            f"says {JAVA_MAJOR} to {JAVA_NEWEST}) and --spark-memory"
        ) from None
    session.sparkContext.setLogLevel("ERROR")
    return session


def _local_session(cores: int, memory: str, logging_config: str) -> SparkSession:
    return (
        SparkSession.builder.master(f"local[{cores}]")
        .appName("funnelcast")
        .config("spark.driver.memory", memory)
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={logging_config}")
        .config("spark.ui.enabled", "false")
        # the feature table comes back whole to the driver; Spark's 1g default refuses ~3M rows
        .config("spark.driver.maxResultSize", "0")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        # Spark's default of 200 shuffle partitions is for clusters; two per core suits one machine
        .config("spark.sql.shuffle.partitions", str(2 * cores))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )


JAVA_MAJOR = 17  # the least Java that PySpark 4 runs on
JAVA_NEWEST = 21  # and the newest it is made for: on 23 and later Hadoop's getSubject fails


def _check_java() -> None:
    """The Java Spark will run, found as its launcher finds it ($JAVA_HOME/bin/java, else
    `java` on PATH), is there and is Java 17 to 21; otherwise a ``JavaNotFoundError``
    naming it. A JAVA_HOME left pointing at a removed or older Java was PySpark's 60-line
    traceback ending in JAVA_GATEWAY_EXITED (spark review)."""
    home = os.environ.get("JAVA_HOME")
    if home:
        java = Path(home) / "bin" / "java"
        if not (java.is_file() and os.access(java, os.X_OK)):
            raise JavaNotFoundError(
                f"JAVA_HOME={home} holds no Java (no bin/java there), and Spark runs the one "
                f"it names; point JAVA_HOME at a Java {JAVA_MAJOR} to {JAVA_NEWEST} installation, "
                "or unset it to use `java` on PATH"
            )
    else:
        found = shutil.which("java")
        if found is None:
            raise JavaNotFoundError(
                f"the Spark engine needs Java {JAVA_MAJOR}, and neither `java` nor JAVA_HOME "
                f"was found; run `make java` (installs it with apt-get), or install Java "
                f"{JAVA_MAJOR} yourself (e.g. openjdk-17-jre-headless) and put `java` on PATH"
            )
        java = Path(found)
    major = _java_major(java)
    if major is not None and not JAVA_MAJOR <= major <= JAVA_NEWEST:
        # a Java 25 passed a check of the least version alone, and Spark failed on it with a
        # 97-line traceback (diff review)
        where = "JAVA_HOME's" if home else "`java` on PATH"
        raise JavaNotFoundError(
            f"the Spark engine runs on Java {JAVA_MAJOR} to {JAVA_NEWEST}, and {where} ({java}) "
            f"is Java {major}; install Java {JAVA_MAJOR} (`make java`) and point JAVA_HOME at it"
        )


def _java_major(java: Path) -> int | None:
    """The major version `java -version` says (8 for "1.8.0_392", 17 for "17.0.15"), or None
    when it says none that can be read (Spark's own start then says what is wrong)."""
    try:
        said = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=60, check=False
        ).stderr
    except (OSError, subprocess.TimeoutExpired) as error:
        raise JavaNotFoundError(
            f"{java} cannot be run ({error}); install Java {JAVA_MAJOR} (`make java`) or point "
            "JAVA_HOME at a working one"
        ) from None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', said)
    if match is None:
        return None
    first = int(match.group(1))
    return int(match.group(2) or 0) if first == 1 else first


def build_contact_features_spark(
    events: SparkEvents,
    contacts: SparkContacts = None,
    *,
    as_of: dt.datetime,
    spec: FeatureSpec,
    rules: RulesSettings | None = None,
    spark: SparkSession | None = None,
) -> DataFrame:
    """The rows and columns of ``features.engine.build_contact_features``, as a Spark DataFrame
    sorted by contact_id (``spark_features_to_polars`` gives the Polars engine's exact types).

    ``events``: a Spark DataFrame with the event schema, or Parquet (a file, a folder written
    by ingest/simulate, or a glob). Events at or after ``as_of`` are never read. Every
    contact is built, whatever its consent (``features.consent.restrict_to_consented``)."""
    as_of = as_utc(as_of, "as_of")
    now = _micros(as_of)
    rules = rules or load_rules_settings()
    if spark is None:
        spark = events.sparkSession if isinstance(events, DataFrame) else spark_session()
    # the rows at or after as_of are left out before the rows are checked: Spark evaluated a
    # projection's checks over rows a filter after it would drop, when the events are an
    # in-memory DataFrame. An event without a timestamp or an id is kept, to be refused
    # wherever it is, as the Polars engine refuses it (counted over the whole file)
    events_before = read_events(events, spark).where(
        F.col("timestamp").isNull()
        | F.col("contact_id").isNull()
        | (F.unix_micros("timestamp") < now)
    )
    past = events_before.select(
        _checked_contact_id(),
        _in_vocabulary("event_type", EVENT_TYPES),
        _in_vocabulary("channel", CHANNELS),
        _required("timestamp", F.unix_micros("timestamp")).alias(_TIME),
        # as the other builders: a NaN or infinite value is refused only when a feature sums it
        _finite_value() if spec.sums_values else F.col("value"),
    )
    aggregates = [*spec.aggregates, *(_rules_aggregates(rules) if spec.rules_stage else [])]
    previous = _previous_columns(aggregates)
    per_contact = (
        _with_previous_times(past, previous, aggregates)
        .groupBy("contact_id")
        .agg(
            *[_aggregate(a, as_of, previous, spec) for a in aggregates],
            *(_rules_signals(as_of, rules) if spec.rules_stage else []),
            F.max(_TIME).alias(_LAST),
        )
    )
    frame, attributes = _eligible_with_attributes(per_contact, contacts, as_of=as_of, spec=spec)
    columns = [F.col("contact_id"), F.timestamp_micros(F.lit(now)).alias("as_of")]
    columns += [_filled(a).alias(a.name) for a in spec.aggregates]
    if spec.rules_stage:
        columns.append(_rules_stage(rules).alias("rules_stage"))
    columns += [_named(name) for name in attributes]
    features = _with_derived(frame.select(*columns), spec)
    order = [
        "contact_id",
        "as_of",
        *(a.name for a in spec.aggregates),
        *(d.name for d in spec.derived),
        *(["rules_stage"] if spec.rules_stage else []),
        *attributes,
    ]
    return features.select(*[_named(name) for name in order]).orderBy("contact_id")


def _named(name: str) -> Column:
    """The column called ``name``, whatever it holds: ``F.col`` reads a dot as a struct's field
    and backticks as quotes, and a contacts table's columns may have either (``crm.segment``)."""
    return F.col("`" + name.replace("`", "``") + "`")


# Spark raises an event type or channel outside the contract as a query error when the rows
# are computed; its message, found again here, becomes the InputError the other builders raise
_UNKNOWN = re.compile(r"the events' `(event_type|channel)` holds '(.*?)', not among")


# every builder refuses contact ids with whitespace around them or a control character in
# them, and events without an id or a timestamp; Spark's messages have no count
_PADDED_IDS = padded_ids_message(None, "the events")
_MISSING = {name: missing_message(name, None) for name in ("contact_id", "timestamp")}
# Spark's message for a control character names its code point, found again here to show the
# character as the other builders do
_CONTROL_CODE = "a contact id in the events holds the control character of code point "
_CONTROL = re.compile(re.escape(_CONTROL_CODE) + r"(\d+)\b")


def _required(name: str, column: Column) -> Column:
    """``column`` (of the events' ``name``), whose null rows fail the query: an event without
    an id would be a contact of its own, one without a timestamp would vanish in the filter on
    as_of. Polars reads the count from the files' statistics; Spark checks the rows it
    computes (those before as_of, and any timestamp that is null)."""
    return (
        F.when(F.col(name).isNull(), F.raise_error(F.lit(_MISSING[name])))
        .otherwise(column)
        .alias(name)
    )


def _checked_contact_id() -> Column:
    """``contact_id`` of each event, whose missing ids (an event of nobody's, a contact of its
    own), padded ids or ids holding a control character fail the query. Checked on the
    events, not on the contacts they make: the contacts without a recent event are left out
    before the result is computed, and a padded id's older events would be lost from its
    contact's all-history features."""
    contact = F.col("contact_id")
    code = F.ascii(F.regexp_extract(contact, f"({CONTROL_IN_ID})", 1)).cast("string")
    refused = F.when(contact.rlike(PADDED_ID), F.raise_error(F.lit(_PADDED_IDS))).when(
        contact.rlike(CONTROL_IN_ID), F.raise_error(F.concat(F.lit(_CONTROL_CODE), code))
    )
    return _required("contact_id", refused.otherwise(contact))


def _finite_value() -> Column:
    """``value``, whose NaN or infinite rows fail the query (when a sum reads them), as every
    builder refuses them."""
    value = F.col("value").cast("double")
    bad = F.isnan(value) | (F.abs(value) == F.lit(float("inf")))
    return (
        F.when(bad, F.raise_error(F.lit(NOT_FINITE_VALUE))).otherwise(F.col("value")).alias("value")
    )


def _in_vocabulary(column: str, vocabulary: tuple[str, ...]) -> Column:
    """The column, whose rows outside the contract (null among them) fail the query, as every
    builder refuses them; only rows before as_of are ever computed, so only those are checked."""
    shown = F.coalesce(F.col(column), F.lit("None"))
    message = unknown_vocabulary_message(column, ["VALUE"]).split("'VALUE'")
    return (
        F.when(F.col(column).isin(list(vocabulary)), F.col(column))
        .otherwise(F.raise_error(F.concat(F.lit(message[0] + "'"), shown, F.lit("'" + message[1]))))
        .alias(column)
    )


def spark_features_to_polars(frame: DataFrame) -> pl.DataFrame:
    """A Spark feature frame as the Polars engine returns it: the same schema (rules_stage an
    Enum, text attributes categorical, as_of in UTC), column order and row order."""
    try:
        arrow = frame.toArrow()
    except Exception as error:  # Spark's error classes vary with its version and the JVM
        for known in (NOT_FINITE_VALUE, _PADDED_IDS, *_MISSING.values()):
            if known in str(error):
                raise InputError(known) from None
        control = _CONTROL.search(str(error))
        if control is not None:
            example = chr(int(control.group(1)))
            raise InputError(control_ids_message(None, "the events", example=example)) from None
        damaged = _damaged_file(str(error))
        if damaged is not None:
            raise InputError(damaged_parquet_message(damaged)) from None
        found = _UNKNOWN.search(str(error))
        if found is None:
            raise
        value = None if found.group(2) == "None" else found.group(2)
        raise InputError(unknown_vocabulary_message(found.group(1), [value])) from None
    converted = pl.from_arrow(arrow)
    assert isinstance(converted, pl.DataFrame)
    casts = []
    for name, dtype in converted.schema.items():
        if name == "as_of":  # Spark labels timestamps with its session time zone
            casts.append(pl.col(name).dt.convert_time_zone("UTC"))
        elif name == "rules_stage":
            casts.append(pl.col(name).cast(pl.Enum(STAGES)))
        elif name != "contact_id" and dtype == pl.String:  # the only other text: attributes
            casts.append(pl.col(name).cast(pl.Categorical))
    return converted.with_columns(casts).sort("contact_id")


# Spark's error when a file's pages do not read (its footer does: events_path read it), and
# the root cause the JVM's trace ends with
_FAILED_READ = re.compile(
    r"\[FAILED_READ_FILE\.NO_HINT\] (Encountered error while reading file [^\n]*?)\.?\s+SQLSTATE"
)
_ROOT_CAUSE = re.compile(r"^Caused by: [\w.$]+: (.*)$", re.MULTILINE)


def _damaged_file(error: str) -> str | None:
    """Spark's reason, when its ``error`` is a Parquet file whose pages do not read: which file,
    and the root cause (Spark's stack trace, 200-odd lines, left out); else None."""
    failed = _FAILED_READ.search(error)
    if failed is None:
        return None
    causes = _ROOT_CAUSE.findall(error)
    return f"Spark: {failed.group(1)}: {causes[-1]}" if causes else f"Spark: {failed.group(1)}"


def read_events(events: SparkEvents, spark: SparkSession) -> DataFrame:
    """Events as a Spark DataFrame (a DataFrame passes through)."""
    frame = events if isinstance(events, DataFrame) else _read_parquet(events, spark)
    fields = {field.name: field.dataType for field in frame.schema.fields}
    check_event_kinds(
        {name: _spark_kind(dtype) for name, dtype in fields.items()},
        {name: dtype.simpleString() for name, dtype in fields.items()},
    )
    if "timestamp" not in fields:
        raise InputError(NO_TIMESTAMP)
    if isinstance(fields["timestamp"], T.TimestampNTZType):
        raise InputError(NAIVE_TIMESTAMP)
    if not isinstance(fields["timestamp"], T.TimestampType):
        raise InputError(not_a_datetime(fields["timestamp"].simpleString()))
    if "value" not in fields:  # events without money values: every value missing
        frame = frame.withColumn("value", F.lit(None).cast("double"))
    elif not isinstance(fields["value"], T.DoubleType):  # as the Polars engine reads it
        frame = frame.withColumn("value", F.col("value").cast("double"))
    return frame


def _hadoop_literal(path: str) -> str:
    """A path as Hadoop's glob reads it literally: its glob characters escaped."""
    return re.sub(r"([\\{}\[\]*?])", r"\\\1", path)


def _read_parquet(events: Path | str, spark: SparkSession) -> DataFrame:
    """The events Parquet as Spark reads it; what Spark cannot read (timestamps in nanoseconds,
    say, which Polars writes and Spark refuses) is an ``InputError`` with Spark's reason."""
    path = events_path(events)
    # the files are found already: Hadoop would read a [ or * in a name as a glob again
    # (review: a folder named `exports [2024]` was "Path does not exist")
    files = [_hadoop_literal(p) for p in ([path] if isinstance(path, str) else path)]
    try:
        return spark.read.parquet(*files)
    except AnalysisException as error:
        reason = " ".join(str(error).split("\n")[0].split())[:240]
        hint = (
            "; Spark reads timestamps in micro- or milliseconds: write them in microseconds "
            "(funnelcast ingest does), or use --engine polars"
            if "NANOS" in reason
            else "; write the events with `funnelcast ingest`"
        )
        raise InputError(f"Spark cannot read the events in {events}: {reason}{hint}") from None


def _spark_kind(dtype: T.DataType) -> str:
    if isinstance(dtype, T.StringType):
        return "text"
    if isinstance(dtype, T.NumericType | T.NullType):  # decimals too: Parquet's unsigned 64-bit
        return "a number"
    return "other"


def _micros(moment: dt.datetime) -> int:
    return (moment - _EPOCH) // dt.timedelta(microseconds=1)


def _window_start(as_of: dt.datetime, days: int) -> int:
    # in microseconds, not a datetime: a window may reach back past year 1
    return _micros(as_of) - days * 86_400_000_000


def _utc_day(micros: Column) -> Column:
    # the UTC day's first microsecond: exact integer arithmetic, whatever the session time zone
    return micros - F.pmod(micros, F.lit(MICROS_PER_DAY))


# --- aggregates -------------------------------------------------------------------------------

_FilterKey: TypeAlias = tuple[
    frozenset[str] | None, frozenset[str] | None, frozenset[str], frozenset[str]
]


def _filter_key(aggregate: Aggregate) -> _FilterKey:
    return (
        aggregate.event_types,
        aggregate.channels,
        aggregate.exclude_event_types,
        aggregate.exclude_channels,
    )


def _matches(aggregate: Aggregate) -> Column:
    condition = F.lit(True)
    if aggregate.event_types is not None:
        condition &= F.col("event_type").isin(sorted(aggregate.event_types))
    if aggregate.channels is not None:
        condition &= F.col("channel").isin(sorted(aggregate.channels))
    if aggregate.exclude_event_types:
        condition &= ~F.col("event_type").isin(sorted(aggregate.exclude_event_types))
    if aggregate.exclude_channels:
        condition &= ~F.col("channel").isin(sorted(aggregate.exclude_channels))
    return condition


def _in_window(aggregate: Aggregate, as_of: dt.datetime) -> Column:
    return _in_window_at(aggregate, as_of, F.col(_TIME))


def _in_window_at(aggregate: Aggregate, as_of: dt.datetime, micros: Column) -> Column:
    if aggregate.window_days is None:
        return micros.isNotNull()
    return micros >= _window_start(as_of, aggregate.window_days)


def _previous_columns(aggregates: list[Aggregate]) -> dict[_FilterKey, str]:
    """A column name for each distinct filter that sessions or distinct days count over."""
    keys = dict.fromkeys(_filter_key(a) for a in aggregates if a.kind in _SEQUENTIAL)
    return {key: f"_previous_{i}" for i, key in enumerate(keys)}


def _with_previous_times(
    past: DataFrame, columns: dict[_FilterKey, str], aggregates: list[Aggregate]
) -> DataFrame:
    """Each event with the time of the contact's previous event matching each filter (null:
    none), from one window over each contact's events in time order. Events tied in time are
    ordered arbitrarily, so the later of two ties sees the earlier at a distance of 0."""
    if not columns:
        return past
    earlier = (
        Window.partitionBy("contact_id").orderBy(_TIME).rowsBetween(Window.unboundedPreceding, -1)
    )
    by_key = {_filter_key(a): a for a in aggregates}
    return past.withColumns(
        {
            name: F.max(F.when(_matches(by_key[key]), F.col(_TIME))).over(earlier)
            for key, name in columns.items()
        }
    )


def _aggregate(
    aggregate: Aggregate,
    as_of: dt.datetime,
    previous_columns: dict[_FilterKey, str],
    spec: FeatureSpec,
) -> Column:
    matching = _matches(aggregate)
    selected = matching & _in_window(aggregate, as_of)
    time = F.col(_TIME)
    if aggregate.kind == "count":
        column = F.count(F.when(selected, 1))
    elif aggregate.kind == "sum":
        column = F.sum(F.when(selected, F.col("value").cast("double")))
    elif aggregate.kind == "distinct_days":
        # count each selected event that is its UTC day's first: the previous matching event
        # is outside the window or on an earlier day
        previous = F.col(previous_columns[_filter_key(aggregate)])
        earlier_same_day = _in_window_at(aggregate, as_of, previous) & (
            _utc_day(previous) == _utc_day(time)
        )
        column = F.count(F.when(selected & ~F.coalesce(earlier_same_day, F.lit(False)), 1))
    elif aggregate.kind == "sessions":
        # a session starts at a matching event with no matching event in the gap before it,
        # looking at all history (a session begun before the window is not counted in it)
        previous = F.col(previous_columns[_filter_key(aggregate)])
        gap = spec.session_gap_us
        column = F.count(F.when(selected & (previous.isNull() | (time - previous > gap)), 1))
    elif aggregate.kind == "days_since_last":
        column = _days_before(as_of, F.max(F.when(matching, time)))
    else:  # days_since_first
        column = _days_before(as_of, F.min(F.when(matching, time)))
    return column.alias(aggregate.name)


def _days_before(as_of: dt.datetime, micros: Column) -> Column:
    # the Polars engine's arithmetic: whole microseconds, as a float, over microseconds per day
    return (F.lit(_micros(as_of)) - micros).cast("double") / F.lit(MICROS_PER_DAY)


def _filled(aggregate: Aggregate) -> Column:
    """Counts and sums of contacts without matching events are zero (the truth); recency stays
    missing (undefined)."""
    column = F.col(aggregate.name)
    if aggregate.kind == "sum":
        return F.coalesce(column, F.lit(0.0))
    if aggregate.kind in ("count", "distinct_days", "sessions"):  # 32-bit, as in Polars
        return F.coalesce(column, F.lit(0)).cast("int")
    return column


# --- derived features -------------------------------------------------------------------------


class _SparkOps:
    """How the spec's arithmetic becomes Spark columns (null on a zero division)."""

    @staticmethod
    def constant(value: float) -> Column:
        return F.lit(value).cast("double")

    @staticmethod
    def neg(a: Column) -> Column:
        return -a

    @staticmethod
    def add(a: Column, b: Column) -> Column:
        return a + b

    @staticmethod
    def sub(a: Column, b: Column) -> Column:
        return a - b

    @staticmethod
    def mul(a: Column, b: Column) -> Column:
        return a * b

    @staticmethod
    def div(a: Column, b: Column) -> Column:
        # guarded, so ANSI mode never raises on a zero denominator
        return F.when(b == 0, F.lit(None).cast("double")).otherwise(a / b)

    @staticmethod
    def max(args: list[Column]) -> Column:
        return _null_if_any_null(args, _nan_if_any_nan(args, F.greatest(*args)))

    @staticmethod
    def min(args: list[Column]) -> Column:
        return _null_if_any_null(args, _nan_if_any_nan(args, F.least(*args)))


def _nan_if_any_nan(args: list[Column], combined: Column) -> Column:
    # Spark orders NaN above every number (greatest gives it, least skips it); every engine
    # gives NaN for a NaN argument (an overflowing sum less itself)
    any_nan = F.lit(False)
    for arg in args:
        any_nan |= F.isnan(arg)
    return F.when(any_nan, F.lit(float("nan"))).otherwise(combined)


def _null_if_any_null(args: list[Column], combined: Column) -> Column:
    # greatest/least skip nulls; the spec says a missing input gives a missing value
    any_null = F.lit(False)
    for arg in args:
        any_null |= arg.isNull()
    return F.when(any_null, F.lit(None).cast("double")).otherwise(combined)


def _with_derived(frame: DataFrame, spec: FeatureSpec) -> DataFrame:
    """The derived features added in batches, as the Polars engine adds them: each batch those
    whose inputs are columns by then, read by name. Inlining a derived feature into every
    later one that uses it (min and max read each argument three times) grew the expression
    about sixfold per level: a chain of six ran Spark out of memory (review)."""
    for ready in spec.derived_in_batches(a.name for a in spec.aggregates):
        frame = frame.select(
            "*",
            *[
                compile_expression(
                    d.tree, leaf=lambda name: _named(name).cast("double"), ops=_SparkOps
                )
                .cast("double")
                .alias(d.name)
                for d in ready
            ],
        )
    return frame


# --- the rules stage (features.stages, ported) ------------------------------------------------


def _base_rank() -> Column:
    """The rank of the stage an event signals on its own (-1: none; purchases and advocacy
    events are decided in ``_rules_stage``, with the purchase history)."""
    rank: Column = F.lit(-1)
    for value in sorted(set(BASE_RANK.values())):
        events = sorted(e for e, r in BASE_RANK.items() if r == value)
        rank = F.when(F.col("event_type").isin(events), value).otherwise(rank)
    return rank


def _rules_aggregates(rules: RulesSettings) -> list[Aggregate]:
    """The rules' signals that are aggregates of the spec's kinds: days with page views."""
    visit_days = Aggregate(
        name="_visit_days",
        kind="distinct_days",
        event_types=frozenset({"page_view"}),
        channels=None,
        exclude_event_types=frozenset(),
        exclude_channels=frozenset(),
        window_days=rules.lookback_days,
    )
    return [visit_days]


def _rules_signals(as_of: dt.datetime, rules: RulesSettings) -> list[Column]:
    in_window = F.col(_TIME) >= _window_start(as_of, rules.lookback_days)
    event_type = F.col("event_type")
    is_purchase = event_type.isin(sorted(PURCHASE_EVENTS))
    return [
        F.max(F.when(in_window, _base_rank())).alias("_base_rank"),
        F.count(F.when(is_purchase, 1)).alias("_purchases_ever"),
        F.count(F.when(is_purchase & in_window, 1)).alias("_purchases_in_window"),
        F.max(event_type.isin(sorted(ADVOCACY_EVENTS)) & in_window).alias("_advocacy_in_window"),
    ]


def _rules_stage(rules: RulesSettings) -> Column:
    """The deepest signal, as ``features.stages``; a contact without events (null signals)
    is dormant."""
    advocacy = F.col("_advocacy_in_window")
    bought_in_window = F.col("_purchases_in_window") > 0
    rank = F.greatest(
        F.coalesce(F.col("_base_rank"), F.lit(-1)),
        F.when(
            F.col("_visit_days") >= rules.repeat_visit_min_days, stage_rank("consideration")
        ).otherwise(-1),
        # a prospect's review is interest, a customer's is advocacy
        F.when(advocacy & (F.col("_purchases_ever") > 0), stage_rank("advocacy"))
        .when(advocacy, stage_rank("consideration"))
        .otherwise(-1),
        # a purchase in the window by someone who had bought before is retention
        F.when(bought_in_window & (F.col("_purchases_ever") > 1), stage_rank("retention"))
        .when(bought_in_window, stage_rank("conversion"))
        .otherwise(-1),
        F.lit(stage_rank("dormant")),
    )
    return F.array(*[F.lit(stage) for stage in STAGES])[rank]


# --- contacts ---------------------------------------------------------------------------------


def _eligible_with_attributes(
    per_contact: DataFrame,
    contacts: SparkContacts,
    *,
    as_of: dt.datetime,
    spec: FeatureSpec,
) -> tuple[DataFrame, list[str]]:
    """Eligible contacts (any event in the longest window, or listed in ``contacts``) with their
    attribute columns, and the names of those columns."""
    longest = spec.longest_window_days
    # every aggregate over all history: any event before as_of makes a contact eligible
    recent = F.lit(True) if longest is None else F.col(_LAST) >= _window_start(as_of, longest)
    if contacts is None:
        return per_contact.where(recent), []
    listed = _contacts_frame(contacts, per_contact.sparkSession)
    wanted = spec.attribute_names(listed.columns)
    missing = [c for c in wanted if c not in listed.columns]
    if missing:
        raise SpecError(
            f"the feature spec lists attributes {missing} that the contacts table lacks; remove "
            "them from `attributes:` or add them to the contacts"
        )
    by_name = spec.attributes != "all"
    named = [
        a
        for name in wanted
        if (a := _attribute(listed.schema[name], as_of, listed=by_name)) is not None
    ]
    spec.check_attribute_columns((output, source) for output, source, _ in named)
    attributes = [column for _, _, column in named]
    listed = listed.select("contact_id", *attributes, F.lit(True).alias(_LISTED))
    # a full join keeps listed contacts without events and active contacts not listed
    frame = per_contact.join(listed, on="contact_id", how="full")
    names = [c for c in listed.columns if c not in ("contact_id", _LISTED)]
    return frame.where(recent | F.col(_LISTED).isNotNull()), names


def _attribute(
    field: T.StructField, as_of: dt.datetime, *, listed: bool
) -> tuple[str, str, Column] | None:
    """The rule of ``features.engine``: text stays text (categorical in Polars), dates become
    days before as_of (missing when at or after it), booleans and numbers floats; other types
    (lists, structs) are left out on purpose. The feature's name, the column's, and the feature."""
    name, column, kind = field.name, _named(field.name), field.dataType
    if isinstance(kind, T.StringType):
        return name, name, column.alias(name)
    if isinstance(kind, T.DateType | T.TimestampType | T.TimestampNTZType):
        if isinstance(kind, T.DateType):
            micros = F.unix_date(column).cast("long") * MICROS_PER_DAY
        elif isinstance(kind, T.TimestampNTZType):
            micros = _naive_as_utc_micros(column)
        else:
            micros = F.unix_micros(column)
        days = _days_before(as_of, micros)
        return f"days_since_{name}", name, F.when(days > 0, days).alias(f"days_since_{name}")
    if isinstance(kind, T.BooleanType | T.NumericType) or (
        isinstance(kind, T.NullType) and listed
    ):  # a listed column of no type: every value missing, as in the other builders
        return name, name, column.cast("double").alias(name)
    return None


def _naive_as_utc_micros(column: Column) -> Column:
    """A naive time read as UTC, as the Polars engine and the online path read it, whatever
    the session's time zone (a caller's session on a cluster need not be in UTC): its day and
    time of day, none of which a time zone touches. Casting it to an instant would read it in
    the session's zone, and so would Spark's timestampdiff across a DST gap."""
    return (
        F.unix_date(F.to_date(column)).cast("long") * MICROS_PER_DAY
        + F.hour(column).cast("long") * 3_600_000_000
        + F.minute(column).cast("long") * 60_000_000
        + F.second(column).cast("long") * 1_000_000
        + F.date_format(column, "SSSSSS").cast("long")
    )


def _check_spark_contacts(contacts: DataFrame) -> None:
    """``check_contact_ids`` for a contacts table given as a Spark DataFrame: text ids, none
    missing, padded or holding a control character, one row per contact; counted by one
    pass over the table."""
    dtype = {f.name: f.dataType for f in contacts.schema.fields}.get("contact_id")
    if dtype is None:
        raise InputError(no_column_message("contact_id", contacts.columns))
    if not isinstance(dtype, T.StringType):
        raise InputError(id_kind_message(dtype.simpleString()))
    ids = F.col("contact_id")
    held = ids.rlike(CONTROL_IN_ID)
    counts = contacts.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count(ids).alias("ids"),
        F.countDistinct(ids).alias("distinct"),
        F.sum(ids.rlike(PADDED_ID).cast("int")).alias("padded"),
        F.count_distinct(F.when(held, ids)).alias("control"),
        F.min(F.when(held, F.ascii(F.regexp_extract(ids, f"({CONTROL_IN_ID})", 1)))).alias("code"),
    ).first()
    assert counts is not None  # an aggregate without grouping has one row
    if counts["ids"] < counts["rows"]:
        raise InputError(ids_missing_message(counts["rows"] - counts["ids"]))
    if counts["padded"]:
        raise InputError(padded_ids_message(counts["padded"], "the contacts table"))
    if counts["control"]:
        example = chr(counts["code"])
        raise InputError(
            control_ids_message(counts["control"], "the contacts table", example=example)
        )
    if counts["distinct"] < counts["ids"]:
        # the contacts on more than one row, counted once each
        repeated = contacts.groupBy(ids).count().where(F.col("count") > 1).count()
        raise InputError(ids_repeated_message(repeated))


def _contacts_frame(
    contacts: pa.Table | pl.DataFrame | DataFrame, spark: SparkSession
) -> DataFrame:
    if isinstance(contacts, DataFrame):
        _check_spark_contacts(contacts)
        return contacts
    check_contact_ids(contacts)  # as the Polars engine does: one row per contact, each with an id
    table = contacts.to_arrow() if isinstance(contacts, pl.DataFrame) else contacts
    # Spark reads plain Arrow strings only: large, view and dictionary (categorical) text is cast
    text = (pa.types.is_large_string, pa.types.is_string_view, pa.types.is_dictionary)
    fields = [
        pa.field(f.name, pa.string())
        if any(is_text(f.type) for is_text in text)
        # a naive time is UTC in every builder; Spark would read its wall time in the
        # session's time zone, which a caller's session need not have in UTC
        else pa.field(f.name, pa.timestamp(f.type.unit, tz="UTC"))
        if pa.types.is_timestamp(f.type) and f.type.tz is None
        # Spark reads no unsigned integers from Arrow; every builder makes numbers floats
        else pa.field(f.name, pa.float64())
        if pa.types.is_unsigned_integer(f.type)
        else f
        for f in table.schema
    ]
    # unsafe: a whole number above 2**53 becomes the nearest double, as in every other builder
    # (a safe cast refused it with a traceback, parity review); the other casts lose nothing
    table = table.cast(pa.schema(fields), safe=False)
    # times of day, durations, lists, structs and maps are no attributes in any builder, and
    # Spark cannot read some of them from Arrow (a time of day, a list of unsigned integers)
    unused = [
        f.name
        for f in table.schema
        if pa.types.is_time(f.type) or pa.types.is_duration(f.type) or pa.types.is_nested(f.type)
    ]
    return spark.createDataFrame(table.drop_columns(unused) if unused else table)
