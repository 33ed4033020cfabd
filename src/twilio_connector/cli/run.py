"""`twilio-connector run`: the connector, until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
from collections.abc import Callable

from .. import service
from ..journal.opening import MissingExtra
from ..journal.sqlite import damage_advice, is_damage
from ..mqtt.session import BrokerError
from ..ops import logs
from ..ports.journal import JournalDamaged
from ..settings.config import ConfigError, resolve_credentials
from .common import EXIT_USAGE, os_error_words, report, settings_from

__all__ = ["loop_factory", "run"]


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed: it halves the event loop's share of the CPU per notification."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
        logs.configure(settings.log_level, settings.log_format)
        credentials = resolve_credentials(settings, service.secret_source(settings))
    except ConfigError as error:
        return report(error)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(service.run(settings, credentials))
    except ConfigError as error:  # found once the parts are built: a TLS file that cannot serve
        return report(error)
    except BrokerError as exc:
        logging.getLogger("twilio_connector").error("%s", exc)
        return 1
    except JournalDamaged as exc:
        logging.getLogger("twilio_connector").error("cannot go on: %s", exc)
        return 1
    except MissingExtra as exc:
        logging.getLogger("twilio_connector").error("cannot start: %s", exc)
        return EXIT_USAGE
    except sqlite3.Error as exc:  # a journal that cannot be opened
        advice = damage_advice(settings.journal) if is_damage(exc) else f"the journal at {settings.journal}"
        logging.getLogger("twilio_connector").error("cannot start: %s (%s)", advice, exc)
        return 1
    except OSError as exc:  # a port already taken
        logging.getLogger("twilio_connector").error("cannot start: %s", os_error_words(exc))
        return 1
    return 0
