"""The `twilio-connector` command: each command in a module of its own; this one dispatches and turns a user's
mistake into one line and an exit code, never a traceback."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from ..settings.config import ConfigError
from .check_config import check_config
from .common import UserError, report
from .journal import journal
from .parser import build_parser
from .run import loop_factory, run
from .send import send
from .simulator import reply, simulate
from .status import status

__all__ = ["main"]


def _dispatch(args: Any) -> int:
    if args.command == "run":
        return run(args)
    if args.command == "check-config":
        return check_config(args)
    if args.command == "journal":
        return journal(args)
    if args.command == "completion":
        import shtab  # noqa: PLC0415 (18 ms at every start otherwise)

        print(shtab.complete(build_parser(), shell=args.shell))
        return 0
    if args.command == "send":
        return send(args)
    if args.command == "status":
        return asyncio.run(status(args))
    if args.verb == "reply":
        return reply(args)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(simulate(args))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 done; 1 a failure the command reports (a failure status, not ready, a broker that refused
    the connector); 2 a usage or configuration error, or nothing answering. Never a traceback for either."""
    args: Any = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as error:
        return report(error)
    except UserError as error:
        print(f"twilio-connector: {error}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
