"""The connector as a Greengrass v2 component: requests and statuses over the nucleus's local publish/subscribe,
the token from the nucleus. The nucleus is the stand-in of tests/nucleus.py (event-stream RPC on a Unix socket);
the client is the real awsiotsdk one, inside the connector."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from conftest import (
    CLI,
    CREDENTIALS,
    ConnectorProcess,
    RunningConnector,
    SimulatorHandle,
    clean_env,
    free_port,
    make_settings,
    sms,
    until_ready_is,
    wait_until,
)
from nucleus import Nucleus
from twilio_connector.greengrass.secrets import fetch_from_nucleus
from twilio_connector.greengrass.session import GreengrassOptions
from twilio_connector.service import secret_source
from twilio_connector.settings.config import ConfigError, load_settings, resolve_credentials
from twilio_connector.settings.schema import Settings
from twilio_connector.settings.secrets import Secret, SecretError
from twilio_connector.twilio.simulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN

TOKEN = "component-token"
ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:twilio-auth-token-AbCdEf"
STATUS = "twilio/message/status"


@pytest.fixture
async def nucleus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Nucleus]:
    # A short path: a Unix socket's path is limited to about 100 bytes.
    path = f"/tmp/gg-{uuid.uuid4().hex[:8]}.socket"
    stand_in = Nucleus(path, TOKEN, secrets={ARN: DEFAULT_AUTH_TOKEN})
    await stand_in.start()
    monkeypatch.setenv("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", path)
    monkeypatch.setenv("SVCUID", TOKEN)
    yield stand_in
    await stand_in.stop()
    Path(path).unlink(missing_ok=True)


def settings(simulator: SimulatorHandle, **overrides: object) -> Settings:
    unused = SimpleNamespace(url="mqtt://127.0.0.1:1")  # no broker: requests come from the nucleus
    return replace(make_settings(unused, simulator, transport="greengrass"), **overrides)  # type: ignore[arg-type]


async def statuses(nucleus: Nucleus, count: int, timeout: float = 30.0) -> list[dict[str, object]]:
    deadline = asyncio.get_running_loop().time() + timeout
    while len(nucleus.on_topic(STATUS)) < count:
        assert asyncio.get_running_loop().time() < deadline, f"statuses: {nucleus.on_topic(STATUS)}"
        await asyncio.sleep(0.02)
    return [orjson.loads(payload) for payload in nucleus.on_topic(STATUS)]


async def test_a_request_over_local_pubsub_gets_its_status_there(nucleus: Nucleus, simulator: SimulatorHandle) -> None:
    running = await RunningConnector(settings(simulator)).wait_ready()
    try:
        assert nucleus.states == ["RUNNING"]  # told once subscribed
        await nucleus.subscribed("twilio/call")
        assert nucleus.publish("twilio/txt", orjson.dumps(sms("g1"))) == 1
        nucleus.publish("twilio/txt", b"{not json")
        bad, first = sorted(await statuses(nucleus, 2), key=lambda status: str(status["id"]))
        assert first["id"] == "g1" and first["response"]["status"] == "success"  # type: ignore[index]
        assert bad["response"]["status"] == "fail"  # type: ignore[index]
        assert [entry["params"]["To"] for entry in simulator.created()] == ["+12345000000"]
    finally:
        await running.stop()


async def test_the_nucleus_restarting_is_survived(nucleus: Nucleus, simulator: SimulatorHandle) -> None:
    """The nucleus goes away and comes back: the connector says it is not ready meanwhile, connects and subscribes
    again, and takes requests."""
    port = free_port()
    running = await RunningConnector(settings(simulator, metrics_listen=f"127.0.0.1:{port}")).wait_ready()
    try:
        await nucleus.subscribed("twilio/txt")
        await until_ready_is(port, 200)
        await nucleus.stop()
        await until_ready_is(port, 503, problem="Greengrass nucleus")
        await nucleus.start()
        await nucleus.subscribed("twilio/txt")
        await until_ready_is(port, 200)
        nucleus.publish("twilio/txt", orjson.dumps(sms("after")))
        (status,) = await statuses(nucleus, 1)
        assert status["id"] == "after" and nucleus.connections == 2
    finally:
        await running.stop()


async def test_the_auth_token_is_read_from_the_nucleus(nucleus: Nucleus) -> None:
    """No boto3, no AWS credentials, no network: the secret the ARN names comes over IPC."""
    configured = Settings(transport="greengrass", account_sid=DEFAULT_ACCOUNT_SID, auth_token_secret_arn=ARN)
    read = partial(resolve_credentials, configured, secret_source(configured))
    credentials = await asyncio.get_running_loop().run_in_executor(None, read)
    assert credentials.password == Secret(DEFAULT_AUTH_TOKEN) and credentials.username == DEFAULT_ACCOUNT_SID
    assert CREDENTIALS.password == credentials.password


async def test_a_missing_secret_or_a_wrong_token_is_said_in_words(nucleus: Nucleus) -> None:
    loop = asyncio.get_running_loop()
    options = GreengrassOptions(nucleus.path, Secret(TOKEN))
    with pytest.raises(SecretError, match="did not give arn:nope"):
        await loop.run_in_executor(None, fetch_from_nucleus, options, "arn:nope")
    wrong = GreengrassOptions(nucleus.path, Secret("not-the-token"))
    with pytest.raises(SecretError, match="cannot reach the Greengrass nucleus") as raised:
        await loop.run_in_executor(None, fetch_from_nucleus, wrong, ARN)
    assert "not-the-token" not in str(raised.value)


async def test_the_migration_guides_publisher_snippet_reaches_the_connector(
    nucleus: Nucleus, simulator: SimulatorHandle
) -> None:
    """The one-call change docs/migration.md gives v1 functions, run as a component would run it."""
    guide = (Path(__file__).parent.parent / "docs" / "migration.md").read_text()
    snippet = guide.split("The change is one call:", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    running = await RunningConnector(settings(simulator)).wait_ready()
    try:
        await nucleus.subscribed("twilio/txt")
        await asyncio.get_running_loop().run_in_executor(None, exec, snippet, {})
        (status,) = await statuses(nucleus, 1)
        assert status["id"] == "freezer-3-0001" and status["response"]["status"] == "success"  # type: ignore[index]
        assert simulator.created()[0]["params"]["Body"] == "Freezer 3 is warm"
    finally:
        await running.stop()


async def test_a_rotated_secret_is_read_again_from_the_nucleus(nucleus: Nucleus, simulator: SimulatorHandle) -> None:
    """Twilio refuses the token (401): the connector reads the secret again over IPC and sends with the new one."""
    configured = settings(simulator, auth_token_secret_arn=ARN)
    read = partial(resolve_credentials, configured, secret_source(configured))
    credentials = await asyncio.get_running_loop().run_in_executor(None, read)
    running = await RunningConnector(configured, credentials).wait_ready()
    try:
        simulator.sim.rotate_auth_token("rotated-token")
        nucleus.secrets[ARN] = "rotated-token"  # SecretManager's copy, synced from the cloud
        await nucleus.subscribed("twilio/txt")
        nucleus.publish("twilio/txt", orjson.dumps(sms("after-rotation")))
        (status,) = await statuses(nucleus, 1)
        assert status["id"] == "after-rotation" and status["response"]["status"] == "success"  # type: ignore[index]
    finally:
        await running.stop()


async def test_kill_9_mid_burst_over_ipc_offline(
    nucleus: Nucleus, simulator: SimulatorHandle, tmp_path: Path, spawned: list[ConnectorProcess]
) -> None:
    """A connector process with no network but the nucleus (its token from the nucleus, no AWS credentials, AWS
    out of reach) is killed with -9 while its requests are at Twilio, and started again: every request it took
    is sent once, and each gets a status."""
    simulator.sim.latency = 0.2
    burst, log = 200, tmp_path / "connector.log"
    offline = {
        "TWILIO_CONNECTOR_TRANSPORT": "greengrass",
        "TwilioAuthTokenSecretArn": ARN,
        "TWILIO_AUTH_TOKEN": "",
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # were Secrets Manager asked, it would fail
    }
    unused = SimpleNamespace(url="mqtt://127.0.0.1:9")
    log.write_text("run:\n")
    first = ConnectorProcess(unused, simulator, tmp_path / "j.db", log, "--max-in-flight", "32", **offline)  # type: ignore[arg-type]
    spawned.append(first)
    await first.ready()
    await nucleus.subscribed("twilio/call")
    for n in range(burst):
        assert nucleus.publish("twilio/txt", orjson.dumps(sms(f"k{n}", message=f"text k{n}"))) == 1
    await wait_until(lambda: len(simulator.created()) >= burst // 2)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    log.write_text(log.read_text() + "run:\n")
    second = ConnectorProcess(unused, simulator, tmp_path / "j.db", log, "--max-in-flight", "32", **offline)  # type: ignore[arg-type]
    spawned.append(second)
    await second.ready()
    ids = {f"k{n}" for n in range(burst)}
    await wait_until(lambda: ids <= {status["id"] for status in map(orjson.loads, nucleus.on_topic(STATUS))}, 60)
    second.process.send_signal(signal.SIGTERM)
    assert second.process.wait(20) == 0
    sent = Counter(entry["params"]["Body"] for entry in simulator.created())
    doubled = [body for body, times in sent.items() if times > 1]
    # A create retried after a lookup found nothing is a second create request, not a second message: count
    # what Twilio stored.
    stored = Counter(item["body"] for item in simulator.sim._resources["Messages"].items.values())
    assert set(stored) == {f"text k{n}" for n in range(burst)} and max(stored.values()) == 1, doubled
    assert "were being sent when the connector stopped" in log.read_text().rsplit("run:", 1)[-1]
    assert "Secrets Manager" not in log.read_text()


async def test_a_component_update_waits_for_the_requests_at_twilio(
    nucleus: Nucleus, simulator: SimulatorHandle
) -> None:
    """A deployment announced while a request is at Twilio is deferred (asked again in a second); once nothing is
    at Twilio it is acknowledged; and a busy connector defers for `shutdown_timeout` at most."""
    simulator.sim.latency = 1.5
    running = await RunningConnector(settings(simulator, shutdown_timeout=3.0)).wait_ready()
    try:
        await nucleus.subscribed("twilio/txt")
        nucleus.publish("twilio/txt", orjson.dumps(sms("slow")))
        await wait_until(lambda: len(simulator.sim.received) == 1)
        assert nucleus.announce_update("deployment-1") == 1
        await wait_until(lambda: len(nucleus.deferrals) == 1)
        assert nucleus.deferrals == [("deployment-1", 1000)]  # deferred: a request is at Twilio
        await statuses(nucleus, 1)
        nucleus.announce_update("deployment-1")  # the nucleus asks again after the recheck
        await wait_until(lambda: len(nucleus.deferrals) == 2)
        assert nucleus.deferrals[1] == ("deployment-1", 0)  # acknowledged: nothing at Twilio now
    finally:
        await running.stop()


async def test_a_component_update_is_deferred_for_the_shutdown_timeout_at_most(
    nucleus: Nucleus, simulator: SimulatorHandle
) -> None:
    simulator.sim.latency = 3.0  # at Twilio through both notices
    running = await RunningConnector(settings(simulator, shutdown_timeout=0.5)).wait_ready()
    try:
        await nucleus.subscribed("twilio/txt")
        nucleus.publish("twilio/txt", orjson.dumps(sms("stuck")))
        await wait_until(lambda: len(simulator.sim.received) == 1)
        nucleus.announce_update("deployment-2")
        await wait_until(lambda: len(nucleus.deferrals) == 1)
        await asyncio.sleep(0.6)  # past shutdown_timeout since the first notice (the nucleus rechecks later)
        nucleus.announce_update("deployment-2")
        await wait_until(lambda: len(nucleus.deferrals) == 2)
        assert nucleus.deferrals == [("deployment-2", 1000), ("deployment-2", 0)]  # still busy, but no longer
    finally:
        await running.stop()


async def test_statuses_to_iot_core_and_requests_from_it(nucleus: Nucleus, simulator: SimulatorHandle) -> None:
    """As the v1 tutorial's subscription did: each status also goes to AWS IoT Core (QoS 1), and requests
    published in the cloud are taken too."""
    running = await RunningConnector(settings(simulator, status_to_iot_core=True, iot_core_requests=True)).wait_ready()
    try:
        await nucleus.subscribed_in_cloud("twilio/txt")
        assert nucleus.from_cloud("twilio/txt", orjson.dumps(sms("from-the-cloud"))) == 1
        (status,) = await statuses(nucleus, 1)
        assert status["id"] == "from-the-cloud"
        await wait_until(lambda: len(nucleus.to_cloud) == 1)
        [(topic, payload, qos)] = nucleus.to_cloud
        assert (topic, qos) == (STATUS, "1") and orjson.loads(payload) == status
    finally:
        await running.stop()


def test_iot_core_needs_the_greengrass_transport() -> None:
    with pytest.raises(ConfigError, match="need transport = greengrass"):
        load_settings(env={"TWILIO_CONNECTOR_STATUS_TO_IOT_CORE": "true"})


async def test_a_status_finished_while_the_nucleus_is_away_goes_out_once_it_is_back(
    nucleus: Nucleus, simulator: SimulatorHandle
) -> None:
    simulator.sim.latency = 0.5
    running = await RunningConnector(settings(simulator)).wait_ready()
    try:
        await nucleus.subscribed("twilio/txt")
        nucleus.publish("twilio/txt", orjson.dumps(sms("meanwhile")))
        await wait_until(lambda: len(simulator.sim.received) == 1)
        await nucleus.stop()  # Twilio answers while the nucleus is away
        await wait_until(lambda: running.task.done() or (simulator.sim.received and not nucleus.on_topic(STATUS)), 5)
        await asyncio.sleep(1.0)  # the answer came, the status could not go out
        assert not nucleus.on_topic(STATUS)
        await nucleus.start()
        back = asyncio.get_running_loop().time()
        (status,) = await statuses(nucleus, 1, timeout=10)
        assert status["id"] == "meanwhile"
        assert asyncio.get_running_loop().time() - back < 3.0  # as soon as it is back, not after a backoff
    finally:
        await running.stop()


def test_the_greengrass_transport_outside_greengrass_is_one_line_not_a_traceback() -> None:
    """Without the nucleus's socket and token in the environment, `run` and `check-config` say so (exit 2)."""
    env = {**clean_env(), "TWILIO_ACCOUNT_SID": DEFAULT_ACCOUNT_SID, "TwilioAuthTokenSecretArn": ARN}
    env["TWILIO_CONNECTOR_TRANSPORT"] = "greengrass"
    for command in ("run", "check-config"):
        result = subprocess.run([*CLI, command], capture_output=True, text=True, env=env, timeout=60, check=False)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and "SVCUID" in result.stderr
