"""No usage data leaves the machine unless the user says so.

MLflow (3.2 and later) and BentoML send anonymous usage data to their makers by default: MLflow
which APIs ran, BentoML the platform, memory, and every 12 hours the requests per endpoint and
status. A CRM deployment should not call out by default, so importing any funnelcast package
turns both off, unless the environment already says otherwise (``MLFLOW_DISABLE_TELEMETRY=false``
or ``BENTOML_DO_NOT_TRACK=false`` turn them back on). MLflow makes its telemetry client when it
is imported, so when a notebook imported MLflow first, the client is made again, now off.

``quiet_mlflow``: MLflow's notes for its own developers (pickling, pip versions, download
bars) kept out of what the commands and the retraining notebook print.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

SETTINGS = {"MLFLOW_DISABLE_TELEMETRY": "true", "BENTOML_DO_NOT_TRACK": "true"}
_SEND = frozenset({"false", "0", "no", "off"})  # the user turned the setting off: data is sent


def keep_usage_data_local() -> None:
    """Turn MLflow's and BentoML's usage data off where the environment does not decide."""
    for name, value in SETTINGS.items():
        # BentoML reads "true" alone as do-not-track: "1" or "yes" (the usual convention)
        # sent the data (diff review); only a clear no sends it, and an empty value is unset
        said = os.environ.get(name, "").strip().lower()
        os.environ[name] = "false" if said in _SEND else value
    if "mlflow.telemetry" in sys.modules and os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true":
        try:  # MLflow's own way to make its client again after the setting changed
            from mlflow.telemetry import set_telemetry_client

            set_telemetry_client()
        except Exception:  # best effort: an MLflow without it has nothing to turn off here
            pass
    usage = sys.modules.get("bentoml._internal.utils.analytics.usage_stats")
    if usage is not None and os.environ["BENTOML_DO_NOT_TRACK"].lower() == "true":
        # BentoML reads its setting once and keeps it: `bentoml serve` (of the service or of
        # a Bento) read it before it imported the service, and sent its serve and command
        # events, with one every 12 hours of requests per endpoint (deploy review)
        cached = getattr(usage, "do_not_track", None)
        clear = getattr(cached, "cache_clear", None)
        if clear is not None:
            clear()


def quiet_mlflow() -> None:
    """MLflow's notes (pickling, pip versions, download bars) are for its own developers; the
    commands and the notebook say what happened in their own words. Before MLflow is imported
    for its logging level, which it reads as it loads; its loggers' levels any time."""
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    # its store logs each failed session before raising it: said once, in one line
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # MLflow resets it on import
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow(\.|$)")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
