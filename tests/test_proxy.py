"""Twilio through an HTTP proxy, as on edge and plant networks: a real proxy process (Debian's tinyproxy, with basic
authentication) between the connector's client and the simulator served over TLS by a CA of the test's own."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from conftest import (
    CLI,
    DEFAULT_FROM,
    Broker,
    ConnectorProcess,
    MqttProbe,
    SimulatorHandle,
    clean_env,
    free_port,
    sms,
    wait_for_port,
)
from twilio_connector.domain.contract import Kind, Notification, SendResult
from twilio_connector.domain.outcomes import FailureKind, TwilioFailure
from twilio_connector.service import twilio_proxy
from twilio_connector.settings.schema import Settings
from twilio_connector.settings.secrets import Secret
from twilio_connector.twilio.client import TwilioClient
from twilio_connector.twilio.http1 import Proxy, proxy_for
from twilio_connector.twilio.simulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, Fault, Simulator

SMS = Notification("p1", Kind.SMS, "+12345000000", DEFAULT_FROM, "Darla", "through the proxy", 0)


@dataclass
class RunningProxy:
    port: int
    log: Path

    def url(self, credentials: str = "user:s3cret") -> str:
        return f"http://{credentials}@127.0.0.1:{self.port}"


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[RunningProxy]:
    binary = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
    port, log = free_port(), tmp_path / "tinyproxy.log"
    config = tmp_path / "tinyproxy.conf"
    config.write_text(
        f"Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 50\nBasicAuth user s3cret\nDisableViaHeader Yes\n"
        f'LogFile "{log}"\nLogLevel Connect\n'
    )
    process = subprocess.Popen([binary, "-d", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
        yield RunningProxy(port, log)
    finally:
        process.terminate()
        process.wait(10)


@dataclass
class TlsTwilio:
    """The simulator over https, its certificate issued by `ca_file`'s CA."""

    handle: SimulatorHandle
    ca_file: Path


@pytest.fixture
async def tls_simulator(tmp_path: Path) -> AsyncIterator[TlsTwilio]:
    ca = trustme.CA()
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(served)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    sim = Simulator(DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN)
    port = free_port()
    runner = await sim.serve("127.0.0.1", port, ssl_context=served)
    yield TlsTwilio(SimulatorHandle(sim, f"https://localhost:{port}"), ca_file)
    await runner.cleanup()


def client(url: str, ca_file: Path | None, proxy: Proxy | None) -> TwilioClient:
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    token = Secret(DEFAULT_AUTH_TOKEN)
    return TwilioClient(url, DEFAULT_ACCOUNT_SID, DEFAULT_ACCOUNT_SID, token, proxy=proxy, ssl_context=context)


async def test_https_is_tunnelled_through_the_proxy_with_credentials(
    proxy: RunningProxy, tls_simulator: TlsTwilio
) -> None:
    twilio = client(tls_simulator.handle.url, tls_simulator.ca_file, Proxy.parse(proxy.url()))
    async with twilio:
        assert isinstance(await twilio.create(SMS), SendResult)
        tls_simulator.handle.sim.faults.append(Fault(status=400, code=21211, message="Invalid 'To'"))
        refused = await twilio.create(SMS)
    assert isinstance(refused, TwilioFailure) and refused.code == 21211
    assert refused.request_id is not None and refused.request_id.startswith("RQ")  # for Twilio's support
    port = tls_simulator.handle.url.rsplit(":", 1)[1]
    assert f"CONNECT localhost:{port}" in proxy.log.read_text()  # it went through the proxy
    assert len(tls_simulator.handle.created()) == 2


async def test_a_proxy_that_refuses_the_credentials_is_said_so_and_nothing_is_sent(
    proxy: RunningProxy, tls_simulator: TlsTwilio
) -> None:
    twilio = client(tls_simulator.handle.url, tls_simulator.ca_file, Proxy.parse(proxy.url("user:wrong-pass")))
    async with twilio:
        outcome = await twilio.create(SMS)
    assert isinstance(outcome, TwilioFailure) and outcome.kind is FailureKind.NOT_SENT  # safe to send again
    assert "asks for credentials" in outcome.message and "wrong-pass" not in outcome.message
    assert tls_simulator.handle.created() == []


