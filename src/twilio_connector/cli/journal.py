"""`twilio-connector journal`: counts, listings, an integrity check, and a failed request sent again."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time

from ..domain.states import UNFINISHED, State
from ..journal.check import check
from ..journal.core import SqlCore
from ..journal.opening import MissingExtra, open_core
from ..journal.operator import REFUSED_AGAIN
from ..journal.sqlite import NotAJournal
from ..settings.config import ConfigError, load_settings
from .common import EXIT_FAILURE, EXIT_USAGE, UserError, first_line, os_error_words

__all__ = ["journal"]


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
        raise UserError(f"cannot open the journal at {path}: {first_line(exc)}") from None
    try:
        return _journal_action(core, args)
    except core.Error as exc:
        raise UserError(f"{path} is not a connector journal ({first_line(exc)})") from None
    finally:
        core.close()


def _check_remote(url: str) -> int:
    print(f"{url}: PostgreSQL checks its own files (amcheck, pg_checksums); `journal check` reads SQLite journals")
    return EXIT_USAGE


def _journal_action(core: SqlCore, args: argparse.Namespace) -> int:
    if args.action == "counts":
        for state, count in sorted(core.counts().items()):
            print(f"{state}: {count}")
    elif args.action == "opt-outs":
        for person, number, since in core.opt_outs():
            print(json.dumps({"phone_number": person, "from_number": number, "since": _utc(since)}))
    elif args.action == "pages":
        for page in core.pages(args.limit):
            for key in ("next_at", "ended_at"):
                if page.get(key) is not None:
                    page[key] = _utc(page[key])
            print(json.dumps(page))
    elif args.action == "list":
        for row in core.rows(args.state or [*UNFINISHED, State.FAILED], args.limit):
            accepted = _utc(row.pop("accepted_at"))
            print(json.dumps({**row, "accepted_at": accepted}))
    else:
        _retry(core, args.seq, args.force, args.wait)
    return 0


def _utc(seconds: float) -> str:
    """Epoch seconds as the listings show them: UTC, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


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
