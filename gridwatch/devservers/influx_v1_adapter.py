"""DEV PROFILE ONLY: an InfluxDB 2.x-style write endpoint in front of InfluxDB 1.6.

Why this exists.  Production gridwatch writes with influxdb-client's v2 write API
(``POST /api/v2/write?bucket=...&org=...&precision=...``).  InfluxDB 1.8+ serves that endpoint
natively as a compatibility layer (bucket ``"db"`` or ``"db/rp"``, token ``"user:password"``, org
ignored), but the only InfluxDB installable here is Debian's 1.6.7, which speaks the v1 API only and
answers 404.  This small aiohttp server emulates 1.8's compatibility endpoint so that the
*production code path runs unchanged* in the demo and in tests.  It is not part of any production
deployment: there, point the client at InfluxDB 1.8+ or 2.x directly.

What it does, and nothing more:

``POST /api/v2/write``
    bucket ``db`` or ``db/rp``  ->  ``POST {upstream}/write?db=db&rp=rp``;
    precision ``ns|us|ms|s`` (default ns) -> ``n|u|ms|s``;
    ``Authorization: Token user:pass`` -> HTTP basic auth upstream (a token without ``:`` is
    dropped, as 1.8 does with authentication disabled);
    the body is passed through byte for byte, including ``Content-Encoding: gzip`` (we never
    decompress); the upstream status code, error body and ``X-Influxdb-*`` headers come back
    unchanged.
``GET /health``
    ``200 {"status": "pass", ...}`` when upstream ``/ping`` answers, else ``503 {"status": "fail"}``.
``GET|HEAD /ping``
    forwarded to the upstream.

Failure behaviour (tests stop or freeze influxd under load): the upstream gets a short timeout
(``--timeout``, default 5 s, 1 s to connect), and an unreachable, refusing or hung upstream yields
``503 {"code": "unavailable", "message": ...}`` promptly, never a hang.  influxdb-client's batching
write API retries it (status >= 429).  A 503 after a *timeout* does not prove the write was lost:
a frozen influxd still has the request in its socket buffer and applies it once thawed.
Line-protocol writes are idempotent (same series + timestamp overwrites), so the client's retry is
harmless.  For the same reason, a request that fails on a *pooled* connection the upstream closed
(typical right after an influxd restart) is retried once on a new connection.

Run it as its own process (so it can be stopped/killed like a real server)::

    python -m gridwatch.devservers.influx_v1_adapter --upstream http://127.0.0.1:8086 --port 8087

or via :class:`InfluxV2CompatAdapter`, a :class:`~gridwatch.devservers.process.DevServer`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import logging
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from gridwatch.devservers.process import DevServer

__all__ = ["InfluxV2CompatAdapter", "build_app", "main"]

log = logging.getLogger("gridwatch.devservers.influx_v1_adapter")

DEFAULT_UPSTREAM_TIMEOUT = 5.0
HEALTH_TIMEOUT = 1.0
# influxd's own default max-body-size is 25 MB; leave headroom so *it* produces the 413, not us.
MAX_BODY = 64 * 1024 * 1024

_PRECISIONS = {"ns": "n", "us": "u", "ms": "ms", "s": "s"}
# Response headers that describe the upstream hop itself rather than the payload.
_HOP_HEADERS = {
    "connection",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "keep-alive",
    "date",
    "server",
}


# --------------------------------------------------------------------------------------------------
# The aiohttp application (runs in the adapter process)
# --------------------------------------------------------------------------------------------------


def _json_response(status: int, payload: dict[str, Any]) -> Any:
    from aiohttp import web

    return web.json_response(payload, status=status)


class _UpstreamUnavailable(Exception):
    """The upstream refused, timed out or vanished: becomes a 503."""


def _unavailable(message: str) -> Any:
    return _json_response(503, {"code": "unavailable", "message": message})


def build_app(upstream_url: str, *, timeout: float = DEFAULT_UPSTREAM_TIMEOUT) -> Any:
    """The aiohttp ``web.Application`` (exposed for in-process use; the CLI wraps it)."""
    import aiohttp
    from aiohttp import web

    upstream = upstream_url.rstrip("/")
    app = web.Application(client_max_size=MAX_BODY)
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def on_startup(app: web.Application) -> None:
        app[session_key] = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=min(1.0, timeout)),
            connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30),
            # Forward upstream bodies verbatim-but-decoded; we drop Content-Encoding on the way back.
            auto_decompress=True,
        )

    async def on_cleanup(app: web.Application) -> None:
        await app[session_key].close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)

    async def call_upstream(
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        request_timeout: float = timeout,
    ) -> tuple[int, dict[str, str], bytes]:
        """``(status, headers, body)`` from upstream, or :class:`_UpstreamUnavailable`."""
        session = app[session_key]
        url = upstream + path
        client_timeout = aiohttp.ClientTimeout(total=request_timeout, sock_connect=min(1.0, request_timeout))
        for attempt in (1, 2):
            try:
                async with session.request(
                    method, url, params=params, headers=headers, data=body, timeout=client_timeout
                ) as resp:
                    data = await resp.read()
                    out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_HEADERS}
                    return resp.status, out_headers, data
            except aiohttp.ServerDisconnectedError as exc:
                # Stale keep-alive connection (upstream restarted): one retry on a fresh connection.
                if attempt == 1:
                    log.info("upstream closed a pooled connection (%s), retrying once", exc)
                    continue
                raise _UpstreamUnavailable(f"upstream {upstream} disconnected: {exc}") from exc
            except TimeoutError as exc:  # asyncio.TimeoutError is TimeoutError on 3.11
                raise _UpstreamUnavailable(
                    f"upstream {upstream} did not answer within {request_timeout:g}s"
                ) from exc
            except aiohttp.ClientError as exc:
                raise _UpstreamUnavailable(f"upstream {upstream} unreachable: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def forward(method: str, path: str, **kwargs: Any) -> web.StreamResponse:
        try:
            status, headers, data = await call_upstream(method, path, **kwargs)
        except _UpstreamUnavailable as exc:
            log.warning("%s %s -> 503: %s", method, path, exc)
            return _unavailable(str(exc))
        return web.Response(status=status, body=data or None, headers=headers)

    async def v2_write(request: web.Request) -> web.StreamResponse:
        q = request.query
        bucket = q.get("bucket", "")
        if not bucket:
            return _json_response(400, {"code": "invalid", "message": "bucket is required"})
        db, _, rp = bucket.partition("/")
        precision = q.get("precision", "ns") or "ns"
        if precision not in _PRECISIONS:
            return _json_response(
                400, {"code": "invalid", "message": f"invalid precision {precision!r}: use ns, us, ms or s"}
            )
        params = {"db": db, "precision": _PRECISIONS[precision]}
        if rp:
            params["rp"] = rp
        headers: dict[str, str] = {}
        for name in ("Content-Type", "Content-Encoding"):
            if name in request.headers:
                headers[name] = request.headers[name]
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "token" and ":" in token:
            headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
        body = await request.read()  # raw bytes: auto_decompress is off for this server
        return await forward("POST", "/write", params=params, headers=headers, body=body)

    async def health(request: web.Request) -> web.StreamResponse:
        try:
            status, headers, data = await call_upstream("GET", "/ping", request_timeout=HEALTH_TIMEOUT)
        except _UpstreamUnavailable as exc:
            status, headers, data = 0, {}, str(exc).encode()
        if status == 204:
            return _json_response(
                200,
                {
                    "name": "influxdb",
                    "message": "ready for queries and writes",
                    "status": "pass",
                    "checks": [],
                    "version": headers.get("X-Influxdb-Version", "unknown"),
                },
            )
        detail = data.decode(errors="replace") if status == 0 else f"/ping answered HTTP {status}"
        return _json_response(
            503,
            {"name": "influxdb", "message": f"upstream not ready: {detail}", "status": "fail", "checks": []},
        )

    async def ping(request: web.Request) -> web.StreamResponse:
        return await forward(request.method, "/ping", params=dict(request.query))

    async def not_emulated(request: web.Request) -> web.StreamResponse:
        return _json_response(
            404,
            {
                "code": "not found",
                "message": f"{request.method} {request.path} is not emulated by the dev-profile v1 adapter "
                "(only /api/v2/write, /health, /ping)",
            },
        )

    app.router.add_post("/api/v2/write", v2_write)
    app.router.add_get("/health", health)
    app.router.add_route("GET", "/ping", ping)  # GET also registers HEAD
    app.router.add_route("*", "/{tail:.*}", not_emulated)
    return app


async def _serve(upstream: str, host: str, port: int, timeout: float) -> None:
    from aiohttp import web

    app = build_app(upstream, timeout=timeout)
    # auto_decompress=False: gzip bodies must reach influxd still compressed, with their header.
    # access_log=None: one line per write under load would swamp the log.
    runner = web.AppRunner(app, access_log=None, auto_decompress=False, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    log.info("v1 adapter listening on http://%s:%d -> %s (timeout %.1fs)", host, port, upstream, timeout)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("v1 adapter shutting down")
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: ``python -m gridwatch.devservers.influx_v1_adapter --upstream URL --port P``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="InfluxDB 1.x base URL, e.g. http://127.0.0.1:8086")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--timeout", type=float, default=DEFAULT_UPSTREAM_TIMEOUT, help="upstream timeout, s")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(_serve(args.upstream, args.host, args.port, args.timeout))
    return 0


# --------------------------------------------------------------------------------------------------
# The DevServer wrapper (runs in the parent: demo, tests)
# --------------------------------------------------------------------------------------------------


class InfluxV2CompatAdapter(DevServer):
    """Runs this module as a child process in front of ``upstream_url``. DEV PROFILE ONLY (see above).

    Point influxdb-client at :attr:`url` with any token (``"user:pass"`` to pass credentials) and any
    org; the bucket is the 1.x database name (``"db"`` or ``"db/rp"``).
    """

    name = "influx-v2-adapter"
    ready_timeout = 30.0

    def __init__(
        self,
        upstream_url: str,
        port: int | None = None,
        *,
        workdir: Path | str | None = None,
        timeout: float = DEFAULT_UPSTREAM_TIMEOUT,
        python: str = sys.executable,
    ) -> None:
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix="gridwatch-influx-adapter-")
        super().__init__(workdir, port)
        self.upstream_url = upstream_url.rstrip("/")
        self.timeout = timeout
        self.python = python

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def health(self, timeout: float = 3.0) -> tuple[int, dict[str, Any]]:
        """``(HTTP status, JSON body)`` of ``GET /health``."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request("GET", "/health")
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"{}")
        finally:
            conn.close()

    def _command(self) -> list[str]:
        return [
            self.python,
            "-m",
            "gridwatch.devservers.influx_v1_adapter",
            "--upstream",
            self.upstream_url,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--timeout",
            str(self.timeout),
        ]

    def _environment(self) -> dict[str, str]:
        import os

        return {**os.environ, "PYTHONUNBUFFERED": "1"}

    def _ready(self) -> bool:
        # Any well-formed /health answer (pass *or* fail) means the adapter itself is serving; the
        # upstream's state is the caller's business.
        status, body = self.health(timeout=1.0)
        return status in (200, 503) and body.get("name") == "influxdb"


if __name__ == "__main__":
    sys.exit(main())
