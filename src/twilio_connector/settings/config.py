"""Configuration: defaults < TOML file < environment < command-line flags, with the original parameter names.

`load_settings` is pure apart from reading the TOML file; it reports every problem at once.
`resolve_credentials` may reach AWS Secrets Manager and is blocking.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from .schema import DEFAULT_API_URL, OPTIONS, SECRET_OPTIONS, Settings
from .secrets import Secret, SecretError, fetch_secrets_manager, read_secret_file

__all__ = ["ConfigError", "Credentials", "load_settings", "resolve_credentials"]

#: Parameters of the Greengrass v1 connector that mean nothing outside Greengrass; accepted and ignored.
IGNORED_KEYS = frozenset({"TwilioAuthTokenSecretArn-ResourceId", "IsolationMode"})


class ConfigError(Exception):
    """The configuration is wrong. `problems` lists each fault, one line each, with no secret in any."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Credentials:
    account_sid: str
    username: str  # the account SID, or an API key SID
    password: Secret = field(repr=False)
    auth_token: Secret | None = field(default=None, repr=False)  # what Twilio signs status callbacks with


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
    import difflib  # noqa: PLC0415 (only to word a mistake)

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


#: Regional API names Twilio stopped answering on 2026-04-28 ("Understanding Edge Locations", Twilio's docs):
#: a region now needs its edge (api.dublin.ie1.twilio.com); api.us1.twilio.com alone still works.
RETIRED_API_HOSTS = frozenset(
    f"api.{region}.twilio.com" for region in ("ie1", "au1", "br1", "de1", "jp1", "sg1", "us2")
)


def retired_api_host(url: str) -> str | None:
    """The host of `url` when it is one of the regional API names Twilio retired."""
    host = urlsplit(url).hostname
    return host if host in RETIRED_API_HOSTS else None


def _cross_checks(settings: Settings) -> list[str]:
    problems = []
    if bool(settings.cert_file) != bool(settings.key_file):
        problems.append("cert_file and key_file must be given together (client certificate and its key)")
    for name in ("ca_file", "cert_file", "key_file", "auth_token_file", "twilio_ca_file", "twilio_proxy_password_file"):
        path = getattr(settings, name)
        if path and not os.access(path, os.R_OK):
            problems.append(f"{name} = {path!r}: file not found or not readable")
    if (settings.ca_file or settings.cert_file) and not settings.broker.tls:
        problems.append("ca_file/cert_file need an mqtts:// or wss:// broker_url")
    if settings.broker_headers and not settings.broker.websockets:
        problems.append("broker_headers need a ws:// or wss:// broker_url (they go with the WebSocket handshake)")
    if settings.api_key_sid and not settings.api_key_secret:
        problems.append("api_key_sid is set but TWILIO_API_SECRET (api_key_secret) is missing")
    if (settings.twilio_edge or settings.twilio_region) and settings.twilio_api_url != DEFAULT_API_URL:
        problems.append("give twilio_api_url or twilio_edge/twilio_region, not both")
    elif retired := retired_api_host(settings.api_base_url):
        problems.append(
            f"{retired} stopped working on 2026-04-28 (Twilio retired the api.REGION.twilio.com names but us1's): "
            "set twilio_edge with twilio_region (dublin with ie1, sydney with au1: Twilio's edge locations page "
            "lists them)"
        )
    topics = (settings.txt_topic, settings.call_topic, settings.status_topic, settings.delivery_topic)
    optional = [
        *([settings.reply_topic] if settings.replies else []),
        *([settings.ack_topic] if settings.paging else []),
    ]
    if len(set(topics)) < len(topics) or len({*topics, *optional}) < len(topics) + len(optional):
        problems.append(
            "txt_topic, call_topic, status_topic, delivery_topic, reply_topic and ack_topic must all differ"
        )
    if settings.transport != "greengrass" and (settings.status_to_iot_core or settings.iot_core_requests):
        problems.append(
            "status_to_iot_core and iot_core_requests need transport = greengrass (the nucleus's IoT Core link)"
        )
    problems.extend(_webhook_problems(settings))
    if settings.delivery_tracking == "callback":
        if not settings.callback_url:
            problems.append("delivery_tracking = callback needs callback_url, the public URL Twilio will call")
        if _without_auth_token(settings):
            problems.append("delivery_tracking = callback needs the auth token too: Twilio signs callbacks with it")
    return problems


def _without_auth_token(settings: Settings) -> bool:
    """An API key authenticates requests, and no auth token is given: the one key Twilio signs webhooks with."""
    return bool(settings.api_key_sid) and not (
        settings.auth_token or settings.auth_token_file or settings.auth_token_secret_arn
    )


def _webhook_problems(settings: Settings) -> list[str]:
    if not settings.replies:
        return ["reply_webhook_url needs replies = true"] if settings.reply_webhook_url else []
    problems = []
    if not settings.reply_poll_interval and not settings.reply_webhook_url:
        problems.append("reply_poll_interval = 0 needs reply_webhook_url: nothing would bring replies in")
    if settings.reply_webhook_url:
        if _without_auth_token(settings):
            problems.append("reply_webhook_url needs the auth token too: Twilio signs its webhooks with it")
        callback = settings.callback_url if settings.delivery_tracking == "callback" else None
        if callback and urlsplit(callback).path == urlsplit(settings.reply_webhook_url).path:
            problems.append("reply_webhook_url and callback_url are served on one listener: give them different paths")
    return problems


def _auth_token(settings: Settings, fetch: Callable[[str], Secret]) -> Secret | None:
    if settings.auth_token:
        return settings.auth_token
    if settings.auth_token_file:
        return read_secret_file(settings.auth_token_file)
    if settings.auth_token_secret_arn:
        return fetch(settings.auth_token_secret_arn)
    return None


def resolve_credentials(settings: Settings, fetch: Callable[[str], Secret] = fetch_secrets_manager) -> Credentials:
    """Find the Twilio credentials. Blocking: `fetch` reads the secret an ARN names (AWS Secrets Manager; the
    Greengrass nucleus with that transport). Raises `ConfigError`."""
    if not settings.account_sid:
        raise ConfigError(["TWILIO_ACCOUNT_SID (account_sid) is required"])
    try:
        token = _auth_token(settings, fetch)
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
    if settings.transport == "greengrass":
        return False  # the nucleus lets publish to the connector's topics only the components its policy names
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
            import tomli_w  # noqa: PLC0415 (only for check-config's listing)

            lines.append(tomli_w.dumps({item.name: list(value) if isinstance(value, tuple) else value}).rstrip())
    return lines
