"""The wire contract of the Greengrass v1 Twilio Notifications connector: parsing requests, building statuses.

Pure functions only: no I/O, no clock, no randomness, so every rule is trivially testable.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

__all__ = [
    "ErrorCode",
    "InvalidRequest",
    "Kind",
    "Notification",
    "SendResult",
    "encode_status",
    "failure_status",
    "normalise_number",
    "parse_request",
    "success_status",
]

#: Twilio refuses message bodies longer than this (error 21617); rejecting locally gives a clearer status.
MAX_BODY_CHARS = 1600
MAX_ID_CHARS = 256
MAX_NAME_CHARS = 256
MAX_URL_CHARS = 2048

# Separators people type inside phone numbers; anything else makes the number invalid.
_SEPARATORS = re.compile(r"[\s\-().]")
_E164 = re.compile(r"\+[1-9][0-9]{7,14}")


class Kind(enum.Enum):
    """What a request asks for; the value names the input topic's role."""

    SMS = "txt"
    CALL = "call"


class ErrorCode(enum.StrEnum):
    """The stable set of `error` values a `fail` status can carry (documented in the README)."""

    INVALID_PARAMETER = "InvalidParameter"
    """The request breaks the contract; nothing was sent."""
    TWILIO_ERROR = "TwilioError"
    """Twilio answered with an error; `twilio_error_code` and `error_message` are Twilio's."""
    TWILIO_UNAVAILABLE = "TwilioUnavailable"
    """Twilio could not be reached (connection failure, 502/503/504) after every allowed attempt."""
    OUTCOME_UNKNOWN = "OutcomeUnknown"
    """The request left but no answer came (timeout, 500): it may have been sent, so it is not resent blindly."""
    INTERNAL_ERROR = "InternalError"
    """A defect in the connector; the log has details."""


@dataclass(frozen=True, slots=True)
class Notification:
    """A validated request, numbers in E.164."""

    id: str
    kind: Kind
    to: str
    from_: str
    name: str
    content: str  # the SMS body, or the TwiML URL of a call
    retries: int


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


def _check_url(value: object, path: str) -> str:
    url = _text(value, path, limit=MAX_URL_CHARS)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ContractViolation(f"{path} must be an http(s) URL")
    return url


def _check_retries(value: object, cap: int) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ContractViolation("request.retries must be an integer")
    if value < 0:
        raise ContractViolation("request.retries must be >= 0")
    return min(value, cap)


def _validate(document: object, kind: Kind, default_from: str | None, max_retries: int) -> Notification:
    if not isinstance(document, dict):
        raise ContractViolation("payload must be a JSON object")
    request_id = _check_id(document)
    request = _object(document, "request", "request")
    recipient = _object(request, "recipient", "request.recipient")

    name = recipient.get("name")
    if name is None:
        raise ContractViolation("Recipient name cannot be None")  # the original connector's wording
    name = _text(name, "request.recipient.name", limit=MAX_NAME_CHARS, allow_empty=kind is Kind.SMS)
    if recipient.get("phone_number") is None:
        raise ContractViolation("request.recipient.phone_number is required")
    to = normalise_number(recipient["phone_number"], "request.recipient.phone_number")

    message, location = recipient.get("message"), recipient.get("voice_message_location")
    if kind is Kind.SMS:
        if location is not None:
            raise ContractViolation("request.recipient.voice_message_location is not allowed on a text request")
        if message is None:
            raise ContractViolation("request.recipient.message is required")
        content = _text(message, "request.recipient.message", limit=MAX_BODY_CHARS)
    else:
        if message is not None:
            raise ContractViolation("request.recipient.message is not allowed on a call request")
        if location is None:
            raise ContractViolation("request.recipient.voice_message_location is required")
        content = _check_url(location, "request.recipient.voice_message_location")

    from_number = request.get("from_number")
    if from_number is not None:
        sender = normalise_number(from_number, "request.from_number")
    elif default_from:
        sender = default_from
    else:
        raise ContractViolation("request.from_number is required when no DefaultFromPhoneNumber is configured")

    retries = _check_retries(request.get("retries"), max_retries)
    return Notification(request_id, kind, to, sender, name, content, retries)


def parse_request(
    payload: bytes,
    kind: Kind,
    *,
    default_from: str | None,
    max_retries: int,
    max_payload_bytes: int,
) -> Notification | InvalidRequest:
    """Validate one MQTT payload. Never raises: a bad payload becomes an `InvalidRequest`."""
    if len(payload) > max_payload_bytes:
        return InvalidRequest(None, f"payload is larger than {max_payload_bytes} bytes")
    try:
        # orjson rejects invalid UTF-8 and nesting deeper than 1024 levels with JSONDecodeError.
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return InvalidRequest(None, f"payload is not valid JSON: {exc}")
    try:
        return _validate(document, kind, default_from, max_retries)
    except ContractViolation as exc:
        return InvalidRequest(_read_id(document), str(exc))


def success_status(notification: Notification, result: SendResult, attempts: int) -> dict[str, Any]:
    return {
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
    }


def failure_status(
    request_id: str | None,
    error: ErrorCode,
    message: str,
    *,
    twilio_error_code: int | None = None,
    http_status: int | None = None,
    attempts: int | None = None,
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
    return {"response": response, "id": request_id}


def encode_status(status: dict[str, Any]) -> bytes:
    return orjson.dumps(status)
