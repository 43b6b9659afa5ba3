"""Source mappings on tiny hand-written files: the YAML format, its errors, and the reading."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from features.schema import EVENT_COLUMNS, SchemaError, Validated
from features.sources import (
    EXCLUDED_REASON,
    LABELS_SCHEMA,
    MappingError,
    default_data_dir,
    ingest,
    list_sources,
    load_mapping,
    read_source,
)

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

SHOP_CSV = """\
customer;when;what;where;amount;campaign;sku
c1;2024-01-15 10:00:00;view;mail;;spring;A1
c1;2024-07-15 10:00:00;buy;site;19.90;;A1
 c2 ;2024-01-16 12:30:00;view;site;;;B2
"""

CUSTOMERS_CSV = """\
id,opt_in,segment
c1,Y,gold
c2,N,silver
"""

SHOP_MAPPING = """\
name: shop
description: a tiny shop
timezone: Europe/Stockholm
events:
  - name: clicks
    read:
      path: shop/events.csv
      format: csv
      delimiter: ";"
    contact_id: customer
    timestamp: {column: when, format: "%Y-%m-%d %H:%M:%S"}
    event_type:
      column: what
      values: {view: product_view, buy: purchase}
    channel:
      column: where
      values: {mail: email, site: web}
    value: amount
    campaign_id: campaign
    properties: [sku]
contacts:
  read: {path: shop/customers.csv, format: csv}
  contact_id: id
  attributes: {segment: customer_segment}
  consent:
    column: opt_in
    values: {"Y": true, "N": false}
"""


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _leads_mapping(folder: Path) -> Path:
    """A labels-only mapping of leads.csv (lead, converted 1/0) in ``folder``."""
    return _write(
        folder / "leads.yaml",
        """\
        name: leads
        description: leads with outcomes
        labels:
          read: {path: leads.csv}
          contact_id: lead
          outcome: {column: converted, values: {"1": converted, "0": not_converted}}
        """,
    )


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    """A data folder with the shop files; returns the path of its mapping."""
    _write(tmp_path / "data/shop/events.csv", SHOP_CSV)
    _write(tmp_path / "data/shop/customers.csv", CUSTOMERS_CSV)
    return _write(tmp_path / "shop.yaml", SHOP_MAPPING)


def _with(mapping: Path, old: str, new: str) -> Path:
    text = mapping.read_text("utf-8")
    assert old in text
    return _write(mapping.with_name("changed.yaml"), text.replace(old, new))


def _reject_reasons(table: pa.Table) -> list[str]:
    return list(table.column("reason").to_pylist())


# --- the mapping file --------------------------------------------------------------------------


def test_a_custom_mapping_reads_events_and_contacts_into_the_canonical_tables(
    shop: Path, tmp_path: Path
) -> None:
    ingested = ingest(shop, data_dir=tmp_path / "data", now=NOW)
    events = ingested.validated.events.to_pylist()

    assert [(e["contact_id"], e["event_type"], e["channel"]) for e in events] == [
        ("c1", "product_view", "email"),
        ("c1", "purchase", "web"),
        ("c2", "product_view", "web"),
    ]
    assert [e["value"] for e in events] == [None, 19.9, None]
    assert [e["campaign_id"] for e in events] == ["spring", None, None]
    assert json.loads(events[0]["properties"]) == {"sku": "A1"}
    contacts = ingested.validated.contacts
    assert contacts is not None
    assert contacts.to_pylist() == [
        {"contact_id": "c1", "marketing_consent": True, "customer_segment": "gold"},
        {"contact_id": "c2", "marketing_consent": False, "customer_segment": "silver"},
    ]
    assert ingested.validated.rejects.num_rows == 0
    assert ingested.mapping.name == "shop"


def test_local_times_are_converted_to_utc_with_the_declared_zone(
    shop: Path, tmp_path: Path
) -> None:
    events = ingest(shop, data_dir=tmp_path / "data", now=NOW).validated.events

    assert events.column("timestamp").to_pylist() == [
        dt.datetime(2024, 1, 15, 9, 0, tzinfo=dt.UTC),  # CET, UTC+1
        dt.datetime(2024, 7, 15, 8, 0, tzinfo=dt.UTC),  # CEST, UTC+2
        dt.datetime(2024, 1, 16, 11, 30, tzinfo=dt.UTC),
    ]


def test_a_local_time_in_the_spring_forward_gap_moves_forward_instead_of_vanishing(
    tmp_path: Path,
) -> None:
    _write(
        tmp_path / "data/shop/events.csv",
        "customer;when;what;where;amount;campaign;sku\nc1;2024-03-31 02:30:00;view;site;;;A1\n",
    )
    _write(tmp_path / "data/shop/customers.csv", CUSTOMERS_CSV)
    mapping = _write(tmp_path / "shop.yaml", SHOP_MAPPING)

    events = ingest(mapping, data_dir=tmp_path / "data", now=NOW).validated.events

    # 02:30 does not exist in Stockholm that night: moved forward by the hour, 03:30 CEST is
    # 01:30 UTC
    assert events.column("timestamp").to_pylist() == [
        dt.datetime(2024, 3, 31, 1, 30, tzinfo=dt.UTC)
    ]


def test_naive_times_without_a_declared_zone_are_a_schema_error(shop: Path, tmp_path: Path) -> None:
    mapping = _with(shop, "timezone: Europe/Stockholm", "timezone: null")

    with pytest.raises(SchemaError, match="timezone"):
        ingest(mapping, data_dir=tmp_path / "data", now=NOW)


def test_an_unknown_key_in_a_mapping_is_an_error_naming_the_key(shop: Path) -> None:
    mapping = _with(shop, 'delimiter: ";"', 'delimeter: ";"')

    with pytest.raises(MappingError, match=r"`events\[0\]\.read\.delimeter`"):
        load_mapping(mapping)


@pytest.mark.parametrize("delimiter", ['";;"', '""', '"§"', "'\"'"])
def test_a_delimiter_that_is_not_one_ascii_character_is_an_error_naming_the_key(
    shop: Path, delimiter: str
) -> None:
    mapping = _with(shop, 'delimiter: ";"', f"delimiter: {delimiter}")

    with pytest.raises(MappingError, match=r"`events\[0\]\.read\.delimiter`.*one ASCII character"):
        load_mapping(mapping)


def test_a_tab_is_a_delimiter(shop: Path) -> None:
    mapping = _with(shop, 'delimiter: ";"', 'delimiter: "\\t"')

    assert load_mapping(mapping).events[0].read.delimiter == "\t"


def test_an_unknown_time_zone_is_an_error_naming_the_key(shop: Path) -> None:
    mapping = _with(shop, "Europe/Stockholm", "Europe/Stockholmm")

    with pytest.raises(MappingError, match=r"`timezone`.*Europe/Stockholmm"):
        load_mapping(mapping)


def test_a_mapping_must_state_consent_either_from_a_column_or_by_default(shop: Path) -> None:
    mapping = _with(
        shop,
        'consent:\n    column: opt_in\n    values: {"Y": true, "N": false}\n',
        "",
    )

    with pytest.raises(MappingError, match="consent_default"):
        load_mapping(mapping)


@pytest.mark.parametrize(
    ("attributes", "said"),
    [
        # listed as leaking the outcome
        (
            "{segment: customer_segment}\n  leaks_outcome: [segment]",
            r"\['segment'\].*leaks_outcome",
        ),
        # the table's own names (review: contact_id and marketing_consent crashed the
        # contacts' select with a traceback)
        *[
            (f"{{segment: {name}}}", rf"column 'segment' '{name}'.*another name")
            for name in ("contact_id", "marketing_consent", "_segment")
        ],
        # one name for two columns (review: the second silently replaced the first)
        (
            "{segment: customer_segment, tier: customer_segment}",
            r"columns \['segment', 'tier'\] the same name 'customer_segment'",
        ),
    ],
)
def test_a_mapping_refuses_attributes_it_cannot_keep(
    shop: Path, attributes: str, said: str
) -> None:
    mapping = _with(shop, "attributes: {segment: customer_segment}", f"attributes: {attributes}")

    with pytest.raises(MappingError, match=said):
        load_mapping(mapping)


@pytest.mark.parametrize(
    ("dtype", "said"),
    [
        ("date", "does not read as date (YYYY-MM-DD): 1 of 2 values, such as 'silver'"),
        ("int", "does not read as int: 2 of 2 values, such as 'gold', 'silver'"),
    ],
)
def test_a_column_that_does_not_read_as_its_dtype_names_its_values(
    shop: Path, tmp_path: Path, dtype: str, said: str
) -> None:
    """Review: the message passed on Polars' advice (strict=False, str.strptime), which no
    mapping can take."""
    if dtype == "date":  # one value of the two reads as a date
        customers = CUSTOMERS_CSV.replace(",gold", ",2024-02-01")
        _write(tmp_path / "data/shop/customers.csv", customers)
    mapping = _with(
        shop,
        "read: {path: shop/customers.csv, format: csv}",
        f"read: {{path: shop/customers.csv, format: csv, dtypes: {{segment: {dtype}}}}}",
    )

    with pytest.raises(SchemaError) as caught:
        ingest(mapping, data_dir=tmp_path / "data", now=NOW)
    message = str(caught.value)
    assert f"shop/customers.csv: column 'segment' {said}; fix the file" in message
    assert "`contacts.read.dtypes`" in message
    assert "strict" not in message


def test_a_column_of_a_kind_with_no_such_reading_is_one_error_naming_it(tmp_path: Path) -> None:
    """Review: a categorical column given `dtypes: {amt: float}` escaped as Polars' own
    ComputeError, a traceback."""
    import pandas as pd

    pd.DataFrame(
        {"who": ["a", "b"], "at": ["2024-01-01T10:00:00Z"] * 2, "amt": pd.Categorical(["1", "2"])}
    ).to_parquet(tmp_path / "e.parquet")
    mapping = _write(
        tmp_path / "m.yaml",
        """\
        name: m
        description: m
        events:
          - name: e
            read: {path: e.parquet, format: parquet, dtypes: {amt: float}}
            contact_id: who
            timestamp: {column: at, format: iso8601}
            event_type: {fixed: purchase}
            channel: {fixed: store}
            value: amt
        contacts: {consent_default: true}
        """,
    )

    with pytest.raises(SchemaError, match=r"column 'amt' holds Categorical values.*as float"):
        ingest(mapping, data_dir=tmp_path, now=NOW)


def test_contacts_made_from_the_events_are_those_with_a_kept_event(tmp_path: Path) -> None:
    """With no contacts file, an id whose every row validation set aside (here a header line
    read as data, and a row with no usable time) is no contact: it was listed, consented, and
    scored and exported as dormant (real-data review). Its rows stay counted as the events'
    rejects, and the contacts' rows in still equal rows kept plus rejected."""
    (tmp_path / "log.csv").write_text(
        "user,at,what\n"  # a header the mapping says is not there
        "u1,1700000000,pv\n"
        "u2,1700000100,buy\n"
        "u3,not a time,pv\n",
        encoding="utf-8",
    )
    mapping = _write(
        tmp_path / "m.yaml",
        """\
        name: m
        description: m
        events:
          - name: e
            read: {path: log.csv, header: false, columns: [user, at, what]}
            contact_id: user
            timestamp: {column: at, format: unix_s}
            event_type: {column: what, values: {pv: page_view, buy: purchase}}
            channel: {fixed: web}
        contacts: {consent_default: true}
        """,
    )

    result = ingest(mapping, data_dir=tmp_path, now=NOW)

    validated = result.validated
    assert validated.contacts is not None
    assert sorted(validated.contacts.column("contact_id").to_pylist()) == ["u1", "u2"]
    assert sorted(validated.events.column("contact_id").to_pylist()) == ["u1", "u2"]
    counts = result.reject_counts()
    assert counts[("events", "unparseable_timestamp")] == 2
    assert validated.rows_in["events"] == 4
    assert validated.rows_in["contacts"] == 2
    contact_rejects = sum(n for (table, _), n in counts.items() if table == "contacts")
    assert validated.rows_in["contacts"] == validated.contacts.num_rows + contact_rejects


