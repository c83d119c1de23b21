"""Compiled MQTT load generator for ``gridwatch bench sensors``.

A Python (paho) publisher needs ~1.8 cores for 20k msg/s, so the benchmark drives the broker with a small C
program, ``bench/loadgen/publisher.c`` (libmosquitto, QoS 1, paced to an offered rate).  This module builds
it on demand and runs it:

    >>> result = run_publisher("127.0.0.1", 1883, rate=20_000, duration=10, sensors=1000)
    >>> result["achieved_rate"], result["acked"], result["cpu_s"]

``start_publisher`` returns the ``Popen`` for running it next to something else; collect its result with
``finish_publisher`` (or ``parse_result`` on its stdout).  Extra keyword options map one-to-one onto the
publisher's long options (``invalid_every=100`` -> ``--invalid-every 100``); see ``PUBLISHER_OPTIONS``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "BINARY",
    "PUBLISHER_OPTIONS",
    "RESULT_KEYS",
    "SOURCE",
    "BuildError",
    "LoadgenError",
    "PublisherError",
    "build_publisher",
    "finish_publisher",
    "parse_result",
    "publisher_command",
    "run_publisher",
    "start_publisher",
]

LOADGEN_DIR = Path(__file__).resolve().parent / "loadgen"
SOURCE = LOADGEN_DIR / "publisher.c"
BINARY = LOADGEN_DIR / "publisher"

#: Keys every publisher result line carries (it carries a few more, e.g. ``unacked``, ``window``).
RESULT_KEYS = (
    "offered_rate",
    "sent",
    "acked",
    "invalid_sent",
    "elapsed_s",
    "achieved_rate",
    "max_behind",
    "cpu_s",
)

#: Keyword options accepted by ``publisher_command`` and friends; each becomes ``--name-with-dashes``.
PUBLISHER_OPTIONS = frozenset(
    {
        "sensor_prefix",
        "topic_template",
        "qos",
        "client_id",
        "max_inflight",
        "invalid_every",
        "anomaly_sensor",
        "anomaly_at",
        "anomaly_value",
        "protocol",
        "ack_timeout",
        "late_limit",
        "tick_us",
        "keepalive",
        "seed",
    }
)

_DEBIAN_HINT = "install it with `apt-get install {pkg}` (Debian/Ubuntu package `{pkg}`)"
# Seconds on top of the run itself before run_publisher gives up: CONNACK wait (10 s) plus slack.
_TIMEOUT_SLACK_S = 30.0


class LoadgenError(RuntimeError):
    """Base class for load-generator failures."""


class BuildError(LoadgenError):
    """The publisher could not be compiled.  ``missing`` names the Debian package to install, if that is why."""

    def __init__(self, message: str, missing: str | None = None) -> None:
        super().__init__(message)
        self.missing = missing


class PublisherError(LoadgenError):
    """The publisher exited non-zero (e.g. could not connect) or produced no result line."""

    def __init__(self, message: str, returncode: int | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


def _binary_path() -> Path:
    """Next to the source when writable (a checkout), else a per-user cache (a read-only install)."""
    if os.access(LOADGEN_DIR, os.W_OK):
        return BINARY
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gridwatch" / "loadgen"
    return cache / "publisher"


def build_publisher(force: bool = False) -> Path:
    """Compile ``publisher.c`` if the binary is missing or older than the source; return the binary's path.

    Raises ``BuildError`` naming the Debian package when gcc or libmosquitto-dev is missing.
    """
    if not SOURCE.is_file():
        raise BuildError(f"load generator source not found: {SOURCE}")
    target = _binary_path()
    if not force and target.is_file() and target.stat().st_mtime >= SOURCE.stat().st_mtime:
        return target

    gcc = shutil.which("gcc")
    if gcc is None:
        raise BuildError("gcc not found; " + _DEBIAN_HINT.format(pkg="gcc"), missing="gcc")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Compile to a temporary name and rename: concurrent builds (or a run starting mid-build) never see
    # a half-written executable.
    fd, tmp_name = tempfile.mkstemp(prefix=".publisher-", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    cmd = [gcc, "-O2", "-Wall", "-o", str(tmp), str(SOURCE), "-lmosquitto", "-lm"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            err = proc.stderr.strip()
            if "mosquitto.h" in err or "mqtt_protocol.h" in err or "-lmosquitto" in err:
                raise BuildError(
                    "libmosquitto development files not found; "
                    + _DEBIAN_HINT.format(pkg="libmosquitto-dev")
                    + f"\n{err}",
                    missing="libmosquitto-dev",
                )
            raise BuildError(f"compiling the load generator failed: {' '.join(cmd)}\n{err}")
        tmp.chmod(0o755)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _option_value(value: Any) -> str:
    if isinstance(value, bool):
        raise TypeError("publisher options take values, not booleans")
    return str(value)


def publisher_command(
    host: str,
    port: int,
    rate: float,
    duration: float,
    sensors: int,
    *,
    binary: Path | None = None,
    **opts: Any,
) -> list[str]:
    """The publisher's argv; ``opts`` are ``PUBLISHER_OPTIONS`` (``None`` values are left out)."""
    unknown = set(opts) - PUBLISHER_OPTIONS
    if unknown:
        raise TypeError(f"unknown publisher option(s): {', '.join(sorted(unknown))}")
    exe = binary if binary is not None else build_publisher()
    argv = [
        str(exe),
        "--host",
        host,
        "--port",
        str(int(port)),
        "--rate",
        _option_value(rate),
        "--duration",
        _option_value(duration),
        "--sensors",
        str(int(sensors)),
    ]
    for name, value in opts.items():
        if value is not None:
            argv += ["--" + name.replace("_", "-"), _option_value(value)]
    return argv


