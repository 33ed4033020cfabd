"""The Twilio client against the simulator over real sockets: results and failure classification."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from urllib.parse import urlencode

import pytest

from conftest import DEFAULT_FROM, SimulatorHandle, free_port
from twilio_connector.domain.contract import Content, Kind, Notification, SendResult
from twilio_connector.domain.outcomes import FailureKind, TwilioFailure
from twilio_connector.settings.secrets import Secret
from twilio_connector.twilio.client import TwilioClient, _encode, _form
from twilio_connector.twilio.simulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, Fault

SMS = Notification("r", Kind.SMS, "+12345000000", DEFAULT_FROM, "Darla", "hello", 0)
CALL = Notification("r", Kind.CALL, "+12345000000", DEFAULT_FROM, "Darla", "https://example.com/t", 0, Content.URL)


def client_for(
    url: str, token: str = DEFAULT_AUTH_TOKEN, username: str = DEFAULT_ACCOUNT_SID, **kw: float
) -> TwilioClient:
    return TwilioClient(url, DEFAULT_ACCOUNT_SID, username, Secret(token), **kw)


@pytest.fixture
async def twilio(simulator: SimulatorHandle) -> AsyncIterator[TwilioClient]:
    async with client_for(simulator.url) as client:
        yield client


def test_form_encoding_matches_urlencode() -> None:
    note = Notification("r", Kind.SMS, "+12345000000", DEFAULT_FROM, "D", "héllo wörld & a=1+2 % / ?", 0)
    form = _form(note, "https://cb.example/hook?site=7&x=y z")
    for _ in range(2):  # the second time from the cache of repeating values
        assert _encode(form) == urlencode(form).encode()


async def test_sms_and_call_are_created(twilio: TwilioClient, simulator: SimulatorHandle) -> None:
    message = await twilio.create(SMS)
    placed = await twilio.create(CALL)
    assert isinstance(message, SendResult) and message.sid.startswith("SM") and message.status == "queued"
    assert isinstance(placed, SendResult) and placed.sid.startswith("CA")
    assert [e["params"] for e in simulator.created()] == [
        {"To": "+12345000000", "From": DEFAULT_FROM, "Body": "hello"},
        {"To": "+12345000000", "From": DEFAULT_FROM, "Url": "https://example.com/t"},
    ]


@pytest.mark.parametrize(("to", "code"), [("+15005550001", 21211), ("+15005550004", 21610), ("+15005550009", 21614)])
async def test_twilio_errors_carry_code_and_message(twilio: TwilioClient, to: str, code: int) -> None:
    result = await twilio.create(Notification("r", Kind.SMS, to, DEFAULT_FROM, "D", "hi", 0))
    assert isinstance(result, TwilioFailure)
    assert (result.kind, result.http_status, result.code) == (FailureKind.REJECTED, 400, code)
    assert result.message


async def test_bad_credentials_are_refused_with_20003(simulator: SimulatorHandle) -> None:
    async with client_for(simulator.url, token="wrong") as client:
        result = await client.create(SMS)
    assert isinstance(result, TwilioFailure) and (result.http_status, result.code) == (401, 20003)
    assert "wrong" not in repr(result) and "wrong" not in repr(client)


async def test_api_key_authentication(simulator: SimulatorHandle) -> None:
    key = "SK" + "1" * 32
    simulator.sim._logins[key] = "key-secret"
    async with client_for(simulator.url, token="key-secret", username=key) as client:
        assert isinstance(await client.create(SMS), SendResult)


async def test_gateway_error_with_retry_after(twilio: TwilioClient, simulator: SimulatorHandle) -> None:
    simulator.sim.faults.append(Fault(status=429, code=20429, message="Too Many Requests", retry_after=2))
    result = await twilio.create(SMS)
    assert isinstance(result, TwilioFailure) and (result.request_id or "").startswith("RQ")  # Twilio-Request-Id
    assert replace(result, request_id=None) == TwilioFailure(FailureKind.REJECTED, "Too Many Requests", 429, 20429, 2.0)


async def test_500_is_ambiguous(twilio: TwilioClient, simulator: SimulatorHandle) -> None:
    simulator.sim.faults.append(Fault(status=500, code=20500, message="Internal Server Error", store=True))
    result = await twilio.create(SMS)
    assert isinstance(result, TwilioFailure) and result.kind is FailureKind.AMBIGUOUS
    assert len(simulator.sim._resources["Messages"].items) == 1  # Twilio did act on it


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (Fault(status=503, code=20503, message="Service Unavailable"), FailureKind.REJECTED),  # Twilio's own word
        (Fault(status=503, message="Service Unavailable"), FailureKind.AMBIGUOUS),  # no Twilio code: a gateway's
        (Fault(status=504, code=20504, message="Gateway Timeout"), FailureKind.AMBIGUOUS),
        (Fault(status=500, code=20500, message="Internal Server Error"), FailureKind.AMBIGUOUS),
    ],
)
async def test_only_twilio_s_own_503_proves_nothing_was_created(
    twilio: TwilioClient, simulator: SimulatorHandle, fault: Fault, kind: FailureKind
) -> None:
    simulator.sim.faults.append(fault)
    result = await twilio.create(SMS)
    assert isinstance(result, TwilioFailure) and (result.kind, result.http_status) == (kind, fault.status)


async def test_timeout_after_sending_is_ambiguous(simulator: SimulatorHandle) -> None:
    simulator.sim.faults.append(Fault(status=503, delay=2))
    async with client_for(simulator.url, timeout=0.3) as client:
        result = await client.create(SMS)
    assert isinstance(result, TwilioFailure) and result.kind is FailureKind.AMBIGUOUS


async def test_connection_refused_is_not_sent() -> None:
    async with client_for(f"http://127.0.0.1:{free_port()}") as client:
        result = await client.create(SMS)
    assert isinstance(result, TwilioFailure) and result.kind is FailureKind.NOT_SENT


async def test_non_json_gateway_page_keeps_the_http_status() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 5\r\nConnection: close\r\n\r\noops!")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, client_for(f"http://127.0.0.1:{port}") as client:
        result = await client.create(SMS)
    assert result == TwilioFailure(FailureKind.AMBIGUOUS, "HTTP 502", 502, None, None)  # Twilio may have acted
