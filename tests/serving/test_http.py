"""The service over ASGI (BentoML's app in process, Starlette's test client): authentication,
every error path as a 4xx naming the field, limits, the OpenAPI document, and logs that carry
neither keys nor contact ids."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Served, compact_body, contact_body
from starlette.testclient import TestClient

from features.vocabulary import STAGES
from serving.schemas import MAX_BATCH_CONTACTS, MAX_EVENTS_PER_CONTACT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[TestClient]:
    with pytest.MonkeyPatch.context() as patch:
        for key, value in served.env(FUNNELCAST_MAX_BODY_MB="2").items():
            patch.setenv(key, value)
        from serving.service import Funnelcast

        with TestClient(Funnelcast.to_asgi()) as test_client:  # runs the lifespan: loads
            yield test_client


@pytest.fixture(scope="module")
def auth(served: Served) -> dict[str, str]:
    return {"Authorization": f"Bearer {served.api_key}"}


@pytest.fixture(scope="module")
def body(served: Served, active_contacts: list[str]) -> dict[str, Any]:
    return contact_body(served, active_contacts[-3])


def test_probes_are_open_and_ready(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key-0123456789"},
        {"X-API-Key": "wrong-key-0123456789"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
)
@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/predict"), ("POST", "/predict_batch"), ("GET", "/metadata")]
)
def test_every_endpoint_but_the_probes_needs_the_key(
    client: TestClient, body: dict[str, Any], headers: dict[str, str], method: str, path: str
) -> None:
    response = client.request(method, path, headers=headers, json=body)
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}  # nothing to learn from
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_valid_key_in_either_header_is_accepted(
    client: TestClient, served: Served, body: dict[str, Any], auth: dict[str, str]
) -> None:
    by_bearer = client.post("/predict", headers=auth, json=body)
    by_header = client.post("/predict", headers={"X-API-Key": served.api_key}, json=body)
    assert by_bearer.status_code == by_header.status_code == 200
    assert by_bearer.json() == by_header.json()
    answer = by_bearer.json()
    assert answer["contact_id"] == body["contact_id"]
    assert answer["status"] == "scored"
    assert list(answer["probabilities"]) == list(STAGES)
    assert answer["model"] == "funnelcast"
    # the registered name and version, as the issue asks ("model name and version")
    assert (answer["model_name"], answer["model_version"]) == ("funnelcast", "1")
    assert answer["as_of"] == body["as_of"]


def test_metadata(client: TestClient, auth: dict[str, str]) -> None:
    meta = client.get("/metadata", headers=auth).json()
    assert meta["model_version"] == "1"
    assert meta["limits"]["max_body_bytes"] == 2 * 1024 * 1024
    assert len(meta["features"]) > 100
    assert meta["reasons_method"] == "path"  # the training default, carried by the model
    # the simulator's contacts columns, as a raw-events request gives them
    assert meta["attributes"] == {
        "acquisition_source": "category",
        "segment": "category",
        "signup_date": "date",
    }
    assert "days_since_signup_date" in meta["attribute_features"]
    # the shipped spec reads all history (purchase_count_all, the rules' "ever purchased"):
    # a raw-events request sends every event, as the events field's description says
    assert meta["history_days"] is None
    # the rules its rules_stage feature was computed with, which the spec hash does not cover
    assert meta["rules"] == {"lookback_days": 28, "repeat_visit_min_days": 2}
    described = client.get("/docs.json").json()["components"]["schemas"]
    events = described["ContactRequest"]["properties"]["events"]["description"]
    assert "history_days" in events
    assert "at least the last 90 days" not in events


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b'{"marketing_consent": true, "events": [', None),  # malformed JSON
        (b"[1, 2, 3]", None),
        # past the JSON parser's 4,300 digits: refused before any field is read (README)
        (b'{"marketing_consent": true, "attributes": {"segment": 1' + b"0" * 4300 + b"}}", None),
        ({"marketing_consent": True, "events": "lots"}, ["events"]),
        ({"marketing_consent": True, "events": [], "extra": 1}, ["extra"]),
        (
            {
                "marketing_consent": True,
                "events": [
                    {"timestamp": "2026-01-01T00:00:00Z", "event_type": "wink", "channel": "web"}
                ],
            },
            ["events", 0, "event_type"],
        ),
        (
            {
                "marketing_consent": True,
                "events": [
                    {
                        "timestamp": "2026-01-01T00:00:00Z",
                        "event_type": "page_view",
                        "channel": "carrier_pigeon",
                    }
                ],
            },
            ["events", 0, "channel"],
        ),
        (
            {
                "marketing_consent": True,
                "events": [
                    {"timestamp": "31/12/2025", "event_type": "page_view", "channel": "web"}
                ],
            },
            ["events", 0, "timestamp"],
        ),
        (
            {
                "marketing_consent": True,
                "events": [
                    {
                        "timestamp": "2999-01-01T00:00:00Z",
                        "event_type": "page_view",
                        "channel": "web",
                    }
                ],
            },
            ["events", 0, "timestamp"],  # in the future
        ),
        (
            {
                "marketing_consent": True,
                "events": [
                    {
                        "timestamp": "2026-01-01T00:00:00Z",
                        "event_type": "page_view",
                        "channel": "web",
                    }
                ]
                * (MAX_EVENTS_PER_CONTACT + 1),
            },
            ["events"],
        ),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    client: TestClient, auth: dict[str, str], payload: Any, field: list[Any] | None
) -> None:
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    response = client.post(
        "/predict", headers={**auth, "Content-Type": "application/json"}, content=content
    )
    assert response.status_code == 400
    answer = response.json()
    assert answer["error"]
    assert "IODescriptor" not in answer["error"]  # BentoML's internal class is not the field
    if field is not None:
        assert field in [d["loc"] for d in answer["detail"]]
        dotted = ".".join(str(part) for part in answer["detail"][0]["loc"])
        assert answer["field"] == dotted
        assert answer["error"].startswith(f"{dotted}: ")
    else:
        assert answer["field"] is None


def test_every_400_has_the_same_shape_with_the_field(
    client: TestClient, auth: dict[str, str]
) -> None:
    """The schema's refusals (BentoML's) and the model's (the service's) both say `field`."""
    event = {"timestamp": "2026-01-01T00:00:00Z", "event_type": "page_veiw", "channel": "web"}
    schema = client.post(
        "/predict_batch",
        headers=auth,
        json={"contacts": [{"marketing_consent": True, "events": [event]}]},
    )
    model = client.post(
        "/predict", headers=auth, json={"marketing_consent": True, "features": {"height_cm": 1}}
    )
    malformed = client.post(
        "/predict", headers={**auth, "Content-Type": "application/json"}, content=b"{"
    )
    for response in (schema, model, malformed):
        assert response.status_code == 400
        assert set(response.json()) >= {"error", "field"}
    assert schema.json()["field"] == "contacts.0.events.0.event_type"
    assert schema.json()["error"].startswith("contacts.0.events.0.event_type: Input should be")
    assert model.json()["field"] == "features"
    assert model.json()["error"].startswith("features: unknown feature")
    assert malformed.json()["field"] is None
    assert malformed.json()["error"]


def test_every_400_of_a_json_object_names_a_field(
    client: TestClient, auth: dict[str, str], body: dict[str, Any]
) -> None:
    """Null only for a body that is no JSON object; a value that is none of the kinds a
    feature or attribute takes is named by its own place, not by pydantic's kind names."""
    first = client.get("/metadata", headers=auth).json()["features"][0]
    cases = [
        ({"marketing_consent": True}, "events"),  # neither events nor features
        ({"marketing_consent": True, "events": [], "features": {}}, "features"),  # both
        ({"marketing_consent": True, "features": {}, "attributes": {}}, "attributes"),
        ({"marketing_consent": True, "features": {first: [1]}}, f"features.{first}"),
        ({**body, "attributes": {"segment": {"a": 1}}}, "attributes.segment"),
        ({"marketing_consent": True, "events": [], "": 1}, '""'),
    ]
    for sent, field in cases:
        answer = client.post("/predict", headers=auth, json=sent).json()
        assert answer["field"] == field, sent
        assert answer["error"].startswith(f"{field}: ")
        batch = client.post("/predict_batch", headers=auth, json={"contacts": [body, sent]})
        assert batch.json()["field"] == f"contacts.1.{field}"
    for not_an_object in (b"[]", b"1", b"null", b'"x"'):
        answer = client.post(
            "/predict", headers={**auth, "Content-Type": "application/json"}, content=not_an_object
        ).json()
        assert answer["field"] is None
        assert "object" in answer["error"]


