"""The simulator answers like Twilio: auth, resources, errors, list and fetch, faults, its record."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from conftest import SimulatorHandle, basic
from twilio_connector.cli.main import main
from twilio_connector.twilio.client import TRIAL_PREFIX
from twilio_connector.twilio.simulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN

API = f"/2010-04-01/Accounts/{DEFAULT_ACCOUNT_SID}"


@pytest.fixture
async def http(simulator: SimulatorHandle) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(simulator.url, headers=basic(DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN)) as session:
        yield session


async def create(http: aiohttp.ClientSession, resource: str, **form: str) -> tuple[int, dict]:
    async with http.post(f"{API}/{resource}.json", data=form) as response:
        return response.status, await response.json()


async def test_unauthenticated_requests_get_20003(simulator: SimulatorHandle) -> None:
    async with aiohttp.ClientSession(simulator.url) as anonymous:
        async with anonymous.post(f"{API}/Messages.json", data={"To": "+12345000000"}) as response:
            assert response.status == 401 and (await response.json())["code"] == 20003
            assert "Basic" in response.headers["WWW-Authenticate"]
        async with anonymous.get(f"{API}/Messages.json", headers=basic(DEFAULT_ACCOUNT_SID, "nope")) as response:
            assert response.status == 401
    assert simulator.created() == []


async def test_other_accounts_are_not_found(http: aiohttp.ClientSession) -> None:
    async with http.get("/2010-04-01/Accounts/AC" + "f" * 32 + "/Messages.json") as response:
        assert response.status == 404 and (await response.json())["code"] == 20404


async def test_message_create_list_fetch(http: aiohttp.ClientSession) -> None:
    status, first = await create(http, "Messages", To="+12345000000", From="+15005550006", Body="one")
    assert status == 201 and first["sid"].startswith("SM") and first["status"] == "queued"
    assert first["to"] == "+12345000000" and first["body"] == "one" and first["num_segments"] == "1"
    await create(http, "Messages", To="+12345000001", From="+15005550006", Body="two")
    async with http.get(f"{API}/Messages.json", params={"To": "+12345000000"}) as response:
        listed = await response.json()
    assert [m["sid"] for m in listed["messages"]] == [first["sid"]]
    async with http.get(f"{API}/Messages.json", params={"From": "+15005550006"}) as response:
        assert [m["body"] for m in (await response.json())["messages"]] == ["two", "one"]  # newest first
    async with http.get(f"{API}/Messages/{first['sid']}.json") as response:
        assert (await response.json()) == first
    async with http.get(f"{API}/Messages/SM{'0' * 32}.json") as response:
        assert response.status == 404


async def test_call_create_and_fetch(http: aiohttp.ClientSession) -> None:
    status, placed = await create(http, "Calls", To="+12345000000", From="+15005550006", Url="https://e.example/t")
    assert status == 201 and placed["sid"].startswith("CA") and placed["status"] == "queued"
    async with http.get(f"{API}/Calls/{placed['sid']}.json") as response:
        assert (await response.json())["to"] == "+12345000000"


@pytest.mark.parametrize(
    ("resource", "form", "code"),
    [
        ("Messages", {"From": "+15005550006", "Body": "x"}, 21604),
        ("Messages", {"To": "+12345000000", "Body": "x"}, 21603),
        ("Messages", {"To": "+12345000000", "From": "+15005550006"}, 21602),
        ("Messages", {"To": "+12345000000", "From": "+15005550006", "Body": "x" * 1601}, 21617),
        ("Messages", {"To": "+15005550001", "From": "+15005550006", "Body": "x"}, 21211),
        ("Messages", {"To": "+15005550002", "From": "+15005550006", "Body": "x"}, 21612),
        ("Messages", {"To": "+15005550003", "From": "+15005550006", "Body": "x"}, 21408),
        ("Messages", {"To": "+15005550004", "From": "+15005550006", "Body": "x"}, 21610),
        ("Messages", {"To": "+15005550009", "From": "+15005550006", "Body": "x"}, 21614),
        ("Messages", {"To": "+12345000000", "From": "+15005550001", "Body": "x"}, 21212),
        ("Messages", {"To": "+12345000000", "From": "+15005550007", "Body": "x"}, 21606),
        ("Messages", {"To": "+12345000000", "From": "+15005550008", "Body": "x"}, 21611),
        ("Messages", {"To": "12345", "From": "+15005550006", "Body": "x"}, 21211),
        ("Calls", {"To": "+12345000000", "From": "+15005550006"}, 21205),
        ("Calls", {"To": "+15005550001", "From": "+15005550006", "Url": "https://e.example/t"}, 21217),
    ],
)
async def test_twilio_errors_and_magic_numbers(
    http: aiohttp.ClientSession, resource: str, form: dict, code: int
) -> None:
    status, body = await create(http, resource, **form)
    assert status == 400
    assert body["code"] == code and body["status"] == 400 and body["message"]
    assert body["more_info"] == f"https://www.twilio.com/docs/errors/{code}"


async def test_fault_injection_and_record(http: aiohttp.ClientSession, simulator: SimulatorHandle) -> None:
    fault = {"status": 503, "code": 20503, "message": "busy", "count": 2, "retry_after": 1.5, "resource": "Messages"}
    async with http.post("/_sim/faults", json=fault) as response:
        assert response.status == 201
    form = {"To": "+12345000000", "From": "+15005550006", "Url": "https://e.example/t"}
    assert (await create(http, "Calls", **form))[0] == 201  # the fault is for Messages only
    for _ in range(2):
        async with http.post(f"{API}/Messages.json", data={**form, "Body": "x"}) as response:
            assert response.status == 503 and response.headers["Retry-After"] == "1.5"
            assert (await response.json())["code"] == 20503
    assert (await create(http, "Messages", **form, Body="x"))[0] == 201
    async with http.get("/_sim/requests") as response:
        record = await response.json()
    assert [(e["resource"], e["outcome"] if isinstance(e["outcome"], int) else "ok") for e in record] == [
        ("Calls", "ok"),
        ("Messages", 20503),
        ("Messages", 20503),
        ("Messages", "ok"),
    ]
    async with http.delete("/_sim/requests") as response:
        assert response.status == 204
    assert simulator.created() == []


async def test_list_lag_has_a_random_tail_per_message(http: aiohttp.ClientSession, simulator: SimulatorHandle) -> None:
    """Each message's lag is the base plus an exponential draw: some show at once, some much later."""
    simulator.sim.list_lag_spread = 0.5
    for n in range(40):
        assert (await create(http, "Messages", To="+12345000000", From="+15005550006", Body=f"m{n}"))[0] == 201
    shown: list[int] = []
    while not shown or shown[-1] == 0:  # until the first shows: an early draw
        async with http.get(f"{API}/Messages.json", params={"PageSize": "100"}) as response:
            shown.append(len((await response.json())["messages"]))
        await asyncio.sleep(0.005)
    assert shown[-1] < 40  # the others wait for their own, later draws