def test_an_unknown_shipped_name_is_an_error_listing_the_shipped_names() -> None:
    with pytest.raises(MappingError, match="taobao") as error:
        load_mapping("taobau")

    for name in list_sources():
        assert name in str(error.value)


def test_the_shipped_sources_are_listed_and_all_load() -> None:
    names = list_sources()

    assert names == [
        "cdnow",
        "cdnow_sample",
        "completejourney",
        "olist",
        "rees46",
        "taobao",
        "xeducation",
    ]
    assert [load_mapping(name).name for name in names] == names


# --- files and columns -------------------------------------------------------------------------


def test_a_missing_file_names_its_path_and_how_to_point_at_the_data(
    shop: Path, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError) as error:
        ingest(shop, data_dir=tmp_path / "elsewhere", now=NOW)

    message = str(error.value)
    assert str(tmp_path / "elsewhere/shop/events.csv") in message
    assert "--data-dir" in message
    assert "FUNNELCAST_DATA_DIR" in message


ONE_FILE_MAPPING = """\
name: one_file
description: one event file
timezone: UTC
events:
  - name: clicks
    read: {path: clicks.txt, format: FORMAT}
    contact_id: user
    timestamp: {column: s, format: unix_s}
    event_type: {fixed: email_click}
    channel: {fixed: email}
"""


@pytest.mark.parametrize(
    ("content", "file_format", "fix"),
    [
        (b"", "csv", r"is empty \(0 bytes, not even a header line\)"),
        (b"", "whitespace", r"is empty \(0 bytes"),
        (b"", "parquet", r"is empty \(0 bytes"),
        (b"\n\n", "whitespace", "holds no data, not even a header line"),
        (b"user,s\nu1,1\nu2,2,3\n", "csv", r"line 3 has 3 fields .*`delimiter:` \(now ','\)"),
        (b'user,s\nu1,1\nu2,27" x\nu3,3\n', "csv", r"line 3 has a quote inside a value .*\"\""),
        ("user,s\nJosé,1\n".encode("latin-1"), "csv", "not UTF-8 text.*save it as UTF-8"),
        ("user s\nJosé 1\n".encode("latin-1"), "whitespace", "not UTF-8 text"),
        (b"user s\nu1 1\nu2 2 3\n", "whitespace", r"line 3, saw 3.*`format:`"),
        (b"user,s\nu1,1\n", "parquet", r"not a Parquet file.*`format:`"),
    ],
    ids=[
        "empty csv",
        "empty whitespace",
        "empty parquet",
        "blank lines only",
        "a line with an extra field",
        "a stray quote",
        "latin-1 csv",
        "latin-1 whitespace",
        "whitespace with an extra field",
        "csv declared parquet",
    ],
)
def test_a_file_the_readers_cannot_read_is_a_schema_error_naming_it_and_the_fix(
    tmp_path: Path, content: bytes, file_format: str, fix: str
) -> None:
    (tmp_path / "clicks.txt").write_bytes(content)
    mapping = _write(tmp_path / "m.yaml", ONE_FILE_MAPPING.replace("FORMAT", file_format))

    with pytest.raises(SchemaError, match=fix) as error:
        ingest(mapping, data_dir=tmp_path, now=NOW)

    assert f"{tmp_path / 'clicks.txt'} (`events[0].read`)" in str(error.value)
    assert "\n" not in str(error.value)  # one line on the command line


def test_a_parquet_file_declared_as_csv_is_an_error_saying_to_declare_parquet(
    tmp_path: Path,
) -> None:
    pq.write_table(pa.table({"user": ["u1"], "s": [1700000000]}), tmp_path / "clicks.txt")
    mapping = _write(tmp_path / "m.yaml", ONE_FILE_MAPPING.replace("FORMAT", "csv"))

    with pytest.raises(
        SchemaError, match=r"is a Parquet file; declare `format: parquet` in `events\[0\]\.read`"
    ):
        ingest(mapping, data_dir=tmp_path, now=NOW)


@pytest.mark.parametrize("file_format", ["csv", "whitespace", "parquet"])
def test_a_folder_given_as_the_path_is_an_error_asking_for_the_file(
    tmp_path: Path, file_format: str
) -> None:
    (tmp_path / "clicks.txt").mkdir()
    mapping = _write(tmp_path / "m.yaml", ONE_FILE_MAPPING.replace("FORMAT", file_format))

    with pytest.raises(SchemaError, match=r"is a folder; .*`events\[0\]\.read\.path`"):
        ingest(mapping, data_dir=tmp_path, now=NOW)


def test_more_names_in_columns_than_fields_in_a_file_without_header_is_an_error(
    tmp_path: Path,
) -> None:
    _write(tmp_path / "clicks.txt", "u1,1700000000\n")
    mapping = _write(
        tmp_path / "m.yaml",
        ONE_FILE_MAPPING.replace("format: FORMAT", "header: false, columns: [user, s, extra]"),
    )

    with pytest.raises(SchemaError, match="`columns:` names 3 columns but its first line has 2"):
        ingest(mapping, data_dir=tmp_path, now=NOW)


def test_a_csv_with_its_header_line_and_no_rows_reads_as_no_events(tmp_path: Path) -> None:
    _write(tmp_path / "clicks.txt", "user,s\n")
    mapping = _write(tmp_path / "m.yaml", ONE_FILE_MAPPING.replace("FORMAT", "csv"))

    ingested = ingest(mapping, data_dir=tmp_path, now=NOW)

    assert ingested.validated.events.num_rows == 0
    assert ingested.validated.rejects.num_rows == 0


def test_a_column_missing_from_the_raw_file_names_the_column_and_the_mapping_key(
    shop: Path, tmp_path: Path
) -> None:
    mapping = _with(shop, "value: amount", "value: price")

    with pytest.raises(SchemaError, match=r"column 'price'.*`events\[0\]\.value`"):
        ingest(mapping, data_dir=tmp_path / "data", now=NOW)


def test_a_source_package_that_is_not_installed_says_how_to_install_it(tmp_path: Path) -> None:
    mapping = _write(
        tmp_path / "pkg.yaml",
        """\
        name: pkg
        description: data inside a package
        events:
          - name: rows
            read:
              path: data/rows.parquet
              format: parquet
              package: funnelcast_no_such_package
              install_hint: "install the data extra: uv sync --extra data"
            contact_id: id
            timestamp: {column: at, format: native}
            event_type: {fixed: purchase}
            channel: {fixed: store}
        """,
    )

    with pytest.raises(ModuleNotFoundError, match="uv sync --extra data"):
        ingest(mapping, data_dir=tmp_path, now=NOW)


def test_the_data_folder_comes_from_the_environment_when_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FUNNELCAST_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path

    monkeypatch.setenv("FUNNELCAST_DATA_DIR", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match=r"FUNNELCAST_DATA_DIR.*--data-dir"):
        default_data_dir()


# --- rows that cannot be used are counted ------------------------------------------------------


def test_an_unmapped_source_event_name_is_rejected_as_unknown_not_dropped(
    shop: Path, tmp_path: Path
) -> None:
    _write(
        tmp_path / "data/shop/events.csv",
        SHOP_CSV + "c2;2024-01-17 08:00:00;remove_from_cart;site;;;B2\n",
    )

    raw = read_source(load_mapping(shop), data_dir=tmp_path / "data")
    ingested = ingest(shop, data_dir=tmp_path / "data", now=NOW)

    assert raw.events.height == 4
    assert raw.events["event_type"].to_list()[-1] == "remove_from_cart"  # passed through as is
    assert ingested.reject_counts()[("events", "unknown_event_type")] == 1
    assert ingested.validated.events.num_rows == 3
    assert ingested.validated.rows_in["events"] == 4


def test_a_time_that_does_not_match_the_declared_format_is_a_visible_reject(
    shop: Path, tmp_path: Path
) -> None:
    _write(tmp_path / "data/shop/events.csv", SHOP_CSV + "c2;17/01/2024 08:00;view;site;;;B2\n")

    ingested = ingest(shop, data_dir=tmp_path / "data", now=NOW)

    rejects = ingested.validated.rejects
    assert _reject_reasons(rejects) == ["unparseable_timestamp"]
    assert "17/01/2024 08:00" in rejects.column("record")[0].as_py()
    assert ingested.validated.events.num_rows == 3


def test_a_consent_value_the_mapping_does_not_list_rejects_the_contact(
    shop: Path, tmp_path: Path
) -> None:
    _write(tmp_path / "data/shop/customers.csv", CUSTOMERS_CSV + "c3,yes,bronze\n")

    ingested = ingest(shop, data_dir=tmp_path / "data", now=NOW)

    # "yes" is not "Y": it is never guessed to mean consent
    assert ingested.reject_counts()[("contacts", "unparseable_consent")] == 1
    contacts = ingested.validated.contacts
    assert contacts is not None
    assert contacts.column("contact_id").to_pylist() == ["c1", "c2"]


def test_contacts_dropped_by_the_mapping_are_counted_as_excluded(
    shop: Path, tmp_path: Path
) -> None:
    mapping = _with(
        shop, "timezone: Europe/Stockholm", 'timezone: Europe/Stockholm\ndrop_contacts: ["c1"]'
    )

    ingested = ingest(mapping, data_dir=tmp_path / "data", now=NOW)
    validated = ingested.validated

    assert ingested.reject_counts()[("events", EXCLUDED_REASON)] == 2
    assert ingested.reject_counts()[("contacts", EXCLUDED_REASON)] == 1
    assert validated.events.column("contact_id").to_pylist() == ["c2"]
    assert validated.rows_in == {"events": 3, "contacts": 2}
    assert validated.rows_in["events"] == validated.events.num_rows + 2
    excluded_rows = validated.rejects.filter(
        pc.equal(validated.rejects.column("table"), "events")
    ).column("row_number")
    assert excluded_rows.to_pylist() == [1, 2]  # numbered after the kept row


# --- declared shapes ---------------------------------------------------------------------------