async def test_plain_http_goes_to_the_proxy_in_absolute_form(proxy: RunningProxy, simulator: SimulatorHandle) -> None:
    async with client(simulator.url, None, Proxy.parse(proxy.url())) as twilio:
        assert isinstance(await twilio.create(SMS), SendResult)
    assert f"GET {simulator.url}" not in proxy.log.read_text()
    assert f"POST {simulator.url}/2010-04-01" in proxy.log.read_text()


async def test_a_twilio_ca_file_verifies_a_tls_inspecting_proxy_or_an_unusual_chain(tls_simulator: TlsTwilio) -> None:
    async with client(tls_simulator.handle.url, None, None) as untrusted:
        outcome = await untrusted.create(SMS)
    assert isinstance(outcome, TwilioFailure) and "TLS failed" in outcome.message  # never unverified
    async with client(tls_simulator.handle.url, tls_simulator.ca_file, None) as trusted:
        assert isinstance(await trusted.create(SMS), SendResult)


def test_the_environment_names_the_proxy_unless_no_proxy_lists_the_host() -> None:
    environ = {"HTTPS_PROXY": "http://u:p@proxy.plant:3128", "NO_PROXY": "localhost,.internal"}
    found = proxy_for("https://api.twilio.com", environ)
    assert found is not None and (found.host, found.port) == ("proxy.plant", 3128)
    assert "p@" not in repr(found) and "u:p" not in str(found)
    assert proxy_for("https://twilio.internal", environ) is None
    assert proxy_for("https://localhost:8443", environ) is None
    assert proxy_for("https://api.twilio.com", {"https_proxy": "http://proxy:8080", "no_proxy": "*"}) is None
    assert proxy_for("https://api.twilio.com", {}) is None
    none = Settings(twilio_proxy=Secret("none"))
    assert twilio_proxy(none, environ) is None  # the setting wins over the environment


async def test_the_connector_reaches_twilio_through_the_proxy(
    broker: Broker,
    probe: MqttProbe,
    proxy: RunningProxy,
    tls_simulator: TlsTwilio,
    tmp_path: Path,
    spawned: list[ConnectorProcess],
) -> None:
    """As a user behind a proxy runs it (a process, on uvloop): HTTPS_PROXY in the environment, the CA that
    signs the certificate it is shown in twilio_ca_file."""
    log = tmp_path / "connector.log"
    connector = ConnectorProcess(
        broker,
        tls_simulator.handle,
        tmp_path / "j.db",
        log,
        "--twilio-ca-file",
        str(tls_simulator.ca_file),
        HTTPS_PROXY=proxy.url(),
    )
    spawned.append(connector)
    await connector.ready()
    await probe.publish("twilio/txt", sms("via-proxy"))
    assert (await probe.status_of("via-proxy"))["response"]["status"] == "success"
    assert "CONNECT localhost:" in proxy.log.read_text()
    assert "s3cret" not in log.read_text()


async def test_the_proxy_password_can_live_in_a_file(
    proxy: RunningProxy, tls_simulator: TlsTwilio, tmp_path: Path
) -> None:
    """The URL names the user only; the password comes from twilio_proxy_password_file, never from the URL or
    the environment (and the file's password wins over one left in the URL)."""
    secret = tmp_path / "proxy-password"
    secret.write_text("s3cret\n")
    settings = Settings(twilio_proxy=Secret(proxy.url("user:stale")), twilio_proxy_password_file=str(secret))
    chosen = twilio_proxy(settings, {})
    assert chosen is not None and "s3cret" not in repr(chosen)
    async with client(tls_simulator.handle.url, tls_simulator.ca_file, chosen) as twilio:
        assert isinstance(await twilio.create(SMS), SendResult)
    from_env = twilio_proxy(Settings(twilio_proxy_password_file=str(secret)), {"HTTPS_PROXY": proxy.url("user")})
    async with client(tls_simulator.handle.url, tls_simulator.ca_file, from_env) as twilio:
        assert isinstance(await twilio.create(SMS), SendResult)
    assert len(tls_simulator.handle.created()) == 2


def test_a_twilio_ca_file_that_cannot_serve_is_named_by_check_config(tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-ca.pem"
    bogus.write_text("not a certificate\n")
    env = {**clean_env(), "TWILIO_ACCOUNT_SID": DEFAULT_ACCOUNT_SID, "TWILIO_AUTH_TOKEN": DEFAULT_AUTH_TOKEN}
    result = subprocess.run(
        [*CLI, "check-config", "--twilio-ca-file", str(bogus)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and f"twilio_ca_file {bogus}: holds no PEM certificate" in result.stderr
