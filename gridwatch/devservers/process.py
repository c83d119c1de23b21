"""Child-process plumbing shared by every dev server (mosquitto, Tansu, influxd, the adapter).

What this module guarantees, and why:

* **Children die with us.**  Every child is started with ``PR_SET_PDEATHSIG = SIGKILL`` (Linux), so a
  crashed or ``kill -9``-ed pytest / ``gridwatch demo`` never leaves brokers holding ports.  The
  kernel ties that signal to the *thread* that forked the child, not the process: if a short-lived
  worker thread (``asyncio.to_thread``, a thread pool) did the fork, the child would be SIGKILLed when
  that thread ends.  So all forks go through one long-lived daemon "spawner" thread owned by this
  module, whichever thread calls :meth:`ManagedProcess.start`.
* **Ctrl-C reaches only us.**  Children run in their own session (``start_new_session=True``), so the
  terminal's SIGINT goes to the parent alone, which then stops its children in order (graceful
  SIGTERM first, so mosquitto can write its persistence file).
* **Signals by PID, never by name.**  We keep the ``Popen`` object and never reap the child before we
  are done signalling it, so its PID cannot be recycled under us.
* **Readiness is checked for real** (a protocol probe supplied by the caller), and a failed start
  raises :class:`ServerStartError` with the last lines of the server's log.

Nothing here prints; diagnostics go through :mod:`logging`.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import ctypes
import ctypes.util
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

log = logging.getLogger(__name__)

__all__ = [
    "DevServer",
    "ManagedProcess",
    "ServerStartError",
    "free_port",
    "stop_all",
    "tail",
]

DEFAULT_STOP_GRACE = 10.0
DEFAULT_READY_TIMEOUT = 30.0


class ServerStartError(RuntimeError):
    """A child process exited or never became ready. The message carries the tail of its log."""

    def __init__(self, message: str, *, exited: bool = False) -> None:
        super().__init__(message)
        #: True when the process died during start-up (as opposed to timing out while alive);
        #: callers use it to decide whether retrying on a fresh port makes sense.
        self.exited = exited


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago (bind to port 0, read it, close).

    There is an unavoidable race between closing this probe socket and the server binding the port;
    :meth:`DevServer.start` retries on a fresh port if the server dies
    during start-up, which covers it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tail(path: Path | str, lines: int = 40, max_bytes: int = 64 * 1024) -> str:
    """Last ``lines`` lines of a (possibly huge, possibly missing) log file."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return f"<{p} does not exist>"
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------------------------------
# Parent-death signal and the spawner thread
# --------------------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.prctl
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        log.warning("prctl unavailable: dev servers will not die automatically with this process")
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    return fn


# Resolved once in the parent: the code that runs between fork and exec must not load libraries
# or allocate much (another thread may hold the malloc lock at fork time).
_prctl = _load_prctl()


def _make_preexec(parent_pid: int) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child, after fork, before exec
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # If the parent died between fork() and prctl(), no signal will ever come: leave now.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