def test_line_items_aggregate_into_one_purchase_per_basket(tmp_path: Path) -> None:
    pq.write_table(
        pa.table(
            {
                "basket": [10, 10, 11],
                "household": [1, 1, 2],
                "at": pa.array(
                    [dt.datetime(2024, 2, 1, 12, 0)] * 2 + [dt.datetime(2024, 2, 2, 9, 0)],
                    pa.timestamp("ns"),
                ),
                "sales": [1.5, 2.5, 4.0],
            }
        ),
        tmp_path / "lines.parquet",
    )
    mapping = _write(
        tmp_path / "baskets.yaml",
        """\
        name: baskets
        description: line items
        timezone: UTC
        events:
          - name: baskets
            read: {path: lines.parquet, format: parquet, dtypes: {basket: str, household: str}}
            aggregate:
              by: [basket]
              columns:
                household: first(household)
                at: min(at)
                sales: sum(sales)
                items: count(sales)
            contact_id: household
            timestamp: {column: at, format: native}
            event_type: {fixed: purchase}
            channel: {fixed: store}
            value: sales
            properties: [basket, items]
        """,
    )

    events = ingest(mapping, data_dir=tmp_path, now=NOW).validated.events.to_pylist()

    assert [(e["contact_id"], e["value"]) for e in events] == [("1", 4.0), ("2", 4.0)]
    assert json.loads(events[0]["properties"]) == {"basket": "10", "items": 2}


def test_a_basket_with_an_amount_that_does_not_read_is_set_aside_not_the_whole_file(
    tmp_path: Path,
) -> None:
    """Review: one line's 'abc' stopped the whole ingest, where a plain event row's is set
    aside as unparseable_value; summed without that line, its basket would be understated."""
    _write(
        tmp_path / "lines.csv",
        "basket,household,at,amount\n"
        "10,h1,2024-01-05 10:00,1.5\n10,h1,2024-01-05 10:00,abc\n"
        "11,h2,2024-01-06 10:00, 2.5\n11,h2,2024-01-06 10:00,\n",
    )
    mapping = _baskets_with_amounts(tmp_path)

    validated = ingest(mapping, data_dir=tmp_path, now=NOW).validated
    assert [(e["contact_id"], e["value"]) for e in validated.events.to_pylist()] == [("h2", 2.5)]
    rejects = validated.rejects.to_pylist()
    assert [(r["reason"], r["contact_id"], r["source_row"]) for r in rejects] == [
        ("unparseable_value", "h1", 2)  # the basket's first line, as an editor shows it
    ]
    # the line's text, as a plain row's record shows it (it showed null, the NaN it became)
    assert json.loads(rejects[0]["record"])["value"] == "abc"


def test_a_basket_without_any_amount_has_no_value_and_one_partly_priced_is_counted(
    tmp_path: Path,
) -> None:
    """A basket whose lines give no amount had the value 0, where a plain row with an empty
    amount has none; one with some lines without an amount is summed over the others, and
    counted in the notes the report prints, not silently."""
    _write(
        tmp_path / "lines.csv",
        "basket,household,at,amount\n"
        "10,h1,2024-01-05 10:00,\n10,h1,2024-01-05 10:00,\n"
        "11,h2,2024-01-06 10:00,2.5\n11,h2,2024-01-06 10:00,\n"
        "12,h3,2024-01-07 10:00,1\n12,h3,2024-01-07 10:00,2\n"
        "13,h4,2024-01-08 10:00,\n13,h4,2024-01-08 10:00,3\n",
    )
    ingested = ingest(_baskets_with_amounts(tmp_path), data_dir=tmp_path, now=NOW)

    events = ingested.validated.events.to_pylist()
    assert [(e["contact_id"], e["value"]) for e in events] == [
        ("h1", None),
        ("h2", 2.5),
        ("h3", 3.0),
        ("h4", 3.0),
    ]
    assert len(ingested.notes) == 1
    assert ingested.notes[0].startswith(
        "events[0] 'baskets': 2 of the events it read (groups of basket; before any was set "
        "aside) have lines without an amount"
    )


def test_quoted_empty_and_blank_amounts_are_no_amount_in_a_basket_and_in_its_properties(
    tmp_path: Path,
) -> None:
    """A CSV that quotes every field (Python's csv.QUOTE_ALL, many exports) writes a missing
    amount as `""`, which set its basket aside as unparseable_value (review). An empty or
    blank line adds nothing, to the value as to a property's sum, and a group with none has
    no sum: a property's was 0, "no quantity known" written as 0 items."""
    _write(
        tmp_path / "lines.csv",
        '"basket","household","at","amount","qty"\n'
        '"10","h1","2024-01-05 10:00","",""\n"10","h1","2024-01-05 10:00","  ",""\n'
        '"11","h2","2024-01-06 10:00","2.5","1"\n"11","h2","2024-01-06 10:00","","  "\n',
    )
    mapping = _write(
        tmp_path / "baskets.yaml",
        BASKETS_MAPPING.replace("FUNCTION", "min")
        .replace("FORMAT", '"%Y-%m-%d %H:%M"')
        .replace("at: min(at)}", "at: min(at), amount: sum(amount), qty: sum(qty)}")
        + "    value: amount\n    properties: [qty]\n",
    )
    ingested = ingest(mapping, data_dir=tmp_path, now=NOW)

    events = ingested.validated.events.to_pylist()
    assert [(e["contact_id"], e["value"], json.loads(e["properties"])) for e in events] == [
        ("h1", None, {"qty": None}),
        ("h2", 2.5, {"qty": 1.0}),
    ]
    assert ingested.validated.rejects.num_rows == 0
    assert ingested.notes[0].startswith("events[0] 'baskets': 1 of the events it read")


def test_basket_lines_without_a_basket_or_of_other_contacts_are_not_merged(
    tmp_path: Path,
) -> None:
    """Review: Polars groups missing keys together, so two lines without a basket id became
    one purchase of the first line's contact, and a basket whose lines name two contacts
    became the first one's: the others' events vanished, nothing set aside."""
    _write(
        tmp_path / "lines.csv",
        "basket,household,at,amount\n"
        ",h2,2024-01-05 10:00,3\n,h3,2024-01-06 10:00,4\n"
        "b3,h5,2024-01-05 10:00,1\nb3,h6,2024-01-05 10:00,1\n"
        "b4,h7,2024-01-05 10:00,1\nb4,h7 ,2024-01-05 11:00,2\n",  # one contact, as read
    )
    mapping = _baskets_with_amounts(tmp_path)

    validated = ingest(mapping, data_dir=tmp_path, now=NOW).validated
    events = [(e["contact_id"], e["value"]) for e in validated.events.to_pylist()]
    assert events == [("h2", 3.0), ("h3", 4.0), ("h5", 1.0), ("h6", 1.0), ("h7", 3.0)]
    assert validated.rejects.num_rows == 0


def _baskets_with_amounts(folder: Path) -> Path:
    """``BASKETS_MAPPING`` reading lines.csv's times as text, with each basket's summed amount."""
    return _write(
        folder / "baskets.yaml",
        BASKETS_MAPPING.replace("FUNCTION", "min")
        .replace("FORMAT", '"%Y-%m-%d %H:%M"')
        .replace("at: min(at)}", "at: min(at), amount: sum(amount)}")
        + "    value: amount\n",
    )


BASKETS_MAPPING = """\
name: baskets
description: line items as text
timezone: UTC
events:
  - name: baskets
    read: {path: lines.csv}
    aggregate:
      by: [basket]
      columns: {household: first(household), at: FUNCTION(at)}
    contact_id: household
    timestamp: {column: at, format: FORMAT}
    event_type: {fixed: purchase}
    channel: {fixed: store}
"""


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        ("min", dt.datetime(2024, 1, 5, 10, 0, tzinfo=dt.UTC)),
        ("max", dt.datetime(2024, 1, 15, 10, 0, tzinfo=dt.UTC)),
    ],
)
def test_the_min_or_max_time_of_a_basket_compares_times_not_their_text(
    tmp_path: Path, function: str, expected: dt.datetime
) -> None:
    # as text "1/15/2024" sorts before "1/5/2024", and "1/9/2024" after both
    _write(
        tmp_path / "lines.csv",
        "basket,household,at\n10,h1,1/15/2024 10:00\n10,h1,1/5/2024 10:00\n10,h1,1/9/2024 10:00\n",
    )
    mapping = _write(
        tmp_path / "baskets.yaml",
        BASKETS_MAPPING.replace("FUNCTION", function).replace("FORMAT", '"%m/%d/%Y %H:%M"'),
    )

    events = ingest(mapping, data_dir=tmp_path, now=NOW).validated.events

    assert events.column("timestamp").to_pylist() == [expected]


def test_the_first_time_of_a_basket_in_iso_text_honours_each_lines_offset(
    tmp_path: Path,
) -> None:
    # 10:00+05:00 is 05:00 UTC, before 06:00Z, though its text sorts after
    _write(
        tmp_path / "lines.csv",
        "basket,household,at\n10,h1,2024-01-01T06:00:00Z\n10,h1,2024-01-01T10:00:00+05:00\n",
    )
    mapping = _write(
        tmp_path / "baskets.yaml",
        BASKETS_MAPPING.replace("FUNCTION", "min").replace("FORMAT", "iso8601"),
    )

    events = ingest(mapping, data_dir=tmp_path, now=NOW).validated.events

    assert events.column("timestamp").to_pylist() == [dt.datetime(2024, 1, 1, 5, tzinfo=dt.UTC)]


def test_a_basket_with_a_line_whose_time_does_not_read_is_rejected_not_given_another_time(
    tmp_path: Path,
) -> None:
    _write(
        tmp_path / "lines.csv",
        "basket,household,at\n10,h1,1/5/2024 10:00\n10,h1,yesterday\n11,h2,1/6/2024 10:00\n",
    )
    mapping = _write(
        tmp_path / "baskets.yaml",
        BASKETS_MAPPING.replace("FUNCTION", "min").replace("FORMAT", '"%m/%d/%Y %H:%M"'),
    )

    ingested = ingest(mapping, data_dir=tmp_path, now=NOW)

    assert ingested.validated.events.column("contact_id").to_pylist() == ["h2"]
    rejects = ingested.validated.rejects
    assert _reject_reasons(rejects) == ["unparseable_timestamp"]
    assert "yesterday" in rejects.column("record")[0].as_py()


def test_a_join_without_a_match_keeps_the_row_for_validation_to_count(tmp_path: Path) -> None:
    _write(tmp_path / "sends.csv", "who,campaign\nh1,1\nh2,9\n")
    _write(tmp_path / "campaigns.csv", "campaign,start\n1,2024-05-01\n")
    mapping = _write(
        tmp_path / "mail.yaml",
        """\
        name: mail
        description: campaign mailers
        timezone: UTC
        events:
          - name: mailers
            read: {path: sends.csv}
            join:
              read: {path: campaigns.csv}
              key: campaign
              columns: [start]
            contact_id: who
            timestamp: {column: start, format: "%Y-%m-%d"}
            event_type: {fixed: impression}
            channel: {fixed: direct_mail}
            campaign_id: campaign
        """,
    )

    ingested = ingest(mapping, data_dir=tmp_path, now=NOW)

    assert ingested.validated.events.column("contact_id").to_pylist() == ["h1"]
    assert ingested.reject_counts()[("events", "unparseable_timestamp")] == 1


