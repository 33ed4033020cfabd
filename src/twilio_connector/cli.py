"""The `twilio-connector` command: run, check-config, simulator."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import ssl
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import Any, NoReturn

import aiohttp
import paho.mqtt.client as paho
import shtab
from paho.mqtt.enums import CallbackAPIVersion

from . import logs, service
from .config import (
    ANONYMOUS_WARNING,
    BrokerAddress,
    ConfigError,
    Settings,
    anonymous_and_unbounded,
    describe,
    load_settings,
    resolve_credentials,
)
from .policy import describe_limits
from .simulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, Simulator
from .store import JournalCore
from .transport import BrokerError

EXIT_CONFIG = 2

# (flag, setting, help): every setting that makes sense on a command line. Secrets deliberately have none.
_SETTING_FLAGS: list[tuple[str, str, str]] = [
    (
        "--broker",
        "broker_url",
        "broker URL, mqtt://host:port or mqtts://host:port (default mqtt://localhost:1883)",
    ),
    ("--mqtt-version", "mqtt_version", "MQTT protocol version: 5 (default) or 3.1.1"),
    ("--client-id", "client_id", "MQTT client id of the persistent session (default twilio-connector)"),
    ("--mqtt-username", "mqtt_username", "MQTT user name; the password comes from MQTT_PASSWORD"),
    ("--ca-file", "ca_file", "CA certificate(s) to verify an mqtts:// broker"),
    ("--cert-file", "cert_file", "client certificate for mutual TLS (AWS IoT Core)"),
    ("--key-file", "key_file", "private key of the client certificate"),
    ("--txt-topic", "txt_topic", "SMS request topic (default twilio/txt)"),
    ("--call-topic", "call_topic", "call request topic (default twilio/call)"),
    ("--status-topic", "status_topic", "status topic (default twilio/message/status)"),
    ("--twilio-api-url", "twilio_api_url", "Twilio API base URL (default https://api.twilio.com)"),
    ("--twilio-edge", "twilio_edge", "Twilio edge location, e.g. sydney, dublin, tokyo (or TWILIO_EDGE)"),
    ("--twilio-region", "twilio_region", "Twilio region, e.g. au1, ie1, us1 (or TWILIO_REGION)"),
    ("--http-connect-timeout", "connect_timeout", "seconds to connect to Twilio (default 5)"),
    ("--account-sid", "account_sid", "Twilio account SID (or TWILIO_ACCOUNT_SID)"),
    ("--auth-token-file", "auth_token_file", "file holding the Twilio auth token"),
    ("--auth-token-secret-arn", "auth_token_secret_arn", "AWS Secrets Manager ARN of the auth token"),
    ("--api-key-sid", "api_key_sid", "Twilio API key SID (SK...); the secret comes from TWILIO_API_SECRET"),
    ("--default-from", "default_from", "default sender number (DefaultFromPhoneNumber)"),
    ("--max-in-flight", "max_in_flight", "requests processed at once (default 64)"),
    ("--max-retries", "max_retries", "upper bound on a request's `retries` (default 10)"),
    ("--http-timeout", "http_timeout", "seconds to wait for Twilio's answer (default 15)"),
    ("--shutdown-timeout", "shutdown_timeout", "seconds to finish in-flight work on SIGTERM (default 20)"),
    (
        "--journal-path",
        "journal_path",
        "journal database file (default ./twilio-connector-journal.db; :memory: for none)",
    ),
    ("--journal-sync", "journal_sync", "full (default: survives power loss), normal (survives crashes) or off"),
    ("--metrics-listen", "metrics_listen", "host:port for /metrics, /healthz and /readyz (default: off)"),
    ("--log-level", "log_level", "DEBUG, INFO (default), WARNING or ERROR"),
    ("--log-format", "log_format", "json, text, or auto (default: json unless stderr is a terminal)"),
]
_SECRET_FLAGS = ("--auth-token", "--api-key-secret", "--mqtt-password")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse echoes unrecognised arguments, which could be a secret typed on the command line: keep
        # only the option names.
        if message.startswith("unrecognized arguments:"):
            names = [word.split("=")[0] for word in message.split()[2:] if word.startswith("-")]
            message = "unrecognized arguments: " + (" ".join(names) or "(values hidden)")
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message} (see --help)\n")


class _SecretFlag(argparse.Action):
    """Swallows a secret given on the command line, remembering only which flag it was."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, *_: object) -> None:
        namespace.secret_flag = self.option_strings[0]


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    for flag, dest, text in _SETTING_FLAGS:
        parser.add_argument(flag, dest=dest, help=text, metavar=dest.split("_")[-1].upper())
    for flag in _SECRET_FLAGS:
        parser.add_argument(flag, dest="secret_flag", nargs="?", action=_SecretFlag, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="twilio-connector",
        description="MQTT to Twilio SMS and voice calls: a drop-in for the Greengrass v1 Twilio Notifications "
        "connector.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('twilio-connector')}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="run the connector", description="Run the connector until SIGTERM.")
    _add_setting_flags(run)
    check = commands.add_parser(
        "check-config",
        help="validate a configuration",
        description="Validate a configuration, load the "
        "credentials (from Secrets Manager too) and print the effective settings with secrets hidden.",
    )
    _add_setting_flags(check)

    journal = commands.add_parser(
        "journal",
        help="inspect the journal: counts, pending and failed requests, retry a failed one",
        description="Inspect the journal of a connector (running or not).",
    )
    journal.add_argument("--config", metavar="FILE", help="TOML configuration file (for journal_path)")
    journal.add_argument("--journal-path", dest="journal_path", metavar="PATH", help="journal database file")
    actions = journal.add_subparsers(dest="action", required=True, parser_class=_Parser)
    actions.add_parser("counts", help="requests by state, and statuses not yet published")
    listing = actions.add_parser("list", help="the newest requests in some states")
    listing.add_argument(
        "--state",
        action="append",
        choices=["accepted", "sending", "folded", "sent", "failed", "invalid"],
        help="states to show (repeatable; default: accepted, sending, folded, failed)",
    )
    listing.add_argument("--limit", type=int, default=50)
    retry = actions.add_parser("retry", help="send a failed request again")
    retry.add_argument("seq", type=int, help="the request's journal number (see list)")

    send = commands.add_parser(
        "send",
        help="publish one request and wait for its status (a smoke test)",
        description="Publish one request on the broker, as a device would, and print its status.",
    )
    send.add_argument("--broker", default="mqtt://localhost:1883", help="broker URL (plain mqtt://)")
    send.add_argument("--to", required=True, help="recipient phone number")
    what = send.add_mutually_exclusive_group(required=True)
    what.add_argument("--message", help="text to send")
    what.add_argument("--call-url", help="TwiML URL: place a call instead")
    send.add_argument("--from", dest="from_number", help="sender (default: the connector's DefaultFromPhoneNumber)")
    send.add_argument("--id", default=None, help="request id (default: a random one)")
    send.add_argument("--topic-prefix", default="", help="prefix of the connector's topics, e.g. site-7/")
    send.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the status")
    status = commands.add_parser(
        "status",
        help="ask a running connector whether it is ready",
        description="Query a running connector's /readyz (needs metrics_listen).",
    )
    status.add_argument("--url", default="http://127.0.0.1:9108", help="the connector's metrics_listen address")

    completion = commands.add_parser(
        "completion",
        help="print a shell completion script",
        description='Print a completion script: eval "$(twilio-connector completion bash)"',
    )
    completion.add_argument("shell", choices=["bash", "zsh", "tcsh"])

    sim = commands.add_parser(
        "simulator",
        help="run a local Twilio API simulator",
        description="Serve Twilio's Messages and Calls API locally.",
    )
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sim.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    sim.add_argument("--account-sid", default=DEFAULT_ACCOUNT_SID, help="account SID it accepts")
    sim.add_argument(
        "--auth-token",
        default=os.environ.get("SIMULATOR_AUTH_TOKEN", DEFAULT_AUTH_TOKEN),
        help="auth token it accepts (default $SIMULATOR_AUTH_TOKEN or simulator-token)",
    )
    sim.add_argument("--latency-ms", type=float, default=0.0, help="delay before every answer")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    if args.secret_flag:
        raise ConfigError(
            [
                f"{args.secret_flag} is not accepted: other users can read command lines. Use the environment "
                "(TWILIO_AUTH_TOKEN, TWILIO_API_SECRET, MQTT_PASSWORD) or auth_token_file"
            ]
        )
    flags = {dest: getattr(args, dest) for _, dest, _ in _SETTING_FLAGS}
    return load_settings(args.config, os.environ, flags)


def _report(error: ConfigError) -> int:
    for problem in error.problems:
        print(f"twilio-connector: configuration error: {problem}", file=sys.stderr)
    return EXIT_CONFIG


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed: it halves the event loop's share of the CPU per notification."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return None
    return uvloop.new_event_loop


def _run(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
        logs.configure(settings.log_level, settings.log_format)
        credentials = resolve_credentials(settings)
    except ConfigError as error:
        return _report(error)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(service.run(settings, credentials))
    except BrokerError as exc:
        logging.getLogger("twilio_connector").error("%s", exc)
        return 1
    return 0


def _check_config(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
        credentials = resolve_credentials(settings)
    except ConfigError as error:
        return _report(error)
    for line in describe(settings):
        print(line)
    for line in describe_limits(settings.limits, settings.fold_threshold, settings.fold_window):
        print(f"# guard: {line}")
    if anonymous_and_unbounded(settings):
        print(f"twilio-connector: warning: {ANONYMOUS_WARNING}", file=sys.stderr)
    print(f"configuration OK (Twilio credentials found for {credentials.account_sid}, user {credentials.username})")
    return 0


def _journal(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, os.environ, {"journal_path": args.journal_path})
    except ConfigError as error:
        return _report(error)
    if not os.path.exists(settings.journal_path):
        print(f"twilio-connector: no journal at {settings.journal_path}", file=sys.stderr)
        return EXIT_CONFIG
    core = JournalCore(settings.journal_path, settings.journal_sync)
    try:
        if args.action == "counts":
            for state, count in sorted(core.counts().items()):
                print(f"{state}: {count}")
        elif args.action == "list":
            for row in core.rows(args.state or ["accepted", "sending", "folded", "failed"], args.limit):
                accepted = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row.pop("accepted_at")))
                print(json.dumps({**row, "accepted_at": accepted}))
        elif core.retry_failed(args.seq):
            print(f"request {args.seq} will be sent again")
        else:
            print(f"twilio-connector: request {args.seq} is not a failed request", file=sys.stderr)
            return 1
    finally:
        core.close()
    return 0


async def _simulate(args: argparse.Namespace) -> None:
    simulator = Simulator(args.account_sid, args.auth_token, latency=args.latency_ms / 1000)
    runner = await simulator.serve(args.host, args.port)
    port = runner.addresses[0][1]
    print(
        f"Twilio simulator listening on http://{args.host}:{port} (account SID {args.account_sid})",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (2, 15):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def _send(args: argparse.Namespace) -> int:
    """Publish one request as a device would and wait for its status (paho's own blocking loop: one request)."""
    address = BrokerAddress.parse(args.broker)
    request_id = args.id or f"send-{uuid.uuid4().hex[:12]}"
    recipient: dict[str, str] = {"name": "twilio-connector send", "phone_number": args.to}
    if args.message is not None:
        recipient["message"], topic = args.message, "twilio/txt"
    else:
        recipient["voice_message_location"], topic = args.call_url, "twilio/call"
    request: dict[str, Any] = {"recipient": recipient}
    if args.from_number:
        request["from_number"] = args.from_number
    body = json.dumps({"request": request, "id": request_id})
    answer: list[bytes] = []
    refused: list[str] = []

    def on_connect(client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
        else:
            client.subscribe(args.topic_prefix + "twilio/message/status", qos=1)

    def on_subscribe(client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        client.publish(args.topic_prefix + topic, body, qos=1)  # subscribed first: the answer cannot be missed

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        with contextlib.suppress(ValueError, AttributeError):
            if json.loads(message.payload).get("id") == request_id:
                answer.append(bytes(message.payload))

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"twilio-connector-send-{uuid.uuid4().hex[:8]}")
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    if address.tls:
        client.tls_set_context(ssl.create_default_context())
    try:
        client.connect(address.host, address.port)
        deadline = time.monotonic() + args.timeout
        while not answer and not refused and time.monotonic() < deadline:
            client.loop(timeout=0.1)
    except OSError as exc:
        print(f"twilio-connector: cannot reach the broker at {args.broker}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    finally:
        client.disconnect()
    if refused:
        print(f"twilio-connector: the broker at {args.broker} refused the connection ({refused[0]})", file=sys.stderr)
        return 2
    if not answer:
        print(f"twilio-connector: no status for {request_id} within {args.timeout:g}s", file=sys.stderr)
        return 2
    print(answer[0].decode())
    return 0 if json.loads(answer[0])["response"]["status"] == "success" else 1


async def _status(args: argparse.Namespace) -> int:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{args.url.rstrip('/')}/readyz") as response:
            print(await response.text())
            return 0 if response.status == 200 else 1
    except aiohttp.ClientError as exc:
        print(f"twilio-connector: no connector answers at {args.url}: {exc.__class__.__name__}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    args: Any = build_parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "journal":
        return _journal(args)
    if args.command == "completion":
        print(shtab.complete(build_parser(), shell=args.shell))
        return 0
    if args.command == "send":
        return _send(args)
    if args.command == "status":
        return asyncio.run(_status(args))
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_simulate(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
