"""Contacts without marketing consent are never scored, exported or counted."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pytest

from features.consent import ConsentUnknownError, restrict_to_consented
from features.errors import InputError

SCORES = pl.DataFrame({"contact_id": ["a", "b", "c", "d"], "stage": ["intent"] * 4})


def test_only_contacts_with_consent_are_kept_and_the_rest_are_counted() -> None:
    contacts = pl.DataFrame(
        {"contact_id": ["a", "b", "c"], "marketing_consent": [True, False, True]}
    )
    result = restrict_to_consented(SCORES, contacts)
    assert result.kept["contact_id"].to_list() == ["a", "c"]
    # b opted out; d has no contacts row, so no recorded consent
    assert result.contacts_without_consent == 2


def test_no_recorded_consent_is_no_consent() -> None:
    """A null consent (a CRM export or pandas, not ingest, wrote the table) is never consent
    (mutation review: a `fill_null(True)` passed every test)."""
    contacts = pl.DataFrame(
        {"contact_id": ["a", "b", "c", "d"], "marketing_consent": [True, None, True, None]},
        schema={"contact_id": pl.String, "marketing_consent": pl.Boolean},
    )
    result = restrict_to_consented(SCORES, contacts)
    assert result.kept["contact_id"].to_list() == ["a", "c"]
    assert result.contacts_without_consent == 2


@pytest.mark.parametrize(
    "consent", [["yes", "no", "yes"], [1, 0, 1], ["true", "false", "true"]], ids=str
)
def test_consent_that_is_not_true_false_is_refused_with_the_fix(consent: list[object]) -> None:
    """Text or 1/0 is refused naming the column and the fix (mutation review: without the
    check, Polars' 'filter predicate must be of type Boolean' reached the user)."""
    contacts = pl.DataFrame({"contact_id": ["a", "b", "c"], "marketing_consent": consent})
    with pytest.raises(InputError, match=r"`marketing_consent` is \w+, not true/false; .*ingest"):
        restrict_to_consented(SCORES, contacts)


def test_without_a_contacts_table_consent_must_be_assumed_explicitly() -> None:
    with pytest.raises(ConsentUnknownError, match="assume-consent"):
        restrict_to_consented(SCORES, None)
    assert restrict_to_consented(SCORES, None, assume_consent=True).kept.height == 4


@pytest.mark.parametrize("side", ["contacts", "rows"])
def test_ids_as_categories_on_either_side_are_matched_as_text(side: str) -> None:
    """A contacts table written by pandas holds its ids as categories: the filter matches them
    with the feature rows' text ids (it failed with a schema error), and keeps the rows as
    they were."""
    contacts = pl.DataFrame(
        {"contact_id": ["a", "b", "c"], "marketing_consent": [True, False, True]}
    )
    rows = SCORES
    category = pl.col("contact_id").cast(pl.Categorical)
    if side == "contacts":
        contacts = contacts.with_columns(category)
    else:
        rows = rows.with_columns(category)
    result = restrict_to_consented(rows, contacts)
    assert result.kept["contact_id"].cast(pl.String).to_list() == ["a", "c"]
    assert result.kept.schema == rows.schema
    assert result.contacts_without_consent == 2


def test_the_filter_reads_a_time_attribute_at_an_offset_polars_has_no_zone_for() -> None:
    """A contacts table written by pandas with India's times holds them at '+05:30', which
    Polars has no zone for: the consent filter read the table through Polars and panicked."""
    seen = pa.array([0, 1, 2], pa.timestamp("ms")).cast(pa.timestamp("ms", "+05:30"))
    contacts = pa.table(
        {"contact_id": ["a", "b", "c"], "marketing_consent": [True, False, True], "seen": seen}
    )
    result = restrict_to_consented(SCORES, contacts)
    assert result.kept["contact_id"].to_list() == ["a", "c"]
    assert result.contacts_without_consent == 2
