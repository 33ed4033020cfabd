"""The operator's commands besides `run`: send (a smoke test), status, journal, simulator.

Each reports a user's mistake or an unreachable peer as `UserError`: one line on stderr and a documented exit
code (see cli.py), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import ssl
import sys
import time
import uuid
from typing import Any

import aiohttp
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from ..domain.states import UNFINISHED, State
from ..journal.check import check
from ..journal.core import REFUSED_AGAIN, SqlCore
from ..journal.opening import MissingExtra, open_core
from ..journal.sqlite import NotAJournal
from ..mqtt.tls import tls_hint
from ..settings.config import ConfigError, load_settings
from ..settings.parsers import BrokerAddress
from ..twilio.simulator import Simulator

__all__ = ["UserError", "journal", "os_error_words", "send", "simulate", "status"]

EXIT_FAILURE, EXIT_USAGE = 1, 2


class UserError(Exception):
    """A mistake or an unreachable peer, said in one line; `code` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def send(args: argparse.Namespace) -> int:
    """Publish one request as a device would and wait for its status. Exit 0: success status; 1: failure status;
    2: no status (unreachable or refusing broker, timeout)."""
    try:
        address = BrokerAddress.parse(args.broker)
    except ValueError as exc:
        raise UserError(f"--broker {args.broker!r} {exc}") from None
    request_id = args.id or f"send-{uuid.uuid4().hex[:12]}"
    body = json.dumps({"request": _request(args), "id": request_id})
    topic = args.topic_prefix + ("twilio/txt" if args.message is not None else "twilio/call")
    answer = _exchange(args, address, topic, body, request_id)
    print(answer.decode())
    return 0 if json.loads(answer)["response"]["status"] == "success" else EXIT_FAILURE


def _request(args: argparse.Namespace) -> dict[str, Any]:
    recipient: dict[str, str] = {"name": "twilio-connector send", "phone_number": args.to}
    if args.message is not None:
        recipient["message"] = args.message
    else:
        recipient["voice_message_location"] = args.call_url
    request: dict[str, Any] = {"recipient": recipient}
    if args.from_number:
        request["from_number"] = args.from_number
    return request