async def test_a_reply_is_listed_as_twilio_lists_inbound_messages(http: aiohttp.ClientSession) -> None:
    async with http.post("/_sim/inbound", json={"from": "+15557654321", "to": "+15005550006", "body": "ACK"}) as r:
        assert r.status == 201
    async with http.get(f"{API}/Messages.json", params={"To": "+15005550006"}) as response:
        [reply] = (await response.json())["messages"]
    assert (reply["direction"], reply["status"], reply["from"], reply["body"]) == (
        "inbound", "received", "+15557654321", "ACK"
    )  # fmt: skip
    assert reply["sid"].startswith("SM") and reply["date_sent"]


async def test_an_outage_ends_when_its_faults_are_cleared(http: aiohttp.ClientSession) -> None:
    async with http.post("/_sim/faults", json={"status": 503, "code": 20503, "count": 1000}) as response:
        assert response.status == 201
    assert (await create(http, "Messages", To="+12345000000", From="+15005550006", Body="x"))[0] == 503
    async with http.delete("/_sim/faults") as response:
        assert response.status == 204
    assert (await create(http, "Messages", To="+12345000000", From="+15005550006", Body="x"))[0] == 201


async def test_latency_is_configurable(http: aiohttp.ClientSession, simulator: SimulatorHandle) -> None:
    async with http.post("/_sim/config", json={"latency_ms": 50}) as response:
        assert (await response.json()) == {
            "latency_ms": 50,
            "delivery": {},
            "list_lag_ms": 0,
            "list_lag_spread_ms": 0,
            "trial": False,
            "concurrency_limit": 0,
            "numbers": {},
            "verified": [],
        }
    assert simulator.sim.latency == 0.05


