"""The wire contract of the Greengrass v1 Twilio Notifications connector: parsing requests, building statuses.

Pure functions only: no I/O, no clock, no randomness, so every rule is trivially testable.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import orjson

__all__ = [
    "Content",
    "ErrorCode",
    "InvalidRequest",
    "Kind",
    "Notification",
    "Page",
    "SendResult",
    "encode_status",
    "failure_status",
    "normalise_number",
    "notification_failure",
    "page_call",
    "page_send",
    "parse_ack",
    "parse_request",
    "success_status",
]

#: Twilio refuses message bodies longer than this (error 21617); rejecting locally gives a clearer status.
MAX_BODY_CHARS = 1600
MAX_TWIML_CHARS = 4000  # Twilio's limit for inline TwiML
MAX_MEDIA = 10  # Twilio's limit of media per message
MAX_RECIPIENTS = 20
VALIDITY_RANGE = (1, 36000)  # seconds, Twilio's ValidityPeriod range
MAX_ID_CHARS = 256
MAX_NAME_CHARS = 256
MAX_URL_CHARS = 2048
PAGE_EVERY_RANGE = (1, 86400)  # seconds between the sends of a page
PAGE_TIMES_RANGE = (1, 10)  # sends of a page in all, the first included
MAX_ACK_PATTERN_CHARS = 100
#: `then_call: true`: the call reads the text aloud.
SAY_TEXT = "say"

# Separators people type inside phone numbers; anything else makes the number invalid.
_SEPARATORS = re.compile(r"[\s\-().]")
_E164 = re.compile(r"\+[1-9][0-9]{7,14}")
_MESSAGING_SERVICE = re.compile(r"MG[0-9a-fA-F]{32}")
_SAY_OPTION = re.compile(r"[A-Za-z0-9.\-_]{1,64}")
WHATSAPP = "whatsapp:"


class Kind(enum.Enum):
    """What a request asks for; the value names the input topic's role."""

    SMS = "txt"
    CALL = "call"


class ErrorCode(enum.StrEnum):
    """The stable set of `error` values a `fail` status can carry (documented in docs/contract.md)."""

    INVALID_PARAMETER = "InvalidParameter"
    """The request breaks the contract; nothing was sent."""
    TWILIO_ERROR = "TwilioError"
    """Twilio answered with an error; `twilio_error_code` and `error_message` are Twilio's."""
    TWILIO_UNAVAILABLE = "TwilioUnavailable"
    """Twilio could not be reached (connection failure, 502/503/504) after every allowed attempt."""
    OUTCOME_UNKNOWN = "OutcomeUnknown"
    """The request left but no answer came (timeout, 500): it may have been sent, so it is not resent blindly."""
    REJECTED = "Rejected"
    """The sending policy refused it (allow/deny lists, countries, rate caps, length); nothing was sent."""
    INTERNAL_ERROR = "InternalError"
    """A defect in the connector; the log has details."""


class Content(enum.Enum):
    """What `Notification.content` holds; the value is Twilio's form parameter."""

    BODY = "Body"
    URL = "Url"
    TWIML = "Twiml"


@dataclass(frozen=True, slots=True)
class Page:
    """Page until acknowledged (our extension): send again every `every` s until acknowledged, `times` sends in
    all; then, unacknowledged, call (`then_call`: a TwiML URL, or SAY_TEXT to read the text aloud)."""

    every: int
    times: int
    then_call: str | None = None
    ack_pattern: str | None = None  # a shell-style pattern a reply must match (any case); None: any reply

    def stored(self) -> dict[str, Any]:
        return {"every_s": self.every, "times": self.times, "then_call": self.then_call, "ack": self.ack_pattern}

    @staticmethod
    def of_stored(stored: dict[str, Any]) -> Page:
        return Page(stored["every_s"], stored["times"], stored.get("then_call"), stored.get("ack"))