def test_labels_map_outcomes_and_convert_their_dates_to_utc(tmp_path: Path) -> None:
    _write(tmp_path / "leads.csv", "lead,won_at\na,2024-03-01 09:00:00\nb,\n")
    mapping = _write(
        tmp_path / "leads.yaml",
        """\
        name: leads
        description: leads with outcomes
        timezone: America/Sao_Paulo
        labels:
          read: {path: leads.csv}
          contact_id: lead
          outcome: {column: won_at, when_present: won, when_missing: not_won}
          label_date: {column: won_at, format: "%Y-%m-%d %H:%M:%S"}
        """,
    )

    labels = ingest(mapping, data_dir=tmp_path, now=NOW).labels

    assert labels is not None
    assert labels.schema == LABELS_SCHEMA
    assert labels.to_pylist() == [
        {
            "contact_id": "a",
            "label_date": dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.UTC),
            "outcome": "won",
        },
        {"contact_id": "b", "label_date": None, "outcome": "not_won"},
    ]


ISO_LABELS_MAPPING = """\
name: leads
description: leads whose sign-up time is both an event and the label date
timezone: Europe/Stockholm
events:
  - name: signups
    read: {path: leads.csv}
    contact_id: lead
    timestamp: {column: won_at, format: iso8601}
    event_type: {fixed: form_submit}
    channel: {fixed: web}
labels:
  read: {path: leads.csv}
  contact_id: lead
  outcome: {column: won_at, when_present: won, when_missing: not_won}
  label_date: {column: won_at, format: iso8601}
"""


def test_iso_label_dates_are_read_in_the_mappings_zone_exactly_as_event_times_are(
    tmp_path: Path,
) -> None:
    _write(tmp_path / "leads.csv", "lead,won_at\na,2024-01-01 10:00:00\nb,2024-01-01T10:00+05:00\n")
    mapping = _write(tmp_path / "leads.yaml", ISO_LABELS_MAPPING)

    ingested = ingest(mapping, data_dir=tmp_path, now=NOW)

    assert ingested.labels is not None
    label_dates = ingested.labels.column("label_date").to_pylist()
    assert label_dates == [
        dt.datetime(2024, 1, 1, 9, 0, tzinfo=dt.UTC),  # naive: Stockholm time, CET (UTC+1)
        dt.datetime(2024, 1, 1, 5, 0, tzinfo=dt.UTC),  # its own offset wins over the mapping's
    ]
    assert label_dates == ingested.validated.events.column("timestamp").to_pylist()


def test_an_iso_label_date_whose_zone_is_not_read_as_one_is_said_so(tmp_path: Path) -> None:
    """Its error was taken for "no zone named", though the mapping names one (diff review)."""
    _write(tmp_path / "leads.csv", "lead,won_at\na,2024-01-01 10:00:00\nb,2024-01-02T10:00:00+1\n")
    labels_only = (
        ISO_LABELS_MAPPING.split("events:")[0] + "labels:" + ISO_LABELS_MAPPING.split("labels:")[1]
    )
    mapping = _write(tmp_path / "leads.yaml", labels_only)
    with pytest.raises(SchemaError, match=r"labels column 'won_at' holds a time whose zone"):
        ingest(mapping, data_dir=tmp_path, now=NOW)


@pytest.mark.parametrize(
    "dates",
    [["2024-01-01 10:00:00", "2024-01-02 10:00:00"], ["2024-01-01 10:00:00", "2024-01-02T10:00Z"]],
    ids=["all naive", "one naive"],
)
def test_naive_iso_label_dates_without_a_declared_zone_are_a_schema_error(
    tmp_path: Path, dates: list[str]
) -> None:
    _write(tmp_path / "leads.csv", f"lead,won_at\na,{dates[0]}\nb,{dates[1]}\n")
    mapping = _write(
        tmp_path / "leads.yaml",
        """\
        name: leads
        description: leads with outcomes
        timezone: null
        labels:
          read: {path: leads.csv}
          contact_id: lead
          outcome: {column: won_at, when_present: won, when_missing: not_won}
          label_date: {column: won_at, format: iso8601}
        """,
    )

    with pytest.raises(SchemaError, match=r"labels column 'won_at' has no time zone.*timezone"):
        ingest(mapping, data_dir=tmp_path, now=NOW)


_LEADS_MAPPING = """\
    name: leads
    description: leads with outcomes
    timezone: UTC
    labels:
      read: {{path: leads.csv}}
      contact_id: lead
      outcome: {{column: won_at, when_present: won, when_missing: not_won}}
      label_date: {label_date}
    """

_UNREADABLE_LABEL_DATES = [
    ('{column: won_at, format: "%Y-%m-%d"}', ["2024-01-05", "2024-31-01"], "2024-31-01"),
    ("{column: won_at, format: iso8601}", ["2024-01-05", "soon"], "soon"),
    ("{column: won_at, format: unix_s}", ["1704412800", "1700000000000"], "1700000000000"),
]


@pytest.mark.parametrize(("label_date", "dates", "said"), _UNREADABLE_LABEL_DATES)
def test_a_label_date_that_does_not_read_sets_its_row_aside_with_its_text(
    tmp_path: Path, label_date: str, dates: list[str], said: str
) -> None:
    """One bad date stopped the whole ingest (a review named the value, a later one asked for
    the row to be set aside as an event with a bad time is): the other labels are kept."""
    _write(tmp_path / "leads.csv", f"lead,won_at\na,{dates[0]}\nb,{dates[1]}\nc,\n")
    mapping = _write(tmp_path / "leads.yaml", _LEADS_MAPPING.format(label_date=label_date))
    ingested = ingest(mapping, data_dir=tmp_path, now=NOW)
    assert ingested.labels is not None
    assert ingested.labels.to_pylist() == [
        {"contact_id": "a", "label_date": dt.datetime(2024, 1, 5, tzinfo=dt.UTC), "outcome": "won"},
        {"contact_id": "c", "label_date": None, "outcome": "not_won"},
    ]
    rejects = ingested.validated.rejects.to_pylist()
    assert [(r["table"], r["reason"], r["contact_id"], r["source_row"]) for r in rejects] == [
        ("labels", "unparseable_label_date", "b", 3)
    ]
    assert said in json.loads(rejects[0]["record"])["label_date"]
    assert ingested.validated.reject_counts()[("labels", "unparseable_label_date")] == 1


@pytest.mark.parametrize(("label_date", "dates", "said"), _UNREADABLE_LABEL_DATES)
def test_label_dates_none_of_which_reads_are_a_format_error_naming_one_and_its_row(
    tmp_path: Path, label_date: str, dates: list[str], said: str
) -> None:
    """Every date failing is the mapping's format, not the rows: an error, not all set aside."""
    _write(tmp_path / "leads.csv", f"lead,won_at\na,\nb,{dates[1]}\n")
    mapping = _write(tmp_path / "leads.yaml", _LEADS_MAPPING.format(label_date=label_date))
    with pytest.raises(SchemaError) as caught:
        ingest(mapping, data_dir=tmp_path, now=NOW)
    assert "none of its 1 date(s) reads as" in str(caught.value)
    assert f"(e.g. {said!r} on data row 2); set `labels.label_date.format`" in str(caught.value)


def test_an_outcome_value_the_labels_mapping_does_not_list_is_a_schema_error(
    tmp_path: Path,
) -> None:
    _write(tmp_path / "leads.csv", "lead,converted\na,1\nb,0\nc,2\n")
    mapping = _leads_mapping(tmp_path)

    with pytest.raises(SchemaError, match=r"\['2'\].*labels\.outcome\.values"):
        ingest(mapping, data_dir=tmp_path, now=NOW)


def test_a_source_without_events_still_validates_an_empty_event_table(tmp_path: Path) -> None:
    _write(tmp_path / "people.csv", "id,email_ok\np1,No\np2,Yes\n")
    mapping = _write(
        tmp_path / "people.yaml",
        """\
        name: people
        description: a contacts table only
        contacts:
          read: {path: people.csv}
          contact_id: id
          consent: {column: email_ok, values: {"Yes": true, "No": false}}
        """,
    )

    validated = ingest(mapping, data_dir=tmp_path, now=NOW).validated

    assert validated.events.num_rows == 0
    assert validated.rows_in == {"events": 0, "contacts": 2}
    assert validated.contacts is not None
    assert validated.contacts.column("marketing_consent").to_pylist() == [False, True]


def _unix_clicks(tmp_path: Path, unit: str, times: list[str]) -> Validated:
    """Clicks of users u1, u2, ... at ``times`` in a column of unix ``unit`` (s or ms)."""
    rows = "".join(f"u{i},{time}\n" for i, time in enumerate(times, start=1))
    _write(tmp_path / "clicks.csv", f"user,t\n{rows}")
    mapping = _write(
        tmp_path / "clicks.yaml",
        f"""\
        name: clicks
        description: clicks in unix time
        events:
          - name: clicks
            read: {{path: clicks.csv}}
            contact_id: user
            timestamp: {{column: t, format: unix_{unit}}}
            event_type: {{fixed: email_click}}
            channel: {{fixed: email}}
        """,
    )
    return ingest(mapping, data_dir=tmp_path, now=NOW).validated


def test_unix_millisecond_times_read_as_utc_instants(tmp_path: Path) -> None:
    events = _unix_clicks(tmp_path, "ms", ["1700000000123"]).events

    assert events.column("timestamp").to_pylist() == [
        dt.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=dt.UTC)
    ]


def test_seconds_in_a_unix_millisecond_column_are_set_aside_not_put_in_1970(
    tmp_path: Path,
) -> None:
    """Merged exports mix seconds into a milliseconds column: read as milliseconds they land
    in January 1970 (review); under 10^11 they are set aside."""
    validated = _unix_clicks(tmp_path, "ms", ["1709287200000", "1709287200", "0"])

    assert validated.events.column("contact_id").to_pylist() == ["u1"]
    assert validated.events.column("timestamp").to_pylist() == [
        dt.datetime(2024, 3, 1, 10, tzinfo=dt.UTC)
    ]
    assert validated.rejects.column("contact_id").to_pylist() == ["u2", "u3"]
    assert set(validated.rejects.column("reason").to_pylist()) == {"unparseable_timestamp"}


def test_a_unix_time_out_of_range_is_a_reject_not_a_crash(tmp_path: Path) -> None:
    validated = _unix_clicks(tmp_path, "s", ["1700000000", "99999999999999999999"])

    assert validated.events.column("contact_id").to_pylist() == ["u1"]
    assert validated.rejects.column("reason").to_pylist() == ["unparseable_timestamp"]


