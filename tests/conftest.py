"""Fixtures: real Mosquitto processes on free ports, the Twilio simulator over real sockets, MQTT test clients."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import gmqtt
import orjson
import pytest

from twilio_connector import service
from twilio_connector.domain.concurrency import ConcurrencyWindow
from twilio_connector.domain.contract import Notification
from twilio_connector.settings.config import Credentials
from twilio_connector.settings.schema import Settings
from twilio_connector.settings.secrets import Secret
from twilio_connector.twilio.simulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, Simulator

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
DEFAULT_FROM = "+15005550006"
#: Environment for connector processes in tests: they send bursts to one number, so storm folding is off (it is
#: tested on its own, in test_storms.py), and an attempt in doubt is looked up once, a second after it began.
TEST_ENV = {"TWILIO_CONNECTOR_FOLD_THRESHOLD": "0", "TWILIO_CONNECTOR_RECONCILE_WINDOW": "1"}
RECIPIENT = "+12345000000"
#: The connector's command line, as a process.
CLI = [sys.executable, "-m", "twilio_connector"]


#: Fixtures that start a real process (a broker, a database, a connector): a test using one is `slow`.
PROCESS_FIXTURES = frozenset(
    {"broker", "probe", "connector", "spawned", "postgres", "postgres_server", "pg_url", "proxy", "relay", "tls_relay"}
)
#: Modules whose tests start processes of their own (the connector's CLI, Prism, mkdocs, a wheel build, NATS), or
#: run long by design (the fuzzing sample: thousands of documents; the nucleus stand-in's slow Twilio answers).
SLOW_MODULES = frozenset(
    {
        "test_break",
        "test_cli",
        "test_cli_errors",
        "test_conformance",
        "test_crash",
        "test_docs",
        "test_docs_browser",
        "test_fuzz",
        "test_greengrass",
        "test_ha",
        "test_mosquitto_faults",
        "test_nats",
        "test_packaging",
        "test_quickstart",
        "test_stress",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the real-process and long tests `slow`: `pytest -m "not slow"` is the fast layer (pure and in-process,
    in seconds); `pytest` runs both, as CI does."""
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        on_postgres = "postgres" in getattr(getattr(item, "callspec", None), "params", {}).values()
        if item.module.__name__ in SLOW_MODULES or PROCESS_FIXTURES.intersection(item.fixturenames) or on_postgres:
            item.add_marker(pytest.mark.slow)


def basic(user: str, password: str) -> dict[str, str]:
    """An HTTP Basic Authorization header."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on port {port}")


@dataclass
class Broker:
    """A Mosquitto process with persistence and a large queue, restartable on the same port."""

    directory: Path
    port: int = field(default_factory=free_port)
    extra_config: str = ""
    persistence: bool = True
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        config = self.directory / "mosquitto.conf"
        # `user root`: started as root, Mosquitto would switch to user mosquitto and fail to save its database.
        config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence {str(self.persistence).lower()}\n"
            f"persistence_location {self.directory}/\nmax_queued_messages 100000\nset_tcp_nodelay true\n"
            f"user root\nlog_dest file {self.directory}/mosquitto.log\n{self.extra_config}"
        )
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(config)], stderr=subprocess.DEVNULL)
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {self.log()}") from None

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def freeze(self) -> None:
        """Stop the process where it stands (SIGSTOP): connections stay open, nothing is read or answered."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        """Crash it (SIGKILL): what it had not saved is gone."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
        self.process = None

    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text() if path.exists() else ""


POSTGRES_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), Path("/usr/bin"))