@dataclass(frozen=True, slots=True)
class Notification:
    """One validated notification to one recipient; numbers in E.164 (with `whatsapp:` kept for WhatsApp)."""

    id: str
    kind: Kind
    to: str
    from_: str  # empty when a Messaging Service picks the sender
    name: str
    content: str  # the SMS body, the TwiML URL of a call, or inline TwiML
    retries: int
    content_type: Content = Content.BODY
    media_urls: tuple[str, ...] = ()
    messaging_service_sid: str | None = None
    validity_period: int | None = None
    listed: bool = False  # one of several recipients: its status names the recipient
    page: Page | None = None  # page until acknowledged (the request that starts a page)
    repeat: int = 0  # >= 2: the page's n-th send
    escalated: bool = False  # the call that ends a page nobody acknowledged

    def options(self) -> dict[str, Any]:
        """The optional fields that are set, for storage (see `with_options`)."""
        options: dict[str, Any] = {}
        if self.content_type is not Content.BODY:
            options["content_type"] = self.content_type.value
        if self.media_urls:
            options["media_urls"] = list(self.media_urls)
        if self.messaging_service_sid:
            options["messaging_service_sid"] = self.messaging_service_sid
        if self.validity_period is not None:
            options["validity_period"] = self.validity_period
        if self.listed:
            options["listed"] = True
        if self.page is not None:
            options["page"] = self.page.stored()
        if self.repeat:
            options["repeat"] = self.repeat
        if self.escalated:
            options["escalated"] = True
        return options

    def with_options(self, options: dict[str, Any]) -> Notification:
        return replace(
            self,
            content_type=Content(options.get("content_type", "Body")),
            media_urls=tuple(options.get("media_urls", ())),
            messaging_service_sid=options.get("messaging_service_sid"),
            validity_period=options.get("validity_period"),
            listed=bool(options.get("listed", False)),
            page=Page.of_stored(options["page"]) if "page" in options else None,
            repeat=int(options.get("repeat", 0)),
            escalated=bool(options.get("escalated", False)),
        )

    def followup_fields(self) -> dict[str, Any]:
        """What a status of a page's later send carries besides its id: which send it is."""
        if self.escalated:
            return {"update": "call"}
        if self.repeat:
            return {"update": "repeat", "repeat": self.repeat}
        return {}


@dataclass(frozen=True, slots=True)
class InvalidRequest:
    """A request that breaks the contract. `id` is the request's id when it could be read."""

    id: str | None
    message: str


@dataclass(frozen=True, slots=True)
class SendResult:
    """What Twilio answered to a successful create."""

    sid: str
    status: str
    to: str
    from_: str
    created: float | None = None  # when Twilio created it (epoch seconds), as its list says


class ContractViolation(Exception):
    pass


def normalise_number(value: object, field: str) -> str:
    """Return `value` as E.164. Accepts the original's `+`-less form (`12345000000`) and common separators."""
    if not isinstance(value, str):
        raise ContractViolation(f"{field} must be a string")
    digits = _SEPARATORS.sub("", value)
    if not digits.startswith("+"):
        digits = "+" + digits
    if not _E164.fullmatch(digits):
        raise ContractViolation(
            f"{field} is not a valid phone number: expected E.164 (+ and 8 to 15 digits, first digit not 0)"
        )
    return digits


