"""Twilio Notifications connector: MQTT requests in, Twilio SMS and voice calls out, one status per request.

The public API is what this module exports: the request contract (parse a request, the error codes) and the
settings. Everything under the subpackages is internal and may change between releases; the command line
(`twilio-connector`) is the supported way to run the connector.
"""

from .domain.contract import ErrorCode, Kind, Notification, parse_request
from .settings.config import ConfigError, load_settings
from .settings.schema import Settings

__all__ = ["ConfigError", "ErrorCode", "Kind", "Notification", "Settings", "load_settings", "parse_request"]
