"""What is shown of a tracking URI: never its user or password."""

from __future__ import annotations

import pytest

from training.tracking import shown_uri


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
