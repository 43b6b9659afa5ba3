"""The service class called directly (no HTTP): predictions equal the batch pipeline's for the
same contacts, consent, the rules fallback, the feature-spec check, and request errors."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime as dt
import json
import pickle
import re
import shutil
from pathlib import Path
from typing import Any, NoReturn

import mlflow
import numpy as np
import polars as pl
import pytest
from conftest import Served, compact_body, contact_body
from pydantic import ValidationError

from features.engine import build_contact_features
from features.vocabulary import STAGE_CTA, STAGES
from serving.runtime import (
    RULES,
    ModelScorer,
    RequestError,
    ServiceConfigError,
    ServiceSettings,
    SpecMismatchError,
    check_feature_spec,
    load_scorer,
    predictions_json,
)
from serving.schemas import (
    MAX_EVENTS_PER_CONTACT,
    BatchPredictions,
    ContactRequest,
    Prediction,
)
from training.pyfunc import FLOAT32_MAX, PROBABILITY_COLUMNS, FunnelcastModel
from training.reasons import top_reasons
from training.registry import DamagedModelError, load_model, resolve
from training.tracking import _requirements, served_model, training_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(served: Served) -> Any:
    """A ``Funnelcast`` instance, constructed as BentoML's worker does."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in served.env().items():
            patch.setenv(key, value)
        from serving.service import Funnelcast

        return Funnelcast()


def _request(body: dict[str, Any]) -> ContactRequest:
    return ContactRequest.model_validate(body)


def test_predictions_from_raw_events_equal_the_batch_pipeline(
    service: Any, served: Served, active_contacts: list[str]
) -> None:
    """No training/serving skew: the service's features (online path, from the raw events of
    the request) and scores equal the batch engine's and the logged model's for the same
    contacts and moment, reasons included."""
    scorer: ModelScorer = service.scorer
    model: FunnelcastModel = scorer.model
    batch_features = build_contact_features(
        served.events, served.contacts, as_of=served.as_of, spec=model.spec, rules=model.rules
    ).filter(pl.col("contact_id").is_in(active_contacts))
    expected = model.predict_frame(batch_features).sort("contact_id")
    bodies = [contact_body(served, c, last=MAX_EVENTS_PER_CONTACT) for c in active_contacts]
    got = {p.contact_id: p for p in scorer.predict([_request(b) for b in bodies])}
    assert len(got) == expected.height == len(active_contacts)
    for row in expected.iter_rows(named=True):
        prediction = got[row["contact_id"]]
        assert prediction.status == "scored"
        assert prediction.model == "funnelcast"
        assert prediction.model_version == "1"
        assert prediction.stage == row["stage"]
        probabilities = prediction.probabilities.model_dump()  # type: ignore[union-attr]
        for stage, column in zip(STAGES, PROBABILITY_COLUMNS, strict=True):
            assert probabilities[stage] == pytest.approx(row[column], abs=1e-12)
        assert prediction.propensity == pytest.approx(row["propensity"], abs=1e-12)
        assert prediction.reasons == [row[f"reason_{k}"] for k in (1, 2, 3) if row[f"reason_{k}"]]
        assert prediction.cta == STAGE_CTA[row["stage"]]
    # one request at a time gives the same as the whole list in one call
    one = scorer.predict([_request(bodies[0])])[0]
    assert one == got[active_contacts[0]]


def test_features_in_equal_events_in(
    service: Any, served: Served, active_contacts: list[str]
) -> None:
    scorer: ModelScorer = service.scorer
    body = contact_body(served, active_contacts[-1])
    from_events = scorer.predict([_request(body)])[0]
    features, used = scorer.features_of(_request(body), served.as_of)
    assert used == len(body["events"])  # type: ignore[arg-type]
    from_features = scorer.predict(
        [_request({"marketing_consent": True, "as_of": body["as_of"], "features": features})]
    )[0]
    assert from_features.stage == from_events.stage
    assert from_features.probabilities == from_events.probabilities
    assert from_features.propensity == from_events.propensity
    assert from_features.reasons == from_events.reasons
    assert from_features.events_used is None


def test_the_api_method_answers_one_contact(
    service: Any, served: Served, active_contacts: list[str]
) -> None:
    response = asyncio.run(service.predict(_request(contact_body(served, active_contacts[5]))))
    assert response.media_type == "application/json"
    prediction = Prediction.model_validate_json(response.body)  # the schema it promises
    assert prediction.status == "scored"
    assert prediction.stage in STAGES
    assert sum(prediction.probabilities.model_dump().values()) == pytest.approx(1.0)
    assert 0.0 <= prediction.propensity <= 1.0
    assert 1 <= len(prediction.reasons) <= 3
    assert prediction.horizon_days == 14
    assert prediction.message_type


def test_the_response_bytes_are_what_pydantic_makes_of_the_predictions(
    service: Any, served: Served, active_contacts: list[str]
) -> None:
    """The service encodes its rows without building a model per contact: the same bytes as
    the validated ``Prediction`` models encoded by pydantic, scored or not, with or without
    reasons, with an as_of given in another time zone."""
    bodies = [
        contact_body(served, active_contacts[0]),
        {**contact_body(served, active_contacts[1]), "marketing_consent": False},
        {**contact_body(served, active_contacts[2]), "explain": False},
        {**contact_body(served, active_contacts[3]), "as_of": "2026-01-05T10:00:00+05:30"},
    ]
    requests = [_request(b) for b in bodies]
    now = dt.datetime(2026, 1, 6, tzinfo=dt.UTC)
    rows = service.scorer.predict_rows(requests, now)
    models = service.scorer.predict(requests, now)
    assert [m.model_dump() for m in models] == rows
    assert predictions_json(rows, batch=True) == (
        BatchPredictions(predictions=models).model_dump_json().encode()
    )
    assert predictions_json(rows[3:], batch=False) == models[3].model_dump_json().encode()
    assert models[3].as_of == dt.datetime(2026, 1, 5, 4, 30, tzinfo=dt.UTC)


def test_events_in_other_time_zones_give_the_same_prediction(
    service: Any, served: Served, active_contacts: list[str]
) -> None:
    """The events keep the time zone they came in (no per-event conversion): what the
    features read is the instant, so the same moments written in +05:30 and in -03:00
    (alternately), and a repeated event in another zone, change nothing."""
    body = contact_body(served, active_contacts[6])
    zones = [dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(dt.timedelta(hours=-3))]
    shifted = [
        {
            **event,
            "timestamp": dt.datetime.fromisoformat(str(event["timestamp"]))
            .astimezone(zones[i % 2])
            .isoformat(),
        }
        for i, event in enumerate(body["events"])  # type: ignore[arg-type]
    ]
    assert all(not str(e["timestamp"]).endswith(("Z", "+00:00")) for e in shifted)
    again = {**shifted[-1], "timestamp": body["events"][-1]["timestamp"]}  # type: ignore[index]
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    (utc,) = service.scorer.predict_rows([_request(body)], now)
    (zoned,) = service.scorer.predict_rows([_request({**body, "events": [*shifted, again]})], now)
    assert zoned == utc
    assert utc["events_used"] == len(body["events"])  # type: ignore[arg-type]


def test_the_api_callers_are_built_once_per_worker(service: Any) -> None:
    """BentoML's descriptor would build a caller per request; the instance keeps one, which
    BentoML finds first and which runs the method."""
    for name in ("predict", "predict_batch"):
        caller = service.__dict__[name]
        assert getattr(service, name) is caller
        assert callable(caller.local)
        assert caller.__wrapped__ is getattr(type(service), name).func


async def _all_at_once(service: Any, requests: list[ContactRequest]) -> list[Any]:
    """The requests as a worker's event loop sees a burst: every one started before any is
    answered. Returns the responses, in order, and how many joint calls scored them."""
    calls = service.gather.calls
    responses = await asyncio.gather(*(service.predict(r) for r in requests))
    return [responses, service.gather.calls - calls]


def _mixed_requests(service: Any, served: Served, contacts: list[str]) -> list[ContactRequest]:
    """Raw events and precomputed features, with and without consent or reasons."""
    requests = []
    features = _feature_bodies(service, served, contacts)
    for k, contact in enumerate(contacts):
        body = contact_body(served, contact) if k % 2 else features[k]
        body = {**body, "marketing_consent": k != 3, "explain": k != 5}
        requests.append(_request(body))
    return requests


def test_requests_read_together_are_scored_in_one_call_with_the_same_answers(
    service: Any, served: Served, active_contacts: list[str]
) -> None:
    """Requests a worker reads at the same moment are scored in one joint call; each answer
    is, byte for byte, the one it gets alone."""
    requests = _mixed_requests(service, served, active_contacts[:8])
    alone = [asyncio.run(service.predict(r)).body for r in requests]
    responses, calls = asyncio.run(_all_at_once(service, requests))
    assert calls == 1
    assert [r.body for r in responses] == alone
    assert [Prediction.model_validate_json(b).status for b in alone].count("no_consent") == 1


def test_a_request_that_fails_among_gathered_ones_gets_its_own_error(
    service: Any, served: Served, active_contacts: list[str]
) -> None:
    """One request the model cannot use does not fail the others read with it: the joint
    call fails, each request is then scored alone, and only the bad one is refused, naming
    its own field."""
    requests = _mixed_requests(service, served, active_contacts[:6])
    alone = [asyncio.run(service.predict(r)).body for r in requests]
    bad = requests[2].model_copy(update={"features": {**requests[2].features, "odd": 1.0}})
    responses, calls = asyncio.run(_all_at_once(service, [*requests[:2], bad, *requests[3:]]))
    assert calls == len(requests) - 1  # the joint call failed; the good ones, one call each
    assert responses[2].status_code == 400
    refusal = json.loads(responses[2].body)
    assert refusal["field"] == "features"
    assert "unknown feature" in refusal["error"]
    assert [r.body for k, r in enumerate(responses) if k != 2] == alone[:2] + alone[3:]