def test_summing_text_that_is_not_numbers_into_a_property_names_the_column_and_the_key(
    tmp_path: Path,
) -> None:
    """Only the event's value sets a basket aside (unparseable_value); a property's sum that
    does not read has no reason to, and would otherwise be null (review)."""
    _write(
        tmp_path / "lines.csv",
        "basket,who,at,sales,qty\n1,a,2024-01-01T10:00:00Z,1.5,x\n",
    )
    mapping = _write(
        tmp_path / "baskets.yaml",
        """\
        name: baskets
        description: line items
        events:
          - name: baskets
            read: {path: lines.csv}
            aggregate:
              by: [basket]
              columns: {who: first(who), at: min(at), sales: sum(sales), qty: sum(qty)}
            contact_id: who
            timestamp: {column: at, format: iso8601}
            event_type: {fixed: purchase}
            channel: {fixed: store}
            value: sales
            properties: [qty]
        """,
    )

    with pytest.raises(SchemaError, match=r"'qty'.*'x' at line 2\).*aggregate\.columns\.qty"):
        ingest(mapping, data_dir=tmp_path, now=NOW)


def test_label_rows_without_a_contact_or_dated_in_the_future_are_set_aside(
    tmp_path: Path,
) -> None:
    _write(
        tmp_path / "leads.csv",
        "lead,won_at\na,2024-03-01 09:00:00\n,2024-03-02 09:00:00\nc,2031-01-01 09:00:00\n",
    )
    mapping = _write(
        tmp_path / "leads.yaml",
        """\
        name: leads
        description: leads with outcomes
        timezone: UTC
        labels:
          read: {path: leads.csv}
          contact_id: lead
          outcome: {column: won_at, when_present: won, when_missing: not_won}
          label_date: {column: won_at, format: "%Y-%m-%d %H:%M:%S"}
        """,
    )

    ingested = ingest(mapping, data_dir=tmp_path, now=NOW)

    assert ingested.labels is not None
    assert ingested.labels.column("contact_id").to_pylist() == ["a"]
    counts = ingested.reject_counts()
    assert counts[("labels", "missing_contact_id")] == 1
    assert counts[("labels", "future_label_date")] == 1
    assert ingested.validated.rows_in["labels"] == 3


# --- where a reject came from ------------------------------------------------------------------


def _where(rejects: pa.Table) -> list[tuple[str, str | None, int | None]]:
    """(reason, source, source_row) of each reject."""
    return list(
        zip(
            rejects.column("reason").to_pylist(),
            rejects.column("source").to_pylist(),
            rejects.column("source_row").to_pylist(),
            strict=True,
        )
    )


def _line(path: Path, number: int) -> str:
    """Line `number` of a file as an editor shows it (1-based)."""
    return path.read_text("utf-8").splitlines()[number - 1]


TWO_FILES_MAPPING = """\
name: leads_and_deals
description: two event files
timezone: UTC
events:
  - name: leads
    read: {path: crm/leads.csv}
    contact_id: lead
    timestamp: {column: at, format: "%Y-%m-%d"}
    event_type: {fixed: form_submit}
    channel: {fixed: web}
  - name: deals
    read: {path: crm/deals.csv}
    contact_id: lead
    timestamp: {column: won, format: "%Y-%m-%d"}
    event_type: {fixed: purchase}
    channel: {fixed: sales}
"""


def test_a_reject_in_the_second_file_of_a_mapping_names_that_file_and_its_line(
    tmp_path: Path,
) -> None:
    _write(tmp_path / "crm/leads.csv", "lead,at\na,2024-01-01\nb,2024-01-02\nc,2024-01-03\n")
    deals = _write(tmp_path / "crm/deals.csv", "lead,won\na,2024-02-01\nb,soon\nc,2024-02-03\n")
    mapping = _write(tmp_path / "crm.yaml", TWO_FILES_MAPPING)

    rejects = ingest(mapping, data_dir=tmp_path, now=NOW).validated.rejects

    assert _where(rejects) == [("unparseable_timestamp", "events[1] crm/deals.csv", 3)]
    assert rejects.column("row_number").to_pylist() == [4]  # 3 leads, then the deals
    assert _line(deals, 3) == "b,soon"


def test_a_reject_in_a_file_without_a_header_points_at_its_line(tmp_path: Path) -> None:
    clicks = _write(tmp_path / "clicks.csv", "u1,1700000000\nu2,1700000001\nu3,later\n")
    mapping = _write(
        tmp_path / "clicks.yaml",
        """\
        name: clicks
        description: clicks without a header line
        events:
          - name: clicks
            read: {path: clicks.csv, header: false, columns: [user, s]}
            contact_id: user
            timestamp: {column: s, format: unix_s}
            event_type: {fixed: email_click}
            channel: {fixed: email}
        """,
    )

    rejects = ingest(mapping, data_dir=tmp_path, now=NOW).validated.rejects

    assert _where(rejects) == [("unparseable_timestamp", "events[0] clicks.csv", 3)]
    assert _line(clicks, 3) == "u3,later"


def test_line_numbers_stay_right_after_a_value_spanning_lines_or_a_blank_line(
    tmp_path: Path,
) -> None:
    # a quoted note over two lines in one file; a blank line in a whitespace-separated file
    notes = _write(
        tmp_path / "notes.csv",
        'who,at,note\na,2024-01-01,"two\nlines"\nb,2024-13-01,short\n',
    )
    # 2024111 reads as 2024-11-01 or 2024-01-11 under %Y%m%d: set aside, not guessed
    orders = _write(
        tmp_path / "orders.txt", "who at\nc 20240101\n\nd 2024xx01\ne 2024111\nf 20240111\n"
    )
    mapping = _write(
        tmp_path / "mixed.yaml",
        """\
        name: mixed
        description: rows that are not one per line
        timezone: UTC
        events:
          - name: notes
            read: {path: notes.csv}
            contact_id: who
            timestamp: {column: at, format: "%Y-%m-%d"}
            event_type: {fixed: form_submit}
            channel: {fixed: web}
            properties: [note]
          - name: orders
            read: {path: orders.txt, format: whitespace}
            contact_id: who
            timestamp: {column: at, format: "%Y%m%d"}
            event_type: {fixed: purchase}
            channel: {fixed: store}
        """,
    )

    rejects = ingest(mapping, data_dir=tmp_path, now=NOW).validated.rejects

    assert _where(rejects) == [
        ("unparseable_timestamp", "events[0] notes.csv", 4),
        ("unparseable_timestamp", "events[1] orders.txt", 4),
        ("unparseable_timestamp", "events[1] orders.txt", 5),
    ]
    assert _line(notes, 4).startswith("b,")
    assert _line(orders, 4).startswith("d ")
    assert _line(orders, 5).startswith("e ")


def test_a_rejected_aggregated_row_points_at_the_first_input_row_of_its_group(
    tmp_path: Path,
) -> None:
    lines = _write(
        tmp_path / "lines.csv",
        "basket,who,at,sales\n"
        "1,a,2024-01-01T10:00:00Z,1.0\n"
        "1,a,2024-01-01T10:00:00Z,2.0\n"
        "2,,2024-01-02T10:00:00Z,3.0\n"  # basket 2 has no customer: its first line is line 4
        "3,c,2024-01-03T10:00:00Z,4.0\n"
        "2,,2024-01-02T10:00:00Z,5.0\n",
    )
    mapping = _write(
        tmp_path / "baskets.yaml",
        """\
        name: baskets
        description: line items
        events:
          - name: baskets
            read: {path: lines.csv}
            aggregate: {by: [basket], columns: {who: first(who), at: min(at), sales: sum(sales)}}
            contact_id: who
            timestamp: {column: at, format: iso8601}
            event_type: {fixed: purchase}
            channel: {fixed: store}
            value: sales
        """,
    )

    rejects = ingest(mapping, data_dir=tmp_path, now=NOW).validated.rejects

    assert _where(rejects) == [("missing_contact_id", "events[0] lines.csv", 4)]
    assert rejects.column("row_number").to_pylist() == [1]  # the second basket
    assert _line(lines, 4).startswith("2,,")


def test_iso_times_with_a_lower_case_z_or_whole_hours_offset_are_read_as_the_service_reads_them(
    tmp_path: Path,
) -> None:
    """One rule for ingest and the service (features.schema.UTC_OFFSET): a lower-case z,
    which the service read, was set aside here as unparseable_timestamp; +01 was read here
    and refused by the service."""
    _write(
        tmp_path / "clicks.csv",
        "who,at\n"
        "a,2024-06-01T12:00:00z\n"
        "b,2024-06-01t12:00:00Z\n"
        "c,2024-06-01T13:00:00+01\n"
        "d,2024-06-01T07:00:00-05\n",
    )
    mapping = _write(
        tmp_path / "clicks.yaml",
        """\
        name: clicks
        description: clicks with times in ISO 8601 text
        events:
          - name: clicks
            read: {path: clicks.csv}
            contact_id: who
            timestamp: {column: at, format: iso8601}
            event_type: {fixed: page_view}
            channel: {fixed: web}
        """,
    )

    validated = ingest(mapping, data_dir=tmp_path, now=NOW).validated

    assert validated.rejects.num_rows == 0
    assert (
        validated.events.column("timestamp").to_pylist()
        == [dt.datetime(2024, 6, 1, 12, tzinfo=dt.UTC)] * 4
    )


def test_a_reject_in_a_parquet_file_points_at_its_0_based_row(tmp_path: Path) -> None:
    pq.write_table(
        pa.table({"id": ["a", "b", "c"], "at": ["2024-01-01T00:00:00Z", "x", "y"]}),
        tmp_path / "rows.parquet",
    )
    mapping = _write(
        tmp_path / "rows.yaml",
        """\
        name: rows
        description: parquet rows
        events:
          - name: rows
            read: {path: rows.parquet, format: parquet}
            contact_id: id
            timestamp: {column: at, format: iso8601}
            event_type: {fixed: purchase}
            channel: {fixed: store}
        """,
    )

    rejects = ingest(mapping, data_dir=tmp_path, now=NOW).validated.rejects

    assert _where(rejects) == [
        ("unparseable_timestamp", "events[0] rows.parquet", 1),
        ("unparseable_timestamp", "events[0] rows.parquet", 2),
    ]


@pytest.mark.parametrize("zone", ["+05:30", "-03:30", "UTC+05:45"])
def test_native_times_of_a_parquet_file_at_an_offset_polars_has_no_zone_for_are_read(
    zone: str, tmp_path: Path
) -> None:
    """A Parquet export whose times are at an offset of other than whole hours ('+05:30', as
    pandas writes India's) made Polars' reader panic, a traceback (review): the events' native
    times and a contacts time attribute are read as their instants, in UTC."""
    instants = [
        dt.datetime(2024, 1, 15, 4, 30, tzinfo=dt.UTC),
        dt.datetime(2024, 2, 1, tzinfo=dt.UTC),
    ]
    local = pa.array(instants, pa.timestamp("ms", "UTC")).cast(pa.timestamp("ms", zone))
    pq.write_table(pa.table({"id": ["a", "b"], "at": local}), tmp_path / "rows.parquet")
    pq.write_table(
        pa.table({"id": ["a", "b"], "ok": ["Y", "N"], "seen": local}), tmp_path / "people.parquet"
    )
    mapping = _native_rows_mapping(tmp_path)

    validated = ingest(mapping, data_dir=tmp_path, now=NOW).validated

    assert validated.rejects.num_rows == 0
    assert validated.events.column("timestamp").to_pylist() == instants
    assert validated.contacts is not None
    assert validated.contacts.column("seen_at").to_pylist() == instants
    assert validated.contacts.schema.field("seen_at").type.tz == "UTC"


