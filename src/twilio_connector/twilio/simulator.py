"""A local stand-in for Twilio's Messages and Calls API, for tests, benchmarks and trying the connector.

It answers the way Twilio does: Basic auth, Twilio-shaped resources and error bodies, paged lists, the magic
numbers of Twilio's test credentials. It adds latency and fault injection, Twilio's awkward habits on demand (a
list that shows new resources only after `list_lag` seconds, as twilio-node #647 and twilio-java #442 report;
a trial account's body prefix; a gateway error or a dropped connection after the resource was created), and a
record of what it received:

    POST   /_sim/faults     {"status": 503, "code": 20503, "count": 2, "retry_after": 1, "resource": "Messages"}
    POST   /_sim/faults     {"status": 502, "store": true}      (Twilio acted, then its edge answered 502)
    POST   /_sim/faults     {"status": 0, "store": true, "drop": true}     (acted, then the connection dropped)
    POST   /_sim/faults     {"status": 403, "code": 20003, "count": 100, "list": true}      (lookups refused)
    POST   /_sim/config     {"latency_ms": 100, "delivery": {"Messages": "delivered", "after_ms": 50}}
    POST   /_sim/config     {"concurrency_limit": 100}      (429, 20429 past 100 concurrent creates)
    POST   /_sim/config     {"list_lag_ms": 5000, "trial": true}
    GET    /_sim/requests   every create request received, in order, with its outcome
    DELETE /_sim/requests   forget everything (resources, record, faults)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
import ssl
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import orjson
from aiohttp import web

from ..domain.signature import signature
from .client import TRIAL_PREFIX

__all__ = ["DEFAULT_ACCOUNT_SID", "DEFAULT_AUTH_TOKEN", "Fault", "Simulator"]

DEFAULT_ACCOUNT_SID = "AC" + "0" * 32
DEFAULT_AUTH_TOKEN = "simulator-token"
API = "/2010-04-01/Accounts/{account}"
MAX_BODY_CHARS = 1600

# Twilio's test-credential magic numbers: https://www.twilio.com/docs/iam/test-credentials
_MESSAGE_TO = {
    "+15005550001": (21211, "The 'To' number +15005550001 is not a valid phone number."),
    "+15005550002": (21612, "The 'To' phone number is not currently reachable via SMS."),
    "+15005550003": (
        21408,
        "Permission to send an SMS has not been enabled for the region indicated by the 'To' number.",
    ),
    "+15005550004": (21610, "Attempt to send to unsubscribed recipient"),
    "+15005550009": (21614, "'To' number is not a valid mobile number"),
}
_CALL_TO = {
    "+15005550001": (21217, "Phone number does not appear to be valid"),
    "+15005550002": (21214, "'To' phone number cannot be reached"),
    "+15005550003": (21215, "Account not authorized to call +15005550003."),
    "+15005550004": (21610, "Attempt to call a number that has opted out"),
}
_FROM = {
    "+15005550001": (21212, "The 'From' number +15005550001 is not a valid phone number."),
    "+15005550007": (
        21606,
        "The 'From' phone number provided is not a valid message-capable Twilio phone number.",
    ),
    "+15005550008": (21611, "This 'From' number has exceeded the maximum number of queued messages."),
}


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


@dataclass
class _Resource:
    name: str  # "Messages" or "Calls"
    prefix: str  # SID prefix
    content_param: str  # "Body" or "Url"
    to_errors: dict[str, tuple[int, str]]
    items: dict[str, dict[str, Any]] = field(default_factory=dict)


def _now() -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())


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


def _valid_number(value: str) -> bool:
    digits = value[1:] if value.startswith("+") else ""
    return digits.isdigit() and 8 <= len(digits) <= 15 and digits[0] != "0"


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
        self._logins = {account_sid: auth_token}
        if api_key_sid and api_key_secret:
            self._logins[api_key_sid] = api_key_secret
        self.latency = latency
        #: Seconds a new message or call stays out of list answers (Twilio's lists lag behind its creates).
        self.list_lag = 0.0
        #: A trial account: Twilio prefixes every message body with TRIAL_PREFIX.
        self.trial = False
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
        self._background: set[asyncio.Task[None]] = set()
        self.faults: deque[Fault] = deque()
        self.received: list[dict[str, Any]] = []
        self._resources = {
            "Messages": _Resource("Messages", "SM", "Body", _MESSAGE_TO),
            "Calls": _Resource("Calls", "CA", "Url", _CALL_TO),
        }

    # -- the application ---------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.on_response_prepare.append(_request_id)
        api = API.format(account="{account}")
        for name, resource in self._resources.items():
            app.router.add_post(f"{api}/{name}.json", partial(self._create, resource))
            app.router.add_get(f"{api}/{name}.json", partial(self._list, resource))
            app.router.add_get(f"{api}/{name}/{{sid}}.json", partial(self._fetch, resource))
        app.router.add_post("/_sim/faults", self._add_fault)
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

    async def _create(self, resource: _Resource, request: web.Request) -> web.Response:
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
        self, resource: _Resource, form: dict[str, str], media: list[str], entry: dict[str, Any], request: web.Request
    ) -> web.Response:
        if self.latency:
            await asyncio.sleep(self.latency)
        fault = self._take_fault(resource.name, listing=False)
        if fault is not None:
            return await self._inject(fault, resource, form, media, entry, request=request)
        problem = self._validate(resource, form, media)
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
        resource: _Resource,
        form: dict[str, str],
        media: list[str],
        entry: dict[str, Any],
        *,
        request: web.Request,
    ) -> web.Response:
        if fault.store and self._validate(resource, form, media) is None:
            entry["stored"] = self._store(resource, form, media)["sid"]
        if fault.delay:
            await asyncio.sleep(fault.delay)
        entry["outcome"] = fault.code or fault.status or "dropped"
        if fault.drop and request.transport is not None:
            request.transport.abort()  # no answer at all: the client sees the connection close
            raise asyncio.CancelledError
        headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
        return _error(fault.status, fault.code, fault.message, headers)

    @staticmethod
    def _validate(resource: _Resource, form: dict[str, str], media: list[str]) -> tuple[int, int, str] | None:
        to, sender = form.get("To"), form.get("From")
        if not to:
            return 400, 21604, "A 'To' phone number is required."
        if not sender and not (resource.name == "Messages" and form.get("MessagingServiceSid")):
            return 400, 21603, "A 'From' phone number is required."
        if resource.name == "Messages":
            body = form.get("Body", "")
            if not body and not media:
                return 400, 21602, "Message body is required."
            if len(body) > MAX_BODY_CHARS:
                return 400, 21617, "The concatenated message body exceeds the 1600 character limit."
        elif not form.get("Url") and not form.get("Twiml"):
            return 400, 21205, "Url parameter is required."
        if sender in _FROM:
            return 400, *_FROM[sender]
        if to in resource.to_errors:
            return 400, *resource.to_errors[to]
        if not _valid_number(to.removeprefix("whatsapp:")):
            return 400, 21211, f"The 'To' number {to} is not a valid phone number."
        return None

    def _store(self, resource: _Resource, form: dict[str, str], media: list[str]) -> dict[str, Any]:
        sid = resource.prefix + secrets.token_hex(16)
        now = _now()
        base = f"{API.format(account=self.account_sid)}/{resource.name}/{sid}"
        common: dict[str, Any] = {
            "sid": sid,
            "account_sid": self.account_sid,
            "to": form["To"],
            "from": form.get("From"),
            "status": "queued",
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "date_created": now,
            "date_updated": now,
            "price": None,
            "price_unit": "USD",
            "uri": f"{base}.json",
        }
        if resource.name == "Messages":
            item = common | {
                "body": (TRIAL_PREFIX if self.trial else "") + form.get("Body", ""),
                "num_segments": str(max(1, -(-len(form.get("Body", "")) // 153))),
                "num_media": str(len(media)),
                "date_sent": None,
                "error_code": None,
                "error_message": None,
                "messaging_service_sid": form.get("MessagingServiceSid"),
                "subresource_uris": {"media": f"{base}/Media.json", "feedback": f"{base}/Feedback.json"},
            }
        else:
            item = common | {
                "to_formatted": form["To"],
                "from_formatted": form.get("From"),
                "parent_call_sid": None,
                "phone_number_sid": None,
                "start_time": None,
                "end_time": None,
                "duration": None,
                "answered_by": None,
                "forwarded_from": None,
                "caller_name": None,
                "group_sid": None,
                "queue_time": "0",
                "trunk_sid": None,
                "annotation": None,
                "subresource_uris": {"notifications": f"{base}/Notifications.json"},
            }
        resource.items[sid] = item
        self._created_at[sid] = time.monotonic()
        final = self.delivery.get(resource.name)
        if final:
            task = asyncio.get_running_loop().create_task(self._deliver(resource, item, final, form))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return item

    async def _deliver(self, resource: _Resource, item: dict[str, Any], final: str, form: dict[str, str]) -> None:
        await asyncio.sleep(float(self.delivery.get("after_ms", 0)) / 1000)
        item["status"] = final
        item["date_updated"] = _now()
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
        headers = {"X-Twilio-Signature": signature(self._auth_token, callback, params)}
        async with aiohttp.ClientSession() as session, session.post(callback, data=params, headers=headers):
            pass

    async def _list(self, resource: _Resource, request: web.Request) -> web.Response:
        refusal = self._authorised(request)
        if refusal is not None:
            return refusal
        fault = self._take_fault(resource.name, listing=True)
        if fault is not None:
            return _error(fault.status, fault.code, fault.message)
        to, sender = request.query.get("To"), request.query.get("From")
        try:
            page_size = max(1, min(1000, int(request.query.get("PageSize", "50"))))
            page = max(0, int(request.query.get("Page", "0")))
        except ValueError:
            return _error(400, 20001, "PageSize and Page must be integers")
        visible_before = time.monotonic() - self.list_lag
        matches = [
            item
            for item in reversed(resource.items.values())  # newest first, as Twilio lists them
            if (to is None or item["to"] == to)
            and (sender is None or item["from"] == sender)
            and self._created_at.get(item["sid"], 0.0) <= visible_before
        ]
        start = page * page_size
        items = matches[start : start + page_size]
        base = f"{API.format(account=self.account_sid)}/{resource.name}.json"
        filters = "".join(f"&{key}={quote_plus(value)}" for key, value in (("To", to), ("From", sender)) if value)
        uri = f"{base}?PageSize={page_size}{filters}&Page={page}"
        more = start + page_size < len(matches)
        return _json(
            {
                resource.name.lower(): items,
                "end": start + max(0, len(items) - 1),
                "first_page_uri": f"{base}?PageSize={page_size}{filters}&Page=0",
                "next_page_uri": f"{base}?PageSize={page_size}{filters}&Page={page + 1}" if more else None,
                "page": page,
                "page_size": page_size,
                "previous_page_uri": f"{base}?PageSize={page_size}{filters}&Page={page - 1}" if page else None,
                "start": start,
                "uri": uri,
            }
        )

    async def _fetch(self, resource: _Resource, request: web.Request) -> web.Response:
        refusal = self._authorised(request)
        if refusal is not None:
            return refusal
        item = resource.items.get(request.match_info["sid"])
        if item is None:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        return _json(item)

    # -- control endpoints -------------------------------------------------------------------------------

    async def _add_fault(self, request: web.Request) -> web.Response:
        try:
            fault = Fault(**orjson.loads(await request.read()))
        except (orjson.JSONDecodeError, TypeError) as exc:
            return _json({"error": str(exc)}, status=400)
        self.faults.append(fault)
        return _json({"queued": len(self.faults)}, status=201)

    async def _configure(self, request: web.Request) -> web.Response:
        document = orjson.loads(await request.read())
        self.latency = float(document.get("latency_ms", self.latency * 1000)) / 1000
        self.delivery = document.get("delivery", self.delivery)
        self.list_lag = float(document.get("list_lag_ms", self.list_lag * 1000)) / 1000
        self.trial = bool(document.get("trial", self.trial))
        self.concurrency_limit = int(document.get("concurrency_limit", self.concurrency_limit))
        return _json(
            {"latency_ms": self.latency * 1000, "delivery": self.delivery, "list_lag_ms": self.list_lag * 1000}
            | {"trial": self.trial, "concurrency_limit": self.concurrency_limit}
        )

    async def _get_received(self, request: web.Request) -> web.Response:
        return _json(self.received)

    async def _reset(self, request: web.Request) -> web.Response:
        self.received.clear()
        self.faults.clear()
        for resource in self._resources.values():
            resource.items.clear()
        self._created_at.clear()
        return web.Response(status=204)


async def _request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer carries a Twilio-Request-Id, as Twilio's do (what its support asks for)."""
    response.headers["Twilio-Request-Id"] = "RQ" + uuid.uuid4().hex