def _exchange(args: argparse.Namespace, address: BrokerAddress, topic: str, body: str, request_id: str) -> bytes:
    """Subscribe to the statuses, publish the request, return its status (paho's own blocking loop)."""
    answer: list[bytes] = []
    refused: list[str] = []
    closed: list[bool] = []

    def on_connect(client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
        else:
            client.subscribe(args.topic_prefix + "twilio/message/status", qos=1)

    def on_subscribe(client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        client.publish(topic, body, qos=1)  # subscribed first: the answer cannot be missed

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        with contextlib.suppress(ValueError, AttributeError):
            if json.loads(message.payload).get("id") == request_id:
                answer.append(bytes(message.payload))

    def on_disconnect(client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        closed.append(True)

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"twilio-connector-send-{uuid.uuid4().hex[:8]}")
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.on_disconnect = on_disconnect
    if address.tls:
        client.tls_set_context(ssl.create_default_context())
    where = f"the broker at {args.broker}"
    try:
        client.connect(address.host, address.port)
        deadline = time.monotonic() + args.timeout
        while not (answer or refused or closed) and time.monotonic() < deadline:
            client.loop(timeout=0.1)
    except OSError as exc:
        reason = exc.strerror or getattr(exc, "reason", None) or exc.__class__.__name__
        raise UserError(f"cannot reach {where}: {reason}{tls_hint(address, exc)}") from None
    finally:
        broker_closed = bool(closed)  # what the broker did, not our own DISCONNECT below
        client.disconnect()
    if refused:
        raise UserError(f"{where} refused the connection ({refused[0]})")
    if broker_closed and not answer:
        raise UserError(f"{where} closed the connection{tls_hint(address, ConnectionResetError())}")
    if not answer:
        raise UserError(f"no status for {request_id} within {args.timeout:g} s: is a connector running?")
    return answer[0]


def os_error_words(exc: OSError) -> str:
    """An OSError in the system's own short words ("Connection refused"), not an event loop's long ones."""
    words = os.strerror(exc.errno) if exc.errno else str(exc) or exc.__class__.__name__
    return f"{words} ({exc.filename})" if exc.filename else words


async def status(args: argparse.Namespace) -> int:
    """Print a running connector's /readyz. Exit 0: ready; 1: not ready; 2: no connector answers."""
    base = args.url if "://" in args.url else f"http://{args.url}"  # `127.0.0.1:9108`, as metrics_listen says it
    url = f"{base.rstrip('/')}/readyz"
    try:
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            print(await response.text())
            return 0 if response.status == 200 else EXIT_FAILURE
    except aiohttp.InvalidURL:
        raise UserError(f"--url {args.url!r} is not an http:// URL") from None
    except aiohttp.ClientConnectorDNSError:
        raise UserError(f"no connector answers at {args.url}: the host name does not resolve") from None
    except aiohttp.ClientConnectorError as exc:
        raise UserError(f"no connector answers at {args.url}: {os_error_words(exc.os_error)}") from None
    except (aiohttp.ClientError, TimeoutError):
        raise UserError(f"no connector answers at {args.url}") from None


def journal(args: argparse.Namespace) -> int:
    """Inspect a journal, or retry one failed request. Exit 1: the request is not a failed one."""
    flags = {"journal_path": args.journal_path, "journal_url": args.journal_url}
    try:
        settings = load_settings(args.config, os.environ, flags)
    except ConfigError as error:
        raise UserError("; ".join(error.problems)) from None
    path = settings.journal
    if not settings.journal_url and not os.path.isfile(path):
        raise UserError(f"no journal at {path}" + (" (that is a directory)" if os.path.isdir(path) else ""))
    if args.action == "check":
        return check(path) if not settings.journal_url else _check_remote(path)
    try:
        core = open_core(path, settings.journal_sync, create=False)
    except (NotAJournal, MissingExtra) as exc:
        raise UserError(str(exc)) from None
    except sqlite3.DatabaseError:
        raise UserError(f"{path} is not a connector journal (not an SQLite database)") from None
    except OSError as exc:
        raise UserError(f"cannot open the journal at {path}: {os_error_words(exc)}") from None
    except Exception as exc:  # the PostgreSQL driver's errors (psycopg is imported only for a URL)
        raise UserError(f"cannot open the journal at {path}: {_first_line(exc)}") from None
    try:
        return _journal_action(core, args)
    except core.Error as exc:
        raise UserError(f"{path} is not a connector journal ({_first_line(exc)})") from None
    finally:
        core.close()


def _check_remote(url: str) -> int:
    print(f"{url}: PostgreSQL checks its own files (amcheck, pg_checksums); `journal check` reads SQLite journals")
    return EXIT_USAGE


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]


def _journal_action(core: SqlCore, args: argparse.Namespace) -> int:
    if args.action == "counts":
        for state, count in sorted(core.counts().items()):
            print(f"{state}: {count}")
    elif args.action == "list":
        for row in core.rows(args.state or [*UNFINISHED, State.FAILED], args.limit):
            accepted = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row.pop("accepted_at")))
            print(json.dumps({**row, "accepted_at": accepted}))
    else:
        _retry(core, args.seq, args.force, args.wait)
    return 0


def _retry(core: SqlCore, seq: int, force: bool, wait: float) -> None:
    """Ask for failed request `seq` to be sent again, and say what the connector decided within `wait` s."""
    if not core.request_retry(seq, force=force):
        raise UserError(f"request {seq} is not a failed request", EXIT_FAILURE)
    if force:
        print(
            f"twilio-connector: warning: request {seq} goes past the guards, storms and caps (--force)", file=sys.stderr
        )
        print(f"request {seq} will be sent again")
        return
    deadline = time.monotonic() + wait
    while (found := core.state_of(seq)) is not None and found[0] == State.RETRY and time.monotonic() < deadline:
        time.sleep(0.05)
    state, error = found or ("", None)
    if state == State.RETRY:
        print(f"request {seq} will be admitted again (guards, storms, caps) and sent once a connector runs")
    elif state == State.FAILED and (error or "").startswith(REFUSED_AGAIN):
        reason = (error or "").removeprefix(REFUSED_AGAIN)
        raise UserError(
            f"request {seq} is refused again: {reason} (`journal retry --force {seq}` sends it all the same)",
            EXIT_FAILURE,
        )
    elif state == State.FOLDED:
        print(f"request {seq} will be sent again, in a digest: its recipient is in a storm")
    else:  # admitted (its new outcome, failed again at Twilio perhaps, goes out as a status)
        print(f"request {seq} will be sent again")


async def simulate(args: argparse.Namespace) -> None:
    simulator = Simulator(args.account_sid, args.auth_token, latency=args.latency_ms / 1000)
    try:
        runner = await simulator.serve(args.host, args.port)
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {os_error_words(exc)}") from None
    port = runner.addresses[0][1]
    print(f"Twilio simulator listening on http://{args.host}:{port} (account SID {args.account_sid})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (2, 15):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()
