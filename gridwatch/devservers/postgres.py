"""A private PostgreSQL (Debian's `postgresql` package) on a free loopback port.

Why not pytest-postgresql: `initdb` and `postgres` refuse to run as root, and CI runs as root.
So when we are root the server runs as Debian's `postgres` system user (through `setpriv`),
with its data directory under our work directory handed to that user. Authentication is
`trust` on 127.0.0.1 only (dev profile: a throwaway server on loopback); the database
`gridwatch` is created on first start. Ready when `pg_isready` says so.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
from pathlib import Path

from gridwatch.devservers.process import DevServer

__all__ = ["PostgresServer", "postgres_bindir"]


def postgres_bindir() -> Path:
    """Newest /usr/lib/postgresql/<version>/bin (Debian's layout)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise FileNotFoundError(
            "PostgreSQL is not installed (Debian package `postgresql`): run scripts/setup.sh"
        )
    return Path(found[-1]).parent


class PostgresServer(DevServer):
    name = "postgres"
    ready_timeout = 60.0

    def __init__(self, workdir: Path | str, port: int | None = None, *, database: str = "gridwatch") -> None:
        super().__init__(workdir, port)
        self.bindir = postgres_bindir()
        self.database = database
        self.user = "postgres"
        self._as_root = os.geteuid() == 0
        # SIGTERM is PostgreSQL's "smart" shutdown, which waits for every client to leave;
        # SIGINT ("fast") rolls back open transactions and stops at once.
        self.process.stop_signal = signal.SIGINT

    @property
    def datadir(self) -> Path:
        return self.workdir / "pgdata"

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg 3 driver)."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{self.database}"

    def _run_as(self, argv: list[str]) -> list[str]:
        # setpriv execs (no extra process in between), so signals by PID reach postgres itself.
        if not self._as_root:
            return argv
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *argv]

    def _prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._as_root:
            # the postgres user needs to reach the work directory: open the path to it for traversal only
            p = self.workdir
            while p != p.parent:
                os.chmod(p, os.stat(p).st_mode | 0o111)
                p = p.parent
            shutil.chown(self.workdir, "postgres", "postgres")
        if not (self.datadir / "PG_VERSION").exists():
            subprocess.run(
                self._run_as([str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", self.user,
                              "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"]),
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip

    def _command(self) -> list[str]:
        return self._run_as(
            [
                str(self.bindir / "postgres"),
                "-D", str(self.datadir),
                "-h", self.host,
                "-p", str(self.port),
                "-k", str(self.datadir),  # unix socket inside the data dir, not /var/run
                "-c", "fsync=on",
                # tests open a ledger (a connection pool) per test; a test that drops its ledger
                # without closing it holds connections until garbage collection
                "-c", "max_connections=300",
                "-c", "logging_collector=off",
            ]
        )  # fmt: skip

    def _ready(self) -> bool:
        r = subprocess.run(
            [str(self.bindir / "pg_isready"), "-h", self.host, "-p", str(self.port), "-q"],
            capture_output=True, timeout=5,
        )  # fmt: skip
        if r.returncode != 0:
            return False
        r = subprocess.run(
            [str(self.bindir / "psql"), "-h", self.host, "-p", str(self.port), "-U", self.user, "-tAc",
             "SHOW data_directory", "postgres"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        if r.returncode != 0:
            return False
        if Path(r.stdout.strip()).resolve() != Path(self.datadir).resolve():
            # another test session's server won the race for this port: ours cannot be ready
            raise RuntimeError(f"port {self.port} answers with another server ({r.stdout.strip()})")
        r = subprocess.run(
            [str(self.bindir / "psql"), "-h", self.host, "-p", str(self.port), "-U", self.user, "-tAc",
             f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'", "postgres"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        if r.returncode != 0:
            return False
        if r.stdout.strip() != "1":
            subprocess.run(
                [str(self.bindir / "createdb"), "-h", self.host, "-p", str(self.port), "-U", self.user, self.database],
                check=True, capture_output=True, timeout=30,
            )  # fmt: skip
        return True

    def reset_database(self) -> None:
        """Drop and recreate the database (a clean ledger for the next test)."""
        for sql in (
            f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)',
            f'CREATE DATABASE "{self.database}"',
        ):
            r = subprocess.run(
                [str(self.bindir / "psql"), "-h", self.host, "-p", str(self.port), "-U", self.user, "-qc", sql, "postgres"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            if r.returncode != 0:
                raise RuntimeError(
                    f"postgres reset: {sql!r} failed ({r.returncode}): {r.stderr.strip()[:500]}"
                )
