"""The Twilio client over an in-memory transport (ports.http.MockTransport): what it asks and how it reads the
answers, without a socket. The same behaviours over real sockets are in test_twilio.py."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from twilio_connector.domain.contract import Kind, Notification, SendResult
from twilio_connector.domain.outcomes import FailureKind, TwilioFailure
from twilio_connector.ports.http import Answer, ConnectFailed, MockTransport, NoAnswer, Request
from twilio_connector.settings.secrets import Secret
from twilio_connector.twilio.client import TwilioClient

ACCOUNT = "AC" + "0" * 32
SMS = Notification("r", Kind.SMS, "+12345000000", "+15005550006", "Darla", "hello", 0)
MESSAGES = f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
#: A second page's query as Twilio writes it in `next_page_uri` (the filters kept, a page token added).
NEXT = "To=%2B12345000000&From=%2B15005550006&PageSize=50&Page=1&PageToken=PASM2"


def client(transport: MockTransport) -> TwilioClient:
    return TwilioClient("https://api.twilio.test", ACCOUNT, ACCOUNT, Secret("token-1"), transport=transport)


def message(sid: str, body: str = "hello", created: str = "Sat, 05 Dec 2026 22:00:00 +0000") -> dict[str, str]:
    return {"sid": sid, "status": "queued", "to": SMS.to, "from": SMS.from_, "body": body, "date_created": created}


async def test_a_create_posts_the_form_with_basic_credentials_and_reads_the_sid() -> None:
    transport = MockTransport(lambda request: Answer(201, orjson.dumps(message("SM1"))))
    outcome = await client(transport).create(SMS)
    assert outcome == SendResult("SM1", "queued", SMS.to, SMS.from_)
    (request,) = transport.requests
    assert (request.method, request.target) == ("POST", MESSAGES)
    assert parse_qs(request.body.decode()) == {"To": [SMS.to], "From": [SMS.from_], "Body": ["hello"]}
    expected = base64.b64encode(f"{ACCOUNT}:token-1".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    assert request.headers["User-Agent"] == "twilio-connector"


@pytest.mark.parametrize(
    ("answer", "kind", "code"),
    [
        (Answer(400, b'{"code": 21211, "message": "Invalid To"}'), FailureKind.REJECTED, 21211),
        (Answer(429, b'{"code": 20429, "message": "Too Many Requests"}', "3"), FailureKind.REJECTED, 20429),
        (Answer(500, b'{"code": 20500, "message": "Internal Server Error"}'), FailureKind.AMBIGUOUS, 20500),
        (Answer(504, b"<html>Gateway Time-out</html>"), FailureKind.AMBIGUOUS, None),
        (Answer(201, b"not json"), FailureKind.AMBIGUOUS, None),
    ],
)
async def test_answers_are_classified_by_what_they_prove(answer: Answer, kind: FailureKind, code: int | None) -> None:
    outcome = await client(MockTransport(lambda request: answer)).create(SMS)
    assert isinstance(outcome, TwilioFailure) and outcome.kind is kind and outcome.code == code
    if answer.retry_after:
        assert outcome.retry_after == 3.0


@pytest.mark.parametrize(
    ("error", "kind"), [(ConnectFailed("refused"), FailureKind.NOT_SENT), (NoAnswer("reset"), FailureKind.AMBIGUOUS)]
)
async def test_no_answer_is_told_apart_from_nothing_sent(error: Exception, kind: FailureKind) -> None:
    def fail(request: Request) -> Answer:
        raise error

    outcome = await client(MockTransport(fail)).create(SMS)
    assert isinstance(outcome, TwilioFailure) and outcome.kind is kind


async def test_a_lookup_walks_the_pages_newest_first_and_matches_to_from_and_body() -> None:
    pages = {
        "0": {"messages": [message("SM3", "other"), message("SM2")], "next_page_uri": f"{MESSAGES}?{NEXT}"},
        "1": {"messages": [message("SM1", created="Sat, 05 Dec 2026 20:00:00 +0000")], "next_page_uri": None},
    }

    def page(request: Request) -> Answer:
        query = parse_qs(urlsplit(request.target).query)
        assert query["To"] == [SMS.to] and query["From"] == [SMS.from_]
        return Answer(200, orjson.dumps(pages[query.get("Page", ["0"])[0]]))

    transport = MockTransport(page)
    since = 1_796_508_000.0 - 3600  # 2026-12-05 21:00 UTC: SM1 (20:00) is older than the window and its skew
    found = await client(transport).find(SMS, since)
    assert not isinstance(found, TwilioFailure)
    assert [result.sid for result in found] == ["SM2"]
    assert len(transport.requests) == 2  # the second page reached back past `since`: no third request


async def test_credentials_read_again_are_used_from_the_next_request_on() -> None:
    transport = MockTransport(lambda request: Answer(201, orjson.dumps(message("SM1"))))
    twilio = client(transport)
    await twilio.create(SMS)
    twilio.authenticate(ACCOUNT, Secret("token-2"))
    await twilio.create(SMS)
    first, second = (base64.b64decode(r.headers["Authorization"].split()[1]).decode() for r in transport.requests)
    assert (first, second) == (f"{ACCOUNT}:token-1", f"{ACCOUNT}:token-2")
    await twilio.close()
    assert transport.closed
