"""The settings table: every setting's parser, documentation, command-line flag and aliases, in one place.

The CLI builds its flags from it, `load_settings` parses with it, and the documentation's configuration
reference is generated from it (docs/gen_reference.py), so none of them can drift from the others.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..domain.contract import ContractViolation, normalise_number
from ..domain.policy import NUMBER_TYPES, PRESETS
from .secrets import SECRET_ARN, Secret

__all__ = ["OPTIONS", "SECRET_OPTIONS", "BrokerAddress", "Option"]

ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
API_KEY_SID = re.compile(r"SK[0-9a-fA-F]{32}")
MQTT_VERSIONS = {"5": "5", "5.0": "5", "3.1.1": "3.1.1", "311": "3.1.1", "4": "3.1.1"}
_LOCATION_NAME = re.compile(r"[a-z0-9-]{2,32}")


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    tls: bool
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("must look like mqtt://host:port or mqtts://host:port")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials: use mqtt_username and MQTT_PASSWORD")
        tls = parts.scheme == "mqtts"
        return cls(tls, parts.hostname, parts.port or (8883 if tls else 1883))


def _whole(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError("must be a whole number")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError("must be a whole number") from None


def _real(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("must be a number") from None
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return number


def _positive_int(value: Any) -> int:
    if _whole(value) < 1:
        raise ValueError("must be a whole number, at least 1")
    return _whole(value)


def _non_negative_int(value: Any) -> int:
    if _whole(value) < 0:
        raise ValueError("must be a whole number >= 0")
    return _whole(value)


def _positive_float(value: Any) -> float:
    if not _real(value) > 0:
        raise ValueError("must be a number greater than 0")
    return _real(value)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _optional_text(value: Any) -> str | None:
    return _text(value) or None


def _secret(value: Any) -> Secret | None:
    return Secret(_text(value)) if value else None


def _topic(value: Any) -> str:
    topic = _text(value)
    if not topic or "+" in topic or "#" in topic:
        raise ValueError("must be a non-empty topic name without wildcards")
    return topic


def _share_group(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if any(character in _text(value) for character in "/+#"):
        raise ValueError("must be a name without '/', '+' or '#'")
    return str(value)


def _mqtt_version(value: Any) -> str:
    try:
        return MQTT_VERSIONS[str(value)]
    except KeyError:
        raise ValueError("must be 5 or 3.1.1") from None


def _broker_url(value: Any) -> str:
    BrokerAddress.parse(_text(value))
    return str(value)


def _http_url(value: Any) -> str:
    parts = urlsplit(_text(value))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL")
    return str(value).rstrip("/")


def _location(value: Any) -> str | None:
    if value and not _LOCATION_NAME.fullmatch(_text(value)):
        raise ValueError("must be a Twilio edge or region name such as sydney, dublin, au1 or ie1")
    return value or None


def _account_sid(value: Any) -> str:
    if not ACCOUNT_SID.fullmatch(_text(value)):
        raise ValueError("must be AC followed by 32 hexadecimal digits")
    return str(value)


def _api_key_sid(value: Any) -> str | None:
    if value and not API_KEY_SID.fullmatch(_text(value)):
        raise ValueError("must be SK followed by 32 hexadecimal digits")
    return value or None


def _secret_arn(value: Any) -> str | None:
    if value and not SECRET_ARN.fullmatch(_text(value)):
        raise ValueError("is not a Secrets Manager secret ARN")
    return value or None


def _default_from(value: Any) -> str | None:
    if value in (None, ""):
        return None
    try:
        return normalise_number(value, "value")
    except ContractViolation as exc:
        raise ValueError(str(exc).removeprefix("value ")) from None


def _journal_url(value: Any) -> str | None:
    if value in (None, ""):
        return None
    parts = urlsplit(_text(value))
    if parts.scheme not in ("postgresql", "postgres") or not parts.path.strip("/"):
        raise ValueError("must look like postgresql://user@host:port/database")
    if parts.password:
        raise ValueError("must not carry a password: use PGPASSWORD or a ~/.pgpass file")
    return str(value)


#: How hard the journal presses each commit to disk (journal/sqlite.py maps each to SQLite's `synchronous`).
JOURNAL_SYNC = ("full", "normal", "off")


def _journal_sync(value: Any) -> str:
    if value not in JOURNAL_SYNC:
        raise ValueError(f"must be one of {', '.join(JOURNAL_SYNC)}")
    return str(value)


def _non_negative_float(value: Any) -> float:
    if _real(value) < 0:
        raise ValueError("must be a number >= 0")
    return _real(value)


def _strings(value: Any) -> tuple[str, ...]:
    """A TOML array, or a comma-separated string (from the environment or a flag)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(item, str) for item in items):
        raise ValueError("must be a list of strings")
    return tuple(item.strip() for item in items if item.strip())