def _object(container: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = container.get(key)
    if value is None:
        raise ContractViolation(f"{path} is required")
    if not isinstance(value, dict):
        raise ContractViolation(f"{path} must be an object")
    return value


def _text(value: object, path: str, *, limit: int, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ContractViolation(f"{path} must be a string")
    if not allow_empty and not value.strip():
        raise ContractViolation(f"{path} must not be empty")
    if len(value) > limit:
        raise ContractViolation(f"{path} is longer than {limit} characters")
    return value


def _read_id(document: object) -> str | None:
    if not isinstance(document, dict):
        return None
    value = document.get("id")
    if isinstance(value, str) and value and len(value) <= MAX_ID_CHARS:
        return value
    return None


def _check_id(document: dict[str, Any]) -> str:
    value = document.get("id")
    if value is None:
        raise ContractViolation("id is required")
    if not isinstance(value, str):
        raise ContractViolation("id must be a string")
    if not value:
        raise ContractViolation("id must not be empty")
    if len(value) > MAX_ID_CHARS:
        raise ContractViolation(f"id is longer than {MAX_ID_CHARS} characters")
    return value


def _check_url(value: object, path: str, allow_http: bool) -> str:
    url = _text(value, path, limit=MAX_URL_CHARS)
    parts = urlsplit(url)
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes or not parts.hostname:
        raise ContractViolation(f"{path} must be an {' or '.join(schemes)} URL")
    if parts.username is not None or parts.password is not None:
        raise ContractViolation(f"{path} must not carry credentials")
    return url


def _check_retries(value: object, cap: int) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ContractViolation("request.retries must be an integer")
    if value < 0:
        raise ContractViolation("request.retries must be >= 0")
    return min(value, cap)


def _address(value: object, field: str, kind: Kind) -> str:
    """A phone number, or on texts a WhatsApp address (`whatsapp:+...`)."""
    if kind is Kind.SMS and isinstance(value, str) and value.startswith(WHATSAPP):
        return WHATSAPP + normalise_number(value.removeprefix(WHATSAPP), field)
    return normalise_number(value, field)


def _media_urls(value: object, allow_http: bool) -> tuple[str, ...]:
    if value is None:
        return ()
    urls = [value] if isinstance(value, str) else value
    if not isinstance(urls, list) or not urls:
        raise ContractViolation("request.recipient.media_url must be a URL or a non-empty list of URLs")
    if len(urls) > MAX_MEDIA:
        raise ContractViolation(f"request.recipient.media_url has more than {MAX_MEDIA} URLs")
    return tuple(_check_url(url, "request.recipient.media_url", allow_http) for url in urls)


def _say(text: str, voice: object, language: object) -> str:
    """TwiML that speaks `text`; escaped, so a message can never inject TwiML."""
    attributes = ""
    for attribute, value in (("voice", voice), ("language", language)):
        if value is None:
            continue
        if not isinstance(value, str) or not _SAY_OPTION.fullmatch(value):
            raise ContractViolation(f"request.recipient.{attribute} must be a short name such as Polly.Joanna or en-US")
        attributes += f' {attribute}="{value}"'
    return f"<Response><Say{attributes}>{_escape(text)}</Say></Response>"


def _escape(text: str) -> str:
    """XML's three (xml.sax.saxutils.escape's: importing it costs 45 ms at every start, html's 100 KB of entities)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _text_content(recipient: dict[str, Any], allow_http: bool) -> tuple[Content, str, tuple[str, ...]]:
    if recipient.get("voice_message_location") is not None:
        raise ContractViolation("request.recipient.voice_message_location is not allowed on a text request")
    for field in ("twiml", "voice_message"):
        if recipient.get(field) is not None:
            raise ContractViolation(f"request.recipient.{field} is not allowed on a text request")
    media = _media_urls(recipient.get("media_url"), allow_http)
    message = recipient.get("message")
    if message is None:
        if media:
            return Content.BODY, "", media
        raise ContractViolation("request.recipient.message is required")
    return Content.BODY, _text(message, "request.recipient.message", limit=MAX_BODY_CHARS), media


def _call_content(recipient: dict[str, Any], allow_http: bool) -> tuple[Content, str, tuple[str, ...]]:
    for field in ("message", "media_url"):
        if recipient.get(field) is not None:
            raise ContractViolation(f"request.recipient.{field} is not allowed on a call request")
    given = [
        field for field in ("voice_message_location", "twiml", "voice_message") if recipient.get(field) is not None
    ]
    if not given:
        raise ContractViolation("request.recipient.voice_message_location is required")
    if len(given) > 1:
        raise ContractViolation(f"request.recipient: give only one of {', '.join(given)}")
    field = given[0]
    path = f"request.recipient.{field}"
    if field == "voice_message_location":
        return Content.URL, _check_url(recipient[field], path, allow_http), ()
    if field == "twiml":
        return Content.TWIML, _text(recipient[field], path, limit=MAX_TWIML_CHARS), ()
    spoken = _say(
        _text(recipient[field], path, limit=MAX_BODY_CHARS), recipient.get("voice"), recipient.get("language")
    )
    if len(spoken) > MAX_TWIML_CHARS:
        raise ContractViolation(f"{path} is too long once escaped into TwiML")
    return Content.TWIML, spoken, ()


def _recipients(request: dict[str, Any]) -> list[dict[str, Any]]:
    recipient = request.get("recipient")
    if recipient is None:
        raise ContractViolation("request.recipient is required")
    if isinstance(recipient, dict):
        return [recipient]
    if not isinstance(recipient, list):
        raise ContractViolation("request.recipient must be an object")
    if not recipient or len(recipient) > MAX_RECIPIENTS:
        raise ContractViolation(f"request.recipient must list 1 to {MAX_RECIPIENTS} recipients")
    if not all(isinstance(item, dict) for item in recipient):
        raise ContractViolation("request.recipient must be an object or a list of objects")
    return recipient


def _sender(request: dict[str, Any], kind: Kind, default_from: str | None) -> tuple[str, str | None]:
    """(From, MessagingServiceSid). A Messaging Service picks the sender itself unless from_number is given."""
    service = request.get("messaging_service_sid")
    if service is not None:
        if kind is not Kind.SMS:
            raise ContractViolation("request.messaging_service_sid is not allowed on a call request")
        if not isinstance(service, str) or not _MESSAGING_SERVICE.fullmatch(service):
            raise ContractViolation("request.messaging_service_sid must be MG followed by 32 hexadecimal digits")
    from_number = request.get("from_number")
    if from_number is not None:
        return _address(from_number, "request.from_number", kind), service
    if service is not None:
        return "", service
    if default_from:
        return default_from, None
    raise ContractViolation("request.from_number is required when no DefaultFromPhoneNumber is configured")


def _validity(request: dict[str, Any], kind: Kind) -> int | None:
    value = request.get("validity_period")
    if value is None:
        return None
    if kind is not Kind.SMS:
        raise ContractViolation("request.validity_period is not allowed on a call request")
    return _whole(value, "request.validity_period", VALIDITY_RANGE, unit=" (seconds)")


def _one(
    recipient: dict[str, Any], kind: Kind, path: str, allow_http: bool
) -> tuple[str, str, tuple[Content, str, tuple[str, ...]]]:
    name = recipient.get("name")
    if name is None:
        raise ContractViolation("Recipient name cannot be None")  # the original connector's wording
    name = _text(name, f"{path}.name", limit=MAX_NAME_CHARS, allow_empty=kind is Kind.SMS)
    if recipient.get("phone_number") is None:
        raise ContractViolation(f"{path}.phone_number is required")
    to = _address(recipient["phone_number"], f"{path}.phone_number", kind)
    content = _text_content(recipient, allow_http) if kind is Kind.SMS else _call_content(recipient, allow_http)
    return name, to, content


def _whole(value: object, path: str, bounds: tuple[int, int], default: int | None = None, unit: str = "") -> int:
    """An integer within `bounds` (a bool is not one); `default` when absent, if there is one."""
    if value is None and default is not None:
        return default
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ContractViolation(f"{path} must be an integer from {low} to {high}{unit}")
    return value


def _page(request: dict[str, Any], kind: Kind, sender: str, allow_http: bool) -> Page | None:
    """`request.until_acknowledged`: our extension (the original ignored unknown fields, and so would a fleet)."""
    value = request.get("until_acknowledged")
    if value is None:
        return None
    path = "request.until_acknowledged"
    if not isinstance(value, dict):
        raise ContractViolation(f"{path} must be an object")
    every = _whole(value.get("every_s"), f"{path}.every_s", PAGE_EVERY_RANGE)
    times = _whole(value.get("times"), f"{path}.times", PAGE_TIMES_RANGE, default=3)
    then_call, call = None, value.get("then_call")
    if call is not None and call is not False:
        if kind is Kind.CALL:
            raise ContractViolation(f"{path}.then_call is for text requests (a call request is itself called again)")
        if sender.startswith(WHATSAPP) or not sender:
            raise ContractViolation(f"{path}.then_call needs a phone number to call from: give request.from_number")
        then_call = SAY_TEXT if call is True else _check_url(call, f"{path}.then_call", allow_http)
    pattern = value.get("ack_pattern")
    if pattern is not None:
        pattern = _text(pattern, f"{path}.ack_pattern", limit=MAX_ACK_PATTERN_CHARS)
    return Page(every, times, then_call, pattern)


def _validate(
    document: object, kind: Kind, default_from: str | None, max_retries: int, *, allow_http: bool, paging: bool
) -> list[Notification]:
    if not isinstance(document, dict):
        raise ContractViolation("payload must be a JSON object")
    request_id = _check_id(document)
    request = _object(document, "request", "request")
    recipients = _recipients(request)
    sender, service = _sender(request, kind, default_from)
    validity = _validity(request, kind)
    retries = _check_retries(request.get("retries"), max_retries)
    listed = isinstance(request["recipient"], list)
    page = _page(request, kind, sender, allow_http) if paging else None
    notifications = []
    for recipient in recipients:
        name, to, (content_type, content, media) = _one(recipient, kind, "request.recipient", allow_http)
        if to.startswith(WHATSAPP) != sender.startswith(WHATSAPP) and sender:
            raise ContractViolation("a WhatsApp recipient needs a WhatsApp sender (whatsapp:+...), and the reverse")
        if page is not None and page.then_call == SAY_TEXT and len(_spoken(content)) > MAX_TWIML_CHARS:
            raise ContractViolation("request.until_acknowledged.then_call: the text is too long to read aloud")
        notifications.append(
            Notification(
                request_id, kind, to, sender, name, content, retries, content_type, media, service, validity, listed,
                page,
            )
        )  # fmt: skip
    if len({n.to for n in notifications}) < len(notifications):
        raise ContractViolation("request.recipient lists the same phone number twice")
    return notifications


def parse_request(
    payload: bytes,
    kind: Kind,
    *,
    default_from: str | None,
    max_retries: int,
    max_payload_bytes: int,
    allow_http: bool = False,
    paging: bool = False,
) -> list[Notification] | InvalidRequest:
    """Validate one MQTT payload into one notification per recipient. Never raises: a bad payload becomes an
    `InvalidRequest`. `paging`: honour `until_acknowledged` (else ignored, as the original ignored it)."""
    if len(payload) > max_payload_bytes:
        return InvalidRequest(None, f"payload is larger than {max_payload_bytes} bytes")
    try:
        # orjson rejects invalid UTF-8 and nesting deeper than 1024 levels with JSONDecodeError.
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return InvalidRequest(None, f"payload is not valid JSON: {exc}")
    try:
        return _validate(document, kind, default_from, max_retries, allow_http=allow_http, paging=paging)
    except ContractViolation as exc:
        return InvalidRequest(_read_id(document), str(exc))


def _spoken(text: str) -> str:
    return _say(text.strip() or "An alert was not acknowledged.", None, None)


def page_send(notification: Notification, n: int) -> Notification:
    """The n-th send (n >= 2) of the page `notification` started: the same text, or call, again."""
    return replace(notification, page=None, repeat=n)


def page_call(notification: Notification) -> Notification:
    """The call that ends the text page `notification` started, nobody having acknowledged it."""
    assert notification.page is not None and notification.page.then_call is not None
    then_call = notification.page.then_call
    content_type, content = (
        (Content.TWIML, _spoken(notification.content)) if then_call == SAY_TEXT else (Content.URL, then_call)
    )
    name = notification.name or notification.to
    return Notification(
        notification.id, Kind.CALL, notification.to, notification.from_, name, content, notification.retries,
        content_type, listed=notification.listed, escalated=True,
    )  # fmt: skip


def parse_ack(payload: bytes) -> tuple[str, str] | InvalidRequest:
    """An acknowledgement (`{"id": ..., "by": ...}`, `by` optional): (request id, by whom)."""
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return InvalidRequest(None, f"payload is not valid JSON: {exc}")
    try:
        if not isinstance(document, dict):
            raise ContractViolation("payload must be a JSON object")
        by = document.get("by")
        by = "mqtt" if by is None else _text(by, "by", limit=MAX_NAME_CHARS)
        return _check_id(document), by
    except ContractViolation as exc:
        return InvalidRequest(_read_id(document), str(exc))


def success_status(notification: Notification, result: SendResult, attempts: int) -> dict[str, Any]:
    status: dict[str, Any] = {
        "response": {
            "status": "success",
            "payload": {
                "from_number": result.from_ or notification.from_,
                "messages": {
                    "message_status": result.status,
                    "to_number": result.to or notification.to,
                    "name": notification.name,
                    "sid": result.sid,
                },
            },
            "attempts": attempts,
        },
        "id": notification.id,
        **notification.followup_fields(),
    }
    if notification.listed:
        status["recipient"] = notification.to
    return status


def failure_status(
    request_id: str | None,
    error: ErrorCode,
    message: str,
    *,
    twilio_error_code: int | None = None,
    http_status: int | None = None,
    attempts: int | None = None,
    recipient: str | None = None,
    twilio_request_id: str | None = None,
) -> dict[str, Any]:
    response: dict[str, Any] = {
        "status": "fail",
        "error": error.value,
        "error_message": message,
        "payload": None,
    }
    if twilio_error_code is not None:
        response["twilio_error_code"] = twilio_error_code
    if http_status is not None:
        response["http_status"] = http_status
    if attempts is not None:
        response["attempts"] = attempts
    if twilio_request_id is not None:
        response["twilio_request_id"] = twilio_request_id  # what Twilio's support asks for
    status: dict[str, Any] = {"response": response, "id": request_id}
    if recipient is not None:
        status["recipient"] = recipient
    return status


def notification_failure(notification: Notification, error: ErrorCode, message: str, **details: Any) -> dict[str, Any]:
    """`failure_status` of a valid notification: its id, its recipient when it is one of several, and which send of
    a page it is; `details`: `failure_status`'s optional fields."""
    recipient = notification.to if notification.listed else None
    status = failure_status(notification.id, error, message, recipient=recipient, **details)
    status.update(notification.followup_fields())
    return status


#: Twilio states after which a message or call changes no more.
FINAL_STATES = {
    Kind.SMS: frozenset({"delivered", "undelivered", "failed", "read", "canceled"}),
    Kind.CALL: frozenset({"completed", "busy", "no-answer", "canceled", "failed"}),
}
_NOT_DELIVERED = frozenset({"undelivered", "failed", "busy", "no-answer", "canceled"})


def delivery_status(
    notification: Notification,
    sid: str,
    state: str,
    *,
    final: bool,
    error_code: int | None = None,
    error_message: str | None = None,
) -> dict[str, Any]:
    """The follow-up status telling how a sent message or call ended (or, with `final` false, that tracking gave
    up while it was still `state`). Same shape as the first status, plus `"update": "delivery"` and `final`."""
    response: dict[str, Any] = {
        "status": "fail" if state in _NOT_DELIVERED else "success",
        "payload": {
            "from_number": notification.from_,
            "messages": {"message_status": state, "to_number": notification.to, "name": notification.name, "sid": sid},
        },
        "final": final,
    }
    if error_code is not None:
        response["twilio_error_code"] = error_code
    if error_message:
        response["error_message"] = error_message
    status: dict[str, Any] = {"response": response, "id": notification.id, "update": "delivery"}
    if notification.repeat:
        status["repeat"] = notification.repeat
    if notification.escalated:
        status["call"] = True
    if notification.listed:
        status["recipient"] = notification.to
    return status


def double_status(notification: Notification, reported: str | None, found: list[str]) -> dict[str, Any]:
    """The follow-up saying Twilio holds a request more often than its status said: `reported`, the SID its status
    named (None: it said the request failed), and `found`, the other messages Twilio listed for it later."""
    sids = [sid for sid in (reported, *found) if sid]
    said = f"{len(sids)} messages" if reported else f"{len(sids)} message(s) although its status said it failed"
    response: dict[str, Any] = {
        "status": "success",
        "payload": {"from_number": notification.from_, "sids": sids},
        "error_message": f"Twilio holds {said} for this request: listed after the reconcile window",
    }
    status: dict[str, Any] = {"response": response, "id": notification.id, "update": "double"}
    if notification.listed:
        status["recipient"] = notification.to
    return status


def encode_status(status: dict[str, Any]) -> bytes:
    return orjson.dumps(status)