@dataclass
class Postgres:
    """A PostgreSQL server of its own, in a temporary directory, on a free port. PostgreSQL refuses to run as
    root: as root, it runs as the `postgres` user."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    #: Server settings (`-c name=value`) beyond the listening address.
    options: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _owner(self) -> dict[str, Any]:
        return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        initdb = [str(POSTGRES_BIN / "initdb"), "-D", str(self.directory / "data"), "-A", "trust", "-U", "postgres"]
        subprocess.run([*initdb, "--no-sync"], check=True, capture_output=True, **self._owner())

    def start(self) -> None:
        data, socket_dir = str(self.directory / "data"), str(self.directory)
        command = [str(POSTGRES_BIN / "postgres"), "-D", data, "-p", str(self.port), "-k", socket_dir]
        settings = [item for option in ("listen_addresses=127.0.0.1", *self.options) for item in ("-c", option)]
        self.process = subprocess.Popen(
            [*command, *settings],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **self._owner(),
        )
        deadline = time.monotonic() + 30
        ready = [str(POSTGRES_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        while subprocess.run(ready, check=False).returncode != 0:
            assert self.process.poll() is None and time.monotonic() < deadline, "PostgreSQL did not start"
            time.sleep(0.05)

    def stop(self, how: int = signal.SIGINT) -> None:
        """SIGINT: PostgreSQL's fast shutdown; SIGKILL: a crash."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(how)
            self.process.wait(30)
        self.process = None


@contextlib.contextmanager
def running_postgres(*options: str) -> Iterator[Postgres]:
    directory = Path(tempfile.mkdtemp(prefix="pg-"))  # not under pytest's tmp_path: the postgres user must reach it
    instance = Postgres(directory, options=options)
    instance.init()
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL of the test's own, to stop and start."""
    with running_postgres() as instance:
        yield instance


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    """One PostgreSQL for the session's journal tests; each test gets a database of its own (`pg_url`). Without
    fsync: these tests kill processes, never the machine, and the dozens of databases they create made the fast
    shutdown at the session's end flush and sync for 25 s on a busy machine (past the 30-s stop bound under load).
    The tests that stop and crash PostgreSQL itself use `postgres`, which keeps every default."""
    with running_postgres("fsync=off") as instance:
        yield instance


@pytest.fixture
def pg_url(postgres_server: Postgres) -> str:
    import psycopg  # noqa: PLC0415

    name = f"journal_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    return postgres_server.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    directory = tmp_path / "broker"
    directory.mkdir()
    instance = Broker(directory, extra_config=os.environ.get("TEST_MOSQUITTO_EXTRA", ""))
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
async def simulator() -> AsyncIterator[SimulatorHandle]:
    sim = Simulator()
    runner = await sim.serve("127.0.0.1", 0)
    yield SimulatorHandle(sim, f"http://127.0.0.1:{runner.addresses[0][1]}")
    await runner.cleanup()


@dataclass
class SimulatorHandle:
    sim: Simulator
    url: str

    def created(self, resource: str | None = None) -> list[dict[str, Any]]:
        """Create requests the simulator received (optionally of one resource), in order."""
        return [entry for entry in self.sim.received if resource in (None, entry["resource"])]


