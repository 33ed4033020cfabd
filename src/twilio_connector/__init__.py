"""Twilio Notifications connector: MQTT requests in, Twilio SMS and voice calls out, one status per request."""

from .config import ConfigError, Settings, load_settings
from .contract import ErrorCode, Kind, Notification, parse_request
from .engine import Engine
from .simulator import Simulator
from .twilio import TwilioClient

__all__ = [
    "ConfigError",
    "Engine",
    "ErrorCode",
    "Kind",
    "Notification",
    "Settings",
    "Simulator",
    "TwilioClient",
    "load_settings",
    "parse_request",
]
