"""`twilio-connector simulator`: Twilio's Messages and Calls API, served locally."""

from __future__ import annotations

import argparse
import asyncio

from ..twilio.simulator import Simulator
from .common import UserError, os_error_words

__all__ = ["simulate"]


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