def test_a_gathered_request_whose_client_left_is_not_scored(
    service: Any, served: Served, active_contacts: list[str]
) -> None:
    requests = _mixed_requests(service, served, active_contacts[:4])

    async def one_leaves() -> list[Any]:
        tasks = [asyncio.create_task(service.predict(r)) for r in requests]
        await asyncio.sleep(0)  # every request has reached the gathering
        tasks[1].cancel()
        scored = service.gather.scored
        done = await asyncio.gather(*tasks, return_exceptions=True)
        return [done, service.gather.scored - scored]

    done, scored = asyncio.run(one_leaves())
    assert isinstance(done[1], asyncio.CancelledError)
    assert scored == len(requests) - 1
    assert all(done[k].status_code == 200 for k in (0, 2, 3))


def test_contacts_without_consent_are_never_scored(
    service: Any, served: Served, active_contacts: list[str]
) -> None:
    consenting = contact_body(served, active_contacts[1])
    opted_out = {**contact_body(served, active_contacts[2]), "marketing_consent": False}
    result = BatchPredictions.model_validate_json(
        service.predict_batch(
            _batch([consenting, opted_out, {**consenting, "contact_id": "again"}])
        ).body
    )
    statuses = [(p.contact_id, p.status) for p in result.predictions]
    assert statuses == [
        (active_contacts[1], "scored"),
        (active_contacts[2], "no_consent"),
        ("again", "scored"),
    ]
    refused = result.predictions[1]
    assert refused.stage is None
    assert refused.propensity is None
    assert refused.probabilities is None
    assert refused.reasons == []
    assert refused.cta is None


def _batch(bodies: list[dict[str, Any]]) -> Any:
    from serving.schemas import BatchRequest

    return BatchRequest.model_validate({"contacts": bodies})


def _compact(contacts: list[dict[str, Any]], names: list[str]) -> Any:
    """A batch of precomputed features in the compact form: the names once, each contact's
    values in their order."""
    from serving.schemas import BatchRequest

    return BatchRequest.model_validate(compact_body(contacts, names))


def _feature_bodies(
    service: Any, served: Served, contacts: list[str], *, opted_out: int | None = None
) -> list[dict[str, Any]]:
    """The contacts' precomputed features as request bodies (by name)."""
    scorer: ModelScorer = service.scorer
    bodies = []
    for k, contact in enumerate(contacts):
        events = contact_body(served, contact)
        features, _ = scorer.features_of(_request(events), served.as_of)
        bodies.append(
            {
                "contact_id": contact,
                "marketing_consent": k != opted_out,
                "as_of": events["as_of"],
                "features": dict(features),
            }
        )
    return bodies


def test_the_compact_batch_form_is_scored_as_the_form_by_name(
    service: Any, served: Served, active_contacts: list[str]
) -> None:
    """Feature names once, in any order, and each contact's values: the same predictions,
    reasons and consent included, and the same response, as each contact's features by name."""
    scorer: ModelScorer = service.scorer
    bodies = _feature_bodies(service, served, active_contacts[:6], opted_out=2)
    names = list(reversed(scorer.feature_names))  # not the model's order
    by_name, compact = _batch(bodies), _compact(bodies, names)
    expected = scorer.predict_rows(by_name.contacts, batch=True)
    got = scorer.predict_rows(compact.contacts, batch=True, feature_names=compact.feature_names)
    assert got == expected
    assert [row["status"] for row in got] == ["scored"] * 2 + ["no_consent"] + ["scored"] * 3
    assert all(row["reasons"] for row in got if row["status"] == "scored")
    assert service.predict_batch(compact).body == service.predict_batch(by_name).body


@pytest.mark.parametrize(
    ("mistake", "field", "words"),
    [
        ("unknown name", "feature_names", "unknown feature(s) ['email_clicks_7d']"),
        ("name missing", "feature_names", "missing feature(s) ['email_click_count_7d']"),
        ("number as text", "contacts.1.values.{email_click_count_7d}", "is a number; got '3.5'"),
        ("category as a number", "contacts.1.values.{segment}", "'segment' is a category"),
        ("no such stage", "contacts.1.values.{rules_stage}", "not one of its values"),
        # its names are public, not training data: said (diff review)
        ("stage as a number", "contacts.1.values.{rules_stage}", "'awareness', 'consideration'"),
        ("beyond float32", "contacts.1.values.{email_click_count_7d}", "float32"),
        ("negative count", "contacts.1.values.{email_click_count_7d}", "never negative"),
        ("half a count", "contacts.1.values.{email_click_count_7d}", "is a whole number"),
    ],
)
def test_compact_batches_the_model_cannot_use_name_the_contact_and_place(
    service: Any,
    served: Served,
    active_contacts: list[str],
    mistake: str,
    field: str,
    words: str,
) -> None:
    scorer: ModelScorer = service.scorer
    # the first contact is not scored: the fault's contact is the second of the request,
    # the first of the rows encoded
    bodies = _feature_bodies(service, served, active_contacts[:2], opted_out=0)
    names = list(scorer.feature_names)
    wrong = bodies[1]["features"]
    if mistake == "unknown name":
        names[names.index("email_click_count_7d")] = "email_clicks_7d"
        for body in bodies:
            body["features"]["email_clicks_7d"] = body["features"]["email_click_count_7d"]
    elif mistake == "name missing":
        names.remove("email_click_count_7d")
    elif mistake == "number as text":
        wrong["email_click_count_7d"] = "3.5"  # numpy would read it as a number
    elif mistake == "category as a number":
        wrong["segment"] = 3.0
    elif mistake == "no such stage":
        wrong["rules_stage"] = "bogus"
    elif mistake == "stage as a number":
        wrong["rules_stage"] = 3.0
    elif mistake == "negative count":
        wrong["email_click_count_7d"] = -5.0
    elif mistake == "half a count":
        wrong["email_click_count_7d"] = 0.5
    else:
        wrong["email_click_count_7d"] = 1e39
    batch = _compact(bodies, names)
    with pytest.raises(RequestError) as caught:
        scorer.predict_rows(batch.contacts, batch=True, feature_names=batch.feature_names)
    place = {name: k for k, name in enumerate(names)}
    assert caught.value.field == field.format(**place)
    assert words in caught.value.message


@pytest.mark.parametrize(
    ("change", "where", "kind"),
    [
        ("name twice", ("feature_names", 1), "repeated_name"),
        ("one value short", ("contacts", 1, "values"), "values_count"),
        ("features in a compact batch", ("contacts", 1, "values"), "values_missing"),
        ("values without names", ("contacts", 0, "values"), "values_without_names"),
        ("values and features", ("values",), "one_input"),
        ("attributes with values", ("attributes",), "attributes_with_features"),
    ],
)
def test_compact_batches_that_do_not_fit_are_refused_naming_the_field(
    change: str, where: tuple[Any, ...], kind: str
) -> None:
    from serving.schemas import BatchRequest

    contact = {"marketing_consent": True, "values": [1.0, None]}
    body: dict[str, Any] = {"feature_names": ["a", "b"], "contacts": [contact, contact]}
    if change == "name twice":
        body["feature_names"] = ["a", "a"]
    elif change == "one value short":
        body["contacts"] = [contact, {**contact, "values": [1.0]}]
    elif change == "features in a compact batch":
        body["contacts"] = [contact, {"marketing_consent": True, "features": {"a": 1.0}}]
    elif change == "values without names":
        del body["feature_names"]
    elif change == "values and features":
        body["contacts"] = [{**contact, "features": {"a": 1.0}}]
    else:
        body["contacts"] = [contact, {**contact, "attributes": {"segment": "premium"}}]
    with pytest.raises(ValidationError) as caught:
        BatchRequest.model_validate(body)
    (error,) = caught.value.errors()
    assert error["type"] == kind
    assert error["loc"][-len(where) :] == where


def test_a_direct_call_with_a_feature_named_twice_is_refused(service: Any) -> None:
    scorer: ModelScorer = service.scorer
    names = [*scorer.feature_names[:-1], scorer.feature_names[0]]
    request = _request({"marketing_consent": True, "values": [None] * len(names)})
    with pytest.raises(RequestError, match="named twice") as caught:
        scorer.predict([request], batch=True, feature_names=names)
    assert caught.value.field == "feature_names"


def test_values_outside_a_compact_batch_are_refused_naming_the_field(service: Any) -> None:
    """/predict has no feature names to read values by."""
    request = _request({"marketing_consent": True, "values": [1.0]})
    for batch, field in ((False, "values"), (True, "contacts.0.values")):
        with pytest.raises(RequestError, match="feature_names") as caught:
            service.scorer.predict([request], batch=batch)
        assert caught.value.field == field


def test_metadata_describes_the_model(service: Any) -> None:
    meta = service.metadata()
    assert meta.model == "funnelcast"
    assert meta.model_version == "1"
    assert meta.trained_at is not None
    assert dt.datetime.fromisoformat(meta.trained_at)
    # the fingerprint training logs and `funnelcast features` prints, not a hash of the text
    from features.spec import load_feature_spec

    assert meta.feature_spec_hash == load_feature_spec().fingerprint
    assert meta.stages == list(STAGES)
    assert "rules_stage" in meta.features
    assert set(meta.attribute_features) == {
        "days_since_signup_date",
        "acquisition_source",
        "segment",
    }
    assert meta.metrics["test.stage.lightgbm.macro_f1"] > 0
    assert meta.limits["max_batch_contacts"] == 1000
    # the model's registry URI, not the store's place on the server's disk
    assert meta.source == "models:/funnelcast/1"
    assert "sqlite" not in meta.model_dump_json()


