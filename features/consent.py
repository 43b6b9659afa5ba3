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
from features.schema import (
    CONTROL_IN_ID,
    cast_unreadable_zones_to_utc,
    control_ids_message,
    find_control_ids,
)


class ConsentUnknownError(InputError):
    """No contacts table was given, so nobody's marketing consent is known."""


@dataclass(frozen=True)
class ConsentFilter:
    """Rows kept, and how many contacts were held back for want of consent (never silent)."""

    kept: pl.DataFrame
    contacts_without_consent: int


# the Polars types of text, as the contract's ids and names may come
TEXT_TYPES = (pl.String, pl.Categorical, pl.Enum)


_FIX = "write the contacts with `funnelcast ingest` (or `simulate`), which checks them"


def check_contacts(contacts: pa.Table | pl.DataFrame) -> None:
    """The contacts table has what consent needs: ``contact_id`` as text, once per contact,
    and ``marketing_consent`` as true/false; otherwise an ``InputError`` naming the column and
    the fix (``funnelcast ingest`` reads consent given as text, yes/no or 1/0, through a
    mapping, and keeps one row per contact, consented only if every copy says so)."""
    frame = _frame(contacts)
    dtype = _column_type(frame, "marketing_consent")
    if dtype != pl.Boolean:
        raise InputError(
            f"the contacts table's `marketing_consent` is {dtype}, not true/false; {_FIX}"
        )
    check_contact_ids(frame)


def check_contact_ids(contacts: pa.Table | pl.DataFrame) -> None:
    """Every row of the contacts table has a ``contact_id`` (text), and no contact has two
    rows: a second row would give a contact two rows of features, or two answers about its
    consent. Otherwise an ``InputError`` with counts and row numbers, not the ids."""
    frame = _frame(contacts)
    dtype = _column_type(frame, "contact_id")
    if not isinstance(dtype, TEXT_TYPES):
        raise InputError(id_kind_message(str(dtype)))
    ids = frame.get_column("contact_id")
    if ids.null_count():
        first = int(ids.is_null().arg_true()[0])
        raise InputError(ids_missing_message(ids.null_count(), first=first))
    refuse_unusable_ids(ids, "the contacts table")
    twice = ids.is_duplicated()
    if twice.any():
        rows = twice.arg_true()
        raise InputError(ids_repeated_message(ids.filter(twice).n_unique(), first=int(rows[0])))


def id_kind_message(kind: str) -> str:
    """A contacts table whose ids are not text (``kind``: the type its engine names)."""
    return f"the contacts table's `contact_id` is {kind}, not text; {_FIX}"


def no_column_message(name: str, columns: list[str]) -> str:
    """A contacts table without a column that consent or ids need."""
    return f"the contacts table has no `{name}` column (it has {columns[:8]}); {_FIX}"


def ids_missing_message(count: int, *, first: int | None = None) -> str:
    """Contacts rows without an id (Spark's check gives no row)."""
    row = "" if first is None else f" (the first is row {first}, counting from 0)"
    return f"the contacts table has {count:,} row(s) without a contact_id{row}; {_FIX}"


def ids_repeated_message(count: int, *, first: int | None = None) -> str:
    """Contacts on more than one row (Spark's check gives no row)."""
    row = "" if first is None else f" (row {first}, counting from 0, is one)"
    return (
        f"the contacts table gives {count:,} contact(s) more than one row{row}; give one row "
        "per contact (funnelcast ingest keeps the first, with consent only if every copy "
        "gives it)"
    )


# an id that starts or ends with whitespace, of any kind, or is empty (validation's
# missing_contact_id; every empty id would be one contact): "(?U)" makes Java's \s (Spark's
# engine) Unicode-aware, as Rust's (Polars) already is, where it only swaps greediness
PADDED_ID = r"(?U)^\s|\s$|^$"


def refuse_unusable_ids(ids: pl.Series, where: str, *, rows: bool = True) -> None:
    """Contact ids are matched exactly: " c1" (an id padded by an export) is not "c1", so its
    events would be a contact of their own, without the attributes or the consent of the
    contacts table, and "c1" would come out without its events. And they are written as they
    are: "c1\x00x" would be read back from a CSV as "c1". An ``InputError`` with the count,
    (``rows``: the ids are a table's rows) the first row and, for a control character, the
    character; the ids are not shown."""
    text = ids.cast(pl.String)
    # one pass over the ids when none is refused, as almost always
    if not text.str.contains(f"{PADDED_ID}|{CONTROL_IN_ID}").any():
        return
    padded = text.str.contains(PADDED_ID)
    count = int(padded.sum())
    if count:
        first = int(padded.arg_true()[0]) if rows else None
        raise InputError(padded_ids_message(count, where, first=first))
    found = find_control_ids(text)
    assert found is not None, "an id matched one of the two patterns, and is not padded"
    count, at, example = found
    raise InputError(control_ids_message(count, where, example=example, first=at if rows else None))


def padded_ids_message(count: int | None, where: str, *, first: int | None = None) -> str:
    """The refusal of ids with whitespace around them, shared by every builder."""
    how_many = "contact ids" if count is None else f"{count:,} contact id(s)"
    row = "" if first is None else f" (row {first}, counting from 0, is one)"
    return (
        f"{how_many} in {where} start or end with whitespace or are empty{row}; ids are "
        "matched exactly, so such a contact's events and its contacts row would be two "
        "contacts, and every empty id one. Trim them, and give every row an id (funnelcast "
        "ingest does both)"
    )


def _column_type(frame: pl.DataFrame, name: str) -> pl.DataType:
    dtype = frame.schema.get(name)
    if dtype is None:
        raise InputError(no_column_message(name, list(frame.schema)))
    return dtype


def _frame(contacts: pa.Table | pl.DataFrame) -> pl.DataFrame:
    if isinstance(contacts, pl.DataFrame):
        return contacts
    # a time attribute in a zone Polars cannot read ('+05:30') is read in UTC: the same instants
    return pl.DataFrame(pl.from_arrow(cast_unreadable_zones_to_utc(contacts)))


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
                "marketing_consent column (for a source, a `contacts:` section in its mapping), "
                "or pass --assume-consent if every contact opted in"
            )
        return ConsentFilter(kept=frame, contacts_without_consent=0)
    check_contacts(contacts)
    table = _frame(contacts)
    # ids as text on both sides, as the builders read them (a pandas-written table holds
    # categories), so that the join never fails on the ids' types
    as_text = pl.col("contact_id").cast(pl.String)
    consented = table.filter(pl.col("marketing_consent")).select(as_text)
    kept = frame.join(consented, left_on=as_text, right_on="contact_id", how="semi")
    held_back = frame["contact_id"].n_unique() - kept["contact_id"].n_unique()
    return ConsentFilter(kept=kept, contacts_without_consent=held_back)
