"""Twilio's official Python SDK, as a user's own program would call Twilio, against the simulator over a real
socket: create, fetch, list with filters, `limit` and `page_size` (its paging follows `next_page_uri` and its
PageToken), stream, update (a call ended, a message redacted), the account and its numbers, and Twilio's errors
raised as the SDK's own exception. What the SDK accepts, the connector's tests may rely on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import pytest
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.rest import Client

from conftest import SimulatorHandle
from twilio_connector.twilio.simulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN

FROM, ALICE, BOB = "+15005550006", "+15551230001", "+15551230002"
T = TypeVar("T")


@pytest.fixture
def sdk(simulator: SimulatorHandle) -> Client:
    client = Client(DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN)
    client.api.base_url = simulator.url  # the SDK's documented Domain attribute: where api.twilio.com is
    return client


async def off_loop(call: Callable[[], T]) -> T:
    """The SDK blocks (requests): run it beside the simulator's event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, call)


async def until_status(status: Callable[[], str], wanted: str, timeout: float = 10.0) -> None:
    """Wait for the delivery the simulator plays on its loop to reach `wanted`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while await off_loop(status) != wanted:
        assert asyncio.get_running_loop().time() < deadline, f"never {wanted}"
        await asyncio.sleep(0.01)


async def test_create_fetch_and_list_with_filters_limit_and_pages(sdk: Client) -> None:
    sent = [
        await off_loop(lambda i=i: sdk.messages.create(to=ALICE if i % 2 else BOB, from_=FROM, body=f"m{i}"))
        for i in range(7)
    ]
    fetched = await off_loop(lambda: sdk.messages(sent[0].sid).fetch())
    assert (fetched.sid, fetched.body, fetched.status) == (sent[0].sid, "m0", "queued")
    to_alice = await off_loop(lambda: sdk.messages.list(to=ALICE, page_size=2))
    assert [m.body for m in to_alice] == ["m5", "m3", "m1"]  # newest first, across two pages
    assert [m.body for m in await off_loop(lambda: sdk.messages.list(limit=4, page_size=3))] == ["m6", "m5", "m4", "m3"]
    streamed = await off_loop(lambda: [m.sid for m in sdk.messages.stream(page_size=2)])
    assert streamed == [m.sid for m in reversed(sent)]
    page = await off_loop(lambda: sdk.messages.page(page_size=3))
    following = await off_loop(page.next_page)
    assert "PageToken=PA" in page.next_page_url and [m.body for m in following] == ["m3", "m2", "m1"]


async def test_calls_listed_by_status_and_ended_by_update(sdk: Client, simulator: SimulatorHandle) -> None:
    simulator.sim.delivery = {"Calls": "completed"}
    done = await off_loop(lambda: sdk.calls.create(to=ALICE, from_=FROM, url="https://e.example/t.xml"))
    await until_status(lambda: sdk.calls(done.sid).fetch().status, "completed")
    simulator.sim.delivery = {}
    waiting = await off_loop(lambda: sdk.calls.create(to=BOB, from_=FROM, url="https://e.example/t.xml"))
    completed = await off_loop(lambda: sdk.calls.list(status="completed"))
    assert [c.sid for c in completed] == [done.sid]
    assert completed[0].start_time is not None and completed[0].end_time is not None
    canceled = await off_loop(lambda: sdk.calls(waiting.sid).update(status="canceled"))
    assert canceled.status == "canceled"
    with pytest.raises(TwilioRestException) as ended:
        await off_loop(lambda: sdk.calls(done.sid).update(status="completed"))
    assert (ended.value.status, ended.value.code) == (400, 21220)


async def test_a_delivered_message_is_redacted_and_listed_by_date_sent(sdk: Client, simulator: SimulatorHandle) -> None:
    simulator.sim.delivery = {"Messages": "delivered"}
    message = await off_loop(lambda: sdk.messages.create(to=ALICE, from_=FROM, body="door code 4711"))
    await until_status(lambda: sdk.messages(message.sid).fetch().status, "delivered")
    sent_on = (await off_loop(lambda: sdk.messages(message.sid).fetch())).date_sent
    assert sent_on is not None
    listed = await off_loop(lambda: sdk.messages.list(date_sent=sent_on))
    assert [m.sid for m in listed] == [message.sid]
    assert await off_loop(lambda: sdk.messages.list(date_sent_before=sent_on.replace(year=2000))) == []
    redacted = await off_loop(lambda: sdk.messages(message.sid).update(body=""))
    assert redacted.body == ""


async def test_the_account_its_numbers_and_a_trial_s_verified_caller_ids(
    sdk: Client, simulator: SimulatorHandle
) -> None:
    simulator.sim.account.numbers = {FROM: {"sms": True, "voice": True}}
    simulator.sim.account.verified = [ALICE]
    simulator.sim.trial = True
    account = await off_loop(lambda: sdk.api.v2010.accounts(DEFAULT_ACCOUNT_SID).fetch())
    assert (account.sid, account.type, account.status) == (DEFAULT_ACCOUNT_SID, "Trial", "active")
    numbers = await off_loop(lambda: sdk.incoming_phone_numbers.list(phone_number=FROM))
    assert numbers[0].capabilities == {"sms": True, "mms": False, "voice": True, "fax": False}
    assert [c.phone_number for c in await off_loop(sdk.outgoing_caller_ids.list)] == [ALICE]
    with pytest.raises(TwilioRestException) as unverified:
        await off_loop(lambda: sdk.messages.create(to=BOB, from_=FROM, body="x"))
    assert unverified.value.code == 21608


async def test_twilio_errors_are_the_sdk_s_exceptions(sdk: Client) -> None:
    with pytest.raises(TwilioRestException) as invalid:
        await off_loop(lambda: sdk.messages.create(to="+15005550001", from_=FROM, body="x"))
    assert (invalid.value.status, invalid.value.code) == (400, 21211)
    with pytest.raises(TwilioRestException) as missing:
        await off_loop(lambda: sdk.messages("SM" + "0" * 32).fetch())
    assert (missing.value.status, missing.value.code) == (404, 20404)
    stranger = Client(DEFAULT_ACCOUNT_SID, "wrong-token")
    stranger.api.base_url = sdk.api.base_url
    with pytest.raises(TwilioRestException) as refused:
        await off_loop(lambda: stranger.messages.create(to=ALICE, from_=FROM, body="x"))
    assert (refused.value.status, refused.value.code) == (401, 20003)
    with pytest.raises(TwilioException, match="Unable to fetch page"):  # what the SDK raises for a list
        await off_loop(lambda: stranger.messages.list(limit=1))