@pytest.mark.parametrize(
    "moment",
    [
        "2026-04-01T23:59:60Z",
        "2026-04-01T24:00",
        "2026-04-01 10:61",
        # a zone out of range or form (review: these were told of the time of day alone)
        "2026-04-01T10:00:00 UTC",
        "2026-04-01T10:00:00+99",
        "2026-04-01T10:00:00+01:00:00",
        "2026-04-01T10:00:00 +01:00",
    ],
)
def test_a_time_of_day_or_zone_out_of_range_is_said_so(
    client: TestClient, auth: dict[str, str], moment: str
) -> None:
    """Review: a leap second was refused as "unexpected extra characters at the end of the
    input", as pydantic reads it; the message now says it may be the time of day (in an event
    and in as_of)."""
    event = {"timestamp": moment, "event_type": "page_view", "channel": "web"}
    for body, named in (
        ({"marketing_consent": True, "events": [event]}, "events.0.timestamp"),
        ({"marketing_consent": True, "events": [], "as_of": moment}, "as_of"),
    ):
        answer = client.post("/predict", headers=auth, json=body).json()
        assert answer["field"] == named
        assert answer["error"].startswith(f"{named}: Input should be a valid datetime")
        assert answer["error"].endswith(
            "; if a time of day and a zone follow the date, one of them may be out of range "
            "or form: hours run 00-23, minutes and seconds 00-59 (a leap second's :60 is not "
            "accepted: give :59), and the zone is Z or an offset from -23:59 to +23:59 (+01, "
            "+0100 or +01:00) written right after the time (' UTC' is not read)"
        )
        assert answer["detail"][0]["msg"].endswith("extra characters at the end of the input")


@pytest.mark.parametrize(
    ("sent", "field", "kinds"),
    [
        ({"attributes": {"signup_date": {"y": 2026}}}, "attributes.signup_date", 3),
        ({"attributes": {"segment": ["a"]}}, "attributes.segment", 3),
        ({"features": {"rules_stage": False}}, "features.rules_stage", 2),
        ({"features": {"rules_stage": ["intent"]}}, "features.rules_stage", 2),
    ],
)
def test_a_value_of_no_kind_a_value_may_take_is_told_every_kind(
    client: TestClient, auth: dict[str, str], sent: dict[str, Any], field: str, kinds: int
) -> None:
    """Review: a date or a category given as an object was told "Input should be a valid
    integer (and 3 more)", pydantic's message for the first kind of the union alone."""
    body = {"marketing_consent": True, **({"events": []} if "attributes" in sent else {}), **sent}
    answer = client.post("/predict", headers=auth, json=body).json()
    assert answer["field"] == field
    words = "a number, true or false or text" if kinds == 3 else "a number or text"
    assert answer["error"] == (
        f"{field}: Input should be {words} (a date or a category as text), or null; not an "
        "object or a list"
    )
    assert len(answer["detail"]) >= kinds  # every kind's problem is still there
    # a number of no finite size is a number: told so, not that it is of no kind (diff review)
    place = sent.get("features", sent.get("attributes"))
    assert place is not None
    name = next(iter(place))
    key = "features" if "features" in sent else "attributes"
    huge = b'{"marketing_consent": true, %s"%s": {"%s": 1e400}}' % (
        b'"events": [], ' if key == "attributes" else b"",
        key.encode(),
        name.encode(),
    )
    answer = client.post(
        "/predict", headers={**auth, "Content-Type": "application/json"}, content=huge
    ).json()
    assert answer["field"] == field
    assert answer["error"].startswith(f"{field}: Input should be a finite number")