class _Spawner:
    """One long-lived daemon thread that performs every fork (see the module docstring for why).

    A daemon thread keeps running through ``atexit`` handlers, so the graceful :func:`stop_all` at
    interpreter exit still finds the children alive; the death signal fires only when the whole
    process is gone.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._pid = 0

    def _run(self) -> None:
        while True:
            fn, fut = self._queue.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller verbatim
                fut.set_exception(exc)

    def call(self, fn: Callable[[], Any]) -> Any:
        with self._lock:
            # After a fork of the parent itself (rare) the thread does not exist in the child.
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._queue = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._run, name="devservers-spawner", daemon=True)
                self._pid = os.getpid()
                self._thread.start()
        if threading.current_thread() is self._thread:  # pragma: no cover - defensive
            return fn()
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put((fn, fut))
        return fut.result()


_spawner = _Spawner()

# Every running ManagedProcess (strong references: a server object dropped without stop() must still
# be found), so stop_all() / atexit can clean up what a crashed caller forgot.
_registry: set[ManagedProcess] = set()
_registry_lock = threading.Lock()


def stop_all(grace: float = 5.0) -> None:
    """Stop every child started by this process that is still running (used at exit and by pytest)."""
    with _registry_lock:
        procs = list(_registry)
    for p in procs:
        try:
            if p.alive:
                log.info("stop_all: stopping leftover %s (pid %s)", p.name, p.pid)
                p.stop(grace=grace)
        except Exception:  # noqa: BLE001 - best-effort cleanup, keep going
            log.exception("stop_all: failed to stop %s", p.name)


atexit.register(stop_all)


# --------------------------------------------------------------------------------------------------
# ManagedProcess
# --------------------------------------------------------------------------------------------------


class ManagedProcess:
    """A server binary run as a child: start, wait until ready, freeze/thaw, stop, kill, restart.

    ``restart()`` reuses the exact argv/env/cwd/log file of the last ``start()``, hence the same port
    and data directory.  stdout and stderr are appended to ``log_path`` (one file across restarts,
    with a marker line per start).
    """

    def __init__(
        self, name: str, *, stop_grace: float = DEFAULT_STOP_GRACE, stop_signal: int = signal.SIGTERM
    ) -> None:
        self.name = name
        self.stop_grace = stop_grace
        self.stop_signal = stop_signal
        self._popen: subprocess.Popen[bytes] | None = None
        self._argv: list[str] = []
        self._env: dict[str, str] | None = None
        self._cwd: Path | None = None
        self._log_path: Path | None = None
        self._extra_logs: list[Path] = []
        self._ready_check: Callable[[], object] | None = None
        self._ready_timeout = DEFAULT_READY_TIMEOUT
        self._frozen = False
        self._lock = threading.RLock()

    # ---- introspection ---------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """PID of the current (or last) child, None if never started."""
        return self._popen.pid if self._popen is not None else None

    @property
    def alive(self) -> bool:
        """True while the child exists and has not exited (a frozen child is alive)."""
        return self._popen is not None and self._popen.poll() is None

    @property
    def frozen(self) -> bool:
        return self._frozen and self.alive

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    @property
    def argv(self) -> list[str]:
        return list(self._argv)

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def log_tail(self, lines: int = 40) -> str:
        """Tail of the stdout/stderr log plus any extra logs the server writes itself."""
        parts = []
        for p in [self._log_path, *self._extra_logs]:
            if p is not None:
                parts.append(f"--- {p} (last {lines} lines) ---\n{tail(p, lines)}")
        return "\n".join(parts)

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(
        self,
        argv: Sequence[str],
        *,
        log_path: Path | str,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        extra_logs: Iterable[Path | str] = (),
    ) -> Self:
        """Spawn ``argv`` (non-blocking). ``env`` is the *complete* environment (None: inherit ours)."""
        with self._lock:
            if self.alive:
                raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
            self._argv = [str(a) for a in argv]
            self._env = dict(env) if env is not None else None
            self._cwd = Path(cwd) if cwd is not None else None
            self._log_path = Path(log_path)
            self._extra_logs = [Path(p) for p in extra_logs]
            self._spawn()
        return self

    def _spawn(self) -> None:
        assert self._log_path is not None
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with self._log_path.open("ab") as logf:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            logf.write(f"\n=== devservers: {stamp} starting {self.name}: {' '.join(self._argv)}\n".encode())
            logf.flush()
            parent = os.getpid()
            # The log file descriptor is duplicated into the child by Popen; closing ours afterwards
            # is fine (the child keeps its copy).
            self._popen = _spawner.call(
                lambda: subprocess.Popen(
                    self._argv,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    env=self._env,
                    cwd=self._cwd,
                    close_fds=True,
                    start_new_session=True,
                    preexec_fn=_make_preexec(parent),  # noqa: PLW1509 - see module docstring
                )
            )
        self._frozen = False
        with _registry_lock:
            _registry.add(self)
        log.info("%s started, pid %s: %s", self.name, self.pid, " ".join(self._argv))

    def wait_ready(self, check: Callable[[], object], timeout: float = DEFAULT_READY_TIMEOUT) -> float:
        """Poll ``check()`` until it returns truthy; return the seconds it took.

        ``check`` may raise or return falsy while the server is still coming up.  Raises
        :class:`ServerStartError` (with log tails) if the child exits or ``timeout`` elapses.  The
        check is remembered so :meth:`restart` can reuse it.
        """
        self._ready_check = check
        self._ready_timeout = timeout
        t0 = time.monotonic()
        deadline = t0 + timeout
        delay = 0.01
        last_exc: BaseException | None = None
        while True:
            if self._popen is None:
                raise RuntimeError(f"{self.name} was never started")
            rc = self._popen.poll()
            if rc is not None:
                raise ServerStartError(
                    f"{self.name} exited with code {rc} during start-up "
                    f"(argv: {' '.join(self._argv)})\n{self.log_tail()}",
                    exited=True,
                )
            try:
                if check():
                    took = time.monotonic() - t0
                    log.info("%s ready after %.3fs (pid %s)", self.name, took, self.pid)
                    return took
                last_exc = None
            except Exception as exc:  # noqa: BLE001 - "not ready yet" comes in many shapes
                last_exc = exc
            if time.monotonic() >= deadline:
                why = f"; last check error: {last_exc!r}" if last_exc else ""
                raise ServerStartError(
                    f"{self.name} (pid {self.pid}) not ready after {timeout:.1f}s{why}\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)

    def _signal(self, sig: int) -> bool:
        """Send ``sig`` to our child by PID; False if it has already exited."""
        if self._popen is None or self._popen.poll() is not None:
            return False
        try:
            os.kill(self._popen.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def stop(self, grace: float | None = None) -> int | None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. Returns the exit code (None if never run)."""
        with self._lock:
            if self._popen is None:
                return None
            grace = self.stop_grace if grace is None else grace
            if self._signal(self.stop_signal):
                # A SIGSTOPped process keeps SIGTERM pending until continued: wake it up to die.
                self._signal(signal.SIGCONT)
                try:
                    self._popen.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    log.warning(
                        "%s (pid %s) ignored signal %d for %.1fs, sending SIGKILL",
                        self.name,
                        self.pid,
                        self.stop_signal,
                        grace,
                    )
                    self._signal(signal.SIGKILL)
            rc = self._popen.wait()
            self._frozen = False
            self._unregister()
            log.info("%s (pid %s) stopped, exit code %s", self.name, self.pid, rc)
            return rc

    def kill(self) -> int | None:
        """SIGKILL now (simulates a crash: no shutdown handlers, no persistence flush)."""
        with self._lock:
            if self._popen is None:
                return None
            self._signal(signal.SIGKILL)
            rc = self._popen.wait()
            self._frozen = False
            self._unregister()
            log.info("%s (pid %s) killed, exit code %s", self.name, self.pid, rc)
            return rc

    def _unregister(self) -> None:
        with _registry_lock:
            _registry.discard(self)

    def freeze(self) -> None:
        """SIGSTOP: the process stays alive, holds its sockets, answers nothing (a hung server).

        Returns once every thread of the child is actually stopped: the signal is asynchronous, and a
        multi-threaded server (influxd, Tansu) could otherwise still answer a request or two.
        """
        with self._lock:
            if not self._signal(signal.SIGSTOP):
                raise RuntimeError(f"{self.name} is not running")
            self._frozen = True
            self._wait_threads(stopped=True)
            log.info("%s (pid %s) frozen", self.name, self.pid)

    def thaw(self) -> None:
        """SIGCONT: resume a frozen process."""
        with self._lock:
            if not self._signal(signal.SIGCONT):
                raise RuntimeError(f"{self.name} is not running")
            self._frozen = False
            self._wait_threads(stopped=False)
            log.info("%s (pid %s) thawed", self.name, self.pid)

    def _wait_threads(self, *, stopped: bool, timeout: float = 5.0) -> None:
        """Wait until all threads are (or none is) in the stopped state, per /proc (Linux only)."""
        assert self._popen is not None
        task_dir = Path(f"/proc/{self._popen.pid}/task")
        if not task_dir.is_dir():  # pragma: no cover - non-Linux: best effort
            time.sleep(0.05)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = []
            for stat in task_dir.glob("*/stat"):
                try:
                    states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
                except (OSError, IndexError):
                    continue  # thread exited meanwhile
            live = [st for st in states if st not in ("Z", "X")]
            if not live:
                return  # the process is exiting anyway
            done = all(st in ("T", "t") for st in live) if stopped else not any(st == "T" for st in live)
            if done:
                return
            time.sleep(0.005)
        log.warning(
            "%s (pid %s): threads not %s after %.1fs",
            self.name,
            self.pid,
            "stopped" if stopped else "running",
            timeout,
        )

    def restart(self, *, hard: bool = False, timeout: float | None = None) -> float:
        """Stop (``hard``: SIGKILL, like a crash) and start again with the same argv; wait until ready.

        Returns the seconds it took to become ready again (0.0 if no ready check was ever given).
        """
        with self._lock:
            if not self._argv:
                raise RuntimeError(f"{self.name} was never started")
            if hard:
                self.kill()
            else:
                self.stop()
            self._spawn()
        if self._ready_check is None:
            return 0.0
        return self.wait_ready(self._ready_check, self._ready_timeout if timeout is None else timeout)

    # ---- context manager -------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "frozen" if self.frozen else "alive" if self.alive else "stopped"
        return f"<ManagedProcess {self.name} pid={self.pid} {state}>"


