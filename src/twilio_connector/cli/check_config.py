"""`twilio-connector check-config`: the effective settings, with the credentials and TLS files loaded."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from .. import service
from ..domain.policy import describe_limits
from ..mqtt.tls import tls_context
from ..settings.config import (
    ANONYMOUS_WARNING,
    ConfigError,
    Credentials,
    anonymous_and_unbounded,
    describe,
    resolve_credentials,
)
from ..settings.schema import Settings
from .common import EXIT_FAILURE, report, settings_from

__all__ = ["check_config"]


def check_config(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
        credentials = resolve_credentials(settings, service.secret_source(settings))
    except ConfigError as error:
        return report(error)
    if settings.broker.tls or settings.ca_file or settings.cert_file:
        tls_context(service.tls_files(settings))  # the TLS files load, or a ConfigError says which and why
    service.twilio_tls(settings)  # and Twilio's CA file
    service.twilio_proxy(settings, os.environ)  # and the proxy password's file
    print("# The effective settings, as TOML (secrets hidden): `--config` takes this file back.")
    for line in describe(settings):
        print(line)
    for line in describe_limits(settings.limits, settings.fold_threshold, settings.fold_window):
        print(f"# guard: {line}")
    if anonymous_and_unbounded(settings):
        print(f"twilio-connector: warning: {ANONYMOUS_WARNING}", file=sys.stderr)
    print(f"# configuration OK (Twilio credentials found for {credentials.account_sid}, user {credentials.username})")
    return asyncio.run(_online(settings, credentials)) if args.online else 0


async def _online(settings: Settings, credentials: Credentials) -> int:
    """Ask Twilio what it makes of the account: one line per finding; 1 when any fails."""
    client = service.twilio_client(settings, credentials)
    async with client:
        from ..twilio.doctor import ask, judge  # noqa: PLC0415 (only for --online)

        findings = judge(await ask(client, settings.default_from), settings.default_from, settings.api_base_url)
    for finding in findings:
        print(finding)
    failed = any(finding.verdict == "FAIL" for finding in findings)
    print(f"# Twilio: {'problems found' if failed else 'OK'}")
    return EXIT_FAILURE if failed else 0
