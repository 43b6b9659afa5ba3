"""API keys: where they come from, how they are compared, and what a refusal says."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.runtime import ServiceConfigError, read_api_keys
from serving.security import KeyCheck, presented_key

KEY = "k3y-0123456789-abcdef"
OTHER = "another-key-0123456789"


def test_keys_come_from_the_variable_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{OTHER}\n\n  third-key-0123456789  \n", "utf-8")
    keys = read_api_keys({"FUNNELCAST_API_KEY": f"{KEY}, ", "FUNNELCAST_API_KEY_FILE": str(path)})
    assert keys == (KEY, OTHER, "third-key-0123456789")


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({}, "no API key is configured"),
        ({"FUNNELCAST_API_KEY": " , "}, "no API key is configured"),
        ({"FUNNELCAST_API_KEY": "short"}, "shorter than 16"),
        ({"FUNNELCAST_API_KEY_FILE": "/no/such/file"}, "cannot be read"),
    ],
)
def test_no_usable_key_is_a_configuration_error(env: dict[str, str], words: str) -> None:
    with pytest.raises(ServiceConfigError, match=words):
        read_api_keys(env)


def test_the_check_accepts_configured_keys_only() -> None:
    check = KeyCheck([KEY, OTHER])
    assert check.accepts(KEY)
    assert check.accepts(OTHER)
    for wrong in (None, "", KEY[:-1], KEY + "x", KEY.upper(), " " + KEY):
        assert not check.accepts(wrong)
    assert KEY not in repr(check)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"authorization", f"Bearer {KEY}".encode())], KEY),
        ([(b"Authorization", f"bearer   {KEY}  ".encode())], KEY),
        ([(b"x-api-key", KEY.encode())], KEY),
        ([(b"authorization", f"Basic {KEY}".encode())], None),
        ([(b"authorization", b"Bearer ")], None),
        ([], None),
    ],
)
def test_the_key_is_read_from_either_header(
    headers: list[tuple[bytes, bytes]], expected: str | None
) -> None:
    assert presented_key(headers) == expected