@pytest.mark.parametrize("consent", [True, False])
@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"features": {"no_such_feature": 1.0}}, "features", "unknown feature"),
        (
            {"attributes": {"shoe_size": 42.0}},
            "attributes",
            # the names a client sends, not the features they become
            "does not use attribute(s) ['shoe_size']; it uses ['acquisition_source', 'segment', "
            "'signup_date']",
        ),
        ({"attributes": {"signup_date": "last spring"}}, "attributes.signup_date", "ISO date"),
        # quoted as the JSON gave them, not as Python reads them
        ({"attributes": {"signup_date": 20250101}}, "attributes.signup_date", "20250101 is not"),
        ({"attributes": {"segment": True}}, "attributes.segment", "true is not text"),
    ],
)
def test_requests_the_model_cannot_use_name_the_field(
    service: Any,
    served: Served,
    active_contacts: list[str],
    change: dict,
    field: str,
    words: str,
    consent: bool,
) -> None:
    """Refused whether or not the contact gave consent: a contact without it is never scored,
    but its input is checked as any other's."""
    body = contact_body(served, active_contacts[3])
    if "features" in change:
        body = {"marketing_consent": True, "as_of": body["as_of"], **change}
    else:
        body["attributes"] = {**body["attributes"], **change["attributes"]}  # type: ignore[dict-item]
    body["marketing_consent"] = consent
    with pytest.raises(RequestError) as caught:
        service.scorer.predict([_request(body)])
    assert caught.value.field == field
    assert words in caught.value.message
    seen = service.scorer.model.categories["segment"]  # never the training data's values
    assert seen
    assert not [v for v in seen if f"'{v}'" in caught.value.message]


def test_the_values_of_a_contact_without_consent_are_checked_in_both_batch_forms(
    service: Any, served: Served, active_contacts: list[str]
) -> None:
    bodies = _feature_bodies(service, served, active_contacts[:2], opted_out=1)
    names = list(bodies[0]["features"])
    place = names.index("email_open_count_7d")
    bodies[1]["features"]["email_open_count_7d"] = 1e39
    with pytest.raises(RequestError) as caught:
        service.scorer.predict_rows(_batch(bodies).contacts, batch=True)
    assert caught.value.field == "contacts.1.features.email_open_count_7d"
    compact = _compact(bodies, names)
    with pytest.raises(RequestError) as caught:
        service.scorer.predict_rows(compact.contacts, batch=True, feature_names=names)
    assert caught.value.field == f"contacts.1.values.{place}"
    bodies[1]["features"]["email_open_count_7d"] = 3.0  # fixed: answered, not scored
    answered = service.scorer.predict_rows(_batch(bodies).contacts, batch=True)
    assert [row["status"] for row in answered] == ["scored", "no_consent"]


def test_missing_and_mistyped_features_are_refused(
    service: Any, served: Served, active_contacts: list[str]
) -> None:
    scorer: ModelScorer = service.scorer
    features, _ = scorer.features_of(
        _request(contact_body(served, active_contacts[4])), served.as_of
    )
    partial = dict(features)
    del partial["email_click_count_7d"]
    with pytest.raises(RequestError, match=r"missing feature.*email_click_count_7d"):
        scorer.predict([_request({"marketing_consent": True, "features": partial})])
    wrong = {**features, "segment": 3.0}
    with pytest.raises(RequestError, match="'segment' is a category") as caught:
        scorer.predict([_request({"marketing_consent": True, "features": wrong})])
    assert caught.value.field == "features.segment"
    assert str(caught.value).endswith(  # one sentence (review: "give it as text, (a value")
        "feature 'segment' is a category; give it as text (a value the model did not see in "
        "training is scored as missing)"
    )
    # the training data's values are not shown to whoever holds a key (privacy review: an
    # e-mail column's addresses came back in a 400)
    seen = scorer.model.categories["segment"]
    assert seen
    assert not [v for v in seen if str(v) in str(caught.value)]
    # in a batch the field says which contact, however many the batch holds
    for contacts in ([features, wrong], [wrong]):
        with pytest.raises(RequestError) as caught:
            scorer.predict(
                [_request({"marketing_consent": True, "features": f}) for f in contacts],
                batch=True,
            )
        assert caught.value.field == f"contacts.{len(contacts) - 1}.features.segment"


@pytest.mark.parametrize(
    ("mistake", "field", "words"),
    [
        ("rename a number", "features", "unknown feature(s) ['email_clicks_7d']"),
        ("rename a category", "features", "unknown feature(s) ['segmnt']"),
        ("number as text", "features.email_click_count_7d", "is a number; got text '3.5'"),
        ("empty text", "features.email_click_count_7d", "is a number; got text ''"),
    ],
)
def test_as_many_features_as_the_model_uses_are_still_checked_by_name_and_kind(
    service: Any,
    served: Served,
    active_contacts: list[str],
    mistake: str,
    field: str,
    words: str,
) -> None:
    """Names and kinds of given features are checked for all contacts at once: a wrong name
    with the right count of names, or text (even text numpy would read as a number) where a
    number goes, is still refused, naming the contact and the feature."""
    scorer: ModelScorer = service.scorer
    features, _ = scorer.features_of(
        _request(contact_body(served, active_contacts[4])), served.as_of
    )
    wrong = dict(features)
    if mistake.startswith("rename"):
        old, new = ("email_click_count_7d", "email_clicks_7d")
        if "category" in mistake:
            old, new = ("segment", "segmnt")
        wrong[new] = wrong.pop(old)
    else:
        wrong["email_click_count_7d"] = "3.5" if mistake == "number as text" else ""
    assert len(wrong) == len(scorer.feature_names)
    for batch in (False, True):
        contacts = [features, wrong] if batch else [wrong]
        with pytest.raises(RequestError) as caught:
            scorer.predict(
                [_request({"marketing_consent": True, "features": f}) for f in contacts],
                batch=batch,
            )
        assert caught.value.field == (f"contacts.1.{field}" if batch else field)
        assert words in caught.value.message
        if mistake.startswith("rename"):  # both halves in one answer (spec review)
            assert f"1 of the model's feature(s) missing (['{old}'])" in caught.value.message


def test_a_record_lacking_a_feature_reads_it_as_missing(
    service: Any, served: Served, active_contacts: list[str]
) -> None:
    model: FunnelcastModel = service.scorer.model
    features, _ = service.scorer.features_of(
        _request(contact_body(served, active_contacts[4])), served.as_of
    )
    name = next(
        n for n in model.feature_names if n not in model.categories and features[n] is not None
    )
    partial = {k: v for k, v in features.items() if k != name}
    both = model.encode_records([features, partial])
    j = model.feature_names.index(name)
    assert both[0, j] == np.float32(features[name])
    assert np.isnan(both[1, j])
    others = [k for k in range(len(model.feature_names)) if k != j]
    np.testing.assert_array_equal(both[0, others], both[1, others])


def test_predictions_are_left_out_of_tracing_unless_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.util.http import ExcludeList

    from serving.service import Funnelcast, _untraced_paths

    excluded = ExcludeList(Funnelcast.config["tracing"]["excluded_urls"])
    assert excluded.url_disabled("http://127.0.0.1:3000/predict")
    assert excluded.url_disabled("http://127.0.0.1:3000/predict_batch")
    assert not excluded.url_disabled("http://127.0.0.1:3000/metadata")
    assert not excluded.url_disabled("http://127.0.0.1:3000/predict/other")
    monkeypatch.setenv("FUNNELCAST_TRACE_PREDICTIONS", "1")
    assert _untraced_paths() == []


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"marketing_consent": True}, ("events",)),  # neither events nor features
        ({"marketing_consent": True, "events": [], "features": {}}, ("features",)),  # both
        (
            {"marketing_consent": True, "features": {}, "attributes": {}},
            ("attributes",),  # attributes go with events
        ),
        ({"events": []}, ("marketing_consent",)),
        ({"marketing_consent": True, "events": [], "colour": "red"}, ("colour",)),
        (
            {
                "marketing_consent": True,
                "events": [
                    {
                        "timestamp": "2026-01-01T00:00:00Z",
                        "event_type": "telepathy",
                        "channel": "web",
                    }
                ],
            },
            ("events", 0, "event_type"),
        ),
        (
            {
                "marketing_consent": True,
                "events": [{"timestamp": "yesterday", "event_type": "page_view", "channel": "web"}],
            },
            ("events", 0, "timestamp"),
        ),
        (
            {
                "marketing_consent": True,
                "events": [
                    {
                        "timestamp": "2026-01-01T00:00:00",
                        "event_type": "page_view",
                        "channel": "web",
                    }
                ],
            },
            ("events", 0, "timestamp"),  # no time zone
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
            ("events", 0, "timestamp"),  # in the future
        ),
        ({"marketing_consent": True, "as_of": "2999-01-01T00:00:00Z", "events": []}, ("as_of",)),
        (
            {
                "marketing_consent": True,
                "events": [
                    {
                        "timestamp": "2026-01-01T00:00:00Z",
                        "event_type": "purchase",
                        "channel": "web",
                        "value": "inf",
                    }
                ],
            },
            ("events", 0, "value"),
        ),
        ({"marketing_consent": "perhaps", "events": []}, ("marketing_consent",)),
    ],
)
def test_malformed_requests_are_refused_naming_the_field(body: dict, where: tuple) -> None:
    with pytest.raises(ValidationError) as caught:
        ContactRequest.model_validate(body)
    assert where in [tuple(e["loc"]) for e in caught.value.errors()]


