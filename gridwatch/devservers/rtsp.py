"""Simulated RTSP cameras on a free loopback port, for the demo and the tests (dev only).

:class:`RtspServer` runs ``rtsp_gst_server.py`` (Debian's gst-rtsp-server through PyGObject) as a
child process with the :mod:`~gridwatch.devservers.process` machinery: one server, several mounts
(``/cam1`` -> a clip, ``/cam2`` -> another), each clip looped forever with continuous timestamps.
It is executed by Debian's ``/usr/bin/python3`` because python3-gi is a system package that the
project's virtualenv cannot import.

Fault injection, all by PID of our own child: :meth:`~RtspServer.stop` (SIGTERM, then SIGKILL),
:meth:`~RtspServer.kill` (SIGKILL), :meth:`~RtspServer.restart` (same port, same mounts),
:meth:`~RtspServer.freeze` (SIGSTOP: connections stay open, nothing is sent: a hung camera) and
:meth:`~RtspServer.thaw` (SIGCONT).  To fault one camera while another stays healthy, give them
separate servers (a freeze stops every mount of a server).

Optional RTSP basic auth (``user=``, ``password=``): the password reaches the child through an
environment variable, never its argv (``ps`` shows argv, and ManagedProcess logs it).

Readiness is a real RTSP ``DESCRIBE`` of the first mount (with the credentials), which also proves
that the clip can be demuxed: the server builds the media pipeline to answer it.
"""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from gridwatch.devservers.process import DevServer

__all__ = ["GST_PYTHON", "RtspServer", "rtsp_probe"]

#: The interpreter that can import ``gi`` with GstRtspServer (Debian's python3-gi).
GST_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).with_name("rtsp_gst_server.py")
_PASSWORD_ENV = "GRIDWATCH_RTSP_SERVER_PASSWORD"


def rtsp_probe(
    host: str,
    port: int,
    path: str = "/",
    *,
    method: str = "DESCRIBE",
    user: str | None = None,
    password: str | None = None,
    timeout: float = 2.0,
) -> int:
    """Send one RTSP request and return the status code of the answer (e.g. 200, 401, 404).

    Raises ``OSError`` / ``ConnectionError`` if nothing answering RTSP is there.
    """
    url = f"rtsp://{host}:{port}{path}"
    headers = [f"{method} {url} RTSP/1.0", "CSeq: 1", "User-Agent: gridwatch-probe"]
    if method == "DESCRIBE":
        headers.append("Accept: application/sdp")
    if user is not None:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        headers.append(f"Authorization: Basic {token}")
    request = ("\r\n".join(headers) + "\r\n\r\n").encode()
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(request)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError("connection closed before an RTSP status line")
            data += chunk
    status_line = data.split(b"\r\n", 1)[0].decode("latin-1")
    proto, _, rest = status_line.partition(" ")
    if not proto.startswith("RTSP/"):
        raise ConnectionError(f"not an RTSP answer: {status_line[:80]!r}")
    return int(rest.split(" ", 1)[0])


class RtspServer(DevServer):
    """gst-rtsp-server on ``127.0.0.1:port`` serving looped clips at ``rtsp://host:port/<mount>``.

    >>> with RtspServer(tmp, {"/cam1": "var/footage/vtest.h264.mp4"}) as rtsp:   # doctest: +SKIP
    ...     cv2.VideoCapture(rtsp.url("/cam1"))
    """

    name = "rtsp"
    ready_timeout = 20.0

    def __init__(
        self,
        workdir: Path | str,
        mounts: Mapping[str, Path | str],
        port: int | None = None,
        *,
        user: str | None = None,
        password: str | None = None,
        python: str = GST_PYTHON,
        stop_grace: float = 5.0,
    ) -> None:
        super().__init__(workdir, port, stop_grace=stop_grace)
        if not mounts:
            raise ValueError("give at least one mount, e.g. {'/cam1': 'vtest.h264.mp4'}")
        self.mounts: dict[str, Path] = {}
        for mount, path in mounts.items():
            if not mount.startswith("/") or mount == "/":
                raise ValueError(f"mount {mount!r}: expected '/name'")
            p = Path(path).resolve()
            if not p.is_file():
                raise FileNotFoundError(f"mount {mount}: no such file {p}")
            self.mounts[mount] = p
        if (user is None) != (password is None):
            raise ValueError("give both user and password, or neither")
        self.user = user
        self._password = password
        self.python = python

    def url(self, mount: str, *, credentials: bool = False) -> str:
        """``rtsp://host:port/mount``; with ``credentials=True`` and auth on, ``user:password@`` included."""
        if mount not in self.mounts:
            raise KeyError(f"no mount {mount!r} (have {sorted(self.mounts)})")
        userinfo = ""
        if credentials and self.user is not None:
            userinfo = f"{quote(self.user, safe='')}:{quote(self._password or '', safe='')}@"
        return f"rtsp://{userinfo}{self.host}:{self.port}{mount}"

    # ---- DevServer hooks -------------------------------------------------------------------------

    def _command(self) -> list[str]:
        argv = [self.python, "-u", str(SERVER_SCRIPT), "--host", self.host, "--port", str(self.port)]
        for mount, path in self.mounts.items():
            argv += ["--mount", f"{mount}={path}"]
        if self.user is not None:
            argv += ["--user", self.user, "--password-env", _PASSWORD_ENV]
        return argv

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # The system interpreter must not pick up the virtualenv's packages (numpy etc. built for
        # another Python) or site settings.
        for var in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"):
            env.pop(var, None)
        env["GST_DEBUG_NO_COLOR"] = "1"
        env.pop(_PASSWORD_ENV, None)
        if self._password is not None:
            env[_PASSWORD_ENV] = self._password
        return env

    def _ready(self) -> bool:
        first = next(iter(self.mounts))
        status = rtsp_probe(self.host, self.port, first, user=self.user, password=self._password, timeout=2.0)
        if status != 200:
            raise ConnectionError(f"DESCRIBE {first} answered {status}")
        return True

    def __repr__(self) -> str:
        return f"<RtspServer {self.host}:{self.port} mounts={sorted(self.mounts)} {self.process!r}>"
