"""Contacts without marketing consent are never scored, exported or counted."""

from __future__ import annotations

import polars as pl
import pytest

from features.consent import ConsentUnknownError, restrict_to_consented

SCORES = pl.DataFrame({"contact_id": ["a", "b", "c", "d"], "stage": ["intent"] * 4})


def test_only_contacts_with_consent_are_kept_and_the_rest_are_counted() -> None:
    contacts = pl.DataFrame(
        {"contact_id": ["a", "b", "c"], "marketing_consent": [True, False, True]}
    )
    result = restrict_to_consented(SCORES, contacts)
    assert result.kept["contact_id"].to_list() == ["a", "c"]
    # b opted out; d has no contacts row, so no recorded consent
    assert result.contacts_without_consent == 2


def test_without_a_contacts_table_consent_must_be_assumed_explicitly() -> None:
    with pytest.raises(ConsentUnknownError, match="assume-consent"):
        restrict_to_consented(SCORES, None)
    assert restrict_to_consented(SCORES, None, assume_consent=True).kept.height == 4