@pytest.mark.parametrize(
    ("moment", "refusal"),
    [
        ("2999-01-01T00:00:00Z", "2999-01-01T00:00:00+00:00 is in the future (server time "),
        ("0001-01-01T00:00:00+05:00", "0001-01-01T00:00:00+05:00 is out of range"),
    ],
)
def test_a_moment_in_the_future_or_out_of_range_is_said_alike_for_as_of_and_events(
    moment: str, refusal: str
) -> None:
    """as_of's refusal reads as an event timestamp's (review: it began "Value error, ")."""
    event = {"timestamp": moment, "event_type": "page_view", "channel": "web"}
    said = {}
    for body in ({"as_of": moment, "events": []}, {"events": [event]}):
        with pytest.raises(ValidationError) as caught:
            ContactRequest.model_validate({"marketing_consent": True, **body})
        [error] = caught.value.errors()
        said[error["loc"][-1]] = error["msg"]
    assert said["as_of"].startswith(f"as_of {refusal}")
    assert said["timestamp"].startswith(f"timestamp {refusal}")


@pytest.mark.parametrize("ahead_minutes", [10, 24 * 60])
def test_one_future_event_among_past_ones_is_refused_at_its_place(ahead_minutes: int) -> None:
    """The check reads the latest and the earliest moment, not every event: a future event
    after a past one must still be found, and named at its own index; a server's clock may be
    behind by CLOCK_SKEW (5 minutes), not by 10 (a local time sent as UTC is hours ahead).
    Mutation review: every future-time test sent one event, in the year 2999."""
    from features.schema import CLOCK_SKEW

    now = dt.datetime.now(dt.UTC)
    past = {"timestamp": (now - dt.timedelta(days=3)).isoformat(), "event_type": "page_view"}
    ahead = now + dt.timedelta(minutes=ahead_minutes)
    future = {"timestamp": ahead.isoformat(), "event_type": "email_open"}
    body = {"marketing_consent": True, "events": [{**past, "channel": "web"}] * 2}
    body["events"].insert(1, {**future, "channel": "email"})
    with pytest.raises(ValidationError) as caught:
        ContactRequest.model_validate(body)
    [error] = caught.value.errors()
    assert error["loc"] == ("events", 1, "timestamp")
    assert "is in the future" in error["msg"]
    # within the skew allowed: a clock a little behind the client's is no refusal
    within = now + CLOCK_SKEW - dt.timedelta(minutes=2)
    body["events"][1] = {**future, "channel": "email", "timestamp": within.isoformat()}
    assert ContactRequest.model_validate(body).events is not None


@pytest.mark.parametrize(
    ("written", "instant"),
    [
        ("2026-01-01T12:00:00z", dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)),
        ("2026-01-01t12:00:00Z", dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)),
        ("2026-01-01T13:00:00+01", dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)),
        ("2026-01-01T07:00-05", dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)),
        ("2026-01-01T13:00:00.25+01", dt.datetime(2026, 1, 1, 12, 0, 0, 250000, tzinfo=dt.UTC)),
    ],
)
def test_a_lower_case_z_and_an_offset_of_whole_hours_are_read_as_ingest_reads_them(
    written: str, instant: dt.datetime
) -> None:
    """One rule for the service and ingest (features.schema.UTC_OFFSET): the service refused
    +01, which ingest read, and ingest set aside a lower-case z, which the service read."""
    from features.schema import parse_timestamps

    event = {"timestamp": written, "event_type": "page_view", "channel": "web"}
    body = {"marketing_consent": True, "events": [event], "as_of": written}
    request = ContactRequest.model_validate_json(json.dumps(body))  # as BentoML reads it
    assert request.events is not None
    assert request.events[0].timestamp == instant
    assert request.as_of == instant
    assert parse_timestamps(pl.Series([written]), timezone=None)[0].to_list() == [instant]


@pytest.mark.parametrize(
    ("written", "kind"),
    [
        ("2026-01-01T12:00:00", "timezone_aware"),
        ("2026-01-01T12:00:00+1", "datetime_from_date_parsing"),
        ("2026-01-01T12+01", "datetime_from_date_parsing"),
        ("2026-01-01T24:00:00+01", "datetime_from_date_parsing"),  # an hour out of range
    ],
)
def test_a_moment_still_refused_gets_the_parsers_one_error_at_its_field(
    written: str, kind: str
) -> None:
    """Completing +01 to +01:00 adds no error of its own: what the parser refuses is one
    error, of the parser's kind (errors.py words the out-of-range one), at the field."""
    event = {"timestamp": written, "event_type": "page_view", "channel": "web"}
    with pytest.raises(ValidationError) as caught:
        ContactRequest.model_validate_json(
            json.dumps({"marketing_consent": True, "events": [event]})
        )
    [error] = caught.value.errors()
    assert (error["loc"], error["type"]) == (("events", 0, "timestamp"), kind)


def test_too_many_events_is_refused() -> None:
    event = {"timestamp": "2026-01-01T00:00:00Z", "event_type": "page_view", "channel": "web"}
    body = {"marketing_consent": True, "events": [event] * (MAX_EVENTS_PER_CONTACT + 1)}
    with pytest.raises(ValidationError) as caught:
        ContactRequest.model_validate(body)
    assert caught.value.errors()[0]["loc"] == ("events",)
    assert caught.value.errors()[0]["type"] == "too_long"


# --- which model is served ------------------------------------------------------------------


def test_without_a_model_the_service_refuses_to_start(tmp_path: Any, served: Served) -> None:
    settings = ServiceSettings.from_env(
        {
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/none.db",
            "FUNNELCAST_API_KEY": served.api_key,
        }
    )
    with pytest.raises(ServiceConfigError, match=r"no model to serve.*ALLOW_RULES_FALLBACK"):
        load_scorer(settings)
    assert not (tmp_path / "none.db").exists()  # looking did not create a store


def _rules_scorer(tmp_path: Any, served: Served) -> Any:
    """The scorer a service gets with no model in its store and the rules fallback allowed."""
    settings = ServiceSettings.from_env(
        {
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/none.db",
            "FUNNELCAST_API_KEY": served.api_key,
            "FUNNELCAST_ALLOW_RULES_FALLBACK": "1",
        }
    )
    return load_scorer(settings)


def test_the_rules_fallback_reads_the_rules_of_the_settings_file(
    tmp_path: Any, served: Served
) -> None:
    """`funnelcast serve --config` passes its file on (FUNNELCAST_CONFIG): a cart 16 days ago
    is intent within the shipped 28-day lookback, and no signal within a 7-day one."""
    import yaml

    from features.settings import load_defaults

    config = load_defaults()
    config["rules"]["lookback_days"] = 7
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(config), "utf-8")
    as_of = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
    cart = {
        "timestamp": (as_of - dt.timedelta(days=16)).isoformat(),
        "event_type": "add_to_cart",
        "channel": "web",
    }
    body = {"marketing_consent": True, "as_of": as_of.isoformat(), "events": [cart]}
    shipped = _rules_scorer(tmp_path, served).predict_rows([_request(body)])[0]
    settings = ServiceSettings.from_env(
        {
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/none.db",
            "FUNNELCAST_API_KEY": served.api_key,
            "FUNNELCAST_ALLOW_RULES_FALLBACK": "1",
            "FUNNELCAST_CONFIG": str(path),
        }
    )
    configured = load_scorer(settings).predict_rows([_request(body)])[0]
    assert shipped["stage"] == "intent"
    assert configured["stage"] != "intent"
    with pytest.raises(ServiceConfigError, match=r"FUNNELCAST_CONFIG .* is not a file"):
        ServiceSettings.from_env(
            {"FUNNELCAST_API_KEY": served.api_key, "FUNNELCAST_CONFIG": str(tmp_path / "x.yaml")}
        )


def test_a_settings_file_without_a_section_is_one_line_naming_it(tmp_path: Any) -> None:
    from features.errors import InputError
    from features.settings import load_rules_settings
    from training.settings import load_training_settings

    path = tmp_path / "partial.yaml"
    path.write_text("rules: {lookback_days: 7, repeat_visit_min_days: 2}\n", "utf-8")
    assert load_rules_settings(path).lookback_days == 7
    with pytest.raises(InputError, match="has no `training:` section"):
        load_training_settings(path)


def test_the_rules_fallback_says_so_in_every_answer(
    tmp_path: Any, served: Served, active_contacts: list[str]
) -> None:
    scorer = _rules_scorer(tmp_path, served)
    body = contact_body(served, active_contacts[-2])
    expected_stage = (
        build_contact_features(
            served.events,
            served.contacts,
            as_of=served.as_of,
            spec=scorer.spec,  # type: ignore[attr-defined]
        )
        .filter(pl.col("contact_id") == active_contacts[-2])["rules_stage"]
        .cast(pl.String)[0]
    )
    prediction = scorer.predict([_request(body)])[0]
    assert prediction.model == RULES
    assert prediction.model_version is None
    assert prediction.stage == expected_stage
    assert prediction.probabilities.model_dump()[expected_stage] == 1.0  # type: ignore[union-attr]
    assert prediction.propensity is None
    assert "(rules)" in prediction.reasons[0]
    assert scorer.metadata({}).model == RULES
    # the service sends these rows as they are: the bytes pydantic makes of the validated ones
    requests = [_request(body), _request({**body, "marketing_consent": False})]
    now = dt.datetime(2026, 1, 6, tzinfo=dt.UTC)
    rows = scorer.predict_rows(requests, now)
    assert predictions_json(rows, batch=True) == (
        BatchPredictions(predictions=scorer.predict(requests, now)).model_dump_json().encode()
    )


