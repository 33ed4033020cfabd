"""What the commands share: exit codes, a user's mistake said in one line, settings from flags and files."""

from __future__ import annotations

import argparse
import os
import sys

from ..settings.config import ConfigError, load_settings
from ..settings.schema import OPTIONS, Settings

__all__ = ["EXIT_FAILURE", "EXIT_USAGE", "UserError", "first_line", "os_error_words", "report", "settings_from"]

#: 1: a failure the command reports (a failure status, not ready, a broker that refused the connector);
#: 2: a usage or configuration error, or nothing answering.
EXIT_FAILURE, EXIT_USAGE = 1, 2


class UserError(Exception):
    """A mistake or an unreachable peer, said in one line; `code` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def os_error_words(exc: OSError) -> str:
    """An OSError in the system's own short words ("Connection refused"), not an event loop's long ones."""
    words = os.strerror(exc.errno) if exc.errno else str(exc) or exc.__class__.__name__
    return f"{words} ({exc.filename})" if exc.filename else words


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]


def settings_from(args: argparse.Namespace) -> Settings:
    if args.secret_flag:
        raise ConfigError(
            [
                f"{args.secret_flag} is not accepted: other users can read command lines. Use the environment "
                "(TWILIO_AUTH_TOKEN, TWILIO_API_SECRET, MQTT_PASSWORD) or auth_token_file"
            ]
        )
    flags = {name: getattr(args, name, None) for name, option in OPTIONS.items() if option.flag}
    return load_settings(args.config, os.environ, flags)


def report(error: ConfigError) -> int:
    for problem in error.problems:
        print(f"twilio-connector: configuration error: {problem}", file=sys.stderr)
    return EXIT_USAGE