def parse_result(stdout: str) -> dict[str, Any]:
    """Parse the publisher's result: the last line of ``stdout`` that is a JSON object."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            result = json.loads(line)
            missing = [key for key in RESULT_KEYS if key not in result]
            if missing:
                raise ValueError(f"publisher result lacks {', '.join(missing)}: {line}")
            return result
    raise ValueError(f"no JSON result line in publisher output: {stdout!r}")


def start_publisher(
    host: str,
    port: int,
    rate: float,
    duration: float,
    sensors: int,
    *,
    binary: Path | None = None,
    **opts: Any,
) -> subprocess.Popen[str]:
    """Start the publisher and return at once.  SIGTERM/SIGINT end the run early (it still prints its
    result); collect the result with ``finish_publisher``."""
    argv = publisher_command(host, port, rate, duration, sensors, binary=binary, **opts)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_publisher(proc: subprocess.Popen[str], timeout: float | None = None) -> dict[str, Any]:
    """Wait for a publisher from ``start_publisher`` and return its parsed result.

    On timeout the publisher is killed and ``PublisherError`` raised; so it is on a non-zero exit.
    """
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise PublisherError(
            f"publisher did not finish within {timeout} s", returncode=proc.returncode, stderr=stderr
        ) from exc
    if proc.returncode != 0:
        detail = stderr.strip() or f"exit status {proc.returncode}"
        raise PublisherError(detail, returncode=proc.returncode, stderr=stderr)
    try:
        return parse_result(stdout)
    except ValueError as exc:
        raise PublisherError(str(exc), returncode=proc.returncode, stderr=stderr) from exc


def run_publisher(
    host: str,
    port: int,
    rate: float,
    duration: float,
    sensors: int,
    *,
    binary: Path | None = None,
    timeout: float | None = None,
    **opts: Any,
) -> dict[str, Any]:
    """Run the publisher to completion and return its parsed JSON result.

    The default ``timeout`` covers the run, its catch-up (``late_limit``) and PUBACK wait (``ack_timeout``).
    """
    if timeout is None:
        late = float(opts.get("late_limit") if opts.get("late_limit") is not None else 10.0)
        ack = float(opts.get("ack_timeout") if opts.get("ack_timeout") is not None else 30.0)
        timeout = float(duration) + late + ack + _TIMEOUT_SLACK_S
    proc = start_publisher(host, port, rate, duration, sensors, binary=binary, **opts)
    return finish_publisher(proc, timeout=timeout)