def test_the_rules_fallback_names_the_contact_of_a_batch_of_one(
    tmp_path: Any, served: Served
) -> None:
    scorer = _rules_scorer(tmp_path, served)
    request = _request({"marketing_consent": True, "features": {"rules_stage": "bogus"}})
    with pytest.raises(RequestError) as caught:
        scorer.predict([request], batch=True)
    assert caught.value.field == "contacts.0.features.rules_stage"
    with pytest.raises(RequestError) as caught:
        scorer.predict([request])
    assert caught.value.field == "features.rules_stage"


@pytest.mark.parametrize("features", [{"rules_stage": "bogus"}, {}])
def test_the_rules_fallback_checks_an_opted_out_contacts_input_as_any_other(
    tmp_path: Any, served: Served, features: dict[str, Any]
) -> None:
    """Review: the fallback answered no_consent before reading the input, so a bad request was
    a 200 while the contact was opted out and a 400 once it opted in (the model checks both)."""
    scorer = _rules_scorer(tmp_path, served)
    request = _request({"marketing_consent": False, "features": features})
    with pytest.raises(RequestError) as caught:
        scorer.predict([request])
    assert caught.value.field == "features.rules_stage"
    fine = _request({"marketing_consent": False, "features": {"rules_stage": "intent"}})
    (answer,) = scorer.predict([fine])
    assert answer.status == "no_consent"
    assert answer.stage is None
    assert answer.probabilities is None