async def test_twilios_habits_on_demand(http: aiohttp.ClientSession, simulator: SimulatorHandle) -> None:
    """A list that lags behind creates, a trial account's prefix, paged lists, faults on lookups, and a
    connection dropped after the message was created."""
    async with http.post("/_sim/config", json={"list_lag_ms": 300, "trial": True}) as response:
        assert (await response.json())["list_lag_ms"] == 300
    form = {"To": "+12345000000", "From": "+15005550006"}
    for n in range(3):
        assert (await create(http, "Messages", Body=f"m{n}", **form))[0] == 201
    async with http.get(f"{API}/Messages.json", params={"To": "+12345000000"}) as response:
        assert (await response.json())["messages"] == []  # not listed yet
    await asyncio.sleep(0.35)
    async with http.get(f"{API}/Messages.json", params={"To": "+12345000000", "PageSize": "2"}) as response:
        page = await response.json()
    assert [item["body"] for item in page["messages"]] == [f"{TRIAL_PREFIX}m2", f"{TRIAL_PREFIX}m1"]
    async with http.get(page["next_page_uri"]) as response:
        last = await response.json()
    assert [item["body"] for item in last["messages"]] == [f"{TRIAL_PREFIX}m0"] and last["next_page_uri"] is None
    async with http.post("/_sim/faults", json={"status": 403, "code": 20003, "list": True}) as response:
        assert response.status == 201
    async with http.get(f"{API}/Messages.json") as response:
        assert response.status == 403
    async with http.post("/_sim/faults", json={"status": 0, "store": True, "drop": True}) as response:
        assert response.status == 201
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await create(http, "Messages", Body="dropped", **form)
    assert simulator.created()[-1]["outcome"] == "dropped" and "stored" in simulator.created()[-1]


async def test_a_reply_can_be_told_from_the_command_line(
    http: aiohttp.ClientSession, simulator: SimulatorHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    command = ["simulator", "reply", "--url", simulator.url, "--from", "+15557654321", "--to", "+15005550006"]
    told = await asyncio.to_thread(main, [*command, "--body", "ACK"])
    assert told == 0 and '"direction":"inbound"' in capsys.readouterr().out
    async with http.get(f"{API}/Messages.json", params={"To": "+15005550006"}) as response:
        [reply] = (await response.json())["messages"]
    assert (reply["from"], reply["body"], reply["direction"]) == ("+15557654321", "ACK", "inbound")
    nobody = await asyncio.to_thread(main, [*command[:3], "http://127.0.0.1:9", *command[4:], "--body", "x"])
    assert nobody == 2 and "no simulator answers at http://127.0.0.1:9" in capsys.readouterr().err


async def test_a_completed_call_lasts_as_long_as_configured(
    http: aiohttp.ClientSession, simulator: SimulatorHandle
) -> None:
    simulator.sim.delivery = {"Calls": "completed", "call_seconds": 30}
    form = {"To": "+12345000000", "From": "+19999999999", "Url": "https://example.com/twiml"}
    async with http.post(f"{API}/Calls.json", data=form) as answer:
        sid = (await answer.json())["sid"]
    call = {}
    while call.get("status") != "completed":
        async with http.get(f"{API}/Calls/{sid}.json") as answer:
            call = await answer.json()
    assert call["duration"] == "30" and call["start_time"]
