"""No usage data leaves the machine unless the user says so.

MLflow (3.2 and later) and BentoML send anonymous usage data to their makers by default: MLflow
which APIs ran, BentoML the platform, memory, and every 12 hours the requests per endpoint and
status. A CRM deployment should not call out by default, so importing any funnelcast package
turns both off, unless the environment already says otherwise (``MLFLOW_DISABLE_TELEMETRY=false``
or ``BENTOML_DO_NOT_TRACK=false`` turn them back on). It must run before MLflow or BentoML is
imported: both read the setting once.
"""

from __future__ import annotations

import os

SETTINGS = {"MLFLOW_DISABLE_TELEMETRY": "true", "BENTOML_DO_NOT_TRACK": "true"}


def keep_usage_data_local() -> None:
    """Turn MLflow's and BentoML's usage data off where the environment does not decide."""
    for name, value in SETTINGS.items():
        os.environ.setdefault(name, value)