def test_the_rules_fallback_works_out_no_stage_for_an_opted_out_contacts_events(
    tmp_path: Any, served: Served, active_contacts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Privacy review: the fallback built the features and the stage of a contact without
    consent from its events before answering no_consent; the model's scorer reads none."""
    import serving.runtime

    scorer = _rules_scorer(tmp_path, served)
    body = {**contact_body(served, active_contacts[-2]), "marketing_consent": False}
    worked_out: list[object] = []
    real = serving.runtime.build_online_features

    def noted(*args: Any, **kwargs: Any) -> Any:
        worked_out.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(serving.runtime, "build_online_features", noted)
    (answer,) = scorer.predict([_request(body)])
    assert answer.status == "no_consent"
    assert worked_out == []
    (scored,) = scorer.predict([_request({**body, "marketing_consent": True})])
    assert scored.status == "scored"
    assert len(worked_out) == 1  # the same request with consent: worked out, once


def test_the_rules_fallback_reads_the_stage_of_a_compact_batch(
    tmp_path: Any, served: Served
) -> None:
    scorer = _rules_scorer(tmp_path, served)
    names = ["email_click_count_7d", "rules_stage"]
    batch = _compact(
        [
            {"marketing_consent": True, "features": {"email_click_count_7d": 2, "rules_stage": s}}
            for s in ("intent", "awareness")
        ],
        names,
    )
    rows = scorer.predict_rows(batch.contacts, batch=True, feature_names=batch.feature_names)
    assert [(row["model"], row["stage"]) for row in rows] == [
        (RULES, "intent"),
        (RULES, "awareness"),
    ]
    bogus = _compact(
        [{"marketing_consent": True, "features": {"x": 1, "rules_stage": "b"}}],
        ["x", "rules_stage"],
    )
    with pytest.raises(RequestError) as caught:
        scorer.predict(bogus.contacts, batch=True, feature_names=bogus.feature_names)
    assert caught.value.field == "contacts.0.values.1"
    stageless = _compact([{"marketing_consent": True, "features": {"x": 1}}], ["x"])
    with pytest.raises(RequestError) as caught:
        scorer.predict(stageless.contacts, batch=True, feature_names=stageless.feature_names)
    assert caught.value.field == "feature_names"


def test_a_number_beyond_float32_is_never_scored_as_infinite(
    service: Any, served: Served, active_contacts: list[str]
) -> None:
    """The float32 cast would make it inf (with a RuntimeWarning, an error in these tests);
    it is refused naming the record and the feature instead, on every path to the model."""
    from training.pyfunc import FeatureValueError

    model: FunnelcastModel = service.scorer.model
    features, _ = service.scorer.features_of(
        _request(contact_body(served, active_contacts[4])), served.as_of
    )
    huge = {**features, "email_click_count_7d": 1e39}
    for complete in (True, False):
        with pytest.raises(FeatureValueError, match="float32") as caught:
            model.encode_records([features, huge], complete=complete)
        assert (caught.value.row, caught.value.feature) == (1, "email_click_count_7d")
    # text after it sends the record down the slow path, which names the text, warning-free
    last = [n for n in model.feature_names if n not in model.categories][-1]
    with pytest.raises(FeatureValueError, match="is a number") as caught:
        model.encode_records([{**huge, last: "many"}])
    assert caught.value.feature == last
    with pytest.raises(FeatureValueError, match="float32"):
        model.predict_records([huge])


@pytest.mark.parametrize(
    "name", ["email_click_count_7d", "active_days_28d", "session_count_7d", "days_since_last_event"]
)
def test_a_negative_count_or_recency_is_refused_naming_it(
    service: Any, served: Served, active_contacts: list[str], name: str
) -> None:
    """No builder makes them negative: a negative one given is a mistake, refused on every
    path to the model. Sums (a builder given a refund of -25 sums it), derived features (a
    trend) and attributes (a numeric column may be named days_since_...) are not held to it."""
    from training.pyfunc import FeatureValueError

    model: FunnelcastModel = service.scorer.model
    features, _ = service.scorer.features_of(
        _request(contact_body(served, active_contacts[4])), served.as_of
    )
    wrong = {**features, name: -5.0}
    for complete in (True, False):
        with pytest.raises(FeatureValueError, match="never negative") as caught:
            model.encode_records([features, wrong], complete=complete)
        assert (caught.value.row, caught.value.feature) == (1, name)
    with pytest.raises(RequestError, match="never negative") as caught:
        service.scorer.predict(
            [_request({"marketing_consent": True, "features": f}) for f in (features, wrong)],
            batch=True,
        )
    assert caught.value.field == f"contacts.1.features.{name}"
    free = [
        "purchase_value_sum_all",
        "activity_trend_7d_vs_prior_28d",
        *(n for n in model.attribute_features if n not in model.categories),
    ]
    assert any(n.startswith("days_since_") for n in free)
    model.encode_records([{**features, **dict.fromkeys(free, -1.0)}])  # accepted


@pytest.mark.parametrize("value", [0.5, 3e38, 2.0**31])
@pytest.mark.parametrize("name", ["email_click_count_7d", "active_days_28d", "session_count_7d"])
def test_a_count_that_is_no_whole_32_bit_number_is_refused_naming_it(
    service: Any, served: Served, active_contacts: list[str], name: str, value: float
) -> None:
    """Every builder makes counts, active days and sessions 32-bit integers: half a click or
    3e38 of them given as precomputed features is a mistake (they were scored). Missing
    (null) stays allowed, and so do fractional recencies, sums and derived features."""
    from training.pyfunc import FeatureValueError

    model: FunnelcastModel = service.scorer.model
    features, _ = service.scorer.features_of(
        _request(contact_body(served, active_contacts[4])), served.as_of
    )
    wrong = {**features, name: value}
    for complete in (True, False):
        with pytest.raises(FeatureValueError, match="is a whole number") as caught:
            model.encode_records([features, wrong], complete=complete)
        assert (caught.value.row, caught.value.feature) == (1, name)
    with pytest.raises(RequestError, match="is a whole number") as one:
        service.scorer.predict([_request({"marketing_consent": True, "features": wrong})])
    assert one.value.field == f"features.{name}"
    fine = {
        **features,
        name: None,
        "days_since_last_event": 2.5,
        "purchase_value_sum_all": 10.25,
        "activity_trend_7d_vs_prior_28d": 0.75,
    }
    model.encode_records([fine, {**features, name: 2.0**31 - 128}])  # accepted


def test_a_missing_alias_falls_back_only_when_allowed(service_env: Served) -> None:
    env = service_env.env(FUNNELCAST_MODEL_ALIAS="no-such-alias")
    with pytest.raises(ServiceConfigError, match="no-such-alias"):
        load_scorer(ServiceSettings.from_env(env))
    env["FUNNELCAST_ALLOW_RULES_FALLBACK"] = "true"
    assert load_scorer(ServiceSettings.from_env(env)).info.model == RULES


def test_a_bento_model_named_is_never_replaced_by_the_rules(service_env: Served) -> None:
    """`serve --bento-model nosuch:latest --allow-rules-fallback` served the rules, where a
    mistyped --version is refused (deploy review)."""
    env = service_env.env(FUNNELCAST_BENTO_MODEL="nosuch:latest")
    env["FUNNELCAST_ALLOW_RULES_FALLBACK"] = "1"
    with pytest.raises(ServiceConfigError, match="the BentoML model nosuch:latest was named"):
        load_scorer(ServiceSettings.from_env(env))
    del env["FUNNELCAST_BENTO_MODEL"]  # the registry's model, there: served
    assert load_scorer(ServiceSettings.from_env(env)).info.model != RULES


def test_a_bento_serves_the_model_it_packs_whatever_the_environment_names() -> None:
    """A FUNNELCAST_BENTO_MODEL left in the environment made a Bento of version 1 serve the
    latest import (version 2): a rollback to an older Bento served the newest model (deploy
    review). The Bento's own tag, or none, is its model; another is refused; no Bento keeps
    the settings."""
    from serving.service import bento_settings

    own = "funnelcast:aaaa1111"
    # its own, by its exact tag (a container's env) or by its name (the bentofile's
    # funnelcast:latest), read without the store: a later build changes nothing (diff review)
    for named in (None, own, "funnelcast:latest", "funnelcast", "Funnelcast:latest"):
        settings = ServiceSettings(bento_model=named, version="7")
        assert bento_settings(settings, own) == dataclasses.replace(settings, bento_model=own)
    for other in ("funnelcast:bbbb2222", "other:latest", "other", "funnelcast:a:b", "funnelcast:"):
        with pytest.raises(
            ServiceConfigError,
            match=r"this Bento packs the BentoML model funnelcast:aaaa1111 and serves only it, "
            rf"but FUNNELCAST_BENTO_MODEL names {other}; unset FUNNELCAST_BENTO_MODEL",
        ):
            bento_settings(ServiceSettings(bento_model=other), own)
    settings = ServiceSettings(bento_model="funnelcast:bbbb2222")
    assert bento_settings(settings, None) is settings


def test_a_version_asked_for_by_number_is_never_replaced_by_the_rules(
    service_env: Served,
) -> None:
    env = service_env.env(FUNNELCAST_MODEL_VERSION="999", FUNNELCAST_ALLOW_RULES_FALLBACK="1")
    with pytest.raises(ServiceConfigError, match="version 999 was asked for by number"):
        load_scorer(ServiceSettings.from_env(env))
    # the alias's version, pinned by `funnelcast serve` for its workers: a worker that cannot
    # load it (the registry down as it restarts) falls back as the alias would (diff review)
    env["FUNNELCAST_MODEL_PINNED_FROM_ALIAS"] = "1"
    assert load_scorer(ServiceSettings.from_env(env)).info.model == RULES
    del env["FUNNELCAST_ALLOW_RULES_FALLBACK"]
    with pytest.raises(ServiceConfigError, match=r"no model to serve: .*RULES_FALLBACK=1"):
        load_scorer(ServiceSettings.from_env(env))


def test_a_worker_loads_the_local_copy_with_the_registry_gone(
    service: Any,
    served: Served,
    active_contacts: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ops review: each worker loaded the model from the registry as it started, so one that
    BentoML restarted while the registry was down stopped the server (or served the rules
    beside the others' model). `funnelcast serve`'s check copies the model once; a worker
    loads that copy with the store deleted, or the tracking URI a server nothing listens on,
    and answers as the registry's model does: /metadata and predictions alike."""
    import mlflow.artifacts

    from serving.model_copy import MODEL_FOLDER
    from training.tracking import shown_uri

    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    store = tmp_path / "store" / "mlflow.db"  # a store of its own, to delete
    store.parent.mkdir()
    shutil.copyfile(served.store.removeprefix("sqlite:///"), store)
    uri = f"sqlite:///{store}"
    downloads: list[str] = []
    download = mlflow.artifacts.download_artifacts

    def counted(**given: Any) -> Any:
        downloads.append(given["artifact_uri"])
        return download(**given)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", counted)
    checked = ServiceSettings.from_env(served.env(MLFLOW_TRACKING_URI=uri))
    try:
        first = load_scorer(checked, copy_into=tmp_path / "copies")
        again = load_scorer(checked, copy_into=tmp_path / "copies")
    finally:  # the loader points MLflow at the store it read: back to the test store
        mlflow.set_tracking_uri(served.store)
        mlflow.set_registry_uri(served.store)
    folder = first.info.local_copy
    assert folder is not None
    assert folder.parent == tmp_path / "copies"
    assert (folder / MODEL_FOLDER / "MLmodel").is_file()
    assert again.info.local_copy == folder
    assert downloads == ["models:/funnelcast/1"]  # made once, then reused
    store.unlink()  # the registry is gone
    body = contact_body(served, active_contacts[-3])
    expected = service.scorer.predict_rows([_request(body)])
    for gone in (uri, "http://127.0.0.1:9"):  # deleted; a server nothing listens on
        # what `funnelcast serve` hands its workers
        env = served.env(
            MLFLOW_TRACKING_URI=gone,
            FUNNELCAST_MODEL_COPY=str(folder),
            FUNNELCAST_MODEL_VERSION="1",
            FUNNELCAST_MODEL_PINNED_FROM_ALIAS="1",
        )
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            from serving.service import Funnelcast

            worker = Funnelcast()
        assert worker.scorer.info.model == "funnelcast"  # not the rules
        assert worker.scorer.info == dataclasses.replace(
            service.scorer.info, store=shown_uri(uri), local_copy=folder
        )
        assert worker.metadata() == service.metadata()
        assert worker.scorer.predict_rows([_request(body)]) == expected
        assert predictions_json(expected, batch=False) == predictions_json(
            worker.scorer.predict_rows([_request(body)]), batch=False
        )
    assert not store.exists()  # loading did not make an empty store in its place
    assert downloads == ["models:/funnelcast/1"]


def test_a_worker_whose_copy_is_not_whole_falls_back_only_as_for_a_registry_down(
    service_env: Served, tmp_path: Path
) -> None:
    """A copy removed or damaged since `funnelcast serve` made it is never loaded: the worker
    is refused with the fix, or serves the rules when allowed for the alias's version, as it
    would have with the registry down; a version named with --version never is replaced."""
    from serving.held import lock_of, release_folder, remove_unheld_folders
    from serving.model_copy import MODEL_FOLDER, make_model_copy

    def download(folder: Path) -> None:
        (folder / "MLmodel").write_text("flavors: {}\n", "utf-8")
        (folder / "python_model.pkl").write_bytes(b"\x80" * 4096)

    info = {"model": "funnelcast", "model_name": "funnelcast", "model_version": "1"}
    damaged = make_model_copy(tmp_path / "damaged", info, download)
    lock_of(damaged).touch()  # as `funnelcast serve` makes a copy: its lock file first
    (damaged / MODEL_FOLDER / "python_model.pkl").write_bytes(b"\x80" * 100)  # half of it
    for folder, says in ((tmp_path / "gone", "does not exist"), (damaged, "is incomplete")):
        env = service_env.env(
            FUNNELCAST_MODEL_COPY=str(folder),
            FUNNELCAST_MODEL_VERSION="1",
            FUNNELCAST_MODEL_PINNED_FROM_ALIAS="1",
        )
        said = f"no model to serve: .*{re.escape(str(folder))} {says}"
        with pytest.raises(ServiceConfigError, match=said):
            load_scorer(ServiceSettings.from_env(env))
        env["FUNNELCAST_ALLOW_RULES_FALLBACK"] = "1"
        assert load_scorer(ServiceSettings.from_env(env)).info.model == RULES
        env["FUNNELCAST_MODEL_PINNED_FROM_ALIAS"] = "0"  # `funnelcast serve --version 1`
        with pytest.raises(ServiceConfigError, match="version 1 was asked for by number"):
            load_scorer(ServiceSettings.from_env(env))
    # a worker holds the copy it is given while it runs (a plain `bentoml serve` given one has
    # no `funnelcast serve` holding it), so no start removes it meanwhile; none that is not there
    assert remove_unheld_folders(tmp_path) == []
    assert sorted(entry.name for entry in tmp_path.iterdir()) == [".damaged.lock", "damaged"]
    release_folder(damaged)  # the worker stops
    assert [path for path, _ in remove_unheld_folders(tmp_path)] == [damaged]


def test_a_worker_that_cannot_start_stops_only_its_own_server_and_says_why_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker that cannot start asks its server to stop and ends (status 2). Only its own
    server: one killed leaves the worker to PID 1 or a subreaper (a systemd user manager, which
    SIGTERM stops whole: review). And only the first worker says why; with two workers the
    reason was logged twice. (The real servers: test_server.py.)"""
    import signal

    from bentoml._internal.context import server_context

    from serving import service

    class ExitedError(Exception):
        pass

    def exit_now(status: int) -> NoReturn:
        raise ExitedError(status)

    killed: list[tuple[int, int]] = []
    monkeypatch.setattr(server_context, "worker_index", 1)
    monkeypatch.setattr(service.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(service.os, "getppid", lambda: 4242)
    monkeypatch.setattr(service.os, "kill", lambda pid, sig: killed.append((pid, sig)))
    monkeypatch.setattr(service.os, "_exit", exit_now)
    monkeypatch.setattr(service.logging, "shutdown", lambda: None)
    error = ServiceConfigError("no model to serve: none registered")
    said: list[str] = []
    for server in ("777", "4242", "4242"):  # adopted; its server; its server, a second worker
        monkeypatch.setenv("FUNNELCAST_SERVER_PID", server)
        caplog.clear()
        with pytest.raises(ExitedError, match="2"):
            service._stop_the_server(error)
        said.append(" | ".join(record.getMessage() for record in caplog.records))
    assert said == [
        "funnelcast cannot start, and its server is gone: no model to serve: none registered",
        "funnelcast cannot start, stopping the server: no model to serve: none registered",
        "",
    ]
    assert killed == [(4242, signal.SIGTERM)]
    assert [path.name for path in tmp_path.iterdir()] == ["funnelcast-cannot-start-4242"]
    # no note can be written (the server then exits 0): it is still asked to stop, and told why
    monkeypatch.setattr(service.tempfile, "gettempdir", lambda: str(tmp_path / "gone"))
    caplog.clear()
    with pytest.raises(ExitedError, match="2"):
        service._stop_the_server(error)
    assert killed == [(4242, signal.SIGTERM)] * 2
    assert "stopping the server: no model to serve" in caplog.text


def test_the_server_process_holds_the_copy_its_workers_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker restarting holds nothing for the seconds it takes to start: a `funnelcast serve`
    starting then removed the copy of a plain `bentoml serve`, which stopped (review). The
    server's own process holds it while it runs; its workers inherit the lock."""
    from serving import service
    from serving.held import lock_of, release_folder, remove_unheld_folders

    copy = tmp_path / "funnelcast-1-abc"
    copy.mkdir()
    lock_of(copy).touch()  # as `funnelcast serve` made it
    monkeypatch.setenv("FUNNELCAST_MODEL_COPY", str(copy))
    service._hold_the_model_copy()
    try:
        assert remove_unheld_folders(tmp_path) == []
    finally:
        release_folder(copy)  # the server stops
    assert [path for path, _ in remove_unheld_folders(tmp_path)] == [copy]


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("bogus://x", "cannot hold the registry"),
        ("http://127.0.0.1:9", r"cannot be reached \(Connection refused\); start it"),
        ("http://alice:s3cret@127.0.0.1:9", r"http://\*\*\*@127.0.0.1:9 cannot be reached"),
    ],
)
def test_a_registry_that_cannot_be_used_is_not_reported_as_a_missing_model(
    service_env: Served, monkeypatch: pytest.MonkeyPatch, uri: str, says: str
) -> None:
    """An unknown scheme, or a registry server that does not answer (port 9 is closed): said
    so, not "no alias 'champion'", and at once (one connection is tried, not MLflow's
    minutes of retries)."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    env = service_env.env(MLFLOW_TRACKING_URI=uri)
    try:
        with pytest.raises(ServiceConfigError, match=says) as caught:
            load_scorer(ServiceSettings.from_env(env))
    finally:  # the loader points MLflow at the URI it tried: back to the test store
        mlflow.set_tracking_uri(service_env.store)
        mlflow.set_registry_uri(service_env.store)
    assert "has no alias" not in str(caught.value)
    assert "s3cret" not in str(caught.value)
    assert "alice" not in str(caught.value)


def test_a_bento_model_tag_that_is_no_tag_is_refused_naming_the_form(
    service_env: Served,
) -> None:
    # BentoML's ValueError, and its own exception ('funnelcast:' from funnelcast:$TAG with TAG
    # unset, which restarted the worker forever: diff review)
    for tag in ("bad tag!!", "funnelcast:", "a:b:c"):
        env = service_env.env(FUNNELCAST_BENTO_MODEL=tag)
        with pytest.raises(ServiceConfigError, match=r"is not a BentoML model tag.*name:version"):
            load_scorer(ServiceSettings.from_env(env))


def _tampered(service: Any) -> FunnelcastModel:
    model = copy.copy(service.scorer.model)
    model.spec_features = [
        "email_click_count_3d" if n == "email_click_count_7d" else n for n in model.spec_features
    ]
    return model


def test_a_model_whose_spec_differs_from_the_code_is_refused_naming_the_features(
    service: Any,
) -> None:
    with pytest.raises(SpecMismatchError) as caught:
        check_feature_spec(_tampered(service))
    message = str(caught.value)
    assert "email_click_count_3d" in message  # the model's, unknown to this code
    assert "email_click_count_7d" in message  # this code's, unknown to the model
    unreadable = copy.copy(service.scorer.model)
    unreadable.spec_text = service.scorer.model.spec_text.replace("email_click", "email_klick", 1)
    with pytest.raises(SpecMismatchError, match="does not load with this service's code"):
        check_feature_spec(unreadable)


def test_a_registered_mismatched_model_does_not_load_even_with_the_fallback(
    service: Any, service_env: Served
) -> None:
    model = _tampered(service)
    with training_run():  # its experiment keeps artifacts beside the temporary store
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            pip_requirements=_requirements(),
            registered_model_name="funnelcast-mismatch",
        )
    ref = resolve("funnelcast-mismatch", version=str(info.registered_model_version))
    assert isinstance(load_model(ref), FunnelcastModel)
    env = service_env.env(
        FUNNELCAST_MODEL_NAME="funnelcast-mismatch",
        FUNNELCAST_MODEL_VERSION=ref.version,
        FUNNELCAST_ALLOW_RULES_FALLBACK="1",
    )
    with pytest.raises(SpecMismatchError, match="email_click_count_3d"):
        load_scorer(ServiceSettings.from_env(env))


@pytest.mark.parametrize("damage", ["cut", "removed", "no MLmodel"])
def test_a_registered_model_whose_files_are_damaged_is_one_line_never_the_rules(
    service: Any, service_env: Served, damage: str, tmp_path: Path
) -> None:
    """A pickle cut short or removed from the store was a 70-line traceback and exit 1 from
    the weekly `score` job, as for a bug, and a removed MLmodel file was MLflow's "check the
    tracking URI" (scoring and diff reviews); with the rules fallback allowed it is still
    refused: the fallback stands in for a model that is not there. `serve`'s local copy of
    such files is not kept: every later start reused it, files mended or not (diff review)."""
    with training_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=service.scorer.model,
            pip_requirements=_requirements(),
            registered_model_name="funnelcast-damaged",
        )
    ref = resolve("funnelcast-damaged", version=str(info.registered_model_version))
    assert isinstance(load_model(ref), FunnelcastModel)  # whole, it loads
    stored = Path(mlflow.get_logged_model(info.model_id).artifact_location.removeprefix("file://"))
    damaged = stored / ("MLmodel" if damage == "no MLmodel" else "python_model.pkl")
    whole = damaged.read_bytes()
    if damage == "cut":
        damaged.write_bytes(whole[:1000])
    else:
        damaged.unlink()
    with pytest.raises(
        DamagedModelError,
        match=rf"version {ref.version} of 'funnelcast-damaged' cannot be loaded: its model "
        r"files are damaged or missing, or another version of the code wrote them \(\w+: .*\); "
        "train and register it again",
    ):
        load_model(ref)
    env = service_env.env(FUNNELCAST_MODEL_NAME="funnelcast-damaged")
    mlflow.MlflowClient().set_registered_model_alias("funnelcast-damaged", "champion", ref.version)
    copies = tmp_path / "copies"
    for allowed in ("", "1"):
        settings = ServiceSettings.from_env({**env, "FUNNELCAST_ALLOW_RULES_FALLBACK": allowed})
        with pytest.raises(DamagedModelError):
            load_scorer(settings)
        with pytest.raises(DamagedModelError, match="train and register it again") as said:
            load_scorer(settings, copy_into=copies)  # as `funnelcast serve` loads it
        assert "restart" not in str(said.value)  # a copy made again would be the same
        assert not list(copies.rglob("copy.json"))  # no copy kept
    damaged.write_bytes(whole)  # mended: the next start copies and serves it
    scorer = load_scorer(ServiceSettings.from_env(env), copy_into=copies)
    assert scorer.info.model_version == ref.version
    assert len(list(copies.rglob("copy.json"))) == 1


def test_a_copy_a_running_server_may_use_is_kept_when_another_start_cannot_load_it(
    service_env: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start that reuses a whole copy and cannot load it removed it from under a running
    server, whose restarted workers then served the rules or stopped it (late review); and
    out of memory was said as damaged files. The copy is kept, and named."""
    env = service_env.env()
    copies = tmp_path / "copies"
    load_scorer(ServiceSettings.from_env(env), copy_into=copies)  # a running server's copy
    [record] = copies.rglob("copy.json")

    def unreadable(*args: object, **kwargs: object) -> None:
        raise ValueError("cannot read")

    monkeypatch.setattr(mlflow.pyfunc, "load_model", unreadable)
    with pytest.raises(
        DamagedModelError, match=r"\(its local copy .*remove that folder once no server uses it"
    ):
        load_scorer(ServiceSettings.from_env(env), copy_into=copies)
    assert record.is_file()

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(mlflow.pyfunc, "load_model", out_of_memory)
    with pytest.raises(MemoryError):
        load_scorer(ServiceSettings.from_env(env), copy_into=copies)
    assert record.is_file()


def test_every_prediction_names_the_registered_model_it_came_from(
    service: Any, service_env: Served, active_contacts: list[str]
) -> None:
    """A store holds several registered models (`run --source olist` registers
    `funnelcast-olist` beside `funnelcast`): each answer names the one that scored it, and a
    contact without consent is answered under the same name."""
    with training_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=service.scorer.model,
            pip_requirements=_requirements(),
            registered_model_name="funnelcast-other",
        )
    env = service_env.env(
        FUNNELCAST_MODEL_NAME="funnelcast-other",
        FUNNELCAST_MODEL_VERSION=str(info.registered_model_version),
    )
    scorer = load_scorer(ServiceSettings.from_env(env))
    body = contact_body(service_env, active_contacts[0])
    scored, withheld = scorer.predict_rows(
        [_request(body), _request({**body, "marketing_consent": False})]
    )
    assert scored["status"] == "scored"
    assert withheld["status"] == "no_consent"
    for answer in (scored, withheld):
        assert answer["model"] == "funnelcast"
        assert answer["model_name"] == "funnelcast-other"
        assert answer["model_version"] == str(info.registered_model_version)
    assert service.scorer.predict_rows([_request(body)])[0]["model_name"] == "funnelcast"