@pytest.mark.parametrize(
    ("moments", "named", "words"),
    [
        (["2026-01-01T00:00:00Z", "2999-01-01T00:00:00+02:00"], "events.1.timestamp", "future"),
        (["0001-01-01T00:00:00+05:00", "2026-01-01T00:00:00Z"], "events.0.timestamp", "range"),
    ],
)
def test_an_event_in_the_future_or_out_of_range_is_named(
    client: TestClient, auth: dict[str, str], moments: list[str], named: str, words: str
) -> None:
    events = [{"timestamp": m, "event_type": "page_view", "channel": "web"} for m in moments]
    response = client.post(
        "/predict", headers=auth, json={"marketing_consent": True, "events": events}
    )
    assert response.status_code == 400
    assert response.json()["field"] == named
    (detail,) = response.json()["detail"]
    assert ".".join(str(part) for part in detail["loc"]) == named
    assert words in detail["msg"]
    batch = {"contacts": [{"marketing_consent": True, "events": []}] * 2}
    batch["contacts"][1] = {"marketing_consent": True, "events": events}
    response = client.post("/predict_batch", headers=auth, json=batch)
    assert response.json()["field"] == f"contacts.1.{named}"


def test_a_request_the_model_cannot_use_is_a_400_naming_the_field(
    client: TestClient, auth: dict[str, str], body: dict[str, Any]
) -> None:
    response = client.post(
        "/predict", headers=auth, json={"marketing_consent": True, "features": {"height_cm": 180}}
    )
    assert response.status_code == 400
    assert response.json()["field"] == "features"
    assert "height_cm" in response.json()["error"]
    batch = {"contacts": [body, {**body, "attributes": {"shoe_size": 42}}]}
    response = client.post("/predict_batch", headers=auth, json=batch)
    assert response.status_code == 400
    assert response.json()["field"] == "contacts.1.attributes"


def test_the_batch_endpoint_keeps_order_and_consent(
    client: TestClient, auth: dict[str, str], body: dict[str, Any]
) -> None:
    contacts = [{**body, "contact_id": f"c{k}", "marketing_consent": k % 3 != 0} for k in range(7)]
    response = client.post("/predict_batch", headers=auth, json={"contacts": contacts})
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert [p["contact_id"] for p in predictions] == [f"c{k}" for k in range(7)]
    for k, prediction in enumerate(predictions):
        if k % 3 == 0:
            assert prediction["status"] == "no_consent"
            assert prediction["stage"] is None
        else:
            assert prediction["status"] == "scored"
            assert prediction["propensity"] is not None
    single = client.post("/predict", headers=auth, json=contacts[1]).json()
    assert single == predictions[1]


def test_the_compact_batch_form_answers_as_the_form_by_name(
    client: TestClient, auth: dict[str, str], body: dict[str, Any], features: dict[str, Any]
) -> None:
    """Over HTTP, the feature names once and each contact's values (a fifth of the body of a
    real batch): the same answer as the features by name; each mistake a 400 naming its field,
    without pydantic's name of the kind the value failed to be."""
    by_name = [
        {"contact_id": f"c{k}", "marketing_consent": k != 1, "as_of": body["as_of"]}
        | {"features": features}
        for k in range(3)
    ]
    names = sorted(features)  # not the model's order
    good = compact_body(by_name, names)
    compact = client.post("/predict_batch", headers=auth, json=good)
    assert compact.status_code == 200, compact.text
    expected = client.post("/predict_batch", headers=auth, json={"contacts": by_name})
    assert compact.json() == expected.json()
    statuses = [p["status"] for p in compact.json()["predictions"]]
    assert statuses == ["scored", "no_consent", "scored"]
    first, second = good["contacts"][:2]
    mistakes: list[tuple[dict[str, Any], str]] = [
        ({**good, "feature_names": [*names[:-1], names[0]]}, f"feature_names.{len(names) - 1}"),
        ({**good, "feature_names": ["height_cm", *names[1:]]}, "feature_names"),
        ({**good, "contacts": [first, {**second, "values": [1]}]}, "contacts.1.values"),
        ({**good, "contacts": [{**first, "values": [[1.0]] * len(names)}]}, "contacts.0.values.0"),
        ({"contacts": good["contacts"]}, "contacts.0.values"),
        (
            {**good, "contacts": [first, {"marketing_consent": True, "features": features}]},
            "contacts.1.values",
        ),
    ]
    for sent, field in mistakes:
        answer = client.post("/predict_batch", headers=auth, json=sent)
        assert answer.status_code == 400, field
        assert answer.json()["field"] == field
        assert answer.json()["error"].startswith(f"{field}: ")
    single = client.post("/predict", headers=auth, json={**first, "contact_id": "alone"})
    assert single.status_code == 400
    assert single.json()["field"] == "values"


def _consent_twice(contact: dict[str, Any], first: bool, then: str = "marketing_consent") -> str:
    """The contact as JSON text with marketing_consent given twice: ``first``, and true after
    it under the name ``then`` (an escaped spelling reads as the same name)."""
    rest = {k: v for k, v in contact.items() if k != "marketing_consent"}
    return json.dumps({"marketing_consent": first, **rest})[:-1] + f', "{then}": true}}'


@pytest.mark.parametrize("first", [False, True])
@pytest.mark.parametrize("then", ["marketing_consent", "marketing\\u005fconsent"])
def test_consent_given_twice_is_refused_never_scored(
    client: TestClient, auth: dict[str, str], body: dict[str, Any], first: bool, then: str
) -> None:
    json_auth = {**auth, "Content-Type": "application/json"}
    twice = _consent_twice(body, first, then)
    assert json.loads(twice)["marketing_consent"] is True  # what a parser alone would score
    once = json.dumps({**body, "marketing_consent": True})
    batch = f'{{"contacts": [{once}, {twice}, {once}]}}'
    response = client.post("/predict", headers=json_auth, content=twice)
    assert response.status_code == 400
    assert response.json()["field"] == "marketing_consent"
    assert "more than once" in response.json()["error"]
    response = client.post("/predict_batch", headers=json_auth, content=batch)
    assert response.status_code == 400
    assert response.json()["field"] == "contacts.1.marketing_consent"
    # a path Starlette would still route to the endpoints (its "$" matches before a newline)
    for path in ("/predict%0A", "/predict_batch%0A"):
        response = client.post(path, headers=json_auth, content=batch if "batch" in path else twice)
        assert response.status_code == 404