class MqttProbe:
    """A test-side MQTT client: publishes requests and collects statuses by id."""

    def __init__(self, broker_url: str, status_topic: str = "twilio/message/status", **connect: Any) -> None:
        self._url = broker_url
        self._status_topic = status_topic
        self._connect = connect
        self.statuses: list[dict[str, Any]] = []
        self._arrived = asyncio.Condition()
        self.client = gmqtt.Client(f"probe-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message

    async def _on_message(self, client: Any, topic: str, payload: bytes, qos: int, properties: Any) -> int:
        async with self._arrived:
            self.statuses.append(orjson.loads(payload))
            self._arrived.notify_all()
        return 0

    async def start(self) -> None:
        host, port = self._url.removeprefix("mqtt://").split(":")
        await self.client.connect(host, int(port), **self._connect)
        self.client.subscribe(self._status_topic, qos=1)
        await asyncio.sleep(0)  # let the SUBSCRIBE go out before any request

    async def stop(self) -> None:
        await self.client.disconnect()

    async def publish(self, topic: str, document: Any, qos: int = 1) -> None:
        """Publish; past the broker's Receive Maximum gmqtt raises, so wait for acknowledgements then."""
        payload = document if isinstance(document, bytes) else orjson.dumps(document)
        while True:
            try:
                self.client.publish(topic, payload, qos=qos)
                return
            except OverflowError:
                await asyncio.sleep(0.005)

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Wait until at least `count` statuses arrived; return them all."""
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.statuses) >= count), timeout)
        return list(self.statuses)

    async def wait_for_ids(self, ids: set[str], timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until every id in `ids` has a status (duplicates do not count twice)."""
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: ids <= {s["id"] for s in self.statuses}), timeout)
        return list(self.statuses)

    async def settle(self) -> list[dict[str, Any]]:
        """Every status published before now (by anyone), without a fixed wait: the broker forwards in order, so
        once our own marker comes back, what came before it is here."""
        marker = f"settle-{uuid.uuid4().hex}"
        await self.publish(self._status_topic, {"id": marker})
        await self.status_of(marker)
        return [s for s in self.statuses if s.get("id") != marker]

    async def first(self, matches: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict[str, Any]:
        """The first status that `matches`, once one arrived."""
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: any(matches(s) for s in self.statuses)), timeout)
        return next(s for s in self.statuses if matches(s))

    async def status_of(self, request_id: str | None, timeout: float = 20.0) -> dict[str, Any]:
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: any(s.get("id") == request_id for s in self.statuses)), timeout
            )
        return next(s for s in self.statuses if s.get("id") == request_id)


@pytest.fixture
async def probe(broker: Broker) -> AsyncIterator[MqttProbe]:
    instance = MqttProbe(broker.url)
    await instance.start()
    yield instance
    await instance.stop()


def make_settings(broker: Broker, simulator: SimulatorHandle, **overrides: Any) -> Settings:
    settings = Settings(
        broker_url=broker.url,
        client_id=f"connector-{uuid.uuid4().hex[:8]}",
        twilio_api_url=simulator.url,
        account_sid=DEFAULT_ACCOUNT_SID,
        default_from=DEFAULT_FROM,
        backoff_base=0.01,
        backoff_max=0.2,
        shutdown_timeout=5.0,
        journal_path=":memory:",
        fold_threshold=0,  # the tests send bursts to one number: folding is tested on its own
        reconcile_window=1.0,  # one lookup, a second after an attempt in doubt began (test_reconcile.py: more)
    )
    return replace(settings, **overrides)


CREDENTIALS = Credentials(
    DEFAULT_ACCOUNT_SID, DEFAULT_ACCOUNT_SID, Secret(DEFAULT_AUTH_TOKEN), Secret(DEFAULT_AUTH_TOKEN)
)


class ConnectorProcess:
    """`twilio-connector run` as a real process, all its output appended to `log`."""

    def __init__(
        self,
        broker: Broker,
        simulator: SimulatorHandle,
        journal: Path,
        log: Path,
        *args: str,
        defaults: bool = False,
        **env: str,
    ) -> None:
        """`defaults`: the connector's own defaults (storm folding, the reconcile window), not TEST_ENV's."""
        environment = {
            **os.environ,
            **({} if defaults else TEST_ENV),
            "TWILIO_ACCOUNT_SID": DEFAULT_ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": DEFAULT_AUTH_TOKEN,
            **env,
        }
        self.log = log
        command = [
            sys.executable,
            "-m",
            "twilio_connector",
            "run",
            "--broker",
            broker.url,
            "--twilio-api-url",
            simulator.url,
            "--default-from",
            DEFAULT_FROM,
            "--journal-path",
            str(journal),
            *args,
        ]
        with log.open("a") as handle:
            self.process = subprocess.Popen(command, env=environment, stdout=handle, stderr=subprocess.STDOUT)

    async def ready(self, timeout: float = 60.0) -> None:
        """Wait for the "ready" line written since the last "run:" marker in the log."""
        deadline = asyncio.get_running_loop().time() + timeout
        while "ready:" not in self.log.read_text().rsplit("run:", 1)[-1]:
            assert self.process.poll() is None, self.log.read_text()
            assert asyncio.get_running_loop().time() < deadline, "connector not ready"
            await asyncio.sleep(0.05)


