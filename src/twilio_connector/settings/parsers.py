"""How each setting's value is read from TOML, the environment or a flag: one parser per kind of value, each
raising `ValueError` with words a user can act on. `schema.Settings` names the parser of each setting."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args
from urllib.parse import urlsplit

import orjson

from ..domain.contract import ContractViolation, normalise_number
from ..domain.policy import NUMBER_TYPES, PRESETS
from .secrets import SECRET_ARN, Secret

ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
API_KEY_SID = re.compile(r"SK[0-9a-fA-F]{32}")
# The settings that take one of a few words, each a Literal: the type checker knows the words, and so do the
# parsers and their error messages (`get_args`).
Transport = Literal["mqtt", "greengrass"]
MqttVersion = Literal["5", "3.1.1"]
JournalSync = Literal["full", "normal", "off"]
Tracking = Literal["off", "poll", "callback"]
LogFormat = Literal["auto", "json", "text"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
MQTT_VERSIONS: dict[str, MqttVersion] = {"5": "5", "5.0": "5", "3.1.1": "3.1.1", "311": "3.1.1", "4": "3.1.1"}
_LOCATION_NAME = re.compile(r"[a-z0-9-]{2,32}")


#: Each broker URL scheme: TLS or not, WebSockets or not, and its default port.
BROKER_SCHEMES: dict[str, tuple[bool, bool, int]] = {
    "mqtt": (False, False, 1883),
    "mqtts": (True, False, 8883),
    "ws": (False, True, 80),
    "wss": (True, True, 443),
}
BROKER_URL_FORMS = "mqtt://host:port, mqtts://host:port, ws://host:port/path or wss://host:port/path"
#: AWS IoT Core's ALPN name for MQTT with a client certificate on port 443; other brokers on 443 take WebSockets.
AWS_IOT_ALPN = "x-amzn-mqtt-ca"


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    tls: bool
    host: str
    port: int
    websockets: bool = False
    path: str = "/mqtt"  # the WebSocket's path and query (ws:// and wss:// only)

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        if parts.scheme not in BROKER_SCHEMES or not parts.hostname:
            raise ValueError(f"must look like {BROKER_URL_FORMS}")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials: use mqtt_username and MQTT_PASSWORD")
        tls, websockets, port = BROKER_SCHEMES[parts.scheme]
        if not websockets and parts.path not in ("", "/"):
            raise ValueError(f"has a path ({parts.path}): only ws:// and wss:// URLs take one")
        path = (parts.path or "/mqtt") + (f"?{parts.query}" if parts.query else "")
        return cls(tls, parts.hostname, parts.port or port, websockets, path)

    def alpn(self, setting: str) -> list[str]:
        """The ALPN protocols to offer: `broker_alpn`'s names, or for `auto` AWS IoT Core's on port 443 (MQTT with a
        client certificate there needs it; any other TLS broker gets none)."""
        if setting != "auto":
            return [name for name in setting.split(",") if name and name != "none"]
        aws = self.host.endswith(".amazonaws.com") and self.port == 443 and self.tls and not self.websockets
        return [AWS_IOT_ALPN] if aws else []


def whole(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError("must be a whole number")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError("must be a whole number") from None


def real(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("must be a number") from None
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return number


def positive_int(value: Any) -> int:
    if whole(value) < 1:
        raise ValueError("must be a whole number, at least 1")
    return whole(value)


def non_negative_int(value: Any) -> int:
    if whole(value) < 0:
        raise ValueError("must be a whole number >= 0")
    return whole(value)


def positive_float(value: Any) -> float:
    if not real(value) > 0:
        raise ValueError("must be a number greater than 0")
    return real(value)


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def optional_text(value: Any) -> str | None:
    return text(value) or None


def secret(value: Any) -> Secret | None:
    return Secret(text(value)) if value else None


def topic(value: Any) -> str:
    topic = text(value)
    if not topic or "+" in topic or "#" in topic:
        raise ValueError("must be a non-empty topic name without wildcards")
    return topic


def share_group(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if any(character in text(value) for character in "/+#"):
        raise ValueError("must be a name without '/', '+' or '#'")
    return str(value)


def mqtt_version(value: Any) -> MqttVersion:
    try:
        return MQTT_VERSIONS[str(value)]
    except KeyError:
        raise ValueError("must be 5 or 3.1.1") from None


def broker_url(value: Any) -> str:
    BrokerAddress.parse(text(value))
    return str(value)


def alpn(value: Any) -> str:
    """`auto`, `none`, or ALPN protocol names separated by commas, kept as one normalised string."""
    words = [word.strip() for word in text(value).split(",") if word.strip()]
    if not words or any(not re.fullmatch(r"[\x21-\x7e]{1,255}", word) for word in words):
        raise ValueError("must be auto, none, or ALPN protocol names separated by commas (x-amzn-mqtt-ca, mqtt)")
    return ",".join(words)


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def headers(value: Any) -> Secret | None:
    """HTTP headers for the broker's WebSocket handshake: a TOML table, or a JSON object in the environment. Kept
    as a secret (an Authorization header is a credential)."""
    if value in (None, "", {}):
        return None
    table = value
    if isinstance(value, str):
        try:
            table = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise ValueError('must be a table of header names and values, or a JSON object {"Name": "value"}') from None
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise ValueError("must be a table of header names and text values")
    for name, content in table.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"has a header name that HTTP does not allow: {name!r}")
        if any(character in content for character in "\r\n\0"):
            raise ValueError(f"has a line break in the value of {name}")
    return Secret(orjson.dumps(table).decode())


def header_table(secret: Secret | None) -> dict[str, str]:
    """The headers a `headers` setting holds."""
    return cast(dict[str, str], orjson.loads(secret.reveal())) if secret else {}


def http_url(value: Any) -> str:
    parts = urlsplit(text(value))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL")
    return str(value).rstrip("/")


def location(value: Any) -> str | None:
    if value and not _LOCATION_NAME.fullmatch(text(value)):
        raise ValueError("must be a Twilio edge or region name such as sydney, dublin, au1 or ie1")
    return value or None


def account_sid(value: Any) -> str:
    if not ACCOUNT_SID.fullmatch(text(value)):
        raise ValueError("must be AC followed by 32 hexadecimal digits")
    return str(value)


def api_key_sid(value: Any) -> str | None:
    if value and not API_KEY_SID.fullmatch(text(value)):
        raise ValueError("must be SK followed by 32 hexadecimal digits")
    return value or None


def secret_arn(value: Any) -> str | None:
    if value and not SECRET_ARN.fullmatch(text(value)):
        raise ValueError("is not a Secrets Manager secret ARN")
    return value or None


def default_from(value: Any) -> str | None:
    if value in (None, ""):
        return None
    try:
        return normalise_number(value, "value")
    except ContractViolation as exc:
        raise ValueError(str(exc).removeprefix("value ")) from None


def journal_url(value: Any) -> str | None:
    if value in (None, ""):
        return None
    parts = urlsplit(text(value))
    if parts.scheme not in ("postgresql", "postgres") or not parts.path.strip("/"):
        raise ValueError("must look like postgresql://user@host:port/database")
    if parts.password:
        raise ValueError("must not carry a password: use PGPASSWORD or a ~/.pgpass file")
    return str(value)


#: How hard the journal presses each commit to disk (journal/sqlite.py maps each to SQLite's `synchronous`).
JOURNAL_SYNC: tuple[JournalSync, ...] = get_args(JournalSync)


def _one_of(value: Any, words: tuple[str, ...]) -> str:
    if value not in words:
        raise ValueError(f"must be {', '.join(words[:-1])} or {words[-1]}")
    return str(value)


def journal_sync(value: Any) -> JournalSync:
    return cast(JournalSync, _one_of(value, JOURNAL_SYNC))


def non_negative_float(value: Any) -> float:
    if real(value) < 0:
        raise ValueError("must be a number >= 0")
    return real(value)


def strings(value: Any) -> tuple[str, ...]:
    """A TOML array, or a comma-separated string (from the environment or a flag)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(item, str) for item in items):
        raise ValueError("must be a list of strings")
    return tuple(item.strip() for item in items if item.strip())