def _prefixes(value: Any) -> tuple[str, ...]:
    prefixes = _strings(value)
    for prefix in prefixes:
        if not re.fullmatch(r"\+[0-9]{1,15}", prefix):
            raise ValueError(f"{prefix!r} is not a number or prefix like +1555")
    return prefixes


def _countries(value: Any) -> tuple[str, ...]:
    countries = tuple(item.upper() if item not in ("sender", "*") else item for item in _strings(value))
    for country in countries:
        if country not in ("sender", "*") and not re.fullmatch(r"[A-Z]{2}", country):
            raise ValueError(f"{country!r} is not an ISO country code like US, 'sender' or '*'")
    return countries


def _policy(value: Any) -> str:
    if value not in PRESETS:
        raise ValueError(f"must be one of {', '.join(PRESETS)}")
    return str(value)


def _number_types(value: Any) -> tuple[str, ...]:
    types = _strings(value)
    for kind in types:
        if kind not in NUMBER_TYPES:
            raise ValueError(f"{kind!r} is not one of {', '.join(NUMBER_TYPES)}")
    return types


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _tracking(value: Any) -> str:
    if value not in ("off", "poll", "callback"):
        raise ValueError("must be off, poll or callback")
    return str(value)


def _optional_url(value: Any) -> str | None:
    return _http_url(value) if value else None


def _listen(value: Any) -> str:
    host, _, port = _text(value).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be host:port")
    return str(value)


def _log_format(value: Any) -> str:
    if value not in ("auto", "json", "text"):
        raise ValueError("must be auto, json or text")
    return str(value)


def _log_level(value: Any) -> str:
    level = _text(value).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return level


@dataclass(frozen=True)
class Option:
    parse: Callable[[Any], Any]
    doc: str  # one or two sentences: what it is, what it changes; the default comes from `Settings`
    flag: str | None = None  # its command-line flag; secrets never have one (other users can read command lines)
    aliases: tuple[str, ...] = ()  # original Greengrass names and well-known variables, as env vars and keys
    section: str = ""


_BROKER, _TWILIO, _SENDING, _JOURNAL, _GUARDS, _TRACKING, _OPS = (
    "Broker",
    "Twilio",
    "Sending",
    "Journal",
    "Guards",
    "Delivery tracking",
    "Operations",
)

