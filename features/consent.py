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


_TEXT = (pl.String, pl.Categorical, pl.Enum)


def check_contacts(contacts: pa.Table | pl.DataFrame) -> None:
    """The contacts table has what consent needs: ``contact_id`` as text and
    ``marketing_consent`` as true/false; otherwise an ``InputError`` naming the column and the
    fix (``funnelcast ingest`` reads consent given as text, yes/no or 1/0, through a mapping)."""
    frame = contacts if isinstance(contacts, pl.DataFrame) else pl.from_arrow(contacts.slice(0, 0))
    assert isinstance(frame, pl.DataFrame)
    schema = frame.schema
    fix = "write the contacts with `funnelcast ingest` (or `simulate`), which checks them"
    for name, kind in (("contact_id", "text"), ("marketing_consent", "true/false")):
        dtype = schema.get(name)
        if dtype is None:
            raise InputError(
                f"the contacts table has no `{name}` column (it has {list(schema)[:8]}); {fix}"
            )
        ok = dtype == pl.Boolean if name == "marketing_consent" else isinstance(dtype, _TEXT)
        if not ok:
            raise InputError(f"the contacts table's `{name}` is {dtype}, not {kind}; {fix}")


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
    check_contacts(contacts)
    table = contacts if isinstance(contacts, pl.DataFrame) else pl.from_arrow(contacts)
    assert isinstance(table, pl.DataFrame)
    consented = table.filter(pl.col("marketing_consent")).select("contact_id")
    kept = frame.join(consented, on="contact_id", how="semi")
    held_back = frame["contact_id"].n_unique() - kept["contact_id"].n_unique()
    return ConsentFilter(kept=kept, contacts_without_consent=held_back)
