"""Every setting, declared once: its type and default, the parser of its values, its documentation, its
command-line flag, its aliases (the original connector's parameter names, well-known variables) and the section
of the reference it belongs to.

The CLI builds its flags from these declarations, `load_settings` parses with them, and the documentation's
configuration reference is generated from them (settings/reference.py), so none of them can drift.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..domain.policy import DEFAULT_REFUSED_TYPES, PRESETS, Limits
from ..domain.storms import StormRule
from . import parsers as p
from .parsers import BrokerAddress, JournalSync, LogFormat, LogLevel, MqttVersion, Tracking, Transport
from .secrets import Secret

__all__ = ["DEFAULT_API_URL", "OPTIONS", "SECRET_OPTIONS", "Option", "Settings"]

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
BROKER, TWILIO, SENDING, JOURNAL, GUARDS, TRACKING, REPLIES, OPS = (
    "Broker",
    "Twilio",
    "Sending",
    "Journal",
    "Guards",
    "Delivery tracking",
    "Replies",
    "Operations",
)


def default_journal_path() -> str:
    """systemd's StateDirectory when there is one, else the working directory."""
    return os.path.join(os.environ.get("STATE_DIRECTORY", "."), "twilio-connector-journal.db")


@dataclass(frozen=True)
class Option:
    parse: Callable[[Any], Any]
    doc: str  # one or two sentences: what it is, what it changes; the default is the field's
    flag: str | None = None  # its command-line flag; secrets never have one (other users can read command lines)
    aliases: tuple[str, ...] = ()  # original Greengrass names and well-known variables, as env vars and keys
    section: str = ""


#: The parsers whose values are secrets: left out of reprs, logs and `check-config`'s listing.
SECRET_PARSERS = (p.secret, p.proxy, p.headers)


