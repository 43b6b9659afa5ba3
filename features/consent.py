"""Marketing consent: who may be scored, exported or counted in a funnel report.

A contact is consented only when its contacts row says so. A contact missing from the contacts
table has no recorded consent, and no recorded consent is no consent. Without any contacts table
nobody's consent is known, and the caller has to say explicitly that every contact opted in.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from features.errors import InputError


class ConsentUnknownError(InputError):
    """No contacts table was given, so nobody's marketing consent is known."""


@dataclass(frozen=True)
class ConsentFilter:
    """Rows kept, and how many contacts were held back for want of consent (never silent)."""

    kept: pl.DataFrame
    contacts_without_consent: int


def restrict_to_consented(
    frame: pl.DataFrame,
    contacts: pa.Table | pl.DataFrame | None,
    *,
    assume_consent: bool = False,
) -> ConsentFilter:
    """Keep only rows (one or more per contact_id) of contacts with marketing consent."""
    if contacts is None:
        if not assume_consent:
            raise ConsentUnknownError(
                "no contacts table, so no marketing consent is known; give contacts with a "
                "marketing_consent column, or pass --assume-consent if every contact opted in"
            )
        return ConsentFilter(kept=frame, contacts_without_consent=0)
    table = contacts if isinstance(contacts, pl.DataFrame) else pl.from_arrow(contacts)
    assert isinstance(table, pl.DataFrame)
    consented = table.filter(pl.col("marketing_consent")).select("contact_id")
    kept = frame.join(consented, on="contact_id", how="semi")
    held_back = frame["contact_id"].n_unique() - kept["contact_id"].n_unique()
    return ConsentFilter(kept=kept, contacts_without_consent=held_back)
