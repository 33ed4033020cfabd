"""A lean async client for the two Twilio REST calls the connector makes (Messages and Calls create)."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote, quote_plus, urlencode, urljoin, urlsplit

import orjson

from ..domain.contract import Kind, Notification, SendResult
from ..domain.outcomes import FailureKind, TwilioFailure
from ..domain.records import Reply
from ..ports.http import Answer, ConnectFailed, HttpError, HttpTransport
from ..settings.secrets import Secret
from .http1 import Http1Pool, Proxy

__all__ = ["FailureKind", "TwilioClient", "TwilioFailure"]

API_VERSION = "2010-04-01"


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: rare from Twilio, and our backoff covers it
    return seconds if seconds >= 0 else None


FORM_TYPE = "application/x-www-form-urlencoded"
#: Fields whose values repeat (numbers, senders, URLs): their quoting is kept. Message texts are not: they rarely
#: repeat, and a cache of them would hold people's messages in memory for no gain.
_REPEATING = frozenset({"To", "From", "MessagingServiceSid", "MediaUrl", "ValidityPeriod", "StatusCallback", "Url"})
_quote_repeating = lru_cache(maxsize=1024)(quote_plus)


def _encode(form: list[tuple[str, str]]) -> bytes:
    """`urlencode(form)`, cheaper: the keys need no quoting, and repeating values are quoted once."""
    quoted = (_quote_repeating(value) if key in _REPEATING else quote_plus(value) for key, value in form)
    return "&".join(f"{key}={value}" for (key, _), value in zip(form, quoted, strict=True)).encode()


def _form(notification: Notification, status_callback: str | None = None) -> list[tuple[str, str]]:
    n = notification
    form = [("To", n.to)]
    if n.from_:
        form.append(("From", n.from_))
    if n.messaging_service_sid:
        form.append(("MessagingServiceSid", n.messaging_service_sid))
    if n.content:
        form.append((n.content_type.value, n.content))
    form.extend(("MediaUrl", url) for url in n.media_urls)
    if n.validity_period is not None:
        form.append(("ValidityPeriod", str(n.validity_period)))
    if status_callback:
        form.append(("StatusCallback", status_callback))
    return form


#: Twilio's own "unavailable, try again": a 503 whose body is Twilio's error document with code 20503.
UNAVAILABLE = 20503


def declined(status: int, code: int | None) -> bool:
    """Whether an error answer proves that Twilio created nothing: every 4xx (a 429 included), and a 503 that
    Twilio's application wrote itself (its JSON error document, code 20503).

    Any other 5xx may come after Twilio acted, and is looked up before anything is sent again: a 500 from its
    application (Twilio's page for 20500 warns that a retried create may send twice), a 502 or 504 from a gateway
    that gave up waiting for it (no Twilio document in the body), a 503 without Twilio's code. For 20503 Twilio's
    error page says to try again a few times with exponential back-off, and its support article on retry logic
    counts 503 among the answers safe to retry: the service turned the request away before acting on it. That
    is the assumption this rests on; a gateway's 503 carries no such document and stays in doubt.
    """
    return status < 500 or (status == 503 and code == UNAVAILABLE)


def _rejection(answer: Answer) -> TwilioFailure:
    status = answer.status
    code: int | None = None
    message = f"HTTP {status}"
    try:
        document = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, dict):
        if isinstance(document.get("code"), int):
            code = document["code"]
        if isinstance(document.get("message"), str):
            message = document["message"]
    kind = FailureKind.AMBIGUOUS if status >= 500 and not declined(status, code) else FailureKind.REJECTED
    return TwilioFailure(kind, message, status, code, _retry_after(answer.retry_after), answer.request_id)


def _created(body: bytes, notification: Notification) -> SendResult | TwilioFailure:
    try:
        document: Any = orjson.loads(body)
        return SendResult(
            sid=str(document["sid"]),
            status=str(document.get("status") or "queued"),
            to=str(document.get("to") or notification.to),
            from_=str(document.get("from") or notification.from_),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return TwilioFailure(FailureKind.AMBIGUOUS, "Twilio accepted the request but its answer was unreadable")


#: Twilio's clock and ours may differ; a match may be created a little "before" our attempt started.
CLOCK_SKEW = 120.0
#: Lookups read this many resources a page, and at most MAX_PAGES pages (newest first) per lookup.
PAGE_SIZE, MAX_PAGES = 50, 20
#: What a trial account puts before every message body.
TRIAL_PREFIX = "Sent from your Twilio trial account - "
#: Smart Encoding (on by default on Messaging Services) replaces characters outside GSM-7 that have a look-alike
#: inside it: curly quotes, dashes, the ellipsis, unusual spaces. A stored body is compared after the same
#: replacements on both sides, so a message Twilio rewrote still matches the request it came from.
_SPACES = "\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000\t"
_SMART = str.maketrans(
    {
        **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u02bc\u02bb\uff07", "'"),
        **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb\uff02", '"'),
        **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d", "-"),
        **dict.fromkeys(_SPACES, " "),
        "\u2026": "...",
        "\u2022": "-",
        "\u200b": "",
        "\ufeff": "",
    }
)


def _reply(item: dict[str, Any], at: float) -> Reply:
    try:
        media = int(item.get("num_media") or 0)
    except (TypeError, ValueError):
        media = 0
    return Reply(str(item["sid"]), str(item.get("from")), str(item.get("to")), str(item.get("body") or ""), at, media)


def same_body(stored: str, sent: str) -> bool:
    """Whether a body Twilio stored is the one we sent: exactly, or after a trial account's prefix and Smart
    Encoding's replacements."""
    if stored == sent:
        return True
    stored = stored.removeprefix(TRIAL_PREFIX).translate(_SMART)
    return stored == sent.translate(_SMART)


def _created_at(item: dict[str, Any]) -> float | None:
    try:
        return parsedate_to_datetime(str(item.get("date_created"))).timestamp()
    except (TypeError, ValueError):
        return None


def _matches(item: dict[str, Any], notification: Notification, created: float | None, since: float) -> bool:
    """`item` (created at `created`, from its `date_created`) is what `notification` would have made."""
    if item.get("to") != notification.to or (notification.from_ and item.get("from") != notification.from_):
        return False
    if notification.kind is Kind.SMS and not same_body(str(item.get("body") or ""), notification.content):
        return False
    return created is not None and created >= since - CLOCK_SKEW


class TwilioClient:
    """Creates messages and calls, finds them again, fetches their state: over one HTTP transport.

    `username` is the account SID, or an API key SID (`SK...`) when authenticating with an API key.
    """

    def __init__(
        self,
        base_url: str,
        account_sid: str,
        username: str,
        password: Secret,
        *,
        max_connections: int = 64,
        timeout: float = 15.0,
        connect_timeout: float = 5.0,
        status_callback: str | None = None,
        transport: HttpTransport | None = None,
        proxy: Proxy | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`transport`: how requests reach `base_url` (default: a pool of kept-alive HTTP/1.1 connections, of
        `max_connections` at most, with these timeouts, through `proxy` if one is given, verifying Twilio's
        certificate with `ssl_context`'s CAs: the system's by default)."""
        parts = urlsplit(base_url.rstrip("/"))
        self._status_callback = status_callback
        self._origin = f"{parts.scheme}://{parts.netloc}"
        #: The account's home, as a path (and a base URL's own path, if it has one, before it).
        self._home = f"{parts.path}/{API_VERSION}/Accounts/{account_sid}"
        self._paths = {Kind.SMS: f"{self._home}/Messages", Kind.CALL: f"{self._home}/Calls"}
        #: Each list's own resource: created in with a POST, listed with a GET.
        self._lists = {kind: f"{path}.json" for kind, path in self._paths.items()}
        self._pool = transport or Http1Pool(
            self._origin,
            max_connections=max_connections,
            timeout=timeout,
            connect_timeout=connect_timeout,
            proxy=proxy,
            ssl_context=ssl_context,
        )
        self._pool.set_headers(**{"User-Agent": "twilio-connector"})
        self.authenticate(username, password)

    def authenticate(self, username: str, password: Secret) -> None:
        """Use these credentials from the next request on (a rotated auth token, read again)."""
        credentials = base64.b64encode(f"{username}:{password.reveal()}".encode()).decode()
        self._pool.set_headers(Authorization=f"Basic {credentials}")

    def __repr__(self) -> str:
        return f"TwilioClient({self._origin + self._home!r})"

    async def __aenter__(self) -> TwilioClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._pool.close()

    async def find(self, notification: Notification, since: float) -> list[SendResult] | TwilioFailure:
        """Messages or calls matching `notification` created since `since` (epoch seconds), newest first.

        Used when an attempt's outcome is unknown: Twilio has no idempotency key, so the only way to avoid a
        second text is to look. A message must match To, From (unless a Messaging Service picks it) and Body
        (see `same_body`); a call To and From (Twilio does not echo a call's Url or TwiML). Pages are walked
        newest first until one reaches back past `since` (no `DateSent` filter: a queued message has none).
        """
        query = {"To": notification.to, "PageSize": str(PAGE_SIZE)}
        if notification.from_:
            query["From"] = notification.from_
        listed = await self._walk(
            _with_query(self._lists[notification.kind], query), notification.kind, since - CLOCK_SKEW
        )
        if isinstance(listed, TwilioFailure):
            return listed
        return [
            SendResult(str(item["sid"]), str(item.get("status") or ""), str(item.get("to")), str(item.get("from")), at)
            for item, at in listed
            if _matches(item, notification, at, since)
        ]

    async def _walk(
        self, target: str, kind: Kind, back_to: float
    ) -> list[tuple[dict[str, Any], float | None]] | TwilioFailure:
        """The resources of a list, newest first, each with when it was created: page after page, up to MAX_PAGES,
        until one reaches back past `back_to` (epoch seconds) or shows a resource without a date."""
        listed: list[tuple[dict[str, Any], float | None]] = []
        following: str | None = target
        for _ in range(MAX_PAGES):
            if following is None:
                break
            page = await self._page(following, kind)
            if isinstance(page, TwilioFailure):
                return page
            items, following = page
            listed.extend((item, _created_at(item)) for item in items)
            oldest = listed[-1][1] if items else None
            if oldest is None or oldest < back_to:
                break
        return listed

    async def _page(self, target: str, kind: Kind) -> tuple[list[dict[str, Any]], str | None] | TwilioFailure:
        """One page of a list: its resources, and the next page's target (None on the last page)."""
        document = await self._get_json(target, "cannot list Twilio resources")
        if isinstance(document, TwilioFailure):
            return document
        try:
            items = [item for item in document["messages" if kind is Kind.SMS else "calls"] if isinstance(item, dict)]
            following = document.get("next_page_uri")
        except (KeyError, TypeError, AttributeError):
            return TwilioFailure(FailureKind.AMBIGUOUS, "unreadable list answer from Twilio")
        return items, _target(urljoin(target, following)) if isinstance(following, str) and following else None

    async def inbound(self, number: str, since: float) -> list[Reply] | TwilioFailure:
        """Texts people sent to `number` created since `since` (epoch seconds), newest first: the list of messages
        To `number`, walked page by page until one reaches back past `since`, keeping the inbound ones."""
        query = {"To": number, "PageSize": str(PAGE_SIZE)}
        listed = await self._walk(_with_query(self._lists[Kind.SMS], query), Kind.SMS, since)
        if isinstance(listed, TwilioFailure):
            return listed
        return [
            _reply(item, at)
            for item, at in listed
            if str(item.get("direction", "")).startswith("inbound") and at is not None and at >= since
        ]

    async def media_urls(self, sid: str) -> list[str] | TwilioFailure:
        """Where the media of message `sid` are (Twilio's media URLs: the resource's `uri` without `.json`)."""
        target = _with_query(f"{self._paths[Kind.SMS]}/{sid}/Media.json", {"PageSize": str(PAGE_SIZE)})
        document = await self._get_json(target, f"cannot list {sid}'s media")
        if isinstance(document, TwilioFailure):
            return document
        listed = document.get("media_list") if isinstance(document, dict) else None
        if not isinstance(listed, list):
            return TwilioFailure(FailureKind.AMBIGUOUS, f"cannot list {sid}'s media: an unreadable answer")
        return [
            urljoin(self._origin, str(item["uri"]).removesuffix(".json"))
            for item in listed
            if isinstance(item, dict) and item.get("uri")
        ]

    async def fetch(self, kind: Kind, sid: str) -> dict[str, Any] | TwilioFailure:
        """The current state of a message or call (for delivery tracking)."""
        document = await self._get_json(f"{self._paths[kind]}/{sid}.json", f"cannot fetch {sid}")
        if isinstance(document, dict | TwilioFailure):
            return document
        return TwilioFailure(FailureKind.AMBIGUOUS, f"cannot fetch {sid}: not an object")

    async def account(self, listing: str = "", query: Mapping[str, str] | None = None) -> Any | TwilioFailure:
        """The account's own resource, or one of its lists (`IncomingPhoneNumbers`, `OutgoingCallerIds`) as a
        JSON document: what `check-config --online` asks Twilio."""
        path = f"{self._home}/{listing}.json" if listing else f"{self._home}.json"
        return await self._get_json(_with_query(path, query or {}), f"cannot read {listing or 'the account'}")

    async def _get_json(self, target: str, failing: str) -> Any:
        """The JSON document at `target` (a path and query), or a `TwilioFailure` (`failing` says what could not
        be done)."""
        try:
            answer = await self._send("GET", target)
        except HttpError as exc:
            return TwilioFailure(FailureKind.NOT_SENT, f"{failing}: {exc}")
        if answer.status != 200:
            return _rejection(answer)
        try:
            return orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            return TwilioFailure(FailureKind.AMBIGUOUS, f"{failing}: an unreadable answer")

    async def create(self, notification: Notification) -> SendResult | TwilioFailure:
        """Send one SMS or place one call. Never raises for network or API errors."""
        body = _encode(_form(notification, self._status_callback))
        try:
            answer = await self._send("POST", self._lists[notification.kind], body, FORM_TYPE)
        except ConnectFailed as exc:
            return TwilioFailure(FailureKind.NOT_SENT, f"cannot connect to Twilio: {exc}")
        except HttpError as exc:
            return TwilioFailure(FailureKind.AMBIGUOUS, f"no answer from Twilio: {exc}")
        if answer.status in (200, 201):
            return _created(answer.body, notification)
        return _rejection(answer)

    async def _send(self, method: str, target: str, body: bytes = b"", content_type: str | None = None) -> Answer:
        return await self._pool.request(method, target, body, content_type)


def _with_query(path: str, query: Mapping[str, str]) -> str:
    """`path` with `query`, each value quoted whole (a `+` in a number is %2B, as Twilio needs it)."""
    return f"{path}?{urlencode(query, quote_via=quote)}" if query else path


def _target(url: str) -> str:
    """The path and query of `url` (Twilio's next page is a path; a full URL is cut to one, on our origin)."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path