def test_the_name_marketing_consent_elsewhere_is_no_duplicate(
    client: TestClient, auth: dict[str, str], body: dict[str, Any]
) -> None:
    """Mentions of the name beyond one per contact (here a contact id; a \\u escape too) cost
    an exact look, which finds each contact giving its consent once: scored."""
    json_auth = {**auth, "Content-Type": "application/json"}
    named = {**body, "contact_id": "marketing_consent", "marketing_consent": True}
    escaped = {**body, "contact_id": "caf\u00e9", "marketing_consent": True}
    assert "\\u00e9" in json.dumps(escaped)  # sent as an escape, not as UTF-8
    for contact in (named, escaped):
        response = client.post("/predict", headers=json_auth, content=json.dumps(contact))
        assert response.status_code == 200
        assert response.json()["status"] == "scored"
        assert response.json()["contact_id"] == contact["contact_id"]
    both = json.dumps({"contacts": [named, escaped]})
    response = client.post("/predict_batch", headers=json_auth, content=both)
    assert response.status_code == 200
    assert [p["status"] for p in response.json()["predictions"]] == ["scored", "scored"]


def test_over_the_batch_limit_is_a_413_with_the_limit(
    client: TestClient, auth: dict[str, str]
) -> None:
    small = {"marketing_consent": False, "events": []}
    bad = {"marketing_consent": "yes", "events": []}  # a 400 alone, but the limit comes first
    for contacts in ([small] * (MAX_BATCH_CONTACTS + 1), [bad] + [small] * MAX_BATCH_CONTACTS):
        response = client.post("/predict_batch", headers=auth, json={"contacts": contacts})
        assert response.status_code == 413
        assert response.json()["limit"] == MAX_BATCH_CONTACTS
        assert response.json()["field"] == "contacts"
    at_the_limit = client.post(
        "/predict_batch", headers=auth, json={"contacts": [small] * MAX_BATCH_CONTACTS}
    )
    assert at_the_limit.status_code == 200
    assert len(at_the_limit.json()["predictions"]) == MAX_BATCH_CONTACTS


def test_a_body_over_the_size_limit_is_a_413_before_it_is_read(
    client: TestClient, auth: dict[str, str]
) -> None:
    big = (
        b'{"marketing_consent": true, "events": [], "contact_id": "'
        + b"x" * (3 * 1024 * 1024)
        + b'"}'
    )
    response = client.post(
        "/predict", headers={**auth, "Content-Type": "application/json"}, content=big
    )
    assert response.status_code == 413
    assert response.json()["limit_bytes"] == 2 * 1024 * 1024

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(3):
            yield b" " * (1024 * 1024)

    response = client.post(
        "/predict", headers={**auth, "Content-Type": "application/json"}, content=chunks()
    )
    assert response.status_code == 413


