"""paho-mqtt's client driven by the asyncio event loop, through paho's public "external event loop" hooks.

paho does no I/O of its own here: the event loop calls `loop_read` when the socket is readable, `loop_write`
when paho has bytes queued (at once, and again when the socket is writable if it did not take them all), and
`loop_misc` once a second (keepalive). Opening a connection (DNS, TCP connect, TLS handshake) blocks, so `open()`
runs paho's `reconnect()` in a worker thread; paho then calls the socket hooks from that thread, which is why
they hop to the loop with call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, cast

import paho.mqtt.client as paho

__all__ = ["LoopBinding"]

MISC_INTERVAL = 1.0
QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
READ_BATCH = 64


class LoopBinding:
    """Wires one paho client to the running event loop; `on_tick` runs with each keepalive check."""

    def __init__(self, client: paho.Client, on_tick: Callable[[], None] = lambda: None) -> None:
        self._client = client
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._on_tick = on_tick
        self._fd: int | None = None  # the socket's descriptor, kept: paho closes the socket right after telling us
        self._tls = False
        self._reading = False
        self._writing = False
        self._write_scheduled = False
        self._paused = False
        self._ticker: asyncio.TimerHandle | None = None
        client.on_socket_open = self._socket_opened
        client.on_socket_close = self._socket_closed
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._written

    async def open(self) -> None:
        """Open the connection and send CONNECT (the CONNACK arrives through paho's on_connect)."""
        await self._loop.run_in_executor(None, self._client.reconnect)

    def pause_reading(self) -> None:
        self._paused = True
        self._set_reading(False)

    def resume_reading(self) -> None:
        self._paused = False
        self._set_reading(True)
        self._drain_tls()

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def _on_loop(self, function: Callable[..., Any], *args: Any) -> None:
        if threading.get_ident() == self._thread:
            function(*args)
        else:
            self._loop.call_soon_threadsafe(function, *args)

    def _socket_opened(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # A status or PUBACK goes out at once. Set through a duplicate descriptor: over WebSockets paho hands us
        # its wrapper, which has no setsockopt (socket options belong to the connection, not the descriptor).
        with contextlib.suppress(OSError), socket.fromfd(sock.fileno(), socket.AF_INET, socket.SOCK_STREAM) as dup:
            dup.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The receive buffer is left to the kernel's autotuning. paho reads a packet at a time and pause_reading()
        # stops reading, so a flood waits in the kernel, not in this process. A fixed small buffer (16 KiB, from
        # the gmqtt days, when the event loop read 256 KiB at once) halved throughput with Mosquitto: with its
        # writes to us blocked it refilled our Receive Maximum only every ~100 ms (2026-11-30: 1,100-1,300 ->
        # 2,100-2,600 notifications/s on a 10,000-request burst).
        self._on_loop(self._attach, sock.fileno(), hasattr(sock, "pending"))

    def _attach(self, fd: int, tls: bool) -> None:
        self._fd, self._tls = fd, tls
        self._set_reading(not self._paused)
        if self._ticker is None:
            self._ticker = self._loop.call_later(MISC_INTERVAL, self._tick)

    def _socket_closed(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._detach)

    def _detach(self) -> None:
        if self._fd is not None:
            self._set_reading(False)
            self._remove_writer()
            self._fd = None

    def _set_reading(self, on: bool) -> None:
        if self._fd is None or on == self._reading:
            return
        if on:
            self._loop.add_reader(self._fd, self._readable)
        else:
            self._loop.remove_reader(self._fd)
        self._reading = on

    def _readable(self) -> None:
        # paho reads one packet per call when it awaits no acknowledgement: one event-loop round per request
        # would cap intake near 1,000/s. Read on while more is waiting, up to a batch, then let others run.
        for _ in range(READ_BATCH):
            self._client.loop_read()
            sock = self._client.socket()
            if not self._reading or sock is None or not select.select([sock], [], [], 0)[0]:
                break
        self._quick_ack()
        self._drain_tls()

    def behind(self) -> bool:
        """Whether the broker has sent what we have not read yet (reading paused, or bytes waiting)."""
        sock = self._client.socket()
        if sock is None or self._fd is None:
            return False
        if self._paused:
            return True
        pending = self._tls and cast(ssl.SSLSocket, sock).pending()
        return bool(pending or select.select([sock], [], [], 0)[0])

    def _quick_ack(self) -> None:
        """Acknowledge at once what was read (Linux's TCP_QUICKACK, which lapses, so set after each read): a
        broker that keeps Nagle's algorithm (Mosquitto's default) holds its next packet to us until our ACK,
        which the kernel would otherwise delay by up to 40 ms."""
        sock = cast(socket.socket | None, self._client.socket())
        if QUICKACK is not None and sock is not None and not self._tls:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)

    def _drain_tls(self) -> None:
        """TLS may hold decrypted bytes the selector cannot see: read them now, or they wait for the next packet."""
        while self._tls and self._reading:
            sock = cast(ssl.SSLSocket | None, self._client.socket())
            if sock is None or not sock.pending():
                return
            self._client.loop_read()

    def _want_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._write_soon)

    def _write_soon(self) -> None:
        # Once per loop round, whatever paho queued in it (a PUBACK, statuses) goes out together.
        if self._fd is not None and not self._writing and not self._write_scheduled:
            self._write_scheduled = True
            self._loop.call_soon(self._write_now)

    def _write_now(self) -> None:
        """Write without asking the selector first: the socket nearly always takes it, and registering a writer
        for each packet cost two epoll_ctl calls and a loop round. What it does not take waits for writability."""
        self._write_scheduled = False
        if self._fd is None or self._writing:
            return
        self._client.loop_write()
        if self._client.want_write():
            self._add_writer()

    def _add_writer(self) -> None:
        if self._fd is not None and not self._writing:
            self._loop.add_writer(self._fd, self._client.loop_write)
            self._writing = True

    def _written(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(self._remove_writer)

    def _remove_writer(self) -> None:
        if self._fd is not None and self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False

    def _tick(self) -> None:
        self._ticker = self._loop.call_later(MISC_INTERVAL, self._tick)
        if self._fd is not None:
            self._client.loop_misc()
        self._on_tick()
