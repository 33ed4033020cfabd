"""A WebSocket-to-TCP relay in front of Mosquitto, as a process: what a broker's WebSocket listener does (Debian's
Mosquitto is built without one). Built on aiohttp's WebSocket server: the handshake (path, subprotocol `mqtt`,
headers), and each binary message's bytes passed to the broker's TCP port and back, unchanged.

    python ws_relay.py PORT BROKER_PORT [--path /mqtt] [--header 'Name: value'] [--cert C --key K]

A request to another path answers 404; one without a required header, 401. Each handshake's headers are printed
as one JSON line on stdout, the way a test learns what the client sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import sys

from aiohttp import WSMsgType, web


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("broker_port", type=int)
    parser.add_argument("--path", default="/mqtt")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    required = dict(header.split(": ", 1) for header in args.header)

    async def relay(request: web.Request) -> web.StreamResponse:
        print(json.dumps(dict(request.headers)), flush=True)
        if request.path_qs != args.path:
            raise web.HTTPNotFound()
        if any(request.headers.get(name) != value for name, value in required.items()):
            raise web.HTTPUnauthorized()
        socket = web.WebSocketResponse(protocols=("mqtt",), autoping=True)
        await socket.prepare(request)
        reader, writer = await asyncio.open_connection("127.0.0.1", args.broker_port)

        async def to_client() -> None:
            while data := await reader.read(65536):
                await socket.send_bytes(data)
            await socket.close()

        pump = asyncio.create_task(to_client())
        async for message in socket:
            if message.type is WSMsgType.BINARY:
                writer.write(message.data)
                await writer.drain()
        pump.cancel()
        writer.close()
        return socket

    context = None
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    app = web.Application()
    app.router.add_get("/{tail:.*}", relay)
    with contextlib.suppress(KeyboardInterrupt):
        web.run_app(app, host="127.0.0.1", port=args.port, ssl_context=context, print=None, shutdown_timeout=0.5)
    sys.exit(0)


if __name__ == "__main__":
    main()