class NoScheduler:
    """Delivery's dispatcher for tests that drive one request at a time: nothing to schedule."""

    window = ConcurrencyWindow(1)

    def answered(self, seq: int, throttled: bool = False) -> None:
        pass

    def due_at(self, when: float) -> None:
        pass


async def wait_until(condition: object, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


@pytest.fixture
def spawned() -> Iterator[list[ConnectorProcess]]:
    processes: list[ConnectorProcess] = []
    yield processes
    for connector in processes:  # whatever the test's outcome, leave no connector behind
        if connector.process.poll() is None:
            connector.process.kill()
            connector.process.wait(10)


class RunningConnector:
    """The connector served in this test's event loop, stopped like SIGTERM would."""

    def __init__(self, settings: Settings, credentials: Credentials = CREDENTIALS) -> None:
        self.settings = settings
        self.stop_event = asyncio.Event()
        self.ready = asyncio.Event()
        self.task = asyncio.create_task(service.run(settings, credentials, self.stop_event, self.ready))

    async def wait_ready(self) -> RunningConnector:
        ready = asyncio.create_task(self.ready.wait())
        await asyncio.wait([ready, self.task], timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if self.task.done():
            self.task.result()  # raise what stopped it
        assert self.ready.is_set(), "connector not ready in time"
        return self

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, 15)


@pytest.fixture
async def connector(broker: Broker, simulator: SimulatorHandle, probe: MqttProbe) -> AsyncIterator[RunningConnector]:
    running = await RunningConnector(make_settings(broker, simulator)).wait_ready()
    yield running
    await running.stop()


def sms(
    request_id: str, to: str = "+12345000000", message: str = "Hello from the edge", **request: Any
) -> dict[str, Any]:
    return {
        "request": {"recipient": {"name": "Darla", "phone_number": to, "message": message}, **request},
        "id": request_id,
    }


def call(
    request_id: str, to: str = "+12345000000", url: str = "https://example.com/twiml", **request: Any
) -> dict[str, Any]:
    return {
        "request": {"recipient": {"name": "Darla", "phone_number": to, "voice_message_location": url}, **request},
        "id": request_id,
    }


@pytest.fixture
def env_without_twilio(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("TWILIO", "Twilio", "DefaultFrom", "MQTT_", "AWS_")):
            monkeypatch.delenv(name)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO", "Twilio", "DefaultFrom", "MQTT_"))}
    return {**env, **extra}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], check=False, capture_output=True, text=True, env=env or clean_env(), timeout=60
    )


async def readyz(port: int) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as response:
        return response.status, await response.json()


async def until_ready_is(port: int, status: int, timeout: float = 20.0, problem: str = "") -> dict[str, object]:
    deadline = asyncio.get_running_loop().time() + timeout
    got, document = 0, {}
    while True:
        with contextlib.suppress(aiohttp.ClientConnectorError):  # not listening yet
            got, document = await readyz(port)
            if got == status and problem in str(document.get("problems", "")):
                return document
        assert asyncio.get_running_loop().time() < deadline, f"/readyz stayed {got}: {document}"
        await asyncio.sleep(0.1)


def accept(core: Any, notification: Notification, now: float, window: float, *, begin: bool = False) -> Any:
    """Record a request as admission would with no guard, storm or cap: the one within `window` seconds with the
    same identity if there is one (a `Duplicate`), else a new record (its seq)."""
    identity, duplicate = core.duplicate(notification, now, window)
    return duplicate or core.record(notification, identity, now, begin=begin)


async def journal_accept(journal: Any, notification: Notification, *, window: float, begin: bool = False) -> Any:
    """`accept` through an open journal's group commits."""
    return await journal.write(lambda: accept(journal.core, notification, journal.clock(), window, begin=begin))
