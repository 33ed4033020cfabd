"""`twilio-connector check-config`: the effective settings, with the credentials and TLS files loaded."""

from __future__ import annotations

import argparse
import sys

from .. import service
from ..domain.policy import describe_limits
from ..mqtt.tls import tls_context
from ..settings.config import ANONYMOUS_WARNING, ConfigError, anonymous_and_unbounded, describe, resolve_credentials
from .common import report, settings_from

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
    print("# The effective settings, as TOML (secrets hidden): `--config` takes this file back.")
    for line in describe(settings):
        print(line)
    for line in describe_limits(settings.limits, settings.fold_threshold, settings.fold_window):
        print(f"# guard: {line}")
    if anonymous_and_unbounded(settings):
        print(f"twilio-connector: warning: {ANONYMOUS_WARNING}", file=sys.stderr)
    print(f"# configuration OK (Twilio credentials found for {credentials.account_sid}, user {credentials.username})")
    return 0
