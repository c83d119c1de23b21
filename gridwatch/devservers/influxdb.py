"""A private InfluxDB 1.6.7 (the Debian ``influxdb`` package) on free loopback ports.

We write an ``influxd.conf`` into the work directory (HTTP on ``127.0.0.1:port``, the RPC/backup
service on ``127.0.0.1:rpc_port``, meta/data/wal under ``<workdir>``, authentication off, no
usage reporting, no ``_internal`` monitoring database, no UDP/Graphite/collectd/OpenTSDB listeners,
no continuous queries) and run ``influxd -config FILE`` as a child process.  Ready when
``GET /ping`` answers 204 (measured: ~20 ms after launch on a fresh data directory).

Only the **v1 API** exists in 1.6 (``/write``, ``/query``, ``/ping``); influxdb-client's v2 write
path (``/api/v2/write``) gets a 404.  Put :mod:`gridwatch.devservers.influx_v1_adapter` in front of
it to run production code unchanged.

Things worth knowing:

* influxd 1.6 silently ignores unknown config keys, so a typo here is not an error; the keys we rely
  on were checked against ``influxd config`` output of this build.  The Debian build names the
  reporting switch ``reporting-enabled``; upstream uses ``reporting-disabled``.  We write both.
* influxd has no log-file option: its stderr (our ``influxd.out.log``) is the log.  The HTTP access
  log goes to ``influxd.access.log`` with write requests suppressed (one line per write under load
  would dwarf everything else).
"""

from __future__ import annotations

import http.client
from pathlib import Path
from typing import Any

import httpx

from gridwatch.devservers.process import DevServer, free_port

__all__ = ["INFLUXD_BIN", "InfluxDB1Server", "InfluxQueryError"]

INFLUXD_BIN = "/usr/bin/influxd"


class InfluxQueryError(RuntimeError):
    """An InfluxQL statement failed; the message is InfluxDB's own error text."""


class InfluxDB1Server(DevServer):
    """influxd 1.6.7 with its data under ``workdir``; HTTP API at :attr:`url`."""

    name = "influxd"
    ready_timeout = 60.0  # normally ~1 s; opening existing shards after a restart can take longer

    def __init__(
        self,
        workdir: Path | str,
        port: int | None = None,
        *,
        rpc_port: int | None = None,
        binary: str = INFLUXD_BIN,
        log_level: str = "info",
    ) -> None:
        super().__init__(workdir, port)
        self.rpc_port = rpc_port if rpc_port is not None else free_port(self.host)
        self.binary = binary
        self.log_level = log_level

    # ---- endpoints -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "influxd.conf"

    @property
    def access_log_path(self) -> Path:
        return self.workdir / "influxd.access.log"

    # ---- HTTP helpers (v1 API) -------------------------------------------------------------------

    def query(
        self, influxql: str, db: str | None = None, *, epoch: str | None = "ns", timeout: float = 30.0
    ) -> dict:
        """Run InfluxQL via ``POST /query`` and return the decoded JSON.

        Raises :class:`InfluxQueryError` with InfluxDB's message if the request or any statement
        failed (InfluxDB reports statement errors inside a 200 response, so both are checked).
        ``epoch="ns"`` returns integer nanosecond timestamps instead of RFC3339 strings.
        """
        params: dict[str, str] = {"q": influxql}
        if db:
            params["db"] = db
        if epoch:
            params["epoch"] = epoch
        # POST: GET /query refuses statements that write (CREATE, DROP, ...).
        resp = httpx.post(f"{self.url}/query", data=params, timeout=timeout)
        try:
            body: dict[str, Any] = resp.json()
        except ValueError:
            body = {}
        if resp.status_code >= 400 or "error" in body:
            raise InfluxQueryError(f"{influxql!r}: HTTP {resp.status_code}: {body.get('error') or resp.text}")
        for result in body.get("results", []):
            if "error" in result:
                raise InfluxQueryError(f"{influxql!r}: {result['error']}")
        return body

    def create_database(self, name: str) -> None:
        """``CREATE DATABASE`` (idempotent in InfluxDB)."""
        self.query(f'CREATE DATABASE "{_quote_ident(name)}"')

    def write_lines(
        self, db: str, lines: str | bytes, *, precision: str = "n", timeout: float = 30.0
    ) -> None:
        """Write line protocol through the native v1 ``/write`` (bypassing the adapter)."""
        data = lines.encode() if isinstance(lines, str) else lines
        resp = httpx.post(
            f"{self.url}/write", params={"db": db, "precision": precision}, content=data, timeout=timeout
        )
        if resp.status_code != 204:
            raise InfluxQueryError(f"write to {db!r}: HTTP {resp.status_code}: {resp.text}")

    def ping(self, timeout: float = 1.0) -> bool:
        """True when ``/ping`` answers 204."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request("GET", "/ping")
            return conn.getresponse().status == 204
        finally:
            conn.close()

    # ---- DevServer hooks -------------------------------------------------------------------------

    def config_text(self) -> str:
        w = self.workdir
        return f"""# Generated by gridwatch.devservers.influxdb (dev profile). Do not edit: rewritten on start.
reporting-disabled = true
reporting-enabled = false
bind-address = "{self.host}:{self.rpc_port}"

[meta]
  dir = "{w}/meta"
  retention-autocreate = true
  logging-enabled = true

[data]
  dir = "{w}/data"
  wal-dir = "{w}/wal"
  # 0s: fsync every write, as in production; a SIGKILLed influxd keeps everything acknowledged.
  wal-fsync-delay = "0s"
  query-log-enabled = false
  index-version = "inmem"

[coordinator]
  write-timeout = "10s"

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = "{self.host}:{self.port}"
  auth-enabled = false
  log-enabled = true
  access-log-path = "{self.access_log_path}"
  suppress-write-log = true
  pprof-enabled = false
  https-enabled = false

[ifql]
  enabled = false

[logging]
  format = "logfmt"
  level = "{self.log_level}"
  suppress-logo = true

[continuous_queries]
  enabled = false

[[graphite]]
  enabled = false

[[collectd]]
  enabled = false

[[opentsdb]]
  enabled = false

[[udp]]
  enabled = false
"""

    def _prepare(self) -> None:
        for sub in ("meta", "data", "wal"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())

    def _command(self) -> list[str]:
        return [self.binary, "-config", str(self.config_path)]

    def _repick_ports(self) -> None:
        super()._repick_ports()
        self.rpc_port = free_port(self.host)

    def _ready(self) -> bool:
        return self.ping(timeout=1.0)


def _quote_ident(name: str) -> str:
    return name.replace("\\", "\\\\").replace('"', '\\"')