def test_settings_never_show_the_keys(served: Served) -> None:
    settings = ServiceSettings.from_env(served.env())
    assert served.api_key not in repr(settings)
    assert served.api_key not in str(dataclasses.asdict(settings).keys())


def test_models_from_before_categories_were_recorded_still_encode(service: Any) -> None:
    """Versions registered before ``categories_`` existed read LightGBM's own record."""
    model = service.scorer.model
    older = copy.copy(model)
    older.stage_model = copy.copy(model.stage_model)
    del older.stage_model.categories_
    older.__dict__.pop("_codes", None)
    assert older.categories == model.categories
    assert set(model.categories) == {"rules_stage", "acquisition_source", "segment"}


def test_a_model_logged_before_the_reasons_setting_is_explained_by_treeshap(
    service: Any, served: Served, active_contacts: list[str]
) -> None:
    model: FunnelcastModel = service.scorer.model
    assert model.reasons_method == "path"
    old = copy.copy(model)
    del old.reasons_method  # as a model pickled before the setting existed
    old = pickle.loads(pickle.dumps(old))
    assert old.reasons_method == "treeshap"
    features = build_contact_features(
        served.events, served.contacts, as_of=served.as_of, spec=model.spec, rules=model.rules
    ).filter(pl.col("contact_id").is_in(active_contacts))
    matrix = old.encode_frame(features)
    codes = old.stage_model.decide(old.stage_model.predict_proba(matrix))
    exact = old.stage_model.class_contributions(matrix, codes, method="treeshap")
    values = features.select(old.feature_names).to_dicts()
    expected = top_reasons(exact, old.feature_names, values, old.spec, k=3)
    assert old.score_matrix(matrix, values)["reasons"] == expected
    # the two methods name other reasons for some of these contacts: the fallback is taken
    assert model.score_matrix(matrix, values)["reasons"] != expected


