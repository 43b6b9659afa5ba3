"""BentoML's request metrics (``/metrics``), labelled by the service's own paths.

BentoML labels every request's count and duration with the request's raw path, and counts it
before funnelcast's key check runs: each new path anyone sends, with or without a key, made a
new time series in every worker and in the metrics files, so that 7,000 made-up paths took a
worker from 400 to 960 MB and ``/metrics`` past the request timeout. Here a path the service
does not serve is counted as ``other`` (the API docs' assets as ``/static_content/``), so the
labels are a fixed set; the app below still sees the real path. Websocket connections (none
is served: the key guard refuses them) are not counted.
"""

from __future__ import annotations

from typing import Any

from serving.security import OPEN_PATHS, OPEN_PREFIXES

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
