"""Shared pytest fixtures: real dev servers (mosquitto, Tansu, InfluxDB 1.6 + v2 adapter).

Session-scoped servers (``mosquitto``, ``tansu``, ``influxdb``, ``influx_v2``) are shared by every
test: use them for ordinary traffic, never stop/freeze them.  Tests that break servers on purpose
ask for a factory instead (``fresh_mosquitto(...)``, ``fresh_tansu()``, ``fresh_influxdb()``,
``fresh_influx_v2(upstream)``, ``fresh_stack()``), which starts a private instance and stops it at
the end of the test.  Everything is stopped by PID at teardown, even when a test fails, and
:func:`~gridwatch.devservers.process.stop_all` runs at session end as a safety net.

``influx2`` gives a real InfluxDB 2.x when ``GRIDWATCH_TEST_INFLUX2_URL`` (+ ``_TOKEN``, ``_ORG``,
``_BUCKET``) is set; tests requesting it are skipped otherwise.

Tests using any server fixture are marked ``servers`` automatically (``pytest -m "not servers"``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gridwatch.devservers.influx_v1_adapter import InfluxV2CompatAdapter
from gridwatch.devservers.influxdb import InfluxDB1Server
from gridwatch.devservers.mosquitto import MosquittoServer
from gridwatch.devservers.process import DevServer, stop_all
from gridwatch.devservers.stack import DevStack
from gridwatch.devservers.tansu import TansuServer

log = logging.getLogger("tests.devservers")

# the simulated RTSP cameras (`rtsp_server`, `footage`) for every test module
pytest_plugins = ["tests.rtsp_fixtures"]

S = TypeVar("S", bound=DevServer)

SERVER_FIXTURES = frozenset(
    {
        "mosquitto",
        "tansu",
        "influxdb",
        "influx_v2",
        "fresh_mosquitto",
        "fresh_tansu",
        "fresh_influxdb",
        "fresh_influx_v2",
        "fresh_stack",
        "postgres",
        "ledger_url",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Fixtures already stop their servers; this catches anything a test started by hand.
    stop_all()


@contextlib.contextmanager
def _running(server: S) -> Iterator[S]:
    server.start()  # DevServer.start() stops the child itself if start-up fails
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------------
# Session-scoped, shared servers
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    with _running(MosquittoServer(tmp_path_factory.mktemp("mosquitto"))) as server:
        yield server


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuServer]:
    with _running(TansuServer(tmp_path_factory.mktemp("tansu"))) as server:
        yield server


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB1Server]:
    with _running(InfluxDB1Server(tmp_path_factory.mktemp("influxdb"))) as server:
        yield server


@pytest.fixture(scope="session")
def influx_v2(
    influxdb: InfluxDB1Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InfluxV2CompatAdapter]:
    """The v2-compatible adapter in front of the session ``influxdb`` (use ``.url`` with influxdb-client)."""
    adapter = InfluxV2CompatAdapter(influxdb.url, workdir=tmp_path_factory.mktemp("influx-v2-adapter"))
    with _running(adapter) as server:
        yield server


# --------------------------------------------------------------------------------------------------
# Function-scoped factories for tests that stop / kill / freeze servers
# --------------------------------------------------------------------------------------------------


class _Owned:
    """Collects what a test started and stops it all at teardown (in reverse order)."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp = tmp_path_factory
        self._items: list[DevServer | DevStack] = []

    def dir(self, name: str) -> Path:
        return self._tmp.mktemp(name)

    def add(self, item: Any) -> Any:
        self._items.append(item)
        return item

    def close(self) -> None:
        for item in reversed(self._items):
            try:
                item.stop()
            except Exception:  # noqa: BLE001 - keep tearing down the rest
                log.exception("failed to stop %r", item)


@pytest.fixture
def _owned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Owned]:
    owned = _Owned(tmp_path_factory)
    try:
        yield owned
    finally:
        owned.close()


@pytest.fixture
def fresh_mosquitto(_owned: _Owned) -> Callable[..., MosquittoServer]:
    """``fresh_mosquitto(**MosquittoServer kwargs) -> started MosquittoServer`` private to the test."""

    def make(**kwargs: Any) -> MosquittoServer:
        server = _owned.add(MosquittoServer(_owned.dir("mosquitto"), **kwargs))
        return server.start()

    return make