OPTIONS: dict[str, Option] = {
    "broker_url": Option(
        _broker_url,
        "The MQTT broker: mqtt://host:port, or mqtts://host:port for TLS (port 8883 by default).",
        "--broker",
        section=_BROKER,
    ),
    "mqtt_version": Option(_mqtt_version, "MQTT protocol version: 5 or 3.1.1.", "--mqtt-version", section=_BROKER),
    "client_id": Option(
        _text,
        "MQTT client id: the name of the connector's persistent session at the broker.",
        "--client-id",
        section=_BROKER,
    ),
    "mqtt_username": Option(
        _optional_text, "MQTT user name; the password comes from MQTT_PASSWORD.", "--mqtt-username", section=_BROKER
    ),
    "mqtt_password": Option(
        _secret, "MQTT password (environment or file only).", aliases=("MQTT_PASSWORD",), section=_BROKER
    ),
    "ca_file": Option(
        _optional_text,
        "CA certificate(s) to verify an mqtts:// broker; the system's CAs when unset.",
        "--ca-file",
        section=_BROKER,
    ),
    "cert_file": Option(
        _optional_text,
        "Client certificate for mutual TLS (AWS IoT Core, Greengrass client devices).",
        "--cert-file",
        section=_BROKER,
    ),
    "key_file": Option(_optional_text, "Private key of the client certificate.", "--key-file", section=_BROKER),
    "session_expiry": Option(
        _non_negative_int,
        "Seconds the broker keeps the session, and the requests queued in it, while the connector is away (MQTT 5).",
        section=_BROKER,
    ),
    "txt_topic": Option(_topic, "Topic of SMS requests.", "--txt-topic", section=_BROKER),
    "call_topic": Option(_topic, "Topic of call requests.", "--call-topic", section=_BROKER),
    "status_topic": Option(_topic, "Topic the statuses are published on.", "--status-topic", section=_BROKER),
    "share_group": Option(
        _share_group,
        "MQTT shared-subscription group: several connectors in one group split the requests between them "
        "($share/<group>/<topic>); unset: this connector takes every request.",
        "--share-group",
        section=_BROKER,
    ),
    "broker_give_up": Option(
        _non_negative_float,
        "Seconds without a broker connection after which the connector exits with status 1 "
        "and one line, so that a supervisor can act; 0: never.",
        section=_BROKER,
    ),
    "twilio_api_url": Option(
        _http_url, "Twilio's API root (the simulator's URL in tests).", "--twilio-api-url", section=_TWILIO
    ),
    "twilio_edge": Option(
        _location,
        "Twilio edge location (sydney, dublin, tokyo, ...): api.{edge}.{region}.twilio.com.",
        "--twilio-edge",
        ("TWILIO_EDGE",),
        section=_TWILIO,
    ),
    "twilio_region": Option(
        _location,
        "Twilio region (au1, ie1, us1, ...); an edge alone implies us1.",
        "--twilio-region",
        ("TWILIO_REGION",),
        section=_TWILIO,
    ),
    "account_sid": Option(
        _account_sid,
        "Twilio account SID (AC followed by 32 hexadecimal digits). Required.",
        "--account-sid",
        ("TWILIO_ACCOUNT_SID",),
        section=_TWILIO,
    ),
    "auth_token": Option(
        _secret, "Twilio auth token (environment only).", aliases=("TWILIO_AUTH_TOKEN",), section=_TWILIO
    ),
    "auth_token_file": Option(
        _optional_text,
        "File holding the auth token (a container or systemd credential).",
        "--auth-token-file",
        section=_TWILIO,
    ),
    "auth_token_secret_arn": Option(
        _secret_arn,
        "AWS Secrets Manager ARN of the auth token (plain-text secret, as the original took).",
        "--auth-token-secret-arn",
        ("TwilioAuthTokenSecretArn",),
        section=_TWILIO,
    ),
    "api_key_sid": Option(
        _api_key_sid,
        "Twilio API key SID (SK...), used instead of the auth token when given.",
        "--api-key-sid",
        ("TWILIO_API_KEY",),
        section=_TWILIO,
    ),
    "api_key_secret": Option(
        _secret, "The API key's secret (environment only).", aliases=("TWILIO_API_SECRET",), section=_TWILIO
    ),
    "connect_timeout": Option(
        _positive_float, "Seconds to connect to Twilio.", "--http-connect-timeout", section=_TWILIO
    ),
    "http_timeout": Option(
        _positive_float,
        "Seconds to wait for Twilio's answer; past it the outcome is looked up, not resent blindly.",
        "--http-timeout",
        section=_TWILIO,
    ),
    "default_from": Option(
        _default_from,
        "Default sender number (E.164). Unset: every request must carry from_number.",
        "--default-from",
        ("DefaultFromPhoneNumber",),
        section=_SENDING,
    ),
    "max_in_flight": Option(
        _positive_int,
        "The most requests at Twilio at once (the adaptive window stays within it; it halves on Twilio's 429s), "
        "and the Receive Maximum announced to the broker.",
        "--max-in-flight",
        section=_SENDING,
    ),
    "max_retries": Option(
        _non_negative_int, "Upper bound on a request's `retries` field.", "--max-retries", section=_SENDING
    ),
    "backoff_base": Option(_positive_float, "First retry delay, in seconds (doubling, with jitter).", section=_SENDING),
    "backoff_max": Option(_positive_float, "Longest retry delay, in seconds.", section=_SENDING),
    "max_payload_bytes": Option(_positive_int, "Largest request accepted, in bytes.", section=_SENDING),
    "allow_http_urls": Option(
        _bool, "Accept plain http:// media and TwiML URLs (https only by default).", section=_SENDING
    ),
    "sender_rate": Option(
        _non_negative_float,
        "Messages per second per sender number (long code 1, toll-free 3, short code 100); 0: no pacing.",
        section=_SENDING,
    ),
    "shutdown_timeout": Option(
        _positive_float,
        "Seconds given to in-flight work on SIGTERM before it is left in the journal.",
        "--shutdown-timeout",
        section=_SENDING,
    ),
    "journal_path": Option(
        _text,
        "The journal's SQLite file; :memory: for none (nothing survives a restart). Default: "
        "$STATE_DIRECTORY/twilio-connector-journal.db, else the working directory.",
        "--journal-path",
        section=_JOURNAL,
    ),
    "journal_url": Option(
        _journal_url,
        "A PostgreSQL database for the journal (postgresql://user@host:port/database), in place of the SQLite "
        "file; the password comes from PGPASSWORD or ~/.pgpass.",
        "--journal-url",
        section=_JOURNAL,
    ),
    "journal_lease": Option(
        _positive_float,
        "With a PostgreSQL journal shared by several connectors: seconds a connector's claim on its work lasts "
        "unless renewed, so how long a dead connector's work waits before another takes it over.",
        section=_JOURNAL,
    ),
    "journal_sync": Option(
        _journal_sync,
        "full: survives power loss; normal: survives a crash of the process; off.",
        "--journal-sync",
        section=_JOURNAL,
    ),
    "journal_retention": Option(
        _non_negative_float,
        "Seconds finished requests are kept (at least dedupe_window and session_expiry).",
        section=_JOURNAL,
    ),
    "dedupe_window": Option(
        _non_negative_float,
        "Seconds an identical request is taken for a repeat of one already accepted.",
        section=_JOURNAL,
    ),
    "reconcile_window": Option(
        _positive_float,
        "Seconds an attempt whose outcome is unknown is looked up at Twilio before it counts as not sent.",
        section=_JOURNAL,
    ),
    "max_backlog": Option(
        _positive_int, "Unfinished requests past which intake stops and the broker keeps the rest.", section=_JOURNAL
    ),
    "policy": Option(_policy, "Guard preset: default (refuses nothing a person would get) or strict.", section=_GUARDS),
    "refused_number_types": Option(
        _number_types,
        "Number types refused (premium_rate, shared_cost, international_network, ...).",
        section=_GUARDS,
    ),
    "allowed_countries": Option(
        _countries,
        'ISO country codes that may be texted or called; "sender" for the sender\'s, "*" for any. '
        "Unset: as the policy says.",
        section=_GUARDS,
    ),
    "allow_numbers": Option(_prefixes, "Only these numbers or prefixes (+1555) may be reached.", section=_GUARDS),
    "deny_numbers": Option(_prefixes, "These numbers or prefixes are refused.", section=_GUARDS),
    "per_recipient_per_minute": Option(
        _non_negative_int, "Sends per recipient per minute; 0: no cap. Unset: as the policy says.", section=_GUARDS
    ),
    "per_recipient_per_day": Option(
        _non_negative_int, "Sends per recipient per day; 0: no cap. Unset: as the policy says.", section=_GUARDS
    ),
    "per_minute": Option(
        _non_negative_int, "Sends per minute overall; 0: no cap. Unset: as the policy says.", section=_GUARDS
    ),
    "per_day": Option(
        _non_negative_int, "Sends per day overall; 0: no cap. Unset: as the policy says.", section=_GUARDS
    ),
    "max_segments": Option(
        _non_negative_int, "Longest text, in SMS segments; 0: no cap. Unset: as the policy says.", section=_GUARDS
    ),
    "fold_threshold": Option(
        _non_negative_int,
        "Texts to one number within fold_window past which further ones are folded into one digest; 0: never fold.",
        section=_GUARDS,
    ),
    "fold_window": Option(_positive_float, "Seconds of a storm-folding window.", section=_GUARDS),
    "delivery_tracking": Option(
        _tracking,
        "off, poll (ask Twilio) or callback (Twilio calls callback_url): follow-ups on delivery_topic.",
        section=_TRACKING,
    ),
    "delivery_topic": Option(_topic, "Topic of delivery follow-ups.", section=_TRACKING),
    "poll_interval": Option(_positive_float, "First delay between delivery polls, in seconds.", section=_TRACKING),
    "poll_interval_max": Option(_positive_float, "Longest delay between delivery polls.", section=_TRACKING),
    "tracking_give_up": Option(
        _positive_float, "Seconds after which a message still not final is no longer tracked.", section=_TRACKING
    ),
    "callback_url": Option(
        _optional_url,
        "Public URL Twilio calls with status callbacks (delivery_tracking = callback).",
        section=_TRACKING,
    ),
    "callback_listen": Option(_listen, "host:port the callback listener binds.", section=_TRACKING),
    "metrics_listen": Option(
        lambda value: _listen(value) if value else None,
        "host:port for /metrics, /healthz and /readyz; unset: off.",
        "--metrics-listen",
        section=_OPS,
    ),
    "log_level": Option(_log_level, "DEBUG, INFO, WARNING or ERROR.", "--log-level", section=_OPS),
    "log_format": Option(
        _log_format, "json, text, or auto: JSON lines unless stderr is a terminal.", "--log-format", section=_OPS
    ),
}
SECRET_OPTIONS = frozenset(name for name, option in OPTIONS.items() if option.parse is _secret)
