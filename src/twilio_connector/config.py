"""Configuration: defaults < TOML file < environment < command-line flags, with the original parameter names.

`load_settings` is pure apart from reading the TOML file; it reports every problem at once.
`resolve_credentials` may reach AWS Secrets Manager and is blocking.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit

from .contract import ContractViolation, normalise_number
from .policy import DEFAULT_REFUSED_TYPES, NUMBER_TYPES, PRESETS, Limits
from .secrets import SECRET_ARN, Secret, SecretError, fetch_secrets_manager, read_secret_file
from .store import SYNC_MODES
from .storms import StormRule

__all__ = ["BrokerAddress", "ConfigError", "Credentials", "Settings", "load_settings", "resolve_credentials"]

ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
API_KEY_SID = re.compile(r"SK[0-9a-fA-F]{32}")
MQTT_VERSIONS = {"5": "5", "5.0": "5", "3.1.1": "3.1.1", "311": "3.1.1", "4": "3.1.1"}

#: Parameters of the Greengrass v1 connector that mean nothing outside Greengrass; accepted and ignored.
IGNORED_KEYS = frozenset({"TwilioAuthTokenSecretArn-ResourceId", "IsolationMode"})


class ConfigError(Exception):
    """The configuration is wrong. `problems` lists each fault, one line each, with no secret in any."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


DEFAULT_API_URL = "https://api.twilio.com"
#: Guards a `policy` preset sets unless they are set on their own.
_PRESET_GUARDS = (
    "allowed_countries",
    "per_recipient_per_minute",
    "per_recipient_per_day",
    "per_minute",
    "per_day",
    "max_segments",
)
_LOCATION_NAME = re.compile(r"[a-z0-9-]{2,32}")


def default_journal_path() -> str:
    """systemd's StateDirectory when there is one, else the working directory."""
    return os.path.join(os.environ.get("STATE_DIRECTORY", "."), "twilio-connector-journal.db")


@dataclass(frozen=True)
class Settings:
    broker_url: str = "mqtt://localhost:1883"
    mqtt_version: str = "5"
    client_id: str = "twilio-connector"
    mqtt_username: str | None = None
    mqtt_password: Secret | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    session_expiry: int = 7 * 24 * 3600
    txt_topic: str = "twilio/txt"
    call_topic: str = "twilio/call"
    status_topic: str = "twilio/message/status"
    twilio_api_url: str = DEFAULT_API_URL
    twilio_edge: str | None = None
    twilio_region: str | None = None
    account_sid: str | None = None
    auth_token: Secret | None = field(default=None, repr=False)
    auth_token_file: str | None = None
    auth_token_secret_arn: str | None = None
    api_key_sid: str | None = None
    api_key_secret: Secret | None = field(default=None, repr=False)
    default_from: str | None = None
    max_in_flight: int = 64
    max_retries: int = 10
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    http_timeout: float = 15.0
    connect_timeout: float = 5.0
    shutdown_timeout: float = 20.0
    broker_give_up: float = 0.0
    max_payload_bytes: int = 64 * 1024
    journal_path: str = field(default_factory=default_journal_path)
    journal_sync: str = "full"
    journal_retention: float = 7 * 24 * 3600.0
    dedupe_window: float = 600.0
    reconcile_window: float = 120.0
    max_backlog: int = 100_000
    allow_numbers: tuple[str, ...] = ()
    deny_numbers: tuple[str, ...] = ()
    # The guards below default to None: "as the `policy` preset says" (see `policy.PRESETS`); 0 turns a cap off.
    policy: str = "default"
    refused_number_types: tuple[str, ...] = DEFAULT_REFUSED_TYPES
    allowed_countries: tuple[str, ...] | None = None
    per_recipient_per_minute: int | None = None
    per_recipient_per_day: int | None = None
    per_minute: int | None = None
    per_day: int | None = None
    max_segments: int | None = None
    fold_threshold: int = 30
    fold_window: float = 60.0
    sender_rate: float = 0.0
    allow_http_urls: bool = False
    delivery_tracking: str = "off"
    delivery_topic: str = "twilio/message/delivery"
    poll_interval: float = 5.0
    poll_interval_max: float = 300.0
    tracking_give_up: float = 6 * 3600.0
    callback_url: str | None = None
    callback_listen: str = "127.0.0.1:8088"
    metrics_listen: str | None = None
    log_level: str = "INFO"
    log_format: str = "auto"

    @property
    def broker(self) -> BrokerAddress:
        return BrokerAddress.parse(self.broker_url)

    @property
    def limits(self) -> Limits:
        """The guards in force: the preset's, with each guard set on its own taking precedence."""
        preset = PRESETS[self.policy]
        chosen = {name: getattr(self, name) for name in _PRESET_GUARDS if getattr(self, name) is not None}
        if self.allowed_countries is not None:
            chosen["countries"] = chosen.pop("allowed_countries")
        return replace(
            preset, allow=self.allow_numbers, deny=self.deny_numbers, refused_types=self.refused_number_types, **chosen
        )

    @property
    def storms(self) -> StormRule:
        return StormRule(self.fold_threshold, self.fold_window)

    @property
    def api_base_url(self) -> str:
        """Twilio's API root: `twilio_api_url`, or the regional host an edge and/or region name
        (`api.{edge}.{region}.twilio.com`; an edge alone implies region us1, as Twilio's SDKs do)."""
        if not (self.twilio_edge or self.twilio_region):
            return self.twilio_api_url
        host = ".".join(part for part in ("api", self.twilio_edge, self.twilio_region or "us1", "twilio.com") if part)
        return f"https://{host}"


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


