"""Configuration: defaults < TOML file < environment < command-line flags, with the original parameter names.

`load_settings` is pure apart from reading the TOML file; it reports every problem at once.
`resolve_credentials` may reach AWS Secrets Manager and is blocking.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import tomli_w

from ..domain.policy import DEFAULT_REFUSED_TYPES, PRESETS, Limits
from ..domain.storms import StormRule
from .options import OPTIONS, SECRET_OPTIONS, BrokerAddress
from .secrets import Secret, SecretError, fetch_secrets_manager, read_secret_file

__all__ = ["BrokerAddress", "ConfigError", "Credentials", "Settings", "load_settings", "resolve_credentials"]

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
    share_group: str | None = None
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
    max_in_flight: int = 128
    max_retries: int = 10
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    http_timeout: float = 15.0
    connect_timeout: float = 5.0
    shutdown_timeout: float = 20.0
    broker_give_up: float = 0.0
    max_payload_bytes: int = 64 * 1024
    journal_path: str = field(default_factory=default_journal_path)
    journal_url: str | None = None
    journal_lease: float = 30.0
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
    def journal(self) -> str:
        """Where the journal is: the PostgreSQL URL when one is set, else the SQLite file."""
        return self.journal_url or self.journal_path

    @property
    def request_filters(self) -> list[str]:
        """What to subscribe to for requests: the input topics, shared within `share_group` when it is set."""
        topics = [self.txt_topic, self.call_topic]
        return [f"$share/{self.share_group}/{topic}" for topic in topics] if self.share_group else topics

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


@dataclass(frozen=True)
class Credentials:
    account_sid: str
    username: str  # the account SID, or an API key SID
    password: Secret = field(repr=False)
    auth_token: Secret | None = field(default=None, repr=False)  # what Twilio signs status callbacks with


assert set(OPTIONS) == {f.name for f in fields(Settings)}

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
    by_alias = {alias: name for name, option in OPTIONS.items() for alias in option.aliases}
    raw: dict[str, tuple[str, Any]] = {}
    if config_file:
        for key, value in _read_toml(config_file, problems).items():
            if key in IGNORED_KEYS:
                continue
            name = by_alias.get(key, key)
            if name not in OPTIONS:
                problems.append(f"config file {config_file}: unknown setting {key!r}{_suggest(key, OPTIONS)}")
            else:
                raw[name] = (f"{key} (in {config_file})", value)
    for name, option in OPTIONS.items():
        for variable in (*option.aliases, ENV_PREFIX + name.upper()):
            if env.get(variable):
                raw[name] = (f"environment variable {variable}", env[variable])
    known = {ENV_PREFIX + name.upper() for name in OPTIONS}
    for variable in sorted(env):
        if variable.startswith(ENV_PREFIX) and variable not in known:
            problems.append(f"unknown environment variable {variable}{_suggest(variable, known)}")
    for name, value in flags.items():
        if value is not None:
            raw[name] = (OPTIONS[name].flag or f"--{name.replace('_', '-')}", value)
    return raw


def _suggest(word: str, choices: Collection[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
            values[name] = OPTIONS[name].parse(value)
        except (ValueError, TypeError) as exc:
            shown = "(hidden)" if name in SECRET_OPTIONS else repr(value)
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
    """The effective settings as TOML lines (`check-config`; it can be fed back with --config): a secret or an
    unset setting becomes a comment, so no secret is ever shown."""
    lines = []
    for item in fields(Settings):
        value = getattr(settings, item.name)
        if item.name in SECRET_OPTIONS:
            lines.append(f"# {item.name}: {'set, hidden' if value else 'not set'}")
        elif value is None:
            lines.append(f"# {item.name}: not set")
        else:
            lines.append(tomli_w.dumps({item.name: list(value) if isinstance(value, tuple) else value}).rstrip())
    return lines
