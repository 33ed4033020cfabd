"""The simulator's web application: Twilio's routes with Basic auth, latency, injected faults and the record of
what it received, over the account in `resources` and the lists in `listing`; and the `/_sim` control routes."""

from __future__ import annotations

import asyncio
import base64
import binascii
import random
import ssl
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from ...domain.signature import signature
from .listing import BadQuery, Page, select
from .resources import API, Account, Resource, inbound_item, new_item, reach, resources, update, validate

__all__ = ["DEFAULT_ACCOUNT_SID", "DEFAULT_AUTH_TOKEN", "Fault", "Simulator"]

from .defaults import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN


@dataclass
class Fault:
    """Answer the next `count` create requests (of `resource`, or of both) with this error.

    `store` creates the resource anyway before answering (Twilio acted, the answer was lost);
    `delay` holds the answer back that many seconds (to outlast a client timeout);
    `drop` closes the connection instead of answering; `list` applies the fault to list requests instead.
    """

    status: int
    code: int | None = None
    message: str = "Service unavailable"
    count: int = 1
    retry_after: float | None = None
    resource: str | None = None
    store: bool = False
    delay: float = 0.0
    drop: bool = False
    list: bool = False


def _error(status: int, code: int | None, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}" if code else None,
        "status": status,
    }
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def _json(document: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(document), content_type="application/json")