def prefixes(value: Any) -> tuple[str, ...]:
    prefixes = strings(value)
    for prefix in prefixes:
        if not re.fullmatch(r"\+[0-9]{1,15}", prefix):
            raise ValueError(f"{prefix!r} is not a number or prefix like +1555")
    return prefixes


def countries(value: Any) -> tuple[str, ...]:
    countries = tuple(item.upper() if item not in ("sender", "*") else item for item in strings(value))
    for country in countries:
        if country not in ("sender", "*") and not re.fullmatch(r"[A-Z]{2}", country):
            raise ValueError(f"{country!r} is not an ISO country code like US, 'sender' or '*'")
    return countries


def policy(value: Any) -> str:
    if value not in PRESETS:
        raise ValueError(f"must be one of {', '.join(PRESETS)}")
    return str(value)


def number_types(value: Any) -> tuple[str, ...]:
    types = strings(value)
    for kind in types:
        if kind not in NUMBER_TYPES:
            raise ValueError(f"{kind!r} is not one of {', '.join(NUMBER_TYPES)}")
    return types


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError("must be true or false")


def tracking(value: Any) -> Tracking:
    return cast(Tracking, _one_of(value, get_args(Tracking)))


def optional_url(value: Any) -> str | None:
    return http_url(value) if value else None


def listen(value: Any) -> str:
    host, _, port = text(value).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be host:port")
    return str(value)


def log_format(value: Any) -> LogFormat:
    return cast(LogFormat, _one_of(value, get_args(LogFormat)))


def log_level(value: Any) -> LogLevel:
    return cast(LogLevel, _one_of(text(value).upper(), get_args(LogLevel)))


def transport(value: Any) -> Transport:
    return cast(Transport, _one_of(value, get_args(Transport)))


def proxy(value: Any) -> Secret | None:
    """An HTTP proxy's URL, kept as a secret (it may carry a password); `none`: no proxy, whatever the
    environment says."""
    url = text(value) if value else ""
    if not url:
        return None
    if url.lower() != "none":
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("must look like http://[user:password@]host:port (an HTTP proxy), or none")
    return Secret(url)
