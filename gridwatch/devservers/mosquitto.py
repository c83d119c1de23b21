"""A private mosquitto (Debian 2.0.11) on a free loopback port, for the demo and the tests.

We write our own ``mosquitto.conf`` into the work directory and run ``mosquitto -c`` as a child
process (see :mod:`gridwatch.devservers.process`).  Notable choices:

* **Persistence is on**, stored in ``<workdir>/data/``, with a short autosave interval: QoS 1
  messages queued for an offline persistent session (clean_session=False / MQTT 5 session expiry)
  survive a broker restart.  A graceful stop (SIGTERM) always writes the database; a SIGKILL loses
  whatever arrived since the last autosave.
* **Queue limits are raised explicitly.**  Measured quirk: with mosquitto's default
  ``max_queued_messages 1000``, a QoS 1 subscriber that falls behind has messages *silently dropped*
  (only a log line "Outgoing messages are being dropped for client X" says so; the publisher still
  gets its PUBACK).  See :data:`DEV_MAX_QUEUED_MESSAGES` and friends for the dev-profile values, and
  :meth:`MosquittoServer.dropped_message_warnings` for the health metric built on that log line.
* ``user`` is set to the current user: when started as root, mosquitto 2.x otherwise drops
  privileges to the ``mosquitto`` user and can no longer write our work directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import struct
import uuid
from pathlib import Path

from gridwatch.devservers.process import DevServer

__all__ = [
    "DEV_MAX_INFLIGHT_MESSAGES",
    "DEV_MAX_QUEUED_BYTES",
    "DEV_MAX_QUEUED_MESSAGES",
    "DROPPED_MARKER",
    "MosquittoServer",
    "mqtt_probe",
]

MOSQUITTO_BIN = "/usr/sbin/mosquitto"

#: Per-client queue of QoS 1/2 messages beyond those in flight.  The default (1000) is about one
#: second of our sensor traffic, so any hiccup in a consumer meant silent loss.  1,000,000 lets a
#: subscriber stall for minutes without loss, and is still a bound.
DEV_MAX_QUEUED_MESSAGES = 1_000_000
#: Per-client byte bound on that same queue (0 would mean unlimited).  1 GiB never binds before the
#: message-count limit at our payload sizes; it only stops a forgotten persistent session from
#: eating the CI machine's memory.  If it ever binds, drops are logged and counted
#: (dropped_message_warnings), so they are never silent to us.
DEV_MAX_QUEUED_BYTES = 1 << 30
#: Unacknowledged QoS 1/2 messages in flight per client.  The default 20 makes a fast subscriber wait
#: for PUBACKs every 20 messages; 2000 keeps the pipe full on loopback, while staying bounded so a
#: reconnecting client is not hit by an unbounded retransmission burst (0 would mean "no limit").
#: MQTT 5 clients can lower it further with their Receive Maximum.
DEV_MAX_INFLIGHT_MESSAGES = 2000

#: The mosquitto log line that reveals silently dropped QoS>0 messages.
DROPPED_MARKER = "Outgoing messages are being dropped"


def mqtt_probe(host: str, port: int, timeout: float = 2.0) -> int:
    """Open a TCP connection, send an MQTT 3.1.1 CONNECT, return the CONNACK return code.

    Any CONNACK (even "not authorised") proves the broker is up and speaking MQTT.  Raises
    ``OSError``/``ConnectionError`` if not.
    """
    client_id = f"gridwatch-probe-{uuid.uuid4().hex[:12]}".encode()
    # Variable header: protocol name "MQTT", level 4, flags 0x02 (clean session), keepalive 10 s.
    variable = struct.pack("!H4sBBH", 4, b"MQTT", 4, 0x02, 10)
    payload = struct.pack("!H", len(client_id)) + client_id
    body = variable + payload
    packet = bytes([0x10, len(body)]) + body  # remaining length < 128, one byte suffices
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(packet)
        resp = b""
        while len(resp) < 4:
            chunk = s.recv(4 - len(resp))
            if not chunk:
                raise ConnectionError("connection closed before CONNACK")
            resp += chunk
        if resp[0] != 0x20 or resp[1] != 0x02:
            raise ConnectionError(f"unexpected reply to CONNECT: {resp!r}")
        with contextlib.suppress(OSError):
            s.sendall(b"\xe0\x00")  # DISCONNECT, so the broker logs a clean goodbye
        return resp[3]


class MosquittoServer(DevServer):
    """mosquitto listening on ``127.0.0.1:port`` with persistence under ``workdir``.

    >>> with MosquittoServer(tmp) as m:          # doctest: +SKIP
    ...     paho_client.connect(m.host, m.port)
    """

    name = "mosquitto"
    ready_timeout = 20.0

    def __init__(
        self,
        workdir: Path | str,
        port: int | None = None,
        *,
        max_queued_messages: int = DEV_MAX_QUEUED_MESSAGES,
        max_queued_bytes: int = DEV_MAX_QUEUED_BYTES,
        max_inflight_messages: int = DEV_MAX_INFLIGHT_MESSAGES,
        password_file: Path | str | None = None,
        acl_file: Path | str | None = None,
        allow_anonymous: bool = True,
        autosave_interval: int = 1,
        binary: str = MOSQUITTO_BIN,
    ) -> None:
        super().__init__(workdir, port)
        self.max_queued_messages = max_queued_messages
        self.max_queued_bytes = max_queued_bytes
        self.max_inflight_messages = max_inflight_messages
        self.password_file = Path(password_file).resolve() if password_file else None
        self.acl_file = Path(acl_file).resolve() if acl_file else None
        self.allow_anonymous = allow_anonymous
        self.autosave_interval = autosave_interval
        self.binary = binary

    # ---- endpoints -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def broker_log_path(self) -> Path:
        """mosquitto's own log (log_dest file); stdout/stderr go to :attr:`log_path`."""
        return self.workdir / "mosquitto.log"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    # ---- health ----------------------------------------------------------------------------------

    def dropped_message_warnings(self) -> int:
        """How many "Outgoing messages are being dropped" lines mosquitto has logged (0 = healthy).

        mosquitto logs this once per client each time that client's queue starts overflowing (not
        once per message), so this counts drop *episodes*.  Any value above 0 means QoS 1 data was
        lost even though every publisher received its PUBACK.
        """
        try:
            with self.broker_log_path.open("rb") as f:
                return sum(1 for line in f if DROPPED_MARKER.encode() in line)
        except FileNotFoundError:
            return 0

    # ---- DevServer hooks -------------------------------------------------------------------------

    def config_text(self) -> str:
        lines = [
            "# Generated by gridwatch.devservers.mosquitto (dev profile). Do not edit: rewritten on start.",
            "per_listener_settings false",
            # Keep running as ourselves (see module docstring: root would otherwise become 'mosquitto').
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            "",
            "# Persistent sessions and their queued QoS 1 messages survive restarts.",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            "persistence_file mosquitto.db",
            f"autosave_interval {self.autosave_interval}",
            "",
            "# Explicit queue limits: the defaults silently drop QoS 1 messages for slow subscribers.",
            f"max_queued_messages {self.max_queued_messages}",
            f"max_queued_bytes {self.max_queued_bytes}",
            f"max_inflight_messages {self.max_inflight_messages}",
            "# $SYS/broker/publish/messages/dropped every 2 s: the bridge reports it as health.",
            "sys_interval 2",
            "",
            f"log_dest file {self.broker_log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
        ]
        if self.password_file is not None:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        return "\n".join(lines) + "\n"

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())

    def _command(self) -> list[str]:
        return [self.binary, "-c", str(self.config_path)]

    def _extra_logs(self) -> list[Path]:
        return [self.broker_log_path]

    def _ready(self) -> bool:
        mqtt_probe(self.host, self.port, timeout=1.0)
        return True