def test_logs_carry_neither_keys_nor_contact_ids(
    client: TestClient,
    served: Served,
    auth: dict[str, str],
    body: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret_id = "contact-4711-private"
    with caplog.at_level(logging.DEBUG):
        client.post(
            "/predict",
            headers=auth,
            json={
                "contact_id": secret_id,
                "marketing_consent": True,
                "events": [
                    {
                        "timestamp": "2999-01-01T00:00:00Z",
                        "event_type": "page_view",
                        "channel": "web",
                    }
                ],
            },
        )
        client.post(
            "/predict",
            headers=auth,
            json={"contact_id": secret_id * 20, "marketing_consent": True, "events": []},
        )
        client.post("/predict", headers=auth, json={"marketing_consent": True})
        client.post("/predict", headers={"X-API-Key": served.api_key + "x"}, json={})
        # keys the client chose are input too: an e-mail address, a forged log line
        chosen = ["jane.doe@example.com", "ssn-123-45-6789", "x\nCRITICAL forged line"]
        client.post(
            "/predict",
            headers=auth,
            json={
                "marketing_consent": True,
                "events": [{**body["events"][0], chosen[1]: 1}],
                "attributes": {chosen[0]: [1]},
                chosen[2]: 1,
            },
        )
        # the model's own names are no secret, and say where
        first = client.get("/metadata", headers=auth).json()["features"][0]
        client.post(
            "/predict",
            headers=auth,
            json={"marketing_consent": True, "features": {first: [1], chosen[0]: 1}},
        )
    assert "refused with 400" in caplog.text  # the refusal is logged ...
    assert secret_id not in caplog.text  # ... without the input
    for key in chosen:
        assert key not in caplog.text
    assert "CRITICAL forged" not in caplog.text
    assert "attributes.<name>" in caplog.text
    assert f"features.{first}." in caplog.text
    assert served.api_key not in caplog.text
    refusals = [r for r in caplog.records if "refused with 400" in r.getMessage()]
    assert refusals
    assert {r.levelname for r in refusals} == {"WARNING"}  # the client's mistake
    # neither events nor features: placed at events, as the 400 names it
    assert any("refused with 400: events (one_input)" in r.getMessage() for r in refusals)


def test_the_log_filter_makes_a_client_that_hung_up_one_warning_line_without_a_traceback(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """BentoML logs a body read cut short by the client as an ERROR with the traceback of
    Starlette's ClientDisconnect (privacy review: log noise an operator would chase)."""
    from starlette.requests import ClientDisconnect

    try:
        raise ClientDisconnect
    except ClientDisconnect:
        with caplog.at_level(logging.INFO):  # as BentoML's log_exception logs it
            logging.getLogger("bentoml._internal.server.http_app").error(
                "Exception on %s [%s]", "/predict", "POST", exc_info=True
            )
    (record,) = [r for r in caplog.records if "/predict" in r.getMessage()]
    assert record.levelname == "WARNING"
    assert record.exc_info is None
    assert "the client disconnected before its request was read" in record.getMessage()
    assert "Traceback" not in caplog.text


def test_a_batch_over_the_limit_is_logged_with_the_413_it_gets(
    client: TestClient, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    too_many = {"contacts": [{"marketing_consent": False, "events": []}] * 1001}
    with caplog.at_level(logging.INFO):
        assert client.post("/predict_batch", headers=auth, json=too_many).status_code == 413
    assert "refused with 413: contacts (too_long)" in caplog.text
    assert "refused with 400" not in caplog.text


def test_the_openapi_document_describes_every_field(client: TestClient) -> None:
    document = client.get("/docs.json").json()
    assert {"/predict", "/predict_batch", "/metadata", "/healthz", "/readyz"} <= set(
        document["paths"]
    )
    schemas = document["components"]["schemas"]
    for name in ("Event", "ContactRequest", "Prediction", "StageProbabilities", "ModelMetadata"):
        assert any(key.startswith(name) for key in schemas), f"{name} is not in the document"
    described = 0
    for name, schema in schemas.items():  # every property of every schema, BentoML's too
        for field, property_schema in schema.get("properties", {}).items():
            assert property_schema.get("description"), f"{name}.{field} has no description"
            described += 1
    assert described > 60
    # the strict fields are still described as the JSON types they take
    event, contact = schemas["Event"]["properties"], schemas["ContactRequest"]["properties"]
    assert (event["timestamp"]["type"], event["timestamp"]["format"]) == ("string", "date-time")
    assert (event["value"]["type"], event["value"]["nullable"]) == ("number", True)
    assert contact["marketing_consent"]["type"] == contact["explain"]["type"] == "boolean"
    assert (contact["as_of"]["format"], contact["as_of"]["nullable"]) == ("date-time", True)
    # the bodies are the named models, whose nulls (a no-consent answer's) are said the 3.0 way
    bodies = {
        path: (
            document["paths"][path]["post"]["requestBody"]["content"]["application/json"],
            document["paths"][path]["post"]["responses"]["200"]["content"]["application/json"],
        )
        for path in ("/predict", "/predict_batch")
    }
    assert {
        path: (a["schema"]["$ref"], b["schema"]["$ref"]) for path, (a, b) in bodies.items()
    } == {
        "/predict": ("#/components/schemas/ContactRequest", "#/components/schemas/Prediction"),
        "/predict_batch": (
            "#/components/schemas/BatchRequest",
            "#/components/schemas/BatchPredictions",
        ),
    }
    prediction = schemas["Prediction"]["properties"]
    for name in ("contact_id", "stage", "propensity", "model_version", "horizon_days"):
        assert prediction[name]["nullable"] is True, name
    assert prediction["probabilities"] == {
        "allOf": [{"$ref": "#/components/schemas/StageProbabilities"}],
        "nullable": True,
        "description": prediction["probabilities"]["description"],
    }
    # a null among several kinds is said in each kind (3.0 reads `nullable` beside a `type`)
    for holder, key in (("features", "additionalProperties"), ("values", "items")):
        options = contact[holder][key]["anyOf"]
        assert [option["type"] for option in options] == ["number", "string"]
        assert all(option["nullable"] is True for option in options)
        assert "nullable" not in contact[holder][key]
    assert schemas["Unauthorized"]["properties"]["error"]["enum"] == ["unauthorized"]
    text = json.dumps(document)
    assert '"const"' not in text  # OpenAPI 3.0 has no const: a one-value enum
    assert '{"type": "null"}' not in text  # OpenAPI 3.0 has no null type
    assert "IODescriptor" not in text  # BentoML's internal names
    assert document["info"]["version"] not in ("None", "", None)
    assert "BentoML" not in document["info"]["description"]


def test_the_docs_page_loads_no_third_party_script(client: TestClient) -> None:
    """BentoML's page loads Google Tag Manager where a developer types an API key: the
    service's own page loads only the Swagger UI served from the same server."""
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "./static_content/swagger-ui-bundle.js" in sources
    assert all(source.startswith("./static_content/") for source in sources)
    assert "googletagmanager" not in page.text
    # Swagger's validator badge is an image from validator.swagger.io, given this server's
    # address, unless the page turns it off (privacy review)
    assert "validatorUrl: null" in page.text
    assert "swagger-initializer.js" not in page.text
    for source in sources:  # every asset is there
        assert client.get(source.removeprefix(".")).status_code == 200


def test_the_openapi_document_declares_the_key_and_the_refusals(client: TestClient) -> None:
    document = client.get("/docs.json").json()
    schemes = document["components"]["securitySchemes"]
    assert {"type": "http", "scheme": "bearer"}.items() <= next(
        s for s in schemes.values() if s["type"] == "http"
    ).items()
    assert {"type": "apiKey", "in": "header", "name": "X-API-Key"}.items() <= next(
        s for s in schemes.values() if s["type"] == "apiKey"
    ).items()
    for path, method in (("/predict", "post"), ("/predict_batch", "post"), ("/metadata", "get")):
        operation = document["paths"][path][method]
        assert sorted(n for option in operation["security"] for n in option) == sorted(schemes)
        assert {"401", "504"} <= set(operation["responses"])
        if method == "post":
            assert {"400", "413", "415"} <= set(operation["responses"])
            assert operation["requestBody"]["required"] is True
            # the docstring dedented (Swagger shows an indented paragraph as code), no module
            # names meant for developers of funnelcast
            assert "\n " not in operation["description"]
            assert "serving." not in operation["description"]
    for open_path in ("/healthz", "/readyz"):
        assert "security" not in document["paths"][open_path]["get"]
    # BentoML's own words called the service's liveness probe deprecated (deploy review)
    assert document["paths"]["/healthz"]["get"]["description"].startswith("Alive: 200")
    assert "deprecated" not in document["paths"]["/healthz"]["get"]["description"]
    assert "newline" in document["paths"]["/healthz"]["get"]["description"]
    assert client.get("/healthz").text == "\n"  # as described
    # the refusals no operation owns are described once, for the whole API
    for status in ("404", "405", "408", "431", "plain-text 400"):
        assert status in document["info"]["description"]
    batch = document["components"]["schemas"]["BatchRequest"]
    assert batch["properties"]["contacts"]["maxItems"] == MAX_BATCH_CONTACTS


def test_the_error_bodies_are_the_documented_ones(
    client: TestClient, auth: dict[str, str], body: dict[str, Any]
) -> None:
    from serving.schemas import BadRequest, TooLarge, Unauthorized, UnsupportedMediaType

    malformed = client.post("/predict", headers=auth, json={"marketing_consent": "yes"})
    unusable = client.post("/predict_batch", headers=auth, json={"contacts": [_shoe_size(body)]})
    refused = client.post("/predict", json=body)
    too_many = client.post(
        "/predict_batch",
        headers=auth,
        json={"contacts": [{"marketing_consent": False, "events": []}] * (MAX_BATCH_CONTACTS + 1)},
    )
    form = client.post("/predict", headers=auth, data={"marketing_consent": "true"})
    for response, model in (
        (malformed, BadRequest),
        (unusable, BadRequest),
        (refused, Unauthorized),
        (too_many, TooLarge),
        (form, UnsupportedMediaType),
    ):
        model.model_validate(response.json())  # fields as documented, nothing undocumented
        assert set(response.json()) <= set(model.model_fields)


def _shoe_size(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "attributes": {"shoe_size": 42}}


def test_a_batch_of_one_contact_names_it_in_the_field(
    client: TestClient, auth: dict[str, str], body: dict[str, Any]
) -> None:
    response = client.post("/predict_batch", headers=auth, json={"contacts": [_shoe_size(body)]})
    assert response.status_code == 400
    assert response.json()["field"] == "contacts.0.attributes"


_EVENT = {"timestamp": "2026-04-01T10:00:00Z", "event_type": "purchase", "channel": "web"}


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"events": [{**_EVENT, "value": "12.5"}]}, ["events", 0, "value"]),
        ({"events": [{**_EVENT, "value": True}]}, ["events", 0, "value"]),
        ({"marketing_consent": "yes"}, ["marketing_consent"]),
        ({"marketing_consent": 1}, ["marketing_consent"]),
        ({"explain": "false"}, ["explain"]),
        ({"explain": 0}, ["explain"]),
        ({"events": [{**_EVENT, "timestamp": 1770000000}]}, ["events", 0, "timestamp"]),
        ({"events": [{**_EVENT, "timestamp": 1770000000.5}]}, ["events", 0, "timestamp"]),
        ({"events": [{**_EVENT, "timestamp": "1770000000"}]}, ["events", 0, "timestamp"]),
        ({"as_of": 1770000000}, ["as_of"]),
    ],
)
def test_wrong_json_types_are_refused_not_coerced(
    client: TestClient, auth: dict[str, str], change: dict[str, Any], where: list[Any]
) -> None:
    payload = {"marketing_consent": True, "events": [_EVENT], **change}
    response = client.post("/predict", headers=auth, json=payload)
    assert response.status_code == 400
    assert where in [d["loc"] for d in response.json()["detail"]]