@dataclass(frozen=True)
class Credentials:
    account_sid: str
    username: str  # the account SID, or an API key SID
    password: Secret = field(repr=False)
    auth_token: Secret | None = field(default=None, repr=False)  # what Twilio signs status callbacks with


def _positive_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a whole number")
    number = int(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def _non_negative_int(value: Any) -> int:
    number = int(value)
    if number < 0 or isinstance(value, bool):
        raise ValueError("must be a whole number >= 0")
    return number


def _positive_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a number")
    number = float(value)
    if not number > 0:
        raise ValueError("must be greater than 0")
    return number


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


def _journal_sync(value: Any) -> str:
    if value not in SYNC_MODES:
        raise ValueError(f"must be one of {', '.join(SYNC_MODES)}")
    return str(value)


def _non_negative_float(value: Any) -> float:
    if isinstance(value, bool) or float(value) < 0:
        raise ValueError("must be a number >= 0")
    return float(value)


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
class _Field:
    parse: Callable[[Any], Any]
    aliases: tuple[str, ...] = ()  # original Greengrass names and well-known variables, as env vars and keys


_FIELDS: dict[str, _Field] = {
    "broker_url": _Field(_broker_url),
    "mqtt_version": _Field(_mqtt_version),
    "client_id": _Field(_text),
    "mqtt_username": _Field(_optional_text),
    "mqtt_password": _Field(_secret, ("MQTT_PASSWORD",)),
    "ca_file": _Field(_optional_text),
    "cert_file": _Field(_optional_text),
    "key_file": _Field(_optional_text),
    "session_expiry": _Field(_non_negative_int),
    "txt_topic": _Field(_topic),
    "call_topic": _Field(_topic),
    "status_topic": _Field(_topic),
    "twilio_api_url": _Field(_http_url),
    "twilio_edge": _Field(_location, ("TWILIO_EDGE",)),
    "twilio_region": _Field(_location, ("TWILIO_REGION",)),
    "account_sid": _Field(_account_sid, ("TWILIO_ACCOUNT_SID",)),
    "auth_token": _Field(_secret, ("TWILIO_AUTH_TOKEN",)),
    "auth_token_file": _Field(_optional_text),
    "auth_token_secret_arn": _Field(_secret_arn, ("TwilioAuthTokenSecretArn",)),
    "api_key_sid": _Field(_api_key_sid, ("TWILIO_API_KEY",)),
    "api_key_secret": _Field(_secret, ("TWILIO_API_SECRET",)),
    "default_from": _Field(_default_from, ("DefaultFromPhoneNumber",)),
    "max_in_flight": _Field(_positive_int),
    "max_retries": _Field(_non_negative_int),
    "backoff_base": _Field(_positive_float),
    "backoff_max": _Field(_positive_float),
    "http_timeout": _Field(_positive_float),
    "connect_timeout": _Field(_positive_float),
    "shutdown_timeout": _Field(_positive_float),
    "broker_give_up": _Field(_non_negative_float),
    "max_payload_bytes": _Field(_positive_int),
    "journal_path": _Field(_text),
    "journal_sync": _Field(_journal_sync),
    "journal_retention": _Field(_non_negative_float),
    "dedupe_window": _Field(_non_negative_float),
    "reconcile_window": _Field(_positive_float),
    "max_backlog": _Field(_positive_int),
    "allow_numbers": _Field(_prefixes),
    "deny_numbers": _Field(_prefixes),
    "policy": _Field(_policy),
    "refused_number_types": _Field(_number_types),
    "allowed_countries": _Field(_countries),
    "per_recipient_per_minute": _Field(_non_negative_int),
    "per_recipient_per_day": _Field(_non_negative_int),
    "per_minute": _Field(_non_negative_int),
    "per_day": _Field(_non_negative_int),
    "max_segments": _Field(_non_negative_int),
    "fold_threshold": _Field(_non_negative_int),
    "fold_window": _Field(_positive_float),
    "sender_rate": _Field(_non_negative_float),
    "allow_http_urls": _Field(_bool),
    "delivery_tracking": _Field(_tracking),
    "delivery_topic": _Field(_topic),
    "poll_interval": _Field(_positive_float),
    "poll_interval_max": _Field(_positive_float),
    "tracking_give_up": _Field(_positive_float),
    "callback_url": _Field(_optional_url),
    "callback_listen": _Field(_listen),
    "metrics_listen": _Field(lambda value: _listen(value) if value else None),
    "log_level": _Field(_log_level),
    "log_format": _Field(_log_format),
}
_SECRET_FIELDS = frozenset(name for name, spec in _FIELDS.items() if spec.parse is _secret)
assert set(_FIELDS) == {f.name for f in fields(Settings)}

ENV_PREFIX = "TWILIO_CONNECTOR_"


def _read_toml(path: str, problems: list[str]) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        problems.append(f"config file {path}: {exc.strerror}")
        return {}
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"config file {path}: not valid TOML: {exc}")
        return {}
    # Accept either a flat file or one whose settings sit in a [connector] table.
    section = document.get("connector", document)
    return section if isinstance(section, dict) else {}


