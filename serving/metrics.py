"""BentoML's request metrics (``/metrics``), labelled by the service's own paths.

BentoML labels every request's count and duration with the request's raw path, and counts it
before funnelcast's key check runs: each new path anyone sends, with or without a key, made a
new time series in every worker and in the metrics files, so that 7,000 made-up paths took a
worker from 400 to 960 MB and ``/metrics`` past the request timeout. Here a path the service
does not serve is counted as ``other`` (the API docs' assets as ``/static_content/``), so the
labels are a fixed set; the app below still sees the real path. Websocket connections (none
is served: the key guard refuses them) are not counted.

Each server keeps its counters in a folder of its own (``own_metrics_folder``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import Any

from serving.held import hold_folder, lock_of, release_folder, remove_unheld_folders
from serving.security import OPEN_PATHS, OPEN_PREFIXES

log = logging.getLogger(__name__)

SERVED_PATHS = OPEN_PATHS | {"/predict", "/predict_batch", "/metadata"}
OTHER = "other"
_REAL_PATH = "funnelcast.real_path"


def metrics_label(path: str) -> str:
    """The ``endpoint`` label of a request for ``path``: one of a fixed set."""
    if path in SERVED_PATHS:
        return path
    for prefix in OPEN_PREFIXES:
        if path.startswith(prefix):
            return prefix
    return OTHER


class _RealPath:
    """Gives the app below the metrics middleware the request's real path back."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        real = scope.get(_REAL_PATH)
        if real is not None:
            scope = {k: v for k, v in scope.items() if k != _REAL_PATH}
            scope["path"] = real
        await self.app(scope, receive, send)


def bound_metrics_labels() -> None:
    """Make BentoML's traffic-metrics middleware label requests by ``metrics_label``. Called
    when the service module is imported, before BentoML builds the app (it looks the
    middleware class up then)."""
    from bentoml._internal.server.http import instruments

    base = instruments.RunnerTrafficMetricsMiddleware
    if getattr(base, "funnelcast_labels", False):
        return

    class LabelledTrafficMetrics(base):  # type: ignore[misc,valid-type]
        funnelcast_labels = True

        def __init__(self, app: Any, **options: Any) -> None:
            super().__init__(_RealPath(app), **options)

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":  # no websocket is served (the guard refuses them)
                await self.app(scope, receive, send)
                return
            path = scope["path"]
            label = metrics_label(path)
            if label != path:
                scope = {**scope, "path": label, _REAL_PATH: path}
            await super().__call__(scope, receive, send)

    instruments.RunnerTrafficMetricsMiddleware = LabelledTrafficMetrics  # type: ignore[misc,assignment]


METRICS_FOLDERS = "funnelcast-metrics"  # in BENTOML_HOME: one folder per running server


def own_metrics_folder() -> Path | None:
    """Give this server's Prometheus files a folder of their own. BentoML keeps every server's
    in one folder of BENTOML_HOME and empties it as a server starts: a second server on the
    host (another model, a blue/green switch, a Bento beside `funnelcast serve`) deleted the
    first's files, whose workers went on counting into deleted files, and the first's
    ``/metrics`` then showed the second's counts (README review). Called when the service
    module is imported, which `bentoml serve`'s own process does before it makes the folder;
    a worker (it has a worker index) writes where its server told it. The folder is
    ``BENTOML_HOME/funnelcast-metrics/<host>-<pid>-<random>``, removed when the server
    stops. The server and each of its workers hold it (``serving.held``) while they run, and
    a server starting removes the folders nobody holds: those of servers killed with SIGKILL,
    which stayed for good. Whether a server still runs cannot be told from its pid (another
    pid namespace sharing the home and the hostname, workers serving on after their server
    was killed), and a folder removed under a running server made its /predict answer 500
    (diff review): a lock is let go only when every process holding it has ended. The
    folder, or None in a worker."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.context import server_context

    if server_context.worker_index is not None:
        given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")  # where its server told it
        if given and Path(given).parent.name == METRICS_FOLDERS and Path(given).is_dir():
            hold_folder(Path(given))
        return None
    folders = Path(BentoMLContainer.bentoml_home.get()) / METRICS_FOLDERS
    host = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
    folder = folders / f"{host}-{os.getpid()}-{secrets.token_hex(4)}"
    hold_folder(folder)
    removed = remove_unheld_folders(folders, keep=folder)
    if removed:
        log.info("removed the metrics folders of %d server(s) that have stopped", len(removed))
    BentoMLContainer.prometheus_multiproc_dir.set(str(folder))  # made by BentoML if used
    atexit.register(remove_own_metrics_folder, folder)
    return folder


def remove_own_metrics_folder(folder: Path) -> None:
    """The server's folder and its lock file, as it stops."""
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        lock_of(folder).unlink()
    release_folder(folder)