def _native_rows_mapping(tmp_path: Path, *, timezone: str | None = None) -> Path:
    """A mapping of rows.parquet (events) and people.parquet (contacts) in ``tmp_path``, their
    times read as they are stored (``native``), naive ones in ``timezone``."""
    zone = f"timezone: {timezone}\n" if timezone else ""
    return _write(
        tmp_path / "rows.yaml",
        "name: rows\ndescription: parquet rows, times as stored\n"
        + zone
        + """\
events:
  - name: rows
    read: {path: rows.parquet, format: parquet}
    contact_id: id
    timestamp: {column: at, format: native}
    event_type: {fixed: purchase}
    channel: {fixed: store}
contacts:
  read: {path: people.parquet, format: parquet}
  contact_id: id
  attributes: {seen: seen_at}
  consent: {column: ok, values: {"Y": true, "N": false}}
""",
    )


def test_native_times_stored_as_int96_as_spark_writes_them_are_not_moved_by_the_timezone(
    tmp_path: Path,
) -> None:
    """A Parquet export from Spark stores its times as INT96 (Spark's default): UTC instants,
    though the footer names no zone, so Polars read them as naive times and ingest placed them
    in the mapping's `timezone:`, an hour off in Stockholm's winter, without a word. They are
    read as the instants Spark reads, in UTC, events and contacts alike."""
    instants = [
        dt.datetime(2024, 1, 15, 4, 30, tzinfo=dt.UTC),
        dt.datetime(2024, 7, 1, 23, 59, 59, 999999, tzinfo=dt.UTC),
    ]
    at = pa.array(instants, pa.timestamp("us", "UTC"))
    spark = {"use_deprecated_int96_timestamps": True, "store_schema": False}  # Spark's way
    # a nested INT96 time that the mapping does not read, in 9999 (a common "never"): the
    # file was refused as out of bounds when read in nanoseconds (review)
    never = pa.array([{"valid_to": dt.datetime(9999, 12, 31)}] * 2)
    pq.write_table(
        pa.table({"id": ["a", "b"], "at": at, "crm": never}), tmp_path / "rows.parquet", **spark
    )
    pq.write_table(
        pa.table({"id": ["a", "b"], "ok": ["Y", "N"], "seen": at, "crm": never}),
        tmp_path / "people.parquet",
        **spark,
    )
    assert pq.read_metadata(tmp_path / "rows.parquet").schema.column(1).physical_type == "INT96"
    mapping = _native_rows_mapping(tmp_path, timezone="Europe/Stockholm")

    validated = ingest(mapping, data_dir=tmp_path, now=NOW).validated

    assert validated.rejects.num_rows == 0
    assert validated.events.column("timestamp").to_pylist() == instants
    assert validated.contacts is not None
    assert validated.contacts.column("seen_at").to_pylist() == instants