def _gather(
    config_file: str | None, env: Mapping[str, str], flags: Mapping[str, Any], problems: list[str]
) -> dict[str, tuple[str, Any]]:
    """Raw values by field name, each with a label naming where it came from (for error messages)."""
    by_alias = {alias: name for name, spec in _FIELDS.items() for alias in spec.aliases}
    raw: dict[str, tuple[str, Any]] = {}
    if config_file:
        for key, value in _read_toml(config_file, problems).items():
            if key in IGNORED_KEYS:
                continue
            name = by_alias.get(key, key)
            if name not in _FIELDS:
                problems.append(f"config file {config_file}: unknown setting {key!r}")
            else:
                raw[name] = (f"{key} (in {config_file})", value)
    for name, spec in _FIELDS.items():
        for variable in (*spec.aliases, ENV_PREFIX + name.upper()):
            if env.get(variable):
                raw[name] = (f"environment variable {variable}", env[variable])
    for name, value in flags.items():
        if value is not None:
            raw[name] = (f"--{name.replace('_', '-')}", value)
    return raw


def load_settings(
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from all sources; raise `ConfigError` listing every problem."""
    problems: list[str] = []
    raw = _gather(config_file, os.environ if env is None else env, flags or {}, problems)
    values: dict[str, Any] = {}
    for name, (source, value) in raw.items():
        try:
            values[name] = _FIELDS[name].parse(value)
        except (ValueError, TypeError) as exc:
            shown = "(hidden)" if name in _SECRET_FIELDS else repr(value)
            problems.append(f"{source} = {shown}: {exc}")
    settings = Settings(**values)
    problems.extend(_cross_checks(settings))
    if problems:
        raise ConfigError(problems)
    return settings


def _cross_checks(settings: Settings) -> list[str]:
    problems = []
    if bool(settings.cert_file) != bool(settings.key_file):
        problems.append("cert_file and key_file must be given together (client certificate and its key)")
    for name in ("ca_file", "cert_file", "key_file", "auth_token_file"):
        path = getattr(settings, name)
        if path and not os.access(path, os.R_OK):
            problems.append(f"{name} = {path!r}: file not found or not readable")
    if (settings.ca_file or settings.cert_file) and not settings.broker_url.startswith("mqtts://"):
        problems.append("ca_file/cert_file need an mqtts:// broker_url")
    if settings.api_key_sid and not settings.api_key_secret:
        problems.append("api_key_sid is set but TWILIO_API_SECRET (api_key_secret) is missing")
    if (settings.twilio_edge or settings.twilio_region) and settings.twilio_api_url != DEFAULT_API_URL:
        problems.append("give twilio_api_url or twilio_edge/twilio_region, not both")
    if len({settings.txt_topic, settings.call_topic, settings.status_topic, settings.delivery_topic}) < 4:
        problems.append("txt_topic, call_topic, status_topic and delivery_topic must all differ")
    if settings.delivery_tracking == "callback":
        if not settings.callback_url:
            problems.append("delivery_tracking = callback needs callback_url, the public URL Twilio will call")
        if settings.api_key_sid and not (
            settings.auth_token or settings.auth_token_file or settings.auth_token_secret_arn
        ):
            problems.append("delivery_tracking = callback needs the auth token too: Twilio signs callbacks with it")
    return problems


def _auth_token(settings: Settings) -> Secret | None:
    if settings.auth_token:
        return settings.auth_token
    if settings.auth_token_file:
        return read_secret_file(settings.auth_token_file)
    if settings.auth_token_secret_arn:
        return fetch_secrets_manager(settings.auth_token_secret_arn)
    return None


def resolve_credentials(settings: Settings) -> Credentials:
    """Find the Twilio credentials. Blocking (it may call AWS Secrets Manager). Raises `ConfigError`."""
    if not settings.account_sid:
        raise ConfigError(["TWILIO_ACCOUNT_SID (account_sid) is required"])
    try:
        token = _auth_token(settings)
    except SecretError as exc:
        raise ConfigError([str(exc)]) from None
    if settings.api_key_sid and settings.api_key_secret:
        return Credentials(settings.account_sid, settings.api_key_sid, settings.api_key_secret, token)
    if token is None:
        raise ConfigError(
            [
                "no Twilio credentials: set TWILIO_AUTH_TOKEN, auth_token_file, TwilioAuthTokenSecretArn, "
                "or TWILIO_API_KEY with TWILIO_API_SECRET"
            ]
        )
    return Credentials(settings.account_sid, settings.account_sid, token, token)


ANONYMOUS_WARNING = (
    "the connector logs in to its broker without credentials and no guard bounds the volume: if the broker takes "
    "anonymous publishers too, anyone who reaches it can make this Twilio account send without limit (set "
    'per_minute and per_day, allow_numbers, or policy = "strict"; or require credentials at the broker)'
)


def anonymous_and_unbounded(settings: Settings) -> bool:
    """The connector logs in to its broker with no credentials (so the broker takes anonymous clients) and no
    guard limits how much a flood of requests can send."""
    return not (settings.mqtt_username or settings.cert_file) and not settings.limits.limits_volume


def describe(settings: Settings) -> list[str]:
    """Human-readable `name = value` lines with every secret masked, for `check-config`."""
    lines = []
    for item in fields(Settings):
        value = getattr(settings, item.name)
        if value is None:
            shown = "(not set)"
        elif item.name in _SECRET_FIELDS:
            shown = "(set, hidden)"
        else:
            shown = repr(value)
        lines.append(f"{item.name} = {shown}")
    return lines