# --------------------------------------------------------------------------------------------------
# DevServer: the common shape of every server module
# --------------------------------------------------------------------------------------------------


class DevServer:
    """Base class: one server = a work directory, a loopback port, a :class:`ManagedProcess`.

    Subclasses fill in :meth:`_prepare` (write config files), :meth:`_command`, :meth:`_ready` (a real
    protocol probe) and optionally :meth:`_environment` / :meth:`_extra_logs` / :meth:`_repick_ports`.

    ``start()`` = ``launch()`` (spawn, non-blocking) + ``wait_ready()``.  The split lets
    :class:`~gridwatch.devservers.stack.DevStack` spawn several servers first and then wait for all of
    them, so start-up costs the slowest server rather than the sum.
    """

    name = "server"
    ready_timeout = DEFAULT_READY_TIMEOUT

    def __init__(
        self,
        workdir: Path | str,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        stop_grace: float = DEFAULT_STOP_GRACE,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = host
        # An explicit port is a promise to the caller, so never silently move it; an automatic one
        # may be re-picked if we lose the bind race (see free_port()).
        self._port_fixed = port is not None
        self.port: int = port if port is not None else free_port(host)
        self.process = ManagedProcess(self.name, stop_grace=stop_grace)
        #: Seconds the last start/restart took to become ready.
        self.startup_seconds: float | None = None

    # ---- hooks for subclasses --------------------------------------------------------------------

    def _prepare(self) -> None:
        """Write config files etc. Called before every launch (ports may have changed)."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _environment(self) -> dict[str, str] | None:
        return None  # inherit ours

    def _extra_logs(self) -> list[Path]:
        return []

    def _ready(self) -> bool:
        raise NotImplementedError

    def _repick_ports(self) -> None:
        self.port = free_port(self.host)

    # ---- lifecycle -------------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        """Where the child's stdout/stderr go."""
        return self.workdir / f"{self.name}.out.log"

    def launch(self) -> Self:
        """Write config and spawn the process without waiting for it."""
        self._prepare()
        self.process.start(
            self._command(),
            log_path=self.log_path,
            env=self._environment(),
            cwd=self.workdir,
            extra_logs=self._extra_logs(),
        )
        return self

    def wait_ready(self, timeout: float | None = None) -> float:
        """Block until the readiness probe passes; raise :class:`ServerStartError` otherwise."""
        took = self.process.wait_ready(self._ready, self.ready_timeout if timeout is None else timeout)
        self.startup_seconds = took
        return took

    def start(self, timeout: float | None = None, *, attempts: int = 3) -> Self:
        """Launch and wait until ready; on an early exit with an automatic port, retry on a new port."""
        for attempt in range(1, attempts + 1):
            t0 = time.monotonic()
            self.launch()
            try:
                self.wait_ready(timeout)
            except ServerStartError as exc:
                self.process.stop(grace=2.0)
                if exc.exited and not self._port_fixed and attempt < attempts:
                    log.warning(
                        "%s died during start-up (attempt %d), retrying on new ports", self.name, attempt
                    )
                    self._repick_ports()
                    continue
                raise
            self.startup_seconds = time.monotonic() - t0
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, grace: float | None = None) -> int | None:
        """Graceful stop (SIGTERM, then SIGKILL after the grace period)."""
        return self.process.stop(grace)

    def kill(self) -> int | None:
        """SIGKILL: a crash, no clean shutdown."""
        return self.process.kill()

    def freeze(self) -> None:
        """SIGSTOP: hung server (port open, no answers)."""
        self.process.freeze()

    def thaw(self) -> None:
        """SIGCONT."""
        self.process.thaw()

    def restart(self, *, hard: bool = False, timeout: float | None = None) -> float:
        """Stop (or kill, ``hard=True``) and start again on the same port with the same data."""
        if not self.process.argv:
            self.start(timeout)
            return self.startup_seconds or 0.0
        took = self.process.restart(hard=hard, timeout=timeout)
        self.startup_seconds = took
        return took

    @property
    def alive(self) -> bool:
        return self.process.alive

    @property
    def frozen(self) -> bool:
        return self.process.frozen

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def __enter__(self) -> Self:
        if not self.alive:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.host}:{self.port} {self.process!r}>"