class Simulator:
    def __init__(
        self,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        auth_token: str = DEFAULT_AUTH_TOKEN,
        *,
        api_key_sid: str | None = None,
        api_key_secret: str | None = None,
        latency: float = 0.0,
    ) -> None:
        self.account_sid = account_sid
        #: The account: trial or not, its numbers and their capabilities, its verified caller IDs.
        self.account = Account(account_sid)
        self._logins = {account_sid: auth_token}
        if api_key_sid and api_key_secret:
            self._logins[api_key_sid] = api_key_secret
        self.latency = latency
        #: Seconds a new message or call stays out of list answers (Twilio's lists lag behind its creates), and the
        #: mean of a random extra drawn for each one (an exponential tail: most are prompt, a few very late).
        self.list_lag = 0.0
        self.list_lag_spread = 0.0
        self._extra_lag: dict[str, float] = {}
        self._media_of: dict[str, list[str]] = {}  # a message's media (the URLs it was sent with), by SID
        #: The account's limit on concurrent API requests: past it, creates are refused with 429 (20429), never
        #: processed, as Twilio does (0: no limit). `most_concurrent` is the most seen at once.
        self.concurrency_limit = 0
        self.most_concurrent = 0
        self._concurrent = 0
        self._created_at: dict[str, float] = {}  # sid -> monotonic time of creation, for list_lag
        self._auth_token = auth_token
        #: Delivery simulation, e.g. {"Messages": "delivered", "Calls": "completed", "after_ms": 50}: created
        #: resources reach that status after that delay, and their StatusCallback (if any) is called, signed.
        self.delivery: dict[str, Any] = {}
        self.inbound_webhook: str | None = None  # the numbers' messaging webhook: incoming texts are posted there
        self._background: set[asyncio.Task[None]] = set()
        self.faults: deque[Fault] = deque()
        self.received: list[dict[str, Any]] = []
        self._resources = resources()

    @property
    def trial(self) -> bool:
        """A trial account: Twilio prefixes every message body with TRIAL_PREFIX."""
        return self.account.trial

    @trial.setter
    def trial(self, value: bool) -> None:
        self.account.trial = value

    # -- the application ---------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.on_response_prepare.append(_request_id)
        api = API.format(account="{account}")
        for name, resource in self._resources.items():
            app.router.add_post(f"{api}/{name}.json", partial(self._create, resource))
            app.router.add_get(f"{api}/{name}.json", partial(self._list, resource))
            app.router.add_get(f"{api}/{name}/{{sid}}.json", partial(self._fetch, resource))
            app.router.add_post(f"{api}/{name}/{{sid}}.json", partial(self._update, resource))
        app.router.add_get(f"{api}.json", self._account)
        app.router.add_get(f"{api}/Messages/{{sid}}/Media.json", self._media)
        for name, listed in (
            ("IncomingPhoneNumbers", self.account.phone_numbers),
            ("OutgoingCallerIds", self.account.caller_ids),
        ):
            app.router.add_get(f"{api}/{name}.json", partial(self._list_of, name, listed))
        app.router.add_post("/_sim/faults", self._add_fault)
        app.router.add_post("/_sim/inbound", self._inbound)
        app.router.add_delete("/_sim/faults", self._clear_faults)
        app.router.add_post("/_sim/config", self._configure)
        app.router.add_get("/_sim/requests", self._get_received)
        app.router.add_delete("/_sim/requests", self._reset)
        return app

    def rotate_auth_token(self, token: str) -> None:
        """Accept `token` and no longer the old one, as promoting a secondary token in Twilio's console does."""
        self._logins[self.account_sid] = token
        self._auth_token = token

    async def serve(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
        """Listen on `host`:`port` (0: any free port); https with `ssl_context`."""
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context).start()
        return runner

    # -- Twilio API --------------------------------------------------------------------------------------

    def _authorised(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        try:
            user, _, password = base64.b64decode(header.removeprefix("Basic "), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = ""
        if not header.startswith("Basic ") or self._logins.get(user) != password:
            return _error(401, 20003, "Authenticate", {"WWW-Authenticate": 'Basic realm="Twilio API"'})
        if request.match_info["account"] != self.account_sid:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        return None

    async def _create(self, resource: Resource, request: web.Request) -> web.Response:
        refusal = self._authorised(request)
        if refusal is not None:
            return refusal
        posted = await request.post()
        form = {key: str(value) for key, value in posted.items() if key != "MediaUrl"}
        media = [str(url) for url in posted.getall("MediaUrl", [])]
        entry: dict[str, Any] = {"resource": resource.name, "params": form, "time": time.time()}
        if media:
            entry["media"] = media
        self.received.append(entry)
        self._concurrent += 1
        try:
            self.most_concurrent = max(self.most_concurrent, self._concurrent)
            if self.concurrency_limit and self._concurrent > self.concurrency_limit:
                entry["outcome"] = 20429
                headers = {"Twilio-Concurrent-Requests": str(self._concurrent)}
                return _error(429, 20429, "Too Many Requests", headers)
            return await self._answer(resource, form, media, entry, request)
        finally:
            self._concurrent -= 1

    async def _answer(
        self, resource: Resource, form: dict[str, str], media: list[str], entry: dict[str, Any], request: web.Request
    ) -> web.Response:
        if self.latency:
            await asyncio.sleep(self.latency)
        fault = self._take_fault(resource.name, listing=False)
        if fault is not None:
            return await self._inject(fault, resource, form, media, entry, request=request)
        problem = validate(resource, form, media, self.account)
        if problem is not None:
            entry["outcome"] = problem[1]
            return _error(*problem)
        item = self._store(resource, form, media)
        entry["outcome"] = item["sid"]
        return _json(item, status=201)

    def _take_fault(self, resource: str, *, listing: bool) -> Fault | None:
        for fault in self.faults:
            if fault.resource in (None, resource) and fault.list is listing:
                fault.count -= 1
                if fault.count <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    async def _inject(
        self,
        fault: Fault,
        resource: Resource,
        form: dict[str, str],
        media: list[str],
        entry: dict[str, Any],
        *,
        request: web.Request,
    ) -> web.Response:
        if fault.store and validate(resource, form, media, self.account) is None:
            entry["stored"] = self._store(resource, form, media)["sid"]
        if fault.delay:
            await asyncio.sleep(fault.delay)
        entry["outcome"] = fault.code or fault.status or "dropped"
        if fault.drop and request.transport is not None:
            request.transport.abort()  # no answer at all: the client sees the connection close
            raise asyncio.CancelledError
        headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
        return _error(fault.status, fault.code, fault.message, headers)

    def _store(self, resource: Resource, form: dict[str, str], media: list[str]) -> dict[str, Any]:
        item = new_item(resource, form, media, self.account)
        sid = item["sid"]
        resource.items[sid] = item
        self._created_at[sid] = time.monotonic()
        if self.list_lag_spread:
            self._extra_lag[sid] = random.expovariate(1 / self.list_lag_spread)
        final = self.delivery.get(resource.name)
        if final:
            self._in_background(self._deliver(resource, item, final, form))
        return item

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _deliver(self, resource: Resource, item: dict[str, Any], final: str, form: dict[str, str]) -> None:
        await asyncio.sleep(float(self.delivery.get("after_ms", 0)) / 1000)
        reach(item, final, int(self.delivery.get("call_seconds", 1)))
        callback = form.get("StatusCallback")
        if not callback:
            return
        prefix = "Message" if resource.name == "Messages" else "Call"
        params = {
            f"{prefix}Sid": item["sid"],
            f"{prefix}Status": final,
            "AccountSid": self.account_sid,
            "To": item["to"],
            "From": item["from"] or "",
        }
        if prefix == "Call" and item["duration"] is not None:
            params["CallDuration"] = item["duration"]
        headers = {"X-Twilio-Signature": signature(self._auth_token, callback, params)}
        async with aiohttp.ClientSession() as session, session.post(callback, data=params, headers=headers):
            pass

    async def _list(self, resource: Resource, request: web.Request) -> web.Response:
        refusal = self._authorised(request)
        if refusal is not None:
            return refusal
        fault = self._take_fault(resource.name, listing=True)
        if fault is not None:
            return _error(fault.status, fault.code, fault.message)
        visible_before = time.monotonic() - self.list_lag
        shown = [
            item
            for item in reversed(resource.items.values())  # newest first, as Twilio lists them
            if self._created_at.get(item["sid"], 0.0) + self._extra_lag.get(item["sid"], 0.0) <= visible_before
        ]
        return self._page(resource.name, shown, request)

    async def _list_of(
        self, name: str, listed: Callable[[], list[dict[str, Any]]], request: web.Request
    ) -> web.Response:
        return self._authorised(request) or self._page(name, listed(), request)

    def _page(self, name: str, items: list[dict[str, Any]], request: web.Request) -> web.Response:
        base = request.path
        key = {
            "IncomingPhoneNumbers": "incoming_phone_numbers",
            "OutgoingCallerIds": "outgoing_caller_ids",
            "Media": "media_list",
        }
        try:
            page = Page(base, select(name, items, request.query), request.query)
        except BadQuery as exc:
            return _error(400, 20001, str(exc))
        return _json(page.document(key.get(name, name.lower())))

    async def _fetch(self, resource: Resource, request: web.Request) -> web.Response:
        found = self._item(resource, request)
        return found if isinstance(found, web.Response) else _json(found)

    async def _update(self, resource: Resource, request: web.Request) -> web.Response:
        """A message redacted or canceled, a call ended or redirected (resources.update says how)."""
        found = self._item(resource, request)
        if isinstance(found, web.Response):
            return found
        problem = update(found, {key: str(value) for key, value in (await request.post()).items()})
        return _error(*problem) if problem else _json(found)

    def _item(self, resource: Resource, request: web.Request) -> dict[str, Any] | web.Response:
        """The message or call the request names, or the refusal Twilio would answer (401, 404)."""
        refusal = self._authorised(request)
        if refusal is not None:
            return refusal
        item = resource.items.get(request.match_info["sid"])
        return _error(404, 20404, f"The requested resource {request.path} was not found") if item is None else item

    async def _media(self, request: web.Request) -> web.Response:
        """A message's media, as Twilio lists them: one resource each, its `uri` where the content is."""
        found = self._item(self._resources["Messages"], request)
        if isinstance(found, web.Response):
            return found
        base = f"{API.format(account=self.account_sid)}/Messages/{found['sid']}/Media"
        listed = [
            {"sid": f"ME{index:032x}", "parent_sid": found["sid"], "account_sid": self.account_sid,
             "content_type": "image/jpeg", "uri": f"{base}/ME{index:032x}.json"}
            for index, _ in enumerate(self._media_of.get(found["sid"], []), start=1)
        ]  # fmt: skip
        return self._page("Media", listed, request)

    async def _account(self, request: web.Request) -> web.Response:
        return self._authorised(request) or _json(self.account.resource())

    # -- control endpoints -------------------------------------------------------------------------------

    def receive(self, sender: str, to: str, body: str, media: list[str] | None = None) -> dict[str, Any]:
        """Someone texted `body` from `sender` to the account's number `to`: listed as Twilio lists inbound
        messages (after `list_lag`, like any other)."""
        messages = self._resources["Messages"]
        item = inbound_item(messages, {"To": to, "From": sender, "Body": body}, media or [], self.account)
        messages.items[item["sid"]] = item
        self._media_of[item["sid"]] = list(media or [])
        self._created_at[item["sid"]] = time.monotonic()
        if self.inbound_webhook:
            self._in_background(self._post_inbound(self.inbound_webhook, item, list(media or [])))
        return item

    async def _post_inbound(self, url: str, item: dict[str, Any], media: list[str]) -> None:
        """Post an incoming text to the messaging webhook as Twilio does: a signed form."""
        params = {
            "MessageSid": item["sid"],
            "SmsSid": item["sid"],
            "SmsMessageSid": item["sid"],
            "AccountSid": self.account_sid,
            "From": item["from"],
            "To": item["to"],
            "Body": item["body"],
            "NumMedia": str(len(media)),
            "NumSegments": "1",
            "SmsStatus": "received",
            "ApiVersion": "2010-04-01",
            **{f"MediaUrl{i}": media_url for i, media_url in enumerate(media)},
        }
        headers = {"X-Twilio-Signature": signature(self._auth_token, url, params)}
        async with aiohttp.ClientSession() as session, session.post(url, data=params, headers=headers) as answer:
            await answer.read()

    async def _inbound(self, request: web.Request) -> web.Response:
        try:
            document = orjson.loads(await request.read())
            item = self.receive(document["from"], document["to"], document["body"], document.get("media"))
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            return _json({"error": f"expected {{from, to, body}}: {exc}"}, status=400)
        return _json(item, status=201)

    async def _add_fault(self, request: web.Request) -> web.Response:
        try:
            fault = Fault(**orjson.loads(await request.read()))
        except (orjson.JSONDecodeError, TypeError) as exc:
            return _json({"error": str(exc)}, status=400)
        self.faults.append(fault)
        return _json({"queued": len(self.faults)}, status=201)

    async def _clear_faults(self, request: web.Request) -> web.Response:
        """The outage is over: faults not yet taken are dropped."""
        self.faults.clear()
        return web.Response(status=204)

    async def _configure(self, request: web.Request) -> web.Response:
        document = orjson.loads(await request.read())
        self.latency = float(document.get("latency_ms", self.latency * 1000)) / 1000
        self.delivery = document.get("delivery", self.delivery)
        self.inbound_webhook = document.get("inbound_webhook", self.inbound_webhook)
        self.list_lag = float(document.get("list_lag_ms", self.list_lag * 1000)) / 1000
        self.list_lag_spread = float(document.get("list_lag_spread_ms", self.list_lag_spread * 1000)) / 1000
        self.trial = bool(document.get("trial", self.trial))
        self.account.numbers = document.get("numbers", self.account.numbers)
        self.account.verified = document.get("verified", self.account.verified)
        self.concurrency_limit = int(document.get("concurrency_limit", self.concurrency_limit))
        return _json(
            {"latency_ms": self.latency * 1000, "delivery": self.delivery, "list_lag_ms": self.list_lag * 1000}
            | {"list_lag_spread_ms": self.list_lag_spread * 1000}
            | {"trial": self.trial, "concurrency_limit": self.concurrency_limit}
            | {"numbers": self.account.numbers, "verified": self.account.verified}
        )

    async def _get_received(self, request: web.Request) -> web.Response:
        return _json(self.received)

    async def _reset(self, request: web.Request) -> web.Response:
        self.received.clear()
        self.faults.clear()
        for resource in self._resources.values():
            resource.items.clear()
        self._created_at.clear()
        self._extra_lag.clear()
        return web.Response(status=204)


async def _request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer carries a Twilio-Request-Id, as Twilio's do (what its support asks for)."""
    response.headers["Twilio-Request-Id"] = "RQ" + uuid.uuid4().hex