def test_a_file_with_nested_int96_times_alone_is_read_in_every_year_and_zone(
    tmp_path: Path,
) -> None:
    """Nested INT96 times with no top-level one (review): Polars read them in nanoseconds, so a
    9999-12-31 became 2262-04-11 in the events' properties, and one stored with a zone Polars
    cannot read ('+05:30') stopped its reader with a panic."""
    from features.sources import _read_parquet

    never = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)
    spark = tmp_path / "spark.parquet"
    crm = pa.array(
        [{"valid_to": never.replace(tzinfo=None)}], pa.struct([("valid_to", "timestamp[us]")])
    )
    pq.write_table(
        pa.table({"id": ["a"], "crm": crm}),
        spark,
        use_deprecated_int96_timestamps=True,
        store_schema=False,
    )
    assert _read_parquet(spark)["crm"].to_list() == [{"valid_to": never.replace(tzinfo=None)}]
    india = tmp_path / "india.parquet"
    moment = dt.datetime(2024, 3, 1, 10, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
    zoned = pa.array([{"v": moment}], pa.struct([("v", pa.timestamp("us", "+05:30"))]))
    pq.write_table(
        pa.table({"id": ["a"], "crm": zoned}), india, use_deprecated_int96_timestamps=True
    )
    [row] = _read_parquet(india)["crm"].to_list()
    # the same instant, as nested INT96 times come: in UTC, naive (no builder reads them)
    assert row["v"] == moment.astimezone(dt.UTC).replace(tzinfo=None)


def test_a_rejected_contact_points_at_its_line_in_the_contacts_file(
    shop: Path, tmp_path: Path
) -> None:
    customers = _write(
        tmp_path / "data/shop/customers.csv", CUSTOMERS_CSV + "c3,yes,bronze\nc1,Y,gold\n"
    )

    rejects = ingest(shop, data_dir=tmp_path / "data", now=NOW).validated.rejects

    assert _where(rejects) == [
        ("unparseable_consent", "contacts shop/customers.csv", 4),
        ("duplicate_contact_id", "contacts shop/customers.csv", 5),
    ]
    assert _line(customers, 4) == "c3,yes,bronze"


CLICKS_MAPPING = """\
name: clicks
description: contacts from the events
events:
  - name: clicks
    read: {path: clicks.csv}
    contact_id: user
    timestamp: {column: s, format: unix_s}
    event_type: {fixed: email_click}
    channel: {fixed: email}
contacts:
  consent_default: true
"""


def test_a_contact_made_from_the_events_points_at_its_first_event(tmp_path: Path) -> None:
    events = _write(
        tmp_path / "clicks.csv",
        "user,s\nu1,1700000000\nu2,1700000001\nu1,1700000002\nu2,1700000003\n",
    )
    mapping = _write(tmp_path / "clicks.yaml", CLICKS_MAPPING)

    raw = read_source(load_mapping(mapping), data_dir=tmp_path)

    assert raw.contacts is not None
    assert raw.contacts["contact_id"].to_list() == ["u1", "u2"]
    # the origins of a table hold (file, 0-based row in that file) per row
    contact_files, contact_rows = raw.origins.rows["contacts"].get_columns()
    assert [raw.origins.files[i].label for i in contact_files] == ["events[0] clicks.csv"] * 2
    assert raw.origins.files[0].source_rows(contact_rows).to_list() == [2, 3]
    assert _line(events, 3).startswith("u2,")


def test_a_blank_contact_id_is_counted_once_as_an_event_reject_not_again_as_a_contact(
    tmp_path: Path,
) -> None:
    _write(
        tmp_path / "clicks.csv",
        "user,s\nu1,1700000000\n  ,1700000001\nu2,1700000002\n  ,1700000003\n",
    )
    mapping = _write(tmp_path / "clicks.yaml", CLICKS_MAPPING)

    ingested = ingest(mapping, data_dir=tmp_path, now=NOW)

    assert _where(ingested.validated.rejects) == [
        ("missing_contact_id", "events[0] clicks.csv", 3),
        ("missing_contact_id", "events[0] clicks.csv", 5),
    ]
    contacts = ingested.validated.contacts
    assert contacts is not None
    assert contacts.column("contact_id").to_pylist() == ["u1", "u2"]
    assert ingested.validated.rows_in["contacts"] == 2


def test_a_label_with_a_blank_contact_id_is_set_aside_as_missing_its_contact(
    tmp_path: Path,
) -> None:
    _write(tmp_path / "leads.csv", "lead,converted\na,1\n  ,0\n")
    mapping = _leads_mapping(tmp_path)

    ingested = ingest(mapping, data_dir=tmp_path, now=NOW)

    assert ingested.labels is not None
    assert ingested.labels.column("contact_id").to_pylist() == ["a"]
    assert _where(ingested.validated.rejects) == [("missing_contact_id", "labels leads.csv", 3)]


def test_a_rejected_label_points_at_its_line_in_the_labels_file(tmp_path: Path) -> None:
    leads = _write(
        tmp_path / "leads.csv",
        "lead,won_at\na,2024-03-01 09:00:00\n,2024-03-02 09:00:00\nc,2031-01-01 09:00:00\n",
    )
    mapping = _write(
        tmp_path / "leads.yaml",
        """\
        name: leads
        description: leads with outcomes
        timezone: UTC
        labels:
          read: {path: leads.csv}
          contact_id: lead
          outcome: {column: won_at, when_present: won, when_missing: not_won}
          label_date: {column: won_at, format: "%Y-%m-%d %H:%M:%S"}
        """,
    )

    rejects = ingest(mapping, data_dir=tmp_path, now=NOW).validated.rejects

    assert _where(rejects) == [
        ("missing_contact_id", "labels leads.csv", 3),
        ("future_label_date", "labels leads.csv", 4),
    ]
    assert _line(leads, 4).startswith("c,2031")


def test_rows_excluded_by_the_mapping_point_at_their_lines(shop: Path, tmp_path: Path) -> None:
    mapping = _with(
        shop, "timezone: Europe/Stockholm", 'timezone: Europe/Stockholm\ndrop_contacts: ["c1"]'
    )

    rejects = ingest(mapping, data_dir=tmp_path / "data", now=NOW).validated.rejects

    assert _where(rejects) == [
        (EXCLUDED_REASON, "events[0] shop/events.csv", 2),
        (EXCLUDED_REASON, "events[0] shop/events.csv", 3),
        (EXCLUDED_REASON, "contacts shop/customers.csv", 2),
    ]
    record = json.loads(rejects.column("record")[0].as_py())
    assert set(record) == set(EVENT_COLUMNS)  # the row as read, nothing internal


def test_validating_a_frame_directly_leaves_the_source_columns_empty() -> None:
    from features.schema import validate

    frame = pa.table(
        {
            "contact_id": ["a", "b"],
            "timestamp": ["2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z"],
            "channel": ["web", "web"],
            "event_type": ["page_view", "no_such_event"],
        }
    )

    rejects = validate(frame, now=NOW).rejects

    assert _where(rejects) == [("unknown_event_type", None, None)]
    assert rejects.column("row_number").to_pylist() == [1]


def test_every_shipped_mappings_training_settings_load_as_training_settings() -> None:
    """A mapping's `training:` is what `run --source` trains with: each shipped one loads over
    the shipped settings (a key the training settings lack would fail every run of it), and
    observe_until arrives as a date."""
    from features.sources import SourceTraining, list_sources, load_mapping
    from training.settings import TrainingSettings, load_training_settings, source_training

    assert set(SourceTraining.model_fields) - {"model_name"} <= set(TrainingSettings.model_fields)
    given = 0
    for name in list_sources():
        if load_mapping(name).training is None:
            continue
        overrides = source_training(name)
        settings = load_training_settings(**overrides)
        assert settings.registry.model_name == overrides["model_name"] == f"funnelcast-{name}"
        for key, value in overrides.items():
            if key != "model_name":
                assert getattr(settings, key) == value, (name, key)
        given += 1
    assert given >= 4
    olist = load_training_settings(**source_training("olist"))
    assert olist.observe_until == dt.date(2018, 7, 1)


@pytest.mark.parametrize(
    "given",
    ["2018-07-01T00:00+02:00", dt.datetime(2018, 7, 1, tzinfo=dt.UTC), 20180701, "20180701"],
)
def test_observe_until_is_a_day_never_a_time_whose_zone_would_be_dropped(given: object) -> None:
    """pydantic reads a midnight with an offset as that day (the zone dropped: a cut two hours
    off) and a number as Unix time; a mapping's and the settings' observe_until refuse both."""
    from features.sources import SourceTraining
    from training.settings import load_training_settings

    for load in (
        lambda: SourceTraining(observe_until=given),
        lambda: load_training_settings(observe_until=given),
    ):
        with pytest.raises(ValueError, match="is not a day; give YYYY-MM-DD"):
            load()
    assert SourceTraining(observe_until="2018-07-01").observe_until == dt.date(2018, 7, 1)


# --- what the readers would read wrongly without a word (row-conservation review) --------------


def test_a_csv_whose_lines_end_with_a_carriage_return_alone_is_refused(
    shop: Path, tmp_path: Path
) -> None:
    """Excel for Mac's "CSV (Macintosh)": Polars read it as one header line and no rows, and
    ingest said "0 in, 0 kept, no rows set aside"."""
    path = tmp_path / "data/shop/events.csv"
    path.write_bytes(SHOP_CSV.replace("\n", "\r").encode("utf-8"))
    with pytest.raises(SchemaError, match="carriage return alone") as caught:
        ingest(shop, data_dir=tmp_path / "data", now=NOW)
    assert "tr '\\r' '\\n' < events.csv > events.lf.csv" in str(caught.value)
    path.write_bytes(SHOP_CSV.replace("\n", "\r\n").encode("utf-8"))  # Windows' endings read
    assert ingest(shop, data_dir=tmp_path / "data", now=NOW).validated.events.num_rows == 3


def test_whitespace_columns_read_carriage_return_line_endings(tmp_path: Path) -> None:
    """pandas reads them; the first check refused them for every text format (diff review)."""
    (tmp_path / "ev.txt").write_bytes(b"cid day\rc1 20240101\rc2 20240102\r")
    mapping = _write(
        tmp_path / "ws.yaml",
        """\
        name: ws
        description: whitespace columns
        timezone: UTC
        events:
          - name: ev
            read: {path: ev.txt, format: whitespace}
            contact_id: cid
            timestamp: {column: day, format: "%Y%m%d"}
            event_type: {fixed: purchase}
            channel: {fixed: store}
        contacts: {consent_default: true}
        """,
    )
    events = ingest(mapping, data_dir=tmp_path, now=NOW).validated.events
    assert events.column("contact_id").to_pylist() == ["c1", "c2"]


def test_a_header_naming_a_column_twice_is_refused_unless_the_mapping_names_the_columns(
    shop: Path, tmp_path: Path
) -> None:
    """The readers kept the first `opt_in` and renamed the second: a contact whose second
    column said N was kept with consent, nothing said."""
    _write(
        tmp_path / "data/shop/customers.csv",
        "id,opt_in,segment,opt_in\nc1,Y,gold,N\nc2,N,silver,N\n",
    )
    with pytest.raises(SchemaError, match="names the column 'opt_in' twice or more, and "):
        ingest(shop, data_dir=tmp_path / "data", now=NOW)
    named = _with(
        shop,
        "read: {path: shop/customers.csv, format: csv}",
        "read: {path: shop/customers.csv, format: csv, columns: [id, old, segment, opt_in]}",
    )
    contacts = ingest(named, data_dir=tmp_path / "data", now=NOW).validated.contacts
    assert contacts.column("marketing_consent").to_pylist() == [False, False]


def test_repeated_names_the_mapping_does_not_read_are_no_problem(
    shop: Path, tmp_path: Path
) -> None:
    """The first check refused them all (diff review): trailing empty names, as spreadsheet
    exports have, a repeated column nobody reads, and a quoted header cell holding a line
    break."""
    _write(
        tmp_path / "data/shop/customers.csv",
        'id,opt_in,segment,note,note,"opt_in\n(old)",,\nc1,Y,gold,a,b,N,,\nc2,N,silver,c,d,Y,,\n',
    )
    contacts = ingest(shop, data_dir=tmp_path / "data", now=NOW).validated.contacts
    assert contacts.column("marketing_consent").to_pylist() == [True, False]


def test_unix_times_outside_the_calendar_are_set_aside_not_a_traceback(tmp_path: Path) -> None:
    """Milliseconds read as seconds (year 55,841) and a year -1199 crashed ingest with an
    OverflowError while writing the set-aside row's record, or were kept."""
    _write(
        tmp_path / "ev.csv",
        "cid,ts,action\nc1,1700000000,view\nc2,1700000000000,view\nc3,-100000000000,view\n"
        # placeholders for "no time" (review: kept as 1970, unlike unix_ms)
        "c4,0,view\nc5,-1,view\nc6,99999999,view\n",
    )
    mapping = _write(
        tmp_path / "ms.yaml",
        """\
        name: ms
        description: unix seconds
        events:
          - name: ev
            read: {path: ev.csv}
            contact_id: cid
            timestamp: {column: ts, format: unix_s}
            event_type: {column: action, values: {view: product_view}}
            channel: {fixed: web}
        contacts: {consent_default: true}
        """,
    )
    validated = ingest(mapping, data_dir=tmp_path, now=NOW).validated
    assert validated.events.column("contact_id").to_pylist() == ["c1"]
    rejects = validated.rejects.to_pylist()
    assert [(r["reason"], r["contact_id"]) for r in rejects] == [
        ("unparseable_timestamp", f"c{n}") for n in range(2, 7)
    ]
    assert "1700000000000" in rejects[0]["record"]


def test_a_path_with_a_pattern_is_said_to_name_one_file(shop: Path, tmp_path: Path) -> None:
    """Review: `path: 'parts/*.parquet'` said the file did not exist and to pass --data-dir,
    whose folder was right."""
    mapping = _with(shop, "path: shop/events.csv", "path: shop/*.csv")
    with pytest.raises(FileNotFoundError, match=r"names one file, not a pattern"):
        ingest(mapping, data_dir=tmp_path / "data", now=NOW)


def test_source_values_are_trimmed_before_the_mapping_looks_them_up(tmp_path: Path) -> None:
    """ "view " was set aside as unknown_event_type though the mapping lists view, while ids
    and consent values are trimmed (review)."""
    _write(tmp_path / "clicks.csv", "user,at,action\nu1,2024-03-01T10:00:00Z,view \n")
    text = """\
        name: clicks
        description: clicks
        events:
          - name: clicks
            read: {path: clicks.csv}
            contact_id: user
            timestamp: {column: at, format: iso8601}
            event_type: {column: action, values: VALUES}
            channel: {fixed: web}
        """
    mapping = _write(tmp_path / "clicks.yaml", text.replace("VALUES", "{view: product_view}"))

    validated = ingest(mapping, data_dir=tmp_path, now=NOW).validated

    assert validated.events.column("event_type").to_pylist() == ["product_view"]
    assert validated.rejects.num_rows == 0
    twice = _write(
        tmp_path / "twice.yaml",
        text.replace("VALUES", '{view: product_view, "view ": page_view}'),
    )
    with pytest.raises(MappingError, match=r"lists 'view' and 'view ', one value .* trimmed"):
        load_mapping(twice)


@pytest.mark.parametrize("where", ["contact_id", "properties"])
def test_a_binary_parquet_column_is_an_error_naming_it_not_a_traceback(
    tmp_path: Path, where: str
) -> None:
    """16-byte UUID ids (as Spark or BigQuery write them) failed with Polars' "invalid utf8",
    and bytes among the properties with a Rust panic (review)."""
    pq.write_table(
        pa.table(
            {
                "uid": pa.array([b"\x00\xff" * 8, b"\x01" * 16], pa.binary(16)),
                "name": ["u1", "u2"],
                "at": pa.array([dt.datetime(2024, 3, 1, 10)] * 2, pa.timestamp("us", "UTC")),
                "blob": pa.array([b"\x00\xff", b"a"]),
            }
        ),
        tmp_path / "e.parquet",
    )
    ids, properties = ("uid", "[name]") if where == "contact_id" else ("name", "[blob]")
    mapping = _write(
        tmp_path / "e.yaml",
        f"""\
        name: bytes
        description: binary columns
        events:
          - name: e
            read: {{path: e.parquet, format: parquet}}
            contact_id: {ids}
            timestamp: {{column: at, format: native}}
            event_type: {{fixed: page_view}}
            channel: {{fixed: web}}
            properties: {properties}
        contacts: {{consent_default: true}}
        """,
    )
    column = "uid" if where == "contact_id" else "blob"

    with pytest.raises(
        SchemaError, match=rf"column '{column}', which `events\[0\]\.{where}` reads, holds bytes"
    ):
        ingest(mapping, data_dir=tmp_path, now=NOW)


def test_lines_with_fewer_fields_than_the_header_are_set_aside_and_counted(tmp_path: Path) -> None:
    """The CSV reader filled a cut line's missing fields with nulls, and the purchase was kept
    without its amount, without a word (review). A line whose last value is empty but present
    (`u5,...,`) is no such line; a blank line is a row without an id."""
    _write(
        tmp_path / "orders.csv",
        "user,at,action,amount\n"
        # lines 2-3: a quoted line break (around a name, which is trimmed; inside an id it
        # would be refused)
        'u1,2024-03-01T10:00:00Z,"order\n",5\n'
        "u2,2024-03-01T10:00:00Z,order\n"  # line 4: cut
        "u3,2024-03-01T11:00:00Z,order,7\n"
        "u4,2024-03-01T12:00:00Z\n"  # line 6: cut
        "u5,2024-03-01T12:00:00Z,view,\n",
    )
    mapping = _write(
        tmp_path / "orders.yaml",
        """\
        name: orders
        description: orders
        events:
          - name: orders
            read: {path: orders.csv}
            contact_id: user
            timestamp: {column: at, format: iso8601}
            event_type: {column: action, values: {order: purchase, view: product_view}}
            channel: {fixed: web}
            value: amount
        contacts: {consent_default: true}
        """,
    )

    ingested = ingest(mapping, data_dir=tmp_path, now=NOW)

    events = ingested.validated.events
    assert events.column("contact_id").to_pylist() == ["u1", "u3", "u5"]
    assert events.column("value").to_pylist() == [5.0, 7.0, None]
    rejects = ingested.validated.rejects
    assert rejects.column("reason").to_pylist() == ["missing_fields"] * 2
    assert rejects.column("contact_id").to_pylist() == ["u2", "u4"]
    assert rejects.column("source_row").to_pylist() == [4, 6]
    assert ingested.reject_counts()[("events", "missing_fields")] == 2
    # every line is kept or counted: rows in are the five lines' rows
    assert ingested.validated.rows_in["events"] == events.num_rows + rejects.num_rows == 5


_SHORT_LINE_READS = {
    "join": "join: {read: {path: users.csv}, key: user, columns: [segment]}",
    "aggregate": "aggregate: {by: [basket], columns: {user: first(user), at: min(at), "
    "amount: sum(amount)}}",
}


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("join", r"users.csv: line 3 has 1 fields where the header has 2.*`events\[0\]\.join"),
        ("aggregate", r"line 3 has 2 fields where the header has 4.*`events\[0\]\.aggregate`"),
    ],
)
def test_a_short_line_whose_rows_cannot_be_set_aside_one_by_one_is_an_error(
    tmp_path: Path, how: str, message: str
) -> None:
    """A joined file's rows are no event's own, and a basket is known by its first line."""
    lines = "basket,user,at,amount\n1,u1,2024-03-01T10:00:00Z,5\n"
    _write(tmp_path / "lines.csv", lines + ("2,u2\n" if how == "aggregate" else ""))
    _write(tmp_path / "users.csv", "user,segment\nu1,gold\nu2\n")
    mapping = _write(
        tmp_path / "m.yaml",
        f"""\
        name: lines
        description: lines
        events:
          - name: orders
            read: {{path: lines.csv}}
            {_SHORT_LINE_READS[how]}
            contact_id: user
            timestamp: {{column: at, format: iso8601}}
            event_type: {{fixed: purchase}}
            channel: {{fixed: web}}
            value: amount
        contacts: {{consent_default: true}}
        """,
    )

    with pytest.raises(SchemaError, match=message):
        ingest(mapping, data_dir=tmp_path, now=NOW)


