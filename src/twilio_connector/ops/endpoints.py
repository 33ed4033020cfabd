"""The operations endpoints over HTTP (aiohttp's server): /metrics, /healthz and /readyz on `metrics_listen`, and
serving an app on a `host:port` setting. Imported only when a configuration serves one (aiohttp costs ~120 ms
and several MB at start)."""

from __future__ import annotations

from collections.abc import Callable

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .metrics import Metrics

__all__ = ["operations_app", "serve_app", "serve_operations"]


def operations_app(
    metrics: Metrics, readiness: Callable[[], dict[str, bool]], problems: Callable[[], list[str]] = list
) -> web.Application:
    """`readiness()` names each condition of readiness and whether it holds; `problems()` says, in words, what
    keeps the connector from being ready."""

    async def exported(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})  # answering at all means the event loop runs

    async def readyz(request: web.Request) -> web.Response:
        checks = readiness()
        ready = all(checks.values())
        document: dict[str, object] = {"status": "ready" if ready else "not ready", "checks": checks}
        if not ready:
            document["problems"] = problems()
        body = orjson.dumps(document)
        return web.Response(body=body, status=200 if ready else 503, content_type="application/json")

    app = web.Application()
    app.router.add_get("/metrics", exported)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve_operations(
    metrics: Metrics,
    listen: str,
    readiness: Callable[[], dict[str, bool]],
    problems: Callable[[], list[str]] = list,
) -> web.AppRunner:
    return await serve_app(operations_app(metrics, readiness, problems), listen, "metrics_listen")


async def serve_app(app: web.Application, listen: str, setting: str, *, default_host: str = "") -> web.AppRunner:
    """Serve `app` on `listen` (`host:port`, the host `default_host` when empty). A taken port is an OSError
    naming `setting` and the address, not a bare "Address already in use"."""
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host or default_host, int(port)).start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(exc.errno, exc.strerror, f"{setting} {listen}") from None
    return runner