def test_the_strict_fields_accept_what_json_sends(client: TestClient, auth: dict[str, str]) -> None:
    """A JSON integer is a money value; moments in any offset, with or without seconds."""
    events = [
        {**_EVENT, "value": 12},
        {**_EVENT, "timestamp": "2026-04-01T10:00+02:00", "value": 12.5},
        {**_EVENT, "timestamp": "2026-04-01 10:00:00.250-05:00"},
    ]
    payload = {"marketing_consent": True, "explain": False, "events": events}
    response = client.post("/predict", headers=auth, json=payload)
    assert response.status_code == 200, response.text
    assert response.json()["events_used"] == 3


@pytest.fixture(scope="module")
def features(served: Served, body: dict[str, Any]) -> dict[str, Any]:
    """The body's contact as precomputed features."""
    from serving.runtime import ModelScorer, ServiceSettings, load_scorer
    from serving.schemas import ContactRequest

    scorer = load_scorer(ServiceSettings.from_env(served.env()))
    assert isinstance(scorer, ModelScorer)
    given, _ = scorer.features_of(ContactRequest.model_validate(body), served.as_of)
    return dict(given)


@pytest.mark.parametrize("number", [1e308, -1e308, 3.5e38])
def test_a_number_beyond_float32_is_a_400_naming_the_feature(
    client: TestClient, auth: dict[str, str], features: dict[str, Any], number: float
) -> None:
    bad = {**features, "days_since_last_event": number}
    response = client.post(
        "/predict", headers=auth, json={"marketing_consent": True, "features": bad}
    )
    assert response.status_code == 400
    assert response.json()["field"] == "features.days_since_last_event"
    assert "float32" in response.json()["error"]
    contacts = [{"marketing_consent": True, "features": f} for f in (features, features, bad)]
    response = client.post("/predict_batch", headers=auth, json={"contacts": contacts})
    assert response.status_code == 400
    assert response.json()["field"] == "contacts.2.features.days_since_last_event"


def test_the_largest_float32_is_still_a_number(
    client: TestClient, auth: dict[str, str], features: dict[str, Any]
) -> None:
    edge = {**features, "days_since_last_event": 3.4e38}
    response = client.post(
        "/predict", headers=auth, json={"marketing_consent": True, "features": edge}
    )
    assert response.status_code == 200


