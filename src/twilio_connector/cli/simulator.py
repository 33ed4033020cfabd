"""`twilio-connector simulator`: Twilio's Messages and Calls API, served locally."""

from __future__ import annotations

import argparse
import asyncio
import os

import orjson

from ..settings.secrets import SecretError, read_secret_file
from ..twilio.simulator.defaults import DEFAULT_AUTH_TOKEN
from .common import UserError, os_error_words

__all__ = ["reply", "simulate"]


def _auth_token(args: argparse.Namespace) -> str:
    """The token it accepts: from a file or the environment, never the command line (other users can read it)."""
    if args.secret_flag:
        raise UserError(
            f"{args.secret_flag} is not accepted: other users can read command lines. "
            "Use SIMULATOR_AUTH_TOKEN or --auth-token-file"
        )
    if args.auth_token_file:
        try:
            return read_secret_file(args.auth_token_file).reveal()
        except SecretError as exc:
            raise UserError(str(exc)) from None
    return os.environ.get("SIMULATOR_AUTH_TOKEN") or DEFAULT_AUTH_TOKEN


async def simulate(args: argparse.Namespace) -> None:
    from ..twilio.simulator.app import Simulator  # noqa: PLC0415 (aiohttp only for this command)

    simulator = Simulator(args.account_sid, _auth_token(args), latency=args.latency_ms / 1000)
    simulator.trial = args.trial
    simulator.account.numbers = {number: {"sms": True, "mms": True, "voice": True} for number in args.number}
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


def reply(args: argparse.Namespace) -> int:
    """`simulator reply`: someone texted the account; prints the message as the simulator lists it."""
    import urllib.error  # noqa: PLC0415 (not on the connector's way to ready)
    import urllib.request  # noqa: PLC0415

    if not args.url.startswith(("http://", "https://")):
        raise UserError(f"--url must be the simulator's http:// or https:// address, not {args.url!r}")
    document = {"from": args.sender, "to": args.to, "body": args.body, "media": args.media}
    request = urllib.request.Request(  # noqa: S310 (http or https, checked above)
        args.url.rstrip("/") + "/_sim/inbound",
        data=orjson.dumps(document),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            print(answer.read().decode())
    except urllib.error.HTTPError as exc:
        raise UserError(f"the simulator refused it: {exc.read().decode(errors='replace')}", code=1) from None
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"no simulator answers at {args.url}: {getattr(exc, 'reason', exc)}") from None
    return 0