def test_an_unknown_reasons_method_is_refused_in_the_settings_and_the_model() -> None:
    from features.errors import InputError
    from training.settings import load_training_settings

    with pytest.raises(InputError, match=r"settings with reasons given over them.*reasons:"):
        load_training_settings(reasons="lime")
    with pytest.raises(ValueError, match="reasons_method must be one of"):
        FunnelcastModel(
            stage_model=None,  # type: ignore[arg-type]
            propensity_model=None,  # type: ignore[arg-type]
            spec_text="",
            rules=None,  # type: ignore[arg-type]
            feature_names=[],
            horizon_days=14,
            reasons_method="lime",  # type: ignore[arg-type]
        )


def test_a_number_column_named_days_since_is_an_attribute_of_its_own_name(
    served: Served, active_contacts: list[str]
) -> None:
    """A CRM export's own `days_since_last_login` (a number) is a feature of that name, as the
    batch engine makes it, not the days since a date attribute `last_login`: a request's
    attributes name it as the contacts table does, and its features equal the batch
    engine's. The date column `signup_date` still reads as days since it, and a true/false
    column's JSON true and false are 1 and 0, as training reads them."""
    from features.settings import load_rules_settings
    from features.spec import load_feature_spec, shipped_spec_text
    from serving.runtime import ModelInfo
    from training.pipeline import train_models
    from training.settings import load_training_settings

    contacts = pl.from_arrow(served.contacts)
    assert isinstance(contacts, pl.DataFrame)
    # a third of the contacts (the checked ones among them) is enough to train on, and quicker
    kept = set(contacts["contact_id"].to_list()[::3]) | set(active_contacts[:20])
    contacts = contacts.filter(pl.col("contact_id").is_in(kept)).with_columns(
        (pl.col("contact_id").str.len_chars() * 3.5 % 17).alias("days_since_last_login"),
        (pl.col("contact_id").str.slice(-1) < "5").alias("is_vip"),  # true/false: 1.0/0.0
    )
    vip = dict(contacts.select("contact_id", "is_vip").iter_rows())
    assert set(vip.values()) == {True, False}
    events = pl.from_arrow(served.events)
    assert isinstance(events, pl.DataFrame)
    events = events.filter(pl.col("contact_id").is_in(kept))
    spec, rules = load_feature_spec(), load_rules_settings()
    settings = load_training_settings(min_train_positives=50, min_eval_positives=10)
    result = train_models(events, contacts, spec=spec, rules=rules, settings=settings)
    assert result.date_attributes == ["signup_date"]
    model = served_model(result, spec_text=shipped_spec_text(), rules=rules, settings=settings)
    model = pickle.loads(pickle.dumps(model))  # as logged and loaded
    assert "days_since_last_login" in model.attribute_features
    assert model.attribute_dates == ["signup_date"]
    info = ModelInfo("funnelcast", "funnelcast", "9", "a test", None, None, {})
    scorer = ModelScorer(model, info)
    batch = build_contact_features(
        events, contacts, as_of=served.as_of, spec=model.spec, rules=model.rules
    ).filter(pl.col("contact_id").is_in(active_contacts[:20]))
    by_id = {row["contact_id"]: row for row in batch.iter_rows(named=True)}
    for contact_id in active_contacts[:20]:
        body = contact_body(served, contact_id)
        login = by_id[contact_id]["days_since_last_login"]
        body["attributes"] = {  # type: ignore[assignment]
            **body["attributes"],  # type: ignore[dict-item]
            "days_since_last_login": login,
            "is_vip": vip[contact_id],  # JSON true or false
        }
        features, _ = scorer.features_of(_request(body), served.as_of)
        assert features["days_since_last_login"] == login
        assert features["is_vip"] == float(vip[contact_id])
        for name in model.feature_names:
            expected = by_id[contact_id][name]
            if isinstance(expected, float):
                assert features[name] == pytest.approx(expected, abs=1e-9), name
            else:
                assert features[name] == expected, name
    assert scorer.metadata({}).attributes == {
        "acquisition_source": "category",
        "days_since_last_login": "number",
        "is_vip": "number",
        "segment": "category",
        "signup_date": "date",
    }
    # a number the model cannot read is refused at the attribute it was given as, in a batch
    # too, and for a contact without consent (checked as any other; a 10**400 was a 500)
    body = contact_body(served, active_contacts[0])
    for huge, shown in [(10**400, "an integer of 1329 bits"), (-1e300, "-1e+300")]:
        for consent in (True, False):
            wrong = {
                **body,
                "marketing_consent": consent,
                "attributes": {**body["attributes"], "days_since_last_login": huge},  # type: ignore[dict-item]
            }
            with pytest.raises(RequestError, match="beyond the float32 range") as one:
                scorer.predict_rows([_request(wrong)])
            assert one.value.field == "attributes.days_since_last_login"
            assert one.value.message.startswith(shown)
            with pytest.raises(RequestError) as many:
                scorer.predict_rows([_request(body), _request(wrong)], batch=True)
            assert many.value.field == "contacts.1.attributes.days_since_last_login"
    # the largest float32 is read as it is
    edge = {**body, "attributes": {**body["attributes"], "days_since_last_login": -FLOAT32_MAX}}  # type: ignore[dict-item]
    assert scorer.features_of(_request(edge), served.as_of)[0]["days_since_last_login"] == (
        -FLOAT32_MAX
    )
    # a model logged before the kinds were recorded reads every days_since_ feature as a date
    old = copy.copy(model)
    del old.date_attributes
    assert sorted(old.attribute_dates) == ["last_login", "signup_date"]


def test_events_are_told_apart_by_their_properties_as_validation_does() -> None:
    """Two coupons of one campaign redeemed at one moment are two events in training (their
    properties differ, so validation keeps both), and so in a request; an exact repeat (a
    retry) counts once in both."""
    import pandas as pd

    from features.online import build_online_features
    from features.schema import validate
    from features.spec import load_feature_spec
    from serving.runtime import _event_rows

    spec = load_feature_spec()
    as_of = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
    events = [
        ("2024-02-27T00:00:00Z", "coupon_redeem", "store", "8", {"coupon_upc": "111"}),
        ("2024-02-27T00:00:00Z", "coupon_redeem", "store", "8", {"coupon_upc": "222"}),
        ("2024-02-27T00:00:00Z", "coupon_redeem", "store", "8", {"coupon_upc": "222"}),  # retry
        # the same keys in another order: another text, so validation keeps both, and the
        # service compares properties as sent (it sorted their keys: one; parity review)
        ("2024-02-27T00:00:00Z", "coupon_redeem", "store", "8", {"coupon_upc": "333", "n": 1}),
        ("2024-02-27T00:00:00Z", "coupon_redeem", "store", "8", {"n": 1, "coupon_upc": "333"}),
        ("2024-02-28T10:00:00Z", "page_view", "web", None, None),
        ("2024-02-28T10:00:00Z", "page_view", "web", None, None),  # retry
    ]
    raw = pd.DataFrame(
        {
            "contact_id": ["h1"] * len(events),
            "timestamp": [e[0] for e in events],
            "event_type": [e[1] for e in events],
            "channel": [e[2] for e in events],
            "campaign_id": [e[3] for e in events],
            "properties": [None if e[4] is None else json.dumps(e[4]) for e in events],
        }
    )
    checked = validate(raw, now=dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    assert checked.rejects.num_rows == 2  # the two retries
    batch = build_contact_features(pl.from_arrow(checked.events), as_of=as_of, spec=spec)
    request = _request(
        {
            "marketing_consent": True,
            "as_of": as_of.isoformat(),
            "events": [
                {"timestamp": t, "event_type": k, "channel": c, "campaign_id": campaign}
                | ({} if properties is None else {"properties": properties})
                for t, k, c, campaign, properties in events
            ],
        }
    )
    rows, used = _event_rows(request, as_of)
    assert used == 5
    served = build_online_features(rows, as_of=as_of, spec=spec)
    assert served["coupon_redeem_count_7d"] == 4
    for name in served:
        assert served[name] == _row_of(batch, "h1")[name], name


def _row_of(frame: pl.DataFrame, contact: str) -> dict[str, Any]:
    return frame.filter(pl.col("contact_id") == contact).to_dicts()[0]


def test_the_operator_is_told_the_registered_name_of_the_model_served() -> None:
    """`serve --bento-model` of a Bento built from `funnelcast-olist` said "Starting funnelcast
    version 1" and the worker "serving funnelcast version 1": the demo's model's words, for
    another model (README walk-through review)."""
    from serving.runtime import ModelInfo

    olist = ModelInfo(
        "funnelcast", "funnelcast-olist", "1", "BentoML model funnelcast:abc", None, None, {}
    )
    assert olist.served() == "funnelcast-olist version 1 from BentoML model funnelcast:abc"
    stored = dataclasses.replace(olist, source="models:/funnelcast-olist/1", store="sqlite:///x")
    assert stored.served() == "funnelcast-olist version 1 from models:/funnelcast-olist/1 in " + (
        "sqlite:///x"
    )
    rules = ModelInfo("rules", None, None, "the hand-written rules (no model)", None, None, {})
    assert rules.served() == "the hand-written rules (no model)"
