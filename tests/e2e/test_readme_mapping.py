"""The mapping example in the README works as written."""

from __future__ import annotations

import re
from pathlib import Path

from features.sources import ingest

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_mapping_example_ingests_a_users_own_files(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = re.search(r"```yaml\n(.*?)```", readme, re.DOTALL)
    assert example is not None
    mapping = tmp_path / "mystore.yaml"
    mapping.write_text(example.group(1), encoding="utf-8")
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "events.csv").write_text(
        "customer_id,ts,action,amount,sku\n"
        "1,2024-05-01 10:00:00,view,,A1\n"
        "1,2024-05-01 10:05:00,basket,,A1\n"
        "2,2024-05-02 11:00:00,order,19.9,B2\n"
        "2,2024-05-02 11:00:00,refund,19.9,B2\n",
        encoding="utf-8",
    )
    (tmp_path / "exports" / "customers.csv").write_text(
        "customer_id,segment,signup_date,newsletter\n1,smb,2024-01-01,Y\n2,ent,2024-02-01,N\n",
        encoding="utf-8",
    )
    result = ingest(mapping, data_dir=tmp_path).validated
    assert result.events.column("event_type").to_pylist() == [
        "product_view",
        "add_to_cart",
        "purchase",
    ]
    # Stockholm is UTC+2 in May
    assert str(result.events.column("timestamp")[0].as_py()) == "2024-05-01 08:00:00+00:00"
    assert result.rejects.column("reason").to_pylist() == ["unknown_event_type"]
    assert result.contacts is not None
    assert result.contacts.column("marketing_consent").to_pylist() == [True, False]
    assert result.contacts.column("segment").to_pylist() == ["smb", "ent"]


def test_the_readme_lists_every_reason_a_row_is_set_aside() -> None:
    """Review: `unparseable_properties` was missing from the README's list."""
    from features.schema import CONTACT_REJECT_REASONS, EVENT_REJECT_REASONS

    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    events = readme[readme.index("Event reasons:") : readme.index("Contact reasons:")]
    contacts = readme[readme.index("Contact reasons:") : readme.index("Label reasons:")]
    assert [r for r in EVENT_REJECT_REASONS if f"`{r}`" not in events] == []
    assert [r for r in CONTACT_REJECT_REASONS if f"`{r}`" not in contacts] == []
