"""The service's request and response bodies.

Every model forbids unknown fields and non-finite numbers, so a typo or a NaN is a 400 naming
the field, never a silent default. The field descriptions are what the OpenAPI document at
``/docs.json`` shows to CRM developers.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StrictBool,
    StrictFloat,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, PydanticCustomError, core_schema

from features.schema import CLOCK_SKEW, OFFSET_HOURS
from features.vocabulary import CHANNELS, EVENT_TYPES, STAGES

# Limits, documented in the README ("The prediction service") and served by GET /metadata; over
# them a request is refused, never truncated.
MAX_EVENTS_PER_CONTACT = 5_000
MAX_BATCH_CONTACTS = 1_000
MAX_FEATURES = 2_000
MAX_TEXT = 200
MAX_VALUE = 1e12  # a money value above this is a unit error, not a purchase

EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]
Channel = Literal[CHANNELS]  # type: ignore[valid-type]
Stage = Literal[STAGES]  # type: ignore[valid-type]

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


class _IsoText:
    """A moment given as ISO 8601 text with a time zone, and nothing else: pydantic alone also
    reads a number, or digits as text, as Unix time, guessing whether seconds or milliseconds
    are meant. Checked in pydantic's core (a string, starting with a date), then parsed
    by its datetime parser: no Python call per event, about 0.13 us per event more than the
    parser alone (0.07 for the text check, 0.06 for the offset's below; 26 us of a 200-event
    request's 250 us of validation).

    The offsets are read as ingest reads them (``features.schema.UTC_OFFSET``): Z or z,
    +01:00, +0100, and +01, whole hours, which pydantic's parser does not read: such text is
    completed to +01:00 first, by a Python call for it alone (one the parser then refuses, a
    25:00+01, is refused as the parser says, with the completed text as the error's input,
    which the service's answers and logs leave out). Every other text goes to the parser
    unchanged, so its errors are the parser's, as before."""

    _TEXT = core_schema.custom_error_schema(
        core_schema.str_schema(strict=True, pattern=r"^\d{4}-\d{2}-\d{2}[Tt ]"),
        custom_error_type="iso_datetime_text",
        custom_error_message=(
            "Input should be ISO 8601 text with a time zone, e.g. 2026-11-20T09:30:00Z "
            "(Unix time, a number of seconds, is not read)"
        ),
    )
    # The text as the parser is to read it. A union tries each in turn and takes the first
    # that passes; it never fails (the last takes any string), so it adds no error of its
    # own. First text that does not end in +HH (Z, +01:00, almost every request): matched
    # in the core, without the cost of a failed match per event; then a date and time of
    # day whose offset is whole hours, completed; then anything else, for the parser to refuse
    _OFFSET_COMPLETED = core_schema.union_schema(
        [
            core_schema.str_schema(pattern=r"(?s)(?:[^+-]..|.[^0-9].|..[^0-9])$"),
            core_schema.chain_schema(
                [
                    core_schema.str_schema(
                        pattern=r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?"
                        + OFFSET_HOURS
                        + "$"
                    ),
                    core_schema.no_info_plain_validator_function(lambda text: f"{text}:00"),
                ]
            ),
            core_schema.str_schema(),
        ],
        mode="left_to_right",
    )

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        del source, handler
        moment = core_schema.datetime_schema(tz_constraint="aware", strict=False)
        return core_schema.chain_schema([cls._TEXT, cls._OFFSET_COMPLETED, moment])

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        del schema, handler
        return {"type": "string", "format": "date-time"}


Moment = Annotated[dt.datetime, _IsoText]


def _refused(place: tuple[str | int, ...], kind: str, message: str) -> ValidationError:
    """A validation error at ``place`` (below the field or model that raises it), so the 400
    names the field: a ``ValueError`` raised in a validator is placed at the validator's
    field, and at no field at all in a model's."""
    error = InitErrorDetails(type=PydanticCustomError(kind, message), loc=place, input=None)
    return ValidationError.from_exception_data("ContactRequest", [error])


def _not_in_future(moment: dt.datetime, what: str) -> dt.datetime:
    """The moment in UTC, if it is not in the future. Refused as a custom error (a ValueError),
    whose message pydantic keeps as it is: a plain ValueError's gains "Value error, "."""
    now = dt.datetime.now(dt.UTC)
    if moment > now + CLOCK_SKEW:
        raise PydanticCustomError(
            "value_error",
            f"{what} {moment.isoformat()} is in the future (server time {now:%Y-%m-%dT%H:%M:%SZ})",
        )
    try:
        return moment.astimezone(dt.UTC)
    except OverflowError:  # e.g. year 1 with a positive offset
        raise PydanticCustomError(
            "value_error", f"{what} {moment.isoformat()} is out of range"
        ) from None


class Event(BaseModel):
    """One interaction of the contact, in funnelcast's event vocabulary."""

    model_config = _STRICT

    timestamp: Moment = Field(
        description=(
            "When it happened: ISO 8601 text with a time zone (e.g. 2026-11-20T09:30:00Z; "
            "the offset Z or z, +01:00, +0100 or +01); not a Unix time."
        )
    )
    event_type: EventType = Field(description="The canonical event type.")
    channel: Channel = Field(description="The channel it happened on.")
    # strict: "12.5" (text) is refused, not read as a number; a JSON integer is a number
    value: StrictFloat | None = Field(
        default=None,
        ge=0,
        le=MAX_VALUE,
        description=(
            "Money value (purchases, carts) as a JSON number, not negative; omitted when not "
            "monetary."
        ),
    )
    campaign_id: str | None = Field(
        default=None, max_length=MAX_TEXT, description="The campaign it belongs to, if any."
    )
    properties: dict[str, Any] | None = Field(
        default=None,
        description=(
            "The event's properties as in the events table (a JSON object), if any. No feature "
            "reads them; they tell two events at the same moment apart (two coupons redeemed "
            "at once count twice, as in training), while an exact repeat counts once."
        ),
    )

    @field_validator("properties")
    @classmethod
    def _properties_finite(cls, properties: dict[str, Any] | None) -> dict[str, Any] | None:
        """No NaN or infinity anywhere in the properties (JSON has no such numbers; the parser
        reads NaN, Infinity and 1e999 as them); named at its place in the object."""
        if properties is not None:
            place = _not_finite(properties)
            if place is not None:
                raise _refused(
                    place, "finite_number", "Input should be a finite number (JSON has no NaN)"
                )
        return properties


def _not_finite(value: Any, place: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """Where in a JSON value (objects and lists) the first NaN or infinite number is; None
    when there is none."""
    if isinstance(value, float):
        return None if math.isfinite(value) else place
    items: Iterable[tuple[str | int, Any]]
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _not_finite(item, (*place, key))
        if found is not None:
            return found
    return None


# int first: a JSON integer stays one (an error quotes it as sent, 20250101, not 20250101.0)
AttributeValue = int | float | bool | str | None
# a number (a JSON integer is one too), text (a category) or null; tried in that order, each
# strictly (no "3.5" read as a number, no true as 1): a smart union tries every member; this
# parsed a 1,000-contact batch of 148 features in about 17 ms instead of 20.5 (profiling script)
FeatureValue = Annotated[StrictFloat | StrictStr | None, Field(union_mode="left_to_right")]


class ContactRequest(BaseModel):
    """One contact to score: its recent raw events (the service computes the features with the
    same code as training) or its precomputed features (from `funnelcast features`)."""

    model_config = _STRICT

    contact_id: str | None = Field(
        default=None,
        max_length=MAX_TEXT,
        description="Your identifier, echoed back; never logged.",
    )
    # strict: only JSON true or false; "yes" or 1 is a 400, never a consent
    marketing_consent: StrictBool = Field(
        description=(
            "Whether the contact consented to marketing (JSON true or false). false: the "
            "contact is not scored and the response says status 'no_consent'."
        )
    )
    as_of: Moment | None = Field(
        default=None,
        description=(
            "The moment to score at (default: now), ISO 8601 text with a time zone. Only "
            "events strictly before it are used."
        ),
    )
    events: list[Event] | None = Field(
        default=None,
        max_length=MAX_EVENTS_PER_CONTACT,
        description=(
            "The contact's raw events before as_of, as far back as the model reads "
            "(GET /metadata's history_days; null, as for the shipped spec, whose all-history "
            "counts and the rules' 'ever purchased' read every event: send its whole history), "
            f"at most {MAX_EVENTS_PER_CONTACT}; a contact with more: send its features "
            "(funnelcast features). Give either events or features."
        ),
    )
    attributes: dict[str, AttributeValue] | None = Field(
        default=None,
        max_length=100,
        description=(
            "The contact's attributes as in the contacts table (signup date, segment, ...), "
            "used with events: dates as ISO text, categories as text, numbers as numbers (true "
            "and false as 1 and 0, as training reads them). A "
            "category value the model did not see in training (a new segment) is scored as "
            "missing, as LightGBM scores unseen categories."
        ),
    )
    features: dict[str, FeatureValue] | None = Field(
        default=None,
        max_length=MAX_FEATURES,
        description=(
            "Precomputed features, every feature the model uses by name (GET /metadata lists "
            "them); null where a value is undefined. Numbers must fit float32 (about "
            "\u00b13.4e38), the precision the model reads. 'rules_stage' is one of the stage "
            f"names {list(STAGES)}; another category value the model did not see in training "
            "is scored as missing. Give either events or features."
        ),
    )
    values: list[FeatureValue] | None = Field(
        default=None,
        max_length=MAX_FEATURES,
        description=(
            "/predict_batch's compact form: the precomputed features as a list, in the order "
            "of the batch's 'feature_names' (the same values as 'features', without repeating "
            "the names for every contact). Not in /predict: give 'features' there."
        ),
    )
    explain: StrictBool = Field(
        default=True,
        description="Include the top-3 reasons (JSON true or false; false skips their cost; "
        "GET /metadata says how they are computed).",
    )

    @field_validator("as_of")
    @classmethod
    def _as_of_past(cls, value: dt.datetime | None) -> dt.datetime | None:
        return None if value is None else _not_in_future(value, "as_of")

    @field_validator("events")
    @classmethod
    def _events_past(cls, events: list[Event] | None) -> list[Event] | None:
        """No event in the future, and every event's moment a valid UTC time. Checked on the
        latest and the earliest moment, not event by event: a validator per event cost more
        than parsing the events (0.6 us a call). The events keep their own time zones; the
        code reading them compares instants."""
        if not events:
            return events
        moments = [event.timestamp for event in events]
        for moment in (max(moments), min(moments)):
            index = moments.index(moment)
            try:
                _not_in_future(moment, "timestamp")
            except ValueError as error:  # named at the event, not at the list
                raise _refused((index, "timestamp"), "value_error", str(error)) from None
        return events

    @model_validator(mode="after")
    def _one_input(self) -> ContactRequest:
        """Events, features or values, and attributes only with events; each refusal is
        placed at a field, so the 400 names one."""
        if (self.events is None) + (self.features is None) + (self.values is None) != 2:
            given = [
                name for name in ("events", "features", "values") if getattr(self, name) is not None
            ]
            raise _refused(
                (given[-1] if given else "events",),
                "one_input",
                "give exactly one of 'events' (raw events), 'features' (precomputed features) "
                "or, in /predict_batch with 'feature_names', 'values'",
            )
        if self.events is None and self.attributes is not None:
            raise _refused(
                ("attributes",),
                "attributes_with_features",
                "'attributes' go with 'events'; with precomputed features, give the attribute "
                "features among them",
            )
        return self


class BatchRequest(BaseModel):
    """Up to MAX_BATCH_CONTACTS contacts in one request; precomputed features by name, or in
    the compact form: 'feature_names' once and each contact's 'values' in their order."""

    model_config = _STRICT

    # over the maximum, validation stops there (whatever the other contacts hold) and
    # serving.errors answers 413 with the limit
    contacts: list[ContactRequest] = Field(
        min_length=1,
        max_length=MAX_BATCH_CONTACTS,
        description=(
            f"The contacts to score, at most {MAX_BATCH_CONTACTS} per request (more: 413)."
        ),
    )
    feature_names: list[Annotated[str, Field(max_length=MAX_TEXT)]] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_FEATURES,
        description=(
            "The compact form of a batch of precomputed features: the model's feature names "
            "once (every one, in any order; GET /metadata lists them), and each contact's "
            "'values' in this order. A fifth of the body of the same batch with 'features', "
            "parsed in half the time. With it, every contact gives 'values'."
        ),
    )

    @field_validator("feature_names")
    @classmethod
    def _names_once(cls, names: list[str] | None) -> list[str] | None:
        if names is not None and len(set(names)) != len(names):
            seen: set[str] = set()
            for index, name in enumerate(names):
                if name in seen:
                    raise _refused(
                        (index,), "repeated_name", f"feature '{name}' is named twice"
                    ) from None
                seen.add(name)
        return names

    @model_validator(mode="after")
    def _values_fit_names(self) -> BatchRequest:
        """With feature names, each contact's values, as many as the names; without them,
        no values (they could not be read)."""
        names = self.feature_names
        for index, contact in enumerate(self.contacts):
            if names is None:
                if contact.values is not None:
                    raise _refused(
                        ("contacts", index, "values"),
                        "values_without_names",
                        "'values' need the batch's 'feature_names' (their order); give both, "
                        "or give 'features' by name",
                    )
            elif contact.values is None:
                raise _refused(
                    ("contacts", index, "values"),
                    "values_missing",
                    "with 'feature_names', give every contact's 'values' in their order",
                )
            elif len(contact.values) != len(names):
                raise _refused(
                    ("contacts", index, "values"),
                    "values_count",
                    f"{len(contact.values)} values for {len(names)} feature names; give one "
                    "value per name (null where undefined)",
                )
        return self


class StageProbabilities(BaseModel):
    """The probability of each funnel stage; they sum to 1."""

    model_config = _STRICT

    dormant: float = Field(description="No meaningful activity in the horizon.")
    awareness: float = Field(description="Opens, impressions, first visits.")
    consideration: float = Field(description="Clicks, repeat visits, downloads, forms.")
    intent: float = Field(description="Cart, checkout, pricing page, demo or trial.")
    conversion: float = Field(description="A first purchase.")
    retention: float = Field(description="A repeat purchase by a customer.")
    advocacy: float = Field(description="A review, referral or share by a customer.")


class Prediction(BaseModel):
    """What funnelcast says about one contact."""

    model_config = _STRICT

    contact_id: str | None = Field(description="As given in the request.")
    status: Literal["scored", "no_consent"] = Field(
        description="'no_consent': the contact opted out of marketing and was not scored."
    )
    model: str = Field(
        description="'funnelcast' (the learned models) or 'rules' (the hand-written fallback)."
    )
    model_name: str | None = Field(
        description="The registered model's name, e.g. 'funnelcast' (null with the rules)."
    )
    model_version: str | None = Field(description="The registry version of the model.")
    as_of: dt.datetime = Field(description="The moment the prediction is for (UTC).")
    stage: Stage | None = Field(description="The predicted funnel stage.")
    probabilities: StageProbabilities | None = Field(
        description="Every stage's probability (the rules give 1 to their stage)."
    )
    propensity: float | None = Field(
        description=(
            "Calibrated probability of a purchase within the horizon (null with the rules)."
        )
    )
    horizon_days: int | None = Field(description="The propensity's horizon in days.")
    reasons: list[str] = Field(
        description="Up to three reasons for the stage, in the CRM's words, strongest first."
    )
    cta: str | None = Field(description="The call to action that fits the stage.")
    message_type: str | None = Field(description="The kind of message that carries the CTA.")
    events_used: int | None = Field(
        description="Events before as_of that the features were computed from (events input)."
    )


class BatchPredictions(BaseModel):
    """One prediction per contact, in request order."""

    model_config = _STRICT

    predictions: list[Prediction] = Field(
        description="One prediction per contact of the request, in the request's order."
    )


class ModelMetadata(BaseModel):
    """The model being served."""

    model_config = _STRICT

    model: str = Field(description="'funnelcast' or 'rules'.")
    model_name: str | None = Field(description="The registered model name.")
    model_version: str | None = Field(description="Its registry version.")
    source: str = Field(
        description="Where it was loaded from: a registry model URI (models:/NAME/VERSION) or "
        "a Bento model tag; the store's location is not given out."
    )
    trained_at: str | None = Field(description="When the model was trained (UTC, ISO 8601).")
    feature_spec_hash: str | None = Field(
        description=(
            "SHA-256 fingerprint of the model's feature spec as compiled: the MLflow run's tag "
            "funnelcast.spec and the spec `funnelcast features` prints."
        )
    )
    features: list[str] = Field(description="The features the model reads, in order.")
    attribute_features: list[str] = Field(
        description="Of those, the ones that come from contact attributes."
    )
    attributes: dict[str, Literal["date", "category", "number"]] = Field(
        default_factory=dict,
        description=(
            "The contacts columns a raw-events request may give in 'attributes', each with "
            "the kind to send it as: a date as ISO text (the model reads days since it, the "
            "feature days_since_<name>), a category as text, a number as a JSON number (true "
            "and false read as 1 and 0)."
        ),
    )
    history_days: int | None = Field(
        default=None,
        description=(
            "How far back before as_of the model's features read events, in days: a "
            "raw-events request needs no older event. Null when some feature reads all history "
            "(the shipped spec's all-history counts, days since the first event, and the rules "
            "stage's 'ever purchased'): send every event the contact has."
        ),
    )
    rules: dict[str, int] = Field(
        default_factory=dict,
        description=(
            "The rules settings the stage rules run with (lookback_days, "
            "repeat_visit_min_days): a model's 'rules_stage' feature is computed with them, so "
            "precomputed features must be built with them too (funnelcast features "
            "--version N builds them with the model's own); feature_spec_hash does not cover "
            "them."
        ),
    )
    stages: list[str] = Field(description="The funnel stages, in funnel order.")
    horizon_days: int | None = Field(description="The propensity horizon.")
    reasons_method: Literal["path", "treeshap"] | None = Field(
        default=None,
        description=(
            "How the reasons share a prediction among the features: 'path' (each split's "
            "change of expected score, credited to its feature) or 'treeshap' (exact Shapley "
            "values); null for the rules."
        ),
    )
    metrics: dict[str, float] = Field(
        description="Out-of-time test metrics logged with the model (e.g. stage macro-F1)."
    )
    limits: dict[str, int] = Field(description="Request limits of this service.")


# --- error bodies (documented in the OpenAPI document: serving.openapi) -------------------------


class ValidationIssue(BaseModel):
    """One way the body does not match the request schema."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="The kind of problem (pydantic's error type, e.g. 'missing').")
    loc: list[str | int] = Field(
        description="Where it is: the path to the field, e.g. ['events', 0, 'timestamp']."
    )
    msg: str = Field(description="What is wrong, in words.")
    url: str | None = Field(default=None, description="pydantic's page about the error type.")


class BadRequest(BaseModel):
    """400: the request is malformed (`detail` lists what does not match the schema) or the
    model cannot use it; `field` says where, and the message starts with it."""

    error: str = Field(description="What is wrong, in words.")
    field: str | None = Field(
        default=None,
        description=(
            "The field at fault as a dotted path, e.g. 'events.0.timestamp' or "
            "'contacts.3.features.rules_stage' (with several problems, the first of "
            "`detail`); null only when the body is not a JSON object."
        ),
    )
    detail: list[ValidationIssue] | None = Field(
        default=None,
        description="Every place the body does not match the schema (malformed requests).",
    )


class Unauthorized(BaseModel):
    """401: no API key, or a wrong one (as `Authorization: Bearer <key>` or `X-API-Key`)."""

    error: Literal["unauthorized"] = Field(
        description="Always 'unauthorized'; nothing more is said about the key."
    )


class TooLarge(BaseModel):
    """413: the body is larger than the service accepts, or a batch holds too many contacts;
    split the request."""

    error: str = Field(description="Which limit was passed, and what to do.")
    field: str | None = Field(
        default=None, description="'contacts' when the batch holds too many contacts."
    )
    limit: int | None = Field(
        default=None, description="The most contacts one batch may hold (a batch over it)."
    )
    limit_bytes: int | None = Field(
        default=None, description="The largest body accepted, in bytes (a body over it)."
    )


class UnsupportedMediaType(BaseModel):
    """415: the body is not sent as JSON."""

    error: str = Field(description="What to send instead (Content-Type: application/json).")


class Timeout(BaseModel):
    """504: the request took longer than the service's timeout (BentoML's answer)."""

    error: str = Field(description="The timeout passed, in seconds.")


class ServerError(BaseModel):
    """500: a fault of the service, not of the request."""

    error: str = Field(description="What failed, without the request's data.")