def test_a_rules_stage_that_is_no_stage_is_a_400_listing_the_stages(
    client: TestClient, auth: dict[str, str], features: dict[str, Any]
) -> None:
    bad = {**features, "rules_stage": "bogus"}
    response = client.post(
        "/predict", headers=auth, json={"marketing_consent": True, "features": bad}
    )
    assert response.status_code == 400
    assert response.json()["field"] == "features.rules_stage"
    assert all(stage in response.json()["error"] for stage in STAGES)
    batch = {"contacts": [{"marketing_consent": True, "features": bad}]}
    response = client.post("/predict_batch", headers=auth, json=batch)
    assert response.json()["field"] == "contacts.0.features.rules_stage"


def test_an_unseen_attribute_category_is_scored_as_missing_and_documented(
    client: TestClient, auth: dict[str, str], body: dict[str, Any], features: dict[str, Any]
) -> None:
    """As LightGBM scores a category it did not see in training: as a missing value."""
    answers = [
        client.post("/predict", headers=auth, json=payload).json()
        for payload in (
            {**body, "attributes": {**body["attributes"], "segment": "Premium"}},
            {**body, "attributes": {**body["attributes"], "segment": None}},
            {
                "marketing_consent": True,
                "as_of": body["as_of"],
                "features": {**features, "segment": "Premium"},
            },
            {
                "marketing_consent": True,
                "as_of": body["as_of"],
                "features": {**features, "segment": None},
            },
        )
    ]
    assert answers[0]["status"] == "scored"
    assert answers[0]["probabilities"] == answers[1]["probabilities"]
    assert answers[2]["probabilities"] == answers[3]["probabilities"]
    document = client.get("/docs.json").json()
    assert "scored as missing" in document["paths"]["/predict"]["post"]["description"]


@pytest.mark.parametrize("value", [True, 3.5])
def test_an_attribute_of_the_wrong_kind_is_named(
    client: TestClient, auth: dict[str, str], body: dict[str, Any], value: Any
) -> None:
    wrong = {**body, "attributes": {**body["attributes"], "segment": value}}
    response = client.post("/predict", headers=auth, json=wrong)
    assert response.status_code == 400
    assert response.json()["field"] == "attributes.segment"
    response = client.post("/predict_batch", headers=auth, json={"contacts": [body, wrong]})
    assert response.status_code == 400
    assert response.json()["field"] == "contacts.1.attributes.segment"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        # a moment out of UTC's range: test_an_event_in_the_future_or_out_of_range_is_named...
        (
            {
                "events": [
                    {
                        "timestamp": "2026-01-01T00:00:00Z",
                        "event_type": "purchase",
                        "channel": "web",
                        "value": -50,
                    }
                ]
            },
            ["events", 0, "value"],
        ),
        (
            {
                "events": [
                    {
                        "timestamp": "2026-01-01T00:00:00Z",
                        "event_type": "purchase",
                        "channel": "web",
                        "value": 1e300,
                    }
                ]
            },
            ["events", 0, "value"],
        ),
    ],
)
def test_out_of_range_values_are_a_400(
    client: TestClient, auth: dict[str, str], change: dict[str, Any], field: list[Any]
) -> None:
    response = client.post("/predict", headers=auth, json={"marketing_consent": True, **change})
    assert response.status_code == 400
    assert field in [d["loc"] for d in response.json()["detail"]]


@pytest.mark.parametrize(
    ("literal", "field"),
    [
        ("NaN", "events.0.properties.coupon"),
        ("1e999", "events.0.properties.coupon"),
        ('{"codes": [1, -Infinity]}', "events.0.properties.coupon.codes.1"),
    ],
)
def test_a_non_finite_number_in_properties_is_a_400_naming_its_place(
    client: TestClient, auth: dict[str, str], literal: str, field: str
) -> None:
    """JSON has no NaN or infinity, but the parser reads NaN, Infinity and 1e999 as them: in
    an event's properties they were accepted (the same in its value is refused)."""
    event = (
        '{"timestamp": "2026-01-01T00:00:00Z", "event_type": "coupon_redeem", '
        f'"channel": "store", "properties": {{"coupon": {literal}}}}}'
    )
    body = f'{{"marketing_consent": true, "events": [{event}]}}'
    headers = {**auth, "Content-Type": "application/json"}
    response = client.post("/predict", headers=headers, content=body.encode())
    assert response.status_code == 400
    assert response.json()["field"] == field
    assert "finite number" in response.json()["error"]
    finite = body.replace(literal, '{"codes": [1, 2.5, "x", null, true]}')
    assert client.post("/predict", headers=headers, content=finite.encode()).status_code == 200


def test_numbers_sent_as_text_and_dates_sent_as_numbers_are_a_400(
    client: TestClient, served: Served, auth: dict[str, str], body: dict[str, Any]
) -> None:
    from serving.runtime import ModelScorer, ServiceSettings, load_scorer
    from serving.schemas import ContactRequest

    scorer = load_scorer(ServiceSettings.from_env(served.env()))
    assert isinstance(scorer, ModelScorer)
    features, _ = scorer.features_of(ContactRequest.model_validate(body), served.as_of)
    for text in ("5", "inf"):
        bad = {**features, "days_since_last_event": text}
        response = client.post(
            "/predict", headers=auth, json={"marketing_consent": True, "features": bad}
        )
        assert response.status_code == 400
        assert response.json()["field"] == "features.days_since_last_event"
    dated = {**body, "attributes": {**body["attributes"], "signup_date": 20250101}}
    response = client.post("/predict", headers=auth, json=dated)
    assert response.status_code == 400
    assert response.json()["field"] == "attributes.signup_date"


