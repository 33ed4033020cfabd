"""The command line's parser: every command and flag; the settings' flags come from their declarations."""

from __future__ import annotations

import argparse
from typing import Any, ClassVar, NoReturn

from .._version import __version__
from ..domain.states import STATES
from ..settings.schema import OPTIONS, Settings
from ..twilio.simulator.defaults import DEFAULT_ACCOUNT_SID
from .common import EXIT_USAGE

__all__ = ["build_parser"]

_SECRET_FLAGS = ("--auth-token", "--api-key-secret", "--mqtt-password")


class _Parser(argparse.ArgumentParser):
    #: Every flag of every command, for "did you mean" (shared: argparse reports unknown flags at the top).
    flags: ClassVar[set[str]] = set()

    def add_argument(self, *names: Any, **options: Any) -> argparse.Action:
        self.flags.update(name for name in names if isinstance(name, str) and name.startswith("--"))
        return super().add_argument(*names, **options)

    def error(self, message: str) -> NoReturn:
        # argparse echoes unrecognised arguments, which could be a secret typed on the command line: keep
        # only the option names.
        if message.startswith("unrecognized arguments:"):
            names = [word.split("=")[0] for word in message.split()[2:] if word.startswith("-")]
            message = "unrecognized arguments: " + (" ".join(names) or "(values hidden)")
            close = [match for name in names for match in _closest_flag(name, self.flags)]
            if close:
                message += f" (did you mean {' '.join(close)}?)"
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _closest_flag(name: str, flags: set[str]) -> list[str]:
    """The flag of the setting `name` spells (`--broker-url` is broker_url's `--broker`), else the closest."""
    option = OPTIONS.get(name.lstrip("-").replace("-", "_"))
    if option is not None and option.flag in flags:
        return [option.flag]
    import difflib  # noqa: PLC0415 (only to word a mistake)

    return difflib.get_close_matches(name, flags, n=1)