def setting(
    default: Any,
    parse: Callable[[Any], Any],
    doc: str,
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
    *,
    section: str,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A field of `Settings` carrying its `Option`; a secret is left out of the settings' repr."""
    option = {"option": Option(parse, doc, flag, aliases, section)}
    if factory is not None:
        return field(default_factory=factory, metadata=option)
    return field(default=default, metadata=option, repr=parse not in SECRET_PARSERS)


@dataclass(frozen=True)
class Settings:
    broker_url: str = setting(
        "mqtt://localhost:1883",
        p.broker_url,
        "The MQTT broker: mqtt://host:port, or mqtts://host:port for TLS (port 8883 by default); over WebSockets "
        "ws://host:port/path or wss://host:port/path (port 443 and path /mqtt by default).",
        "--broker",
        section=BROKER,
    )
    broker_alpn: str = setting(
        "auto",
        p.alpn,
        "ALPN protocols offered in the broker's TLS handshake, separated by commas, or none. auto: x-amzn-mqtt-ca "
        "for mqtts:// to AWS IoT Core on port 443 (MQTT with a client certificate through a firewall that opens "
        "only 443), none otherwise.",
        "--broker-alpn",
        section=BROKER,
    )
    broker_headers: Secret | None = setting(
        None,
        p.headers,
        "HTTP headers sent with the WebSocket handshake of a ws:// or wss:// broker: a TOML table, or a JSON object "
        "in the environment (TWILIO_CONNECTOR_BROKER_HEADERS). Hidden like a secret: it may carry an Authorization header.",
        section=BROKER,
    )
    transport: Transport = setting(
        "mqtt",
        p.transport,
        "Where requests come from and statuses go: mqtt (the broker at broker_url) or greengrass (the Greengrass v2 "
        "nucleus's local publish/subscribe, over IPC; with it, auth_token_secret_arn is read from the nucleus).",
        "--transport",
        section=BROKER,
    )
    status_to_iot_core: bool = setting(
        False,
        p.boolean,
        "With transport = greengrass: also publish each status to AWS IoT Core through the nucleus (QoS 1; the "
        "nucleus spools them while the core is offline).",
        section=BROKER,
    )
    iot_core_requests: bool = setting(
        False,
        p.boolean,
        "With transport = greengrass: also take requests published to AWS IoT Core on the request topics.",
        section=BROKER,
    )
    mqtt_version: MqttVersion = setting(
        "5", p.mqtt_version, "MQTT protocol version: 5 or 3.1.1.", "--mqtt-version", section=BROKER
    )
    client_id: str = setting(
        "twilio-connector",
        p.text,
        "MQTT client id: the name of the connector's persistent session at the broker.",
        "--client-id",
        section=BROKER,
    )
    mqtt_username: str | None = setting(
        None,
        p.optional_text,
        "MQTT user name; the password comes from MQTT_PASSWORD.",
        "--mqtt-username",
        section=BROKER,
    )
    mqtt_password: Secret | None = setting(
        None, p.secret, "MQTT password (environment or file only).", aliases=("MQTT_PASSWORD",), section=BROKER
    )
    ca_file: str | None = setting(
        None,
        p.optional_text,
        "CA certificate(s) to verify an mqtts:// broker; the system's CAs when unset.",
        "--ca-file",
        section=BROKER,
    )
    cert_file: str | None = setting(
        None,
        p.optional_text,
        "Client certificate for mutual TLS (AWS IoT Core, Greengrass client devices).",
        "--cert-file",
        section=BROKER,
    )
    key_file: str | None = setting(
        None, p.optional_text, "Private key of the client certificate.", "--key-file", section=BROKER
    )
    session_expiry: int = setting(
        7 * 24 * 3600,
        p.non_negative_int,
        "Seconds the broker keeps the session, and the requests queued in it, while the connector is away (MQTT 5).",
        section=BROKER,
    )
    txt_topic: str = setting("twilio/txt", p.topic, "Topic of SMS requests.", "--txt-topic", section=BROKER)
    call_topic: str = setting("twilio/call", p.topic, "Topic of call requests.", "--call-topic", section=BROKER)
    status_topic: str = setting(
        "twilio/message/status", p.topic, "Topic the statuses are published on.", "--status-topic", section=BROKER
    )
    share_group: str | None = setting(
        None,
        p.share_group,
        "MQTT shared-subscription group: several connectors in one group split the requests between them "
        "($share/<group>/<topic>); unset: this connector takes every request.",
        "--share-group",
        section=BROKER,
    )
    broker_give_up: float = setting(
        0.0,
        p.non_negative_float,
        "Seconds without a broker connection after which the connector exits with status 1 "
        "and one line, so that a supervisor can act; 0: never.",
        section=BROKER,
    )
    twilio_api_url: str = setting(
        DEFAULT_API_URL,
        p.http_url,
        "Twilio's API root (the simulator's URL in tests).",
        "--twilio-api-url",
        section=TWILIO,
    )
    twilio_edge: str | None = setting(
        None,
        p.location,
        "Twilio edge location (sydney, dublin, tokyo, ...): api.{edge}.{region}.twilio.com.",
        "--twilio-edge",
        ("TWILIO_EDGE",),
        section=TWILIO,
    )
    twilio_region: str | None = setting(
        None,
        p.location,
        "Twilio region (au1, ie1, us1, ...) with its edge: an edge alone implies us1; a region alone only us1 (Twilio "
        "retired api.ie1.twilio.com and the like on 2026-04-28).",
        "--twilio-region",
        ("TWILIO_REGION",),
        section=TWILIO,
    )
    twilio_proxy: Secret | None = setting(
        None,
        p.proxy,
        "HTTP proxy to reach Twilio through (http://[user:password@]host:port; https is tunnelled with CONNECT), "
        "or none. Unset: HTTPS_PROXY as the environment gives it, NO_PROXY honoured. Environment or file only "
        "(it may carry a password).",
        section=TWILIO,
    )
    twilio_proxy_password_file: str | None = setting(
        None,
        p.optional_text,
        "File holding the proxy user's password, for a proxy URL that names the user only "
        "(http://connector@proxy:3128): the password stays out of the environment and the configuration.",
        section=TWILIO,
    )
    twilio_ca_file: str | None = setting(
        None,
        p.optional_text,
        "CA certificate(s) to verify Twilio's (or a TLS-inspecting proxy's) certificate; the system's CAs when unset.",
        "--twilio-ca-file",
        section=TWILIO,
    )
    account_sid: str | None = setting(
        None,
        p.account_sid,
        "Twilio account SID (AC followed by 32 hexadecimal digits). Required.",
        "--account-sid",
        ("TWILIO_ACCOUNT_SID",),
        section=TWILIO,
    )
    auth_token: Secret | None = setting(
        None, p.secret, "Twilio auth token (environment only).", aliases=("TWILIO_AUTH_TOKEN",), section=TWILIO
    )
    auth_token_file: str | None = setting(
        None,
        p.optional_text,
        "File holding the auth token (a container or systemd credential).",
        "--auth-token-file",
        section=TWILIO,
    )
    auth_token_secret_arn: str | None = setting(
        None,
        p.secret_arn,
        "AWS Secrets Manager ARN of the auth token (plain-text secret, as the original took).",
        "--auth-token-secret-arn",
        ("TwilioAuthTokenSecretArn",),
        section=TWILIO,
    )
    api_key_sid: str | None = setting(
        None,
        p.api_key_sid,
        "Twilio API key SID (SK...), used instead of the auth token when given.",
        "--api-key-sid",
        ("TWILIO_API_KEY",),
        section=TWILIO,
    )
    api_key_secret: Secret | None = setting(
        None, p.secret, "The API key's secret (environment only).", aliases=("TWILIO_API_SECRET",), section=TWILIO
    )
    connect_timeout: float = setting(
        5.0, p.positive_float, "Seconds to connect to Twilio.", "--http-connect-timeout", section=TWILIO
    )
    http_timeout: float = setting(
        15.0,
        p.positive_float,
        "Seconds to wait for Twilio's answer; past it the outcome is looked up, not resent blindly.",
        "--http-timeout",
        section=TWILIO,
    )
    default_from: str | None = setting(
        None,
        p.default_from,
        "Default sender number (E.164). Unset: every request must carry from_number.",
        "--default-from",
        ("DefaultFromPhoneNumber",),
        section=SENDING,
    )
    max_in_flight: int = setting(
        128,
        p.positive_int,
        "The most requests at Twilio at once (the adaptive window stays within it; it halves on Twilio's 429s), "
        "and the Receive Maximum announced to the broker.",
        "--max-in-flight",
        section=SENDING,
    )
    max_retries: int = setting(
        10, p.non_negative_int, "Upper bound on a request's `retries` field.", "--max-retries", section=SENDING
    )
    backoff_base: float = setting(
        0.5, p.positive_float, "First retry delay, in seconds (doubling, with jitter).", section=SENDING
    )
    backoff_max: float = setting(30.0, p.positive_float, "Longest retry delay, in seconds.", section=SENDING)
    max_payload_bytes: int = setting(64 * 1024, p.positive_int, "Largest request accepted, in bytes.", section=SENDING)
    allow_http_urls: bool = setting(
        False, p.boolean, "Accept plain http:// media and TwiML URLs (https only by default).", section=SENDING
    )
    sender_rate: float = setting(
        0.0,
        p.non_negative_float,
        "Messages per second per sender number (long code 1, toll-free 3, short code 100); 0: no pacing.",
        section=SENDING,
    )
    shutdown_timeout: float = setting(
        20.0,
        p.positive_float,
        "Seconds given to in-flight work on SIGTERM before it is left in the journal.",
        "--shutdown-timeout",
        section=SENDING,
    )
    journal_path: str = setting(
        None,
        p.text,
        "The journal's SQLite file; :memory: for none (nothing survives a restart). Default: "
        "$STATE_DIRECTORY/twilio-connector-journal.db, else the working directory.",
        "--journal-path",
        section=JOURNAL,
        factory=default_journal_path,
    )
    journal_url: str | None = setting(
        None,
        p.journal_url,
        "A PostgreSQL database for the journal (postgresql://user@host:port/database), in place of the SQLite "
        "file; the password comes from PGPASSWORD or ~/.pgpass.",
        "--journal-url",
        section=JOURNAL,
    )
    journal_lease: float = setting(
        30.0,
        p.positive_float,
        "With a PostgreSQL journal shared by several connectors: seconds a connector's claim on its work lasts "
        "unless renewed, so how long a dead connector's work waits before another takes it over.",
        section=JOURNAL,
    )
    journal_sync: JournalSync = setting(
        "full",
        p.journal_sync,
        "full: survives power loss; normal: survives a crash of the process; off.",
        "--journal-sync",
        section=JOURNAL,
    )
    journal_retention: float = setting(
        7 * 24 * 3600.0,
        p.non_negative_float,
        "Seconds finished requests are kept (at least dedupe_window and session_expiry).",
        section=JOURNAL,
    )
    dedupe_window: float = setting(
        600.0,
        p.non_negative_float,
        "Seconds an identical request is taken for a repeat of one already accepted.",
        section=JOURNAL,
    )
    reconcile_window: float = setting(
        120.0,
        p.positive_float,
        "The longest an attempt whose outcome is unknown is looked up at Twilio before it counts as not sent: "
        "the window follows the list lag measured in the last hour (three times the largest, at least 6 s) "
        "within this ceiling, and is the ceiling until there is evidence.",
        section=JOURNAL,
    )
    lag_probe_interval: float = setting(
        60.0,
        p.non_negative_float,
        "Seconds between probes that watch a new message appear in Twilio's list (the evidence the reconcile "
        "window follows; a few list requests each, only while messages are sent; every 5 s while the evidence is "
        "thin); 0: no probes, and the window stays at reconcile_window.",
        section=JOURNAL,
    )
    max_backlog: int = setting(
        100_000,
        p.positive_int,
        "Unfinished requests past which intake stops and the broker keeps the rest.",
        section=JOURNAL,
    )
    # The guards below default to None: "as the `policy` preset says" (see `policy.PRESETS`); 0 turns a cap off.
    policy: str = setting(
        "default", p.policy, "Guard preset: default (refuses nothing a person would get) or strict.", section=GUARDS
    )
    refused_number_types: tuple[str, ...] = setting(
        DEFAULT_REFUSED_TYPES,
        p.number_types,
        "Number types refused (premium_rate, shared_cost, international_network, ...).",
        section=GUARDS,
    )
    allowed_countries: tuple[str, ...] | None = setting(
        None,
        p.countries,
        'ISO country codes that may be texted or called; "sender" for the sender\'s, "*" for any. '
        "Unset: as the policy says.",
        section=GUARDS,
    )
    allow_numbers: tuple[str, ...] = setting(
        (), p.prefixes, "Only these numbers or prefixes (+1555) may be reached.", section=GUARDS
    )
    deny_numbers: tuple[str, ...] = setting((), p.prefixes, "These numbers or prefixes are refused.", section=GUARDS)
    per_recipient_per_minute: int | None = setting(
        None,
        p.non_negative_int,
        "Sends per recipient per minute; 0: no cap. Unset: as the policy says.",
        section=GUARDS,
    )
    per_recipient_per_day: int | None = setting(
        None, p.non_negative_int, "Sends per recipient per day; 0: no cap. Unset: as the policy says.", section=GUARDS
    )
    per_minute: int | None = setting(
        None, p.non_negative_int, "Sends per minute overall; 0: no cap. Unset: as the policy says.", section=GUARDS
    )
    per_day: int | None = setting(
        None, p.non_negative_int, "Sends per day overall; 0: no cap. Unset: as the policy says.", section=GUARDS
    )
    max_segments: int | None = setting(
        None, p.non_negative_int, "Longest text, in SMS segments; 0: no cap. Unset: as the policy says.", section=GUARDS
    )
    fold_threshold: int = setting(
        30,
        p.non_negative_int,
        "Texts to one number within fold_window past which further ones are folded into one digest; 0: never fold.",
        section=GUARDS,
    )
    fold_window: float = setting(60.0, p.positive_float, "Seconds of a storm-folding window.", section=GUARDS)
    delivery_tracking: Tracking = setting(
        "off",
        p.tracking,
        "off, poll (ask Twilio) or callback (Twilio calls callback_url): follow-ups on delivery_topic.",
        section=TRACKING,
    )
    delivery_topic: str = setting("twilio/message/delivery", p.topic, "Topic of delivery follow-ups.", section=TRACKING)
    replies: bool = setting(
        False,
        p.boolean,
        "Poll Twilio for the texts people send to the connector's numbers and publish each once on reply_topic, "
        "with the request it answers (outbound HTTPS only: no public endpoint). Costs one list request per number "
        "per poll.",
        section=REPLIES,
    )
    reply_topic: str = setting("twilio/message/reply", p.topic, "Topic replies are published on.", section=REPLIES)
    reply_numbers: tuple[str, ...] = setting(
        (),
        p.prefixes,
        "The numbers whose replies are polled. Unset: default_from and every number the connector sent from "
        "within reply_window.",
        section=REPLIES,
    )
    reply_poll_interval: float = setting(
        15.0,
        p.non_negative_float,
        "Seconds between polls for replies; 0: none (reply_webhook_url alone brings them).",
        section=REPLIES,
    )
    reply_webhook_url: str | None = setting(
        None,
        p.optional_url,
        "Public URL Twilio calls when a text comes in (set it as the numbers' messaging webhook), served on "
        "callback_listen: replies arrive at once; polls go on as a safety net (a longer reply_poll_interval will do).",
        section=REPLIES,
    )
    reply_window: float = setting(
        86400.0,
        p.positive_float,
        "Seconds back a reply is matched to the latest request sent to that person from that number (in_reply_to).",
        section=REPLIES,
    )
    paging: bool = setting(
        False,
        p.boolean,
        "Honour requests' until_acknowledged: send again until acknowledged (by a reply, with replies on; by an "
        "answered call, with delivery_tracking on; or on ack_topic), then call. Off: it is ignored, as the original "
        "did.",
        section=REPLIES,
    )
    ack_topic: str = setting(
        "twilio/message/ack",
        p.topic,
        'Topic acknowledgements come on, with paging on: {"id": "<request id>", "by": "<who>"}.',
        section=REPLIES,
    )
    poll_interval: float = setting(
        5.0, p.positive_float, "First delay between delivery polls, in seconds.", section=TRACKING
    )
    poll_interval_max: float = setting(
        300.0, p.positive_float, "Longest delay between delivery polls.", section=TRACKING
    )
    tracking_give_up: float = setting(
        6 * 3600.0,
        p.positive_float,
        "Seconds after which a message still not final is no longer tracked.",
        section=TRACKING,
    )
    callback_url: str | None = setting(
        None,
        p.optional_url,
        "Public URL Twilio calls with status callbacks (delivery_tracking = callback).",
        section=TRACKING,
    )
    callback_listen: str = setting(
        "127.0.0.1:8088", p.listen, "host:port the callback listener binds.", section=TRACKING
    )
    metrics_listen: str | None = setting(
        None,
        lambda value: p.listen(value) if value else None,
        "host:port for /metrics, /healthz and /readyz; unset: off.",
        "--metrics-listen",
        section=OPS,
    )
    log_level: LogLevel = setting("INFO", p.log_level, "DEBUG, INFO, WARNING or ERROR.", "--log-level", section=OPS)
    log_format: LogFormat = setting(
        "auto",
        p.log_format,
        "json, text, or auto: JSON lines unless stderr is a terminal.",
        "--log-format",
        section=OPS,
    )

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
        return (
            [f"$share/{self.share_group}/{topic}" for topic in self.input_topics]
            if self.share_group
            else self.input_topics
        )

    @property
    def input_topics(self) -> list[str]:
        """The topics the connector takes messages from: requests, and acknowledgements with paging on."""
        return [self.txt_topic, self.call_topic, *([self.ack_topic] if self.paging else [])]

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


#: Each setting's option, by name, in declaration order.
OPTIONS: dict[str, Option] = {item.name: item.metadata["option"] for item in fields(Settings)}
SECRET_OPTIONS = frozenset(name for name, option in OPTIONS.items() if option.parse in SECRET_PARSERS)