def test_a_utf16_file_is_refused_saying_so_not_blaming_the_column_names(
    shop: Path, tmp_path: Path
) -> None:
    """Excel's "Unicode Text": the error named the mapping's column, whose name it printed
    with NUL bytes (review)."""
    (tmp_path / "data/shop/events.csv").write_bytes(SHOP_CSV.encode("utf-16"))
    with pytest.raises(SchemaError, match=r"is UTF-16 text.*iconv -f utf-16 -t utf-8") as caught:
        ingest(shop, data_dir=tmp_path / "data", now=NOW)
    assert "\x00" not in str(caught.value)


def test_a_gzip_csv_is_read_with_its_lines_counted_on_the_text_not_the_bytes(
    shop: Path, tmp_path: Path
) -> None:
    """Polars reads gzip by itself, but the line-ending check looked at the compressed bytes
    (and refused some files as old Mac line endings) and a reject's line was counted on
    them (null) (review). The first row count whose compressed bytes hold a carriage return
    and no line feed shows the first; a line with an unknown event type shows the second."""
    for rows in range(1, 400):
        text = SHOP_CSV + "".join(
            f"c{i};2024-01-15 10:00:0{i % 10};view;site;;;A{i}\n" for i in range(rows)
        )
        packed = gzip.compress((text + "c9;2024-01-15 11:00:00;shout;site;;;Z\n").encode(), mtime=0)
        if b"\r" in packed[:65536] and b"\n" not in packed[:65536]:
            break
    else:
        pytest.fail("no row count gave compressed bytes with a carriage return and no line feed")
    (tmp_path / "data/shop/events.csv").write_bytes(packed)

    validated = ingest(shop, data_dir=tmp_path / "data", now=NOW).validated

    assert validated.events.num_rows == 3 + rows
    assert validated.rejects.column("reason").to_pylist() == ["unknown_event_type"]
    assert validated.rejects.column("source_row").to_pylist() == [2 + 3 + rows]


def test_a_header_read_as_one_column_suggests_the_delimiter_it_holds(shop: Path) -> None:
    mapping = _with(shop, 'delimiter: ";"', 'delimiter: ","')
    with pytest.raises(
        SchemaError, match=r"header reads as one column holding ';'.*set `delimiter: \";\"`"
    ):
        ingest(mapping, data_dir=mapping.parent / "data", now=NOW)


def test_a_semicolon_file_with_decimal_commas_also_suggests_its_delimiter(
    shop: Path, tmp_path: Path
) -> None:
    """With `delimiter: ","` the header of a semicolon file is one field and a row with a
    decimal comma two: the reader's field-count error came without the hint (a review)."""
    _write(tmp_path / "data/shop/events.csv", SHOP_CSV.replace("19.90", "19,90"))
    mapping = _with(shop, 'delimiter: ";"', 'delimiter: ","')
    with pytest.raises(
        SchemaError,
        match=r"line 3 has 2 fields where the first line has 1.*"
        r"header reads as one column holding ';'.*set `delimiter: \";\"`",
    ):
        ingest(mapping, data_dir=tmp_path / "data", now=NOW)


@pytest.mark.parametrize(("key", "shown"), [("yes", "True"), ("1", "1")])
def test_an_unquoted_yes_or_number_key_says_to_quote_it(shop: Path, key: str, shown: str) -> None:
    """YAML reads `{yes: true}` as {True: True}: the error said only "a valid string"."""
    mapping = _with(shop, '{"Y": true, "N": false}', f"{{{key}: true}}")
    with pytest.raises(
        MappingError, match=rf"`contacts.consent.values`: the key {shown}: .* quote it"
    ):
        load_mapping(mapping)


def test_the_stray_quote_finder_passes_doubled_quotes_and_quoted_line_breaks(
    tmp_path: Path,
) -> None:
    from features.sources import ReadSpec, _stray_quote_line

    path = tmp_path / "q.csv"
    path.write_text('user,s\nu1,"27"" monitor"\nu2,"two\nlines ""x"""\nu3,3\n', encoding="utf-8")
    assert _stray_quote_line(path, ReadSpec(path="q.csv")) is None
    path.write_text('user,s\nu1,"27"" monitor"\nu2,"two\nlines"\nu3,4" x\n', encoding="utf-8")
    assert _stray_quote_line(path, ReadSpec(path="q.csv")) == 5


_PURCHASES_E_CSV = """\
name: t
description: purchases of users at ISO times, with an amount
events:
  - name: e
    read: {path: e.csv}
    contact_id: user
    timestamp: {column: at, format: iso8601}
    event_type: {fixed: purchase}
    channel: {fixed: web}
    value: amount
contacts: {consent_default: true}
"""


@pytest.mark.parametrize(
    ("content", "kept"),
    [
        # a field over the csv module's 128 KiB beside an empty last value (a traceback)
        (f'user,at,note,amount\nu1,{{t}},"{"x" * 200_000}",5\nu2,{{t}},y,\n', ["u1", "u2"]),
        # a bare carriage return inside a value: a line break to the csv module only, which
        # shifted every later row (both were set aside)
        ("user,at,note,amount\nu1,{t},a\rb,5\nu2,{t},y,\n", ["u1", "u2"]),
        # a header ending in the delimiter names an empty column no line fills
        ("user,at,amount,\nu1,{t},5\nu2,{t},6\n", ["u1", "u2"]),
        # a quoted line break and a short line: records counted, not lines
        ('user,at,note,amount\nu1,{t},"a\nb",5\nu2,{t}\nu3,{t},c,\n', ["u1", "u3"]),
    ],
    ids=["a long field", "a bare carriage return", "a trailing delimiter", "a quoted line break"],
)
def test_the_short_line_check_sets_aside_no_full_line(
    tmp_path: Path, content: str, kept: list[str]
) -> None:
    """Valid files the first short-line check set aside rows of, or crashed on (diff review)."""
    (tmp_path / "e.csv").write_bytes(content.replace("{t}", "2024-03-01T10:00:00Z").encode())
    mapping = _write(tmp_path / "m.yaml", _PURCHASES_E_CSV)

    validated = ingest(mapping, data_dir=tmp_path, now=NOW).validated

    assert validated.events.column("contact_id").to_pylist() == kept
    short = {"u2"} - set(kept)
    assert [r for r in validated.rejects.column("contact_id").to_pylist()] == sorted(short)


def test_a_damaged_gzip_file_is_one_error_naming_it(shop: Path, tmp_path: Path) -> None:
    packed = gzip.compress((SHOP_CSV * 200).encode())
    (tmp_path / "data/shop/events.csv").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(SchemaError, match=r"events.csv .*cannot be read: it is a damaged gzip"):
        ingest(shop, data_dir=tmp_path / "data", now=NOW)


def test_a_whitespace_only_line_is_a_row_without_an_id_not_a_short_line(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text(
        "user,at,amount\nu1,2024-03-01T10:00:00Z,5\n   \nu2,2024-03-01T11:00:00Z,\n",
        encoding="utf-8",
    )
    mapping = _write(tmp_path / "m.yaml", _PURCHASES_E_CSV)
    validated = ingest(mapping, data_dir=tmp_path, now=NOW).validated
    assert validated.events.column("contact_id").to_pylist() == ["u1", "u2"]
    assert validated.rejects.column("reason").to_pylist() == ["missing_contact_id"]


def test_ingest_refuses_contact_ids_holding_a_control_character_naming_the_line(
    tmp_path: Path,
) -> None:
    """Export review: "nul\\x00id" or a line break inside a quoted id passed ingest and was
    written raw into the scores CSV. Ingest stops, counting the ids and naming the first one's
    line in its file (a quoted id over two lines too) or its row in a Parquet file, and the
    character, never the id."""
    mapping = _write(tmp_path / "clicks.yaml", CLICKS_MAPPING)
    clicks = tmp_path / "clicks.csv"
    clicks.write_bytes(b'user,s\nu1,1700000000\n"new\nline",1700000001\nnul\x00id,1700000002\n')
    with pytest.raises(SchemaError) as refused:
        ingest(mapping, data_dir=tmp_path, now=NOW)
    said = str(refused.value)
    assert said.startswith(
        "2 contact id(s) in the events hold a control character (such as '\\n'; line 3 of "
        "events[0] clicks.csv is one); "
    )
    assert "nul" not in said
    assert "line\n" not in said

    pq.write_table(
        pa.table({"user": ["u1", "u2", "del\x7f"], "s": [1700000000, 1700000001, 1700000002]}),
        tmp_path / "clicks.parquet",
    )
    parquet = _write(
        tmp_path / "parquet.yaml",
        CLICKS_MAPPING.replace("{path: clicks.csv}", "{path: clicks.parquet, format: parquet}"),
    )
    with pytest.raises(SchemaError) as refused:
        ingest(parquet, data_dir=tmp_path, now=NOW)
    assert "(such as '\\x7f'; row 2 (counting from 0) of events[0] clicks.parquet is one)" in str(
        refused.value
    )


def test_ingest_refuses_a_label_whose_contact_id_holds_a_control_character(
    tmp_path: Path,
) -> None:
    (tmp_path / "leads.csv").write_bytes(b"lead,converted\na,1\nb\x01,0\n")
    mapping = _leads_mapping(tmp_path)
    with pytest.raises(SchemaError, match=r"^1 contact id\(s\) in the labels hold a control .*"):
        ingest(mapping, data_dir=tmp_path, now=NOW)
    with pytest.raises(
        SchemaError, match=r"\(such as '\\x01'; line 3 of labels leads.csv is one\)"
    ):
        ingest(mapping, data_dir=tmp_path, now=NOW)
