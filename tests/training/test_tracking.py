"""What is shown of a tracking URI (never its user or password), and a tracking server that
cannot be reached refused at once."""

from __future__ import annotations

import socket

import pytest

from features.errors import InputError
from training.tracking import check_server, configure_tracking, existing_store, shown_uri


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("http://alice:s3cret@mlflow.example:5000", "http://***@mlflow.example:5000"),
        ("https://token@host/path?x=1", "https://***@host/path?x=1"),
        ("http://alice:p@ss@host:5000/x", "http://***@host:5000/x"),  # an @ in the password
        ("postgresql://u:pw@db/mlflow", "postgresql://***@db/mlflow"),
        (
            "API request to http://a:b@h:1/api/2.0 failed (host='h')",
            "API request to http://***@h:1/api/2.0 failed (host='h')",
        ),
        ("sqlite:///mlruns/mlflow.db", "sqlite:///mlruns/mlflow.db"),
        ("sqlite:////tmp/a@b/mlflow.db", "sqlite:////tmp/a@b/mlflow.db"),
        ("http://host/x?user=a@b", "http://host/x?user=a@b"),
        ("http://host?user=a@b", "http://host?user=a@b"),
        ("databricks://profile", "databricks://profile"),
    ],
)
def test_a_uri_is_shown_without_its_credentials(given: str, shown: str) -> None:
    assert shown_uri(given) == shown


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_server_that_is_not_running_is_refused_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # MLflow itself retried for 4.5 minutes before failing; the check tries one connection
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    uri = f"http://alice:s3cret@127.0.0.1:{_free_port()}"
    with pytest.raises(InputError, match="cannot be reached") as caught:
        configure_tracking(uri)
    assert "http://***@127.0.0.1" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    with pytest.raises(InputError, match="cannot be reached"):
        existing_store(uri)


def test_a_listening_server_passes_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        check_server(f"http://127.0.0.1:{port}/mlflow")


@pytest.mark.parametrize("uri", ["http://127.0.0.1:99999", "http://127.0.0.1:port"])
def test_a_bad_port_is_named(uri: str) -> None:
    with pytest.raises(InputError, match="bad port"):
        check_server(uri)


def test_a_server_behind_a_proxy_is_left_to_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    check_server(f"http://mlflow.example:{_free_port()}")  # no connection tried: no error
