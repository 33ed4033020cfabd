"""How a paho client reaches the broker: TCP or WebSockets (path, headers), TLS with its files and ALPN, and the
credentials. The connector's session and `send` build their clients here, so both reach the same broker alike."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from ..settings.parsers import BrokerAddress, MqttVersion, header_table
from ..settings.secrets import Secret
from .tls import ClosedEarly, TlsFiles, tls_context

__all__ = ["MqttOptions", "connection_hint", "paho_client"]


@dataclass(frozen=True, slots=True)
class MqttOptions:
    """What the session needs to know: where the broker is, who we are to it, and how much it may hand us."""

    broker_url: str
    client_id: str
    version: MqttVersion
    username: str | None
    password: Secret | None = field(repr=False)
    tls: TlsFiles
    session_expiry: int
    receive_maximum: int  # requests handed to us at once (MQTT 5), and the high-water mark of our work
    alpn: str = "auto"  # the broker_alpn setting
    headers: Secret | None = field(default=None, repr=False)  # the WebSocket handshake's (broker_headers)

    @property
    def broker(self) -> BrokerAddress:
        return BrokerAddress.parse(self.broker_url)


def paho_client(
    options: MqttOptions, *, persistent: bool = True, manual_ack: bool = False, log: logging.Logger | None = None
) -> paho.Client:
    """A paho client set up to reach `options.broker`, not connected yet. `persistent`: an MQTT 3.1.1 session the
    broker keeps (MQTT 5 says so at connect); `log` gets each packet in and out."""
    address = options.broker
    v5 = options.version == "5"
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=options.client_id,
        clean_session=None if v5 else not persistent,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        transport="websockets" if address.websockets else "tcp",
        manual_ack=manual_ack,
    )
    if log is not None and log.isEnabledFor(logging.DEBUG):
        client.enable_logger(log)  # packets without payloads or credentials
    if address.websockets:
        client.ws_set_options(path=address.path, headers=header_table(options.headers))
    if options.username:
        password = options.password.reveal() if options.password else None
        client.username_pw_set(options.username, password)
    if address.tls:
        context = tls_context(options.tls)
        if protocols := address.alpn(options.alpn):
            context.set_alpn_protocols(protocols)
        client.tls_set_context(context)
    return client


def connection_hint(address: BrokerAddress, exc: BaseException) -> str:
    """A hint when a failure looks like TLS spoken to a plain listener, plain MQTT to a TLS one, or a WebSocket
    listener that refused the handshake (paho does not keep its HTTP status)."""
    if isinstance(exc, paho.WebsocketConnectionError):
        return f" (does the listener take WebSockets at {address.path.split('?')[0]}, and accept broker_headers?)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ""
    secure, plain = ("wss://", "ws://") if address.websockets else ("mqtts://", "mqtt://")
    if address.tls and isinstance(exc, ConnectionResetError | ssl.SSLError):
        return f" (is port {address.port} a TLS listener? {secure} needs one; {plain} is plain)"
    if not address.tls and isinstance(exc, ConnectionResetError | ClosedEarly):
        return f" (if port {address.port} expects TLS, use {secure})"
    return ""