@pytest.fixture
def fresh_tansu(_owned: _Owned) -> Callable[..., TansuServer]:
    """``fresh_tansu(**TansuServer kwargs) -> started TansuServer`` private to the test."""

    def make(**kwargs: Any) -> TansuServer:
        server = _owned.add(TansuServer(_owned.dir("tansu"), **kwargs))
        return server.start()

    return make


@pytest.fixture
def fresh_influxdb(_owned: _Owned) -> Callable[..., InfluxDB1Server]:
    """``fresh_influxdb(**InfluxDB1Server kwargs) -> started InfluxDB1Server`` private to the test."""

    def make(**kwargs: Any) -> InfluxDB1Server:
        server = _owned.add(InfluxDB1Server(_owned.dir("influxdb"), **kwargs))
        return server.start()

    return make


@pytest.fixture
def fresh_influx_v2(_owned: _Owned) -> Callable[..., InfluxV2CompatAdapter]:
    """``fresh_influx_v2(upstream: InfluxDB1Server | str, **kwargs) -> started adapter``."""

    def make(upstream: InfluxDB1Server | str, **kwargs: Any) -> InfluxV2CompatAdapter:
        url = upstream if isinstance(upstream, str) else upstream.url
        adapter = _owned.add(InfluxV2CompatAdapter(url, workdir=_owned.dir("influx-v2-adapter"), **kwargs))
        return adapter.start()

    return make


@pytest.fixture
def fresh_stack(_owned: _Owned) -> Callable[..., DevStack]:
    """``fresh_stack(**DevStack kwargs) -> started DevStack`` private to the test."""

    def make(**kwargs: Any) -> DevStack:
        stack = _owned.add(DevStack(_owned.dir("stack"), **kwargs))
        return stack.start()

    return make


# --------------------------------------------------------------------------------------------------
# Optional real InfluxDB 2.x
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Influx2Settings:
    url: str
    token: str
    org: str
    bucket: str


@pytest.fixture(scope="session")
def influx2() -> Influx2Settings:
    """A real InfluxDB 2.x from ``GRIDWATCH_TEST_INFLUX2_*``; skips the test when not configured."""
    url = os.environ.get("GRIDWATCH_TEST_INFLUX2_URL")
    if not url:
        pytest.skip("GRIDWATCH_TEST_INFLUX2_URL not set (no real InfluxDB 2.x available)")
    missing = [
        f"GRIDWATCH_TEST_INFLUX2_{k}"
        for k in ("TOKEN", "ORG", "BUCKET")
        if not os.environ.get(f"GRIDWATCH_TEST_INFLUX2_{k}")
    ]
    if missing:
        pytest.fail(f"GRIDWATCH_TEST_INFLUX2_URL is set but these are not: {', '.join(missing)}")
    return Influx2Settings(
        url=url,
        token=os.environ["GRIDWATCH_TEST_INFLUX2_TOKEN"],
        org=os.environ["GRIDWATCH_TEST_INFLUX2_ORG"],
        bucket=os.environ["GRIDWATCH_TEST_INFLUX2_BUCKET"],
    )


# --------------------------------------------------------------------------------------------------
# PostgreSQL (the ledger's production database) and ledger URLs
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Outside pytest's base temp dir on purpose: the server runs as the `postgres` user, which must
    traverse to its data directory, and every new pytest session resets /tmp/pytest-of-<user> to
    mode 0700: a second test session on the machine would otherwise pull the directory from under
    this server (it PANICs: pg_control: Permission denied)."""
    import shutil
    import tempfile

    from gridwatch.devservers.postgres import PostgresServer

    workdir = Path(tempfile.mkdtemp(prefix="gridwatch-test-postgres-"))
    try:
        with _running(PostgresServer(workdir)) as server:
            yield server
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty ledger database: embedded SQLite, and the real PostgreSQL started above."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    server = request.getfixturevalue("postgres")
    server.reset_database()
    yield server.url
    # ledgers the test did not close hold pooled connections until they are collected: collect
    # them now, so a long suite never runs the server out of connections
    import gc

    gc.collect()