class _SecretFlag(argparse.Action):
    """Swallows a secret given on the command line, remembering only which flag it was."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, *_: object) -> None:
        namespace.secret_flag = self.option_strings[0]


#: The settings `send` takes: how to reach the broker the connector uses, and its topics.
SEND_SETTINGS = frozenset(
    {
        "broker_url",
        "mqtt_version",
        "mqtt_username",
        "ca_file",
        "cert_file",
        "key_file",
        "txt_topic",
        "call_topic",
        "status_topic",
    }
)


def _add_setting_flags(parser: argparse.ArgumentParser, only: frozenset[str] | None = None) -> None:
    """The settings' flags (`only` these), `--config`, and the secret flags that are refused in words."""
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    defaults = Settings()
    for name, option in OPTIONS.items():
        if option.flag and (only is None or name in only):
            default = getattr(defaults, name)
            shown = f" (default {default})" if default not in (None, "", ()) and name != "journal_path" else ""
            parser.add_argument(option.flag, dest=name, help=option.doc + shown, metavar=name.split("_")[-1].upper())
    for flag in _SECRET_FLAGS:
        parser.add_argument(flag, dest="secret_flag", nargs="?", action=_SecretFlag, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="twilio-connector",
        description="MQTT to Twilio SMS and voice calls: a drop-in for the Greengrass v1 Twilio Notifications "
        "connector.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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
    check.add_argument(
        "--online",
        action="store_true",
        help="also ask Twilio, with the configured credentials: are they accepted, is the account a trial (and "
        "whom may it text), does default_from belong to it and can it send SMS, call, send MMS (exit 1 if not)",
    )

    journal = commands.add_parser(
        "journal",
        help="inspect the journal: counts, pending and failed requests, retry a failed one",
        description="Inspect the journal of a connector (running or not).",
    )
    journal.add_argument("--config", metavar="FILE", help="TOML configuration file (for journal_path or journal_url)")
    journal.add_argument("--journal-path", dest="journal_path", metavar="PATH", help="journal database file")
    journal.add_argument("--journal-url", dest="journal_url", metavar="URL", help="PostgreSQL journal")
    actions = journal.add_subparsers(dest="action", required=True, parser_class=_Parser)
    actions.add_parser("counts", help="requests by state, and statuses not yet published")
    actions.add_parser(
        "check",
        help="check an SQLite journal's integrity and say what can be read (read only)",
        description="Check an SQLite journal (running or not, read only): SQLite's integrity check, what can be "
        "read of it, and whether its write-ahead log was cut short. Exit 0: intact; 1: damaged.",
    )
    actions.add_parser("opt-outs", help="who replied STOP to which number (with replies on), newest first")
    pages = actions.add_parser("pages", help="pages until acknowledged: open ones (next due first), then ended ones")
    pages.add_argument("--limit", type=int, default=50)
    listing = actions.add_parser("list", help="the newest requests in some states")
    listing.add_argument(
        "--state",
        action="append",
        choices=STATES,
        help="states to show (repeatable; default: every state but sent and invalid)",
    )
    listing.add_argument("--limit", type=int, default=50)
    retry = actions.add_parser(
        "retry",
        help="send a failed request again",
        description="Send a failed request again. The running connector admits it again as it would a new one: "
        "its guards, storms and caps decide, and a refused request stays failed.",
    )
    retry.add_argument("seq", type=int, help="the request's journal number (see list)")
    retry.add_argument("--force", action="store_true", help="send it past the guards, storms and caps")
    retry.add_argument(
        "--wait", type=float, default=5.0, help="seconds to wait for the connector's decision (default 5)"
    )

    send = commands.add_parser(
        "send",
        help="publish one request and wait for its status (a smoke test)",
        description="Publish one request on the broker, as a device would, and print its status. The broker, its "
        "TLS files, user name (the password: MQTT_PASSWORD) and topics are read as `run` reads them.",
    )
    _add_setting_flags(send, only=SEND_SETTINGS)  # the broker as the connector reaches it: --config serves both
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

    _add_simulator(commands)
    return parser


def _add_simulator(commands: Any) -> None:
    sim = commands.add_parser(
        "simulator",
        help="run a local Twilio API simulator",
        description="Serve Twilio's Messages and Calls API locally.",
    )
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sim.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    sim.add_argument("--account-sid", default=DEFAULT_ACCOUNT_SID, help="account SID it accepts")
    sim.add_argument(
        "--auth-token-file",
        metavar="FILE",
        help="file holding the auth token it accepts (default $SIMULATOR_AUTH_TOKEN, else simulator-token)",
    )
    sim.add_argument(
        "--number",
        action="append",
        default=[],
        metavar="E164",
        help="a number the account owns (SMS, MMS and voice), listed as Twilio lists IncomingPhoneNumbers; repeatable",
    )
    sim.add_argument("--trial", action="store_true", help="a trial account: bodies prefixed as Twilio does")
    sim.add_argument("--auth-token", dest="secret_flag", nargs="?", action=_SecretFlag, help=argparse.SUPPRESS)
    sim.add_argument("--latency-ms", type=float, default=0.0, help="delay before every answer")
    verbs = sim.add_subparsers(dest="verb", metavar="VERB", help="with none: serve")
    reply = verbs.add_parser(
        "reply",
        help="someone texts one of the account's numbers (a running simulator lists it as Twilio would)",
        description="Tell a running simulator that someone texted one of the account's numbers.",
    )
    reply.add_argument("--url", default="http://127.0.0.1:8080", help="the running simulator")
    reply.add_argument("--from", dest="sender", required=True, metavar="E164", help="who texted")
    reply.add_argument("--to", required=True, metavar="E164", help="the account's number they texted")
    reply.add_argument("--body", required=True, help="what they wrote")
    reply.add_argument("--media", action="append", default=[], metavar="URL", help="a picture they sent; repeatable")