@pytest.mark.parametrize("value", [True, [1.0], {"days": 3}])
def test_a_feature_that_is_neither_number_text_nor_null_is_a_400(
    client: TestClient, auth: dict[str, str], value: Any
) -> None:
    response = client.post(
        "/predict",
        headers=auth,
        json={"marketing_consent": True, "features": {"days_since_last_event": value}},
    )
    assert response.status_code == 400
    places = [d["loc"][:3] for d in response.json()["detail"]]
    assert ["features", "days_since_last_event", "float"] in places  # never read as 1.0


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
@pytest.mark.parametrize("path", ["/predict", "/predict_batch"])
def test_other_methods_on_the_prediction_routes_are_a_json_405(
    client: TestClient, auth: dict[str, str], method: str, path: str
) -> None:
    """OPTIONS too: CORS is off (BentoML's http.cors.enabled defaults to false and the service
    does not set it), so a browser's preflight is one more request without a key, refused
    without granting any origin."""
    response = client.request(method, path, headers=auth)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert "POST only" in response.json()["error"]
    preflight = {"Origin": "https://crm.example", "Access-Control-Request-Method": "POST"}
    refused = client.request(method, path, headers=preflight)
    assert refused.status_code == 401  # the key still comes first
    assert "access-control-allow-origin" not in refused.headers


@pytest.mark.parametrize(
    ("method", "path", "status", "says"),
    [
        ("GET", "/nosuch", 404, "no such path: /nosuch"),
        ("POST", "/readyz", 405, "/readyz does not answer POST"),
        ("DELETE", "/metadata", 405, "/metadata does not answer DELETE"),
    ],
)
def test_the_routers_refusals_are_json_too(
    client: TestClient, auth: dict[str, str], method: str, path: str, status: int, says: str
) -> None:
    """Starlette answers an unknown path or method in plain text, FastAPI as {"detail"}: both
    come out as every other refusal does."""
    response = client.request(method, path, headers=auth)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"error"}
    assert says in response.json()["error"]
    if status == 405:
        assert "GET" in response.headers["allow"]


@pytest.mark.parametrize(
    ("method", "path", "meant"),
    [
        ("POST", "/predict/", "/predict"),
        ("POST", "/predict_batch/", "/predict_batch"),
        ("GET", "/metadata/", "/metadata"),
        ("GET", "/healthz/", "/healthz"),
        ("GET", "/readyz//", "/readyz"),
    ],
)
def test_a_path_with_a_trailing_slash_is_a_json_404_naming_the_route(
    client: TestClient, auth: dict[str, str], method: str, path: str, meant: str
) -> None:
    """Starlette redirected them (307, an empty body to a client that does not follow it),
    and asked for the key first even on the open probes."""
    for headers in (auth, {}):
        response = client.request(method, path, headers=headers, follow_redirects=False)
        assert response.status_code == 404
        assert response.json() == {
            "error": f"no such path: {path}; no path of this service ends in /"
        }
    assert client.request(method, meant, headers=auth).status_code != 404  # the route exists


def test_an_empty_body_is_a_400_that_names_no_field(
    client: TestClient, auth: dict[str, str]
) -> None:
    """BentoML read it as an empty object, and the 400 named marketing_consent as missing."""
    for path in ("/predict", "/predict_batch"):
        for headers in (
            {**auth, "Content-Type": "application/json"},
            {**auth, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        ):
            response = client.post(path, headers=headers, content=b"")
            assert response.status_code == 400
            assert response.json()["field"] is None
            assert "body is empty" in response.json()["error"]
    assert client.post("/predict", content=b"").status_code == 401  # the key still comes first


def test_forms_are_refused_as_415(client: TestClient, auth: dict[str, str]) -> None:
    form = client.post("/predict", headers=auth, data={"marketing_consent": "true"})
    assert form.status_code == 415
    multipart = client.post(
        "/predict",
        headers={**auth, "Content-Type": "multipart/form-data; boundary=x"},
        content=b"garbage",
    )
    assert multipart.status_code == 415


def test_a_compressed_body_is_refused_as_415_naming_the_encoding(
    client: TestClient, auth: dict[str, str], body: dict[str, Any]
) -> None:
    """The service decodes no compression: a gzip body was "Invalid JSON" at no field, and a
    plain body marked deflate was scored as if the header were not there."""
    import gzip

    plain = json.dumps(body).encode()
    json_type = {**auth, "Content-Type": "application/json"}
    for encoding, content in [("gzip", gzip.compress(plain)), ("deflate", plain), ("br", plain)]:
        response = client.post(
            "/predict", headers={**json_type, "Content-Encoding": encoding}, content=content
        )
        assert response.status_code == 415
        assert f"Content-Encoding '{encoding}' is not accepted" in response.json()["error"]
    for encoding in ("identity", "Identity "):
        response = client.post(
            "/predict", headers={**json_type, "Content-Encoding": encoding}, content=plain
        )
        assert response.status_code == 200
    # the key still comes first
    assert client.post("/predict", headers={"Content-Encoding": "gzip"}).status_code == 401
    # nor a transfer coding but chunked (review: a deflate one over a plain body was scored)
    for framing in ("deflate, chunked", "gzip,chunked", "br"):
        response = client.post(
            "/predict", headers={**json_type, "Transfer-Encoding": framing}, content=plain
        )
        assert response.status_code == 415
        assert f"Transfer-Encoding '{framing}' is not accepted" in response.json()["error"]


def test_a_repeated_event_counts_once(
    client: TestClient, auth: dict[str, str], body: dict[str, Any]
) -> None:
    once = client.post("/predict", headers=auth, json=body).json()
    twice = client.post(
        "/predict", headers=auth, json={**body, "events": body["events"] + body["events"][-3:]}
    ).json()
    assert twice["events_used"] == once["events_used"]
    assert twice["probabilities"] == once["probabilities"]


def test_head_answers_wherever_get_does_without_a_body(
    client: TestClient, auth: dict[str, str]
) -> None:
    """HTTP requires HEAD wherever GET works (monitors probe with it); the routes declare GET
    only, so HEAD /metadata or /readyz was a 405."""
    for path, headers in (("/healthz", {}), ("/readyz", {}), ("/metadata", auth)):
        got = client.get(path, headers=headers)
        head = client.head(path, headers=headers)
        assert (head.status_code, got.status_code) == (200, 200)
        assert head.content == b""
        assert head.headers["content-length"] == got.headers["content-length"] != "0"
    assert client.head("/metadata").status_code == 401  # the key still counts
    refused = client.head("/predict", headers=auth)
    assert refused.status_code == 405
    assert refused.headers["allow"] == "POST"
