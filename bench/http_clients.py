"""HTTP clients compared on the connector's own request: a Messages create against the simulator.

    .venv/bin/pip install pyreqwest curl-cffi httpr httptools     # the candidates (not dependencies)
    .venv/bin/python bench/http_clients.py --requests 10000 --concurrency 32 --rounds 3

Each client runs in its own process, `--concurrency` tasks posting the same form the connector posts (Basic auth,
urlencoded body, keep-alive), reading and parsing the JSON answer. Reports the client process's CPU (all its
threads: the Rust clients run their own) per request and requests/s. Clients that are not installed are skipped.
The simulator answers at once, so the figures are the clients' cost, not Twilio's latency. Not part of the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import uvloop

from twilio_connector.twilio.http1 import Http1Pool

ACCOUNT = "AC" + "0" * 32
AUTH = "Basic " + base64.b64encode(f"{ACCOUNT}:simulator-token".encode()).decode()
BODY = b"To=%2B12345000000&From=%2B15005550006&Body=alert+from+the+bench"
FORM = "application/x-www-form-urlencoded"
HEADERS_NO_TYPE = {"Authorization": AUTH, "User-Agent": "twilio-connector"}
HEADERS = {**HEADERS_NO_TYPE, "Content-Type": FORM}

Post = Callable[[], Awaitable[dict[str, Any]]]


async def aiohttp_client(url: str, concurrency: int) -> tuple[Post, Callable[[], Awaitable[None]]]:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=30),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=15, connect=5),
        headers={"Authorization": AUTH, "User-Agent": "twilio-connector"},
    )

    async def post() -> dict[str, Any]:
        payload = aiohttp.BytesPayload(BODY, content_type=FORM)
        async with session.post(url, data=payload) as response:
            return orjson.loads(await response.read())  # type: ignore[no-any-return]

    return post, session.close


async def pyreqwest_client(url: str, concurrency: int) -> tuple[Post, Callable[[], Awaitable[None]]]:
    from pyreqwest.client import ClientBuilder  # noqa: PLC0415  (a candidate, installed only to compare)

    client = (
        ClientBuilder()
        .max_connections(concurrency)
        .connect_timeout(timedelta(seconds=5))
        .timeout(timedelta(seconds=15))
        .default_headers({"Authorization": AUTH, "User-Agent": "twilio-connector"})
        .build()
    )

    async def post() -> dict[str, Any]:
        response = await client.post(url).header("Content-Type", FORM).body_bytes(BODY).build().send()
        return orjson.loads(bytes(await response.bytes()))  # type: ignore[no-any-return]

    return post, client.close


async def curl_cffi_client(url: str, concurrency: int) -> tuple[Post, Callable[[], Awaitable[None]]]:
    from curl_cffi.requests import AsyncSession  # noqa: PLC0415  (a candidate, installed only to compare)

    session = AsyncSession(max_clients=concurrency, timeout=(5, 15), headers=HEADERS)

    async def post() -> dict[str, Any]:
        response = await session.post(url, data=BODY)
        return orjson.loads(response.content)  # type: ignore[no-any-return]

    return post, session.close


async def httpr_client(url: str, concurrency: int) -> tuple[Post, Callable[[], Awaitable[None]]]:
    import httpr  # noqa: PLC0415  (a candidate, installed only to compare)

    client = httpr.AsyncClient(headers=HEADERS, timeout=15, max_concurrency=concurrency)

    async def post() -> dict[str, Any]:
        response = await client.post(url, content=BODY)
        return orjson.loads(response.content)  # type: ignore[no-any-return]

    async def close() -> None:
        await client.aclose()

    return post, close


async def httptools_client(url: str, concurrency: int) -> tuple[Post, Callable[[], Awaitable[None]]]:
    """The least a Python client can do: httptools' C parser under an asyncio protocol, one request at a time
    per kept-alive connection, a free list of connections. No TLS, redirects or chunked bodies here: a floor."""
    import httptools  # noqa: PLC0415  (a candidate, installed only to compare)

    parsed = httptools.parse_url(url.encode())
    host, port, path = parsed.host.decode(), parsed.port, parsed.path
    head = (
        b"POST " + path + b" HTTP/1.1\r\nHost: " + f"{host}:{port}".encode()
        + b"\r\nAuthorization: " + AUTH.encode() + b"\r\nUser-Agent: twilio-connector\r\nContent-Type: " + FORM.encode()
        + b"\r\nContent-Length: "
    )  # fmt: skip

    class Connection(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpResponseParser(self)
            self.body = bytearray()
            self.done: asyncio.Future[bytes] | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            assert self.done is not None
            self.done.set_result(bytes(self.body))
            self.body.clear()

        async def post(self, body: bytes) -> bytes:
            self.done = asyncio.get_running_loop().create_future()
            self.transport.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)  # type: ignore[attr-defined]
            return await self.done

    idle: list[Connection] = []
    loop = asyncio.get_running_loop()

    async def post() -> dict[str, Any]:
        connection = idle.pop() if idle else (await loop.create_connection(Connection, host, port))[1]
        answer = await asyncio.wait_for(connection.post(BODY), 15)
        idle.append(connection)
        return orjson.loads(answer)  # type: ignore[no-any-return]

    async def close() -> None:
        for connection in idle:
            connection.transport.close()

    return post, close


async def http1_client(url: str, concurrency: int) -> tuple[Post, Callable[[], Awaitable[None]]]:
    """The connector's own (twilio_connector.twilio.http1): the floor above, with timeouts, TLS, limits and checks."""
    parts = urlsplit(url)
    pool = Http1Pool(f"{parts.scheme}://{parts.netloc}", headers=HEADERS_NO_TYPE, max_connections=concurrency)

    async def post() -> dict[str, Any]:
        answer = await pool.request("POST", parts.path, BODY, FORM)
        return orjson.loads(answer.body)  # type: ignore[no-any-return]

    return post, pool.close


CLIENTS = {
    "http1 (ours)": ("twilio_connector", http1_client),
    "aiohttp": ("aiohttp", aiohttp_client),
    "pyreqwest": ("pyreqwest", pyreqwest_client),
    "curl-cffi": ("curl_cffi", curl_cffi_client),
    "httpr": ("httpr", httpr_client),
    "httptools": ("httptools", httptools_client),
}


async def run(name: str, url: str, requests: int, concurrency: int) -> dict[str, float]:
    post, close = await CLIENTS[name][1](url, concurrency)
    for _ in range(200):  # warm up: connections opened, caches filled
        await post()
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            answer = await post()
            assert answer["status"] == "queued", answer

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await close()
    return {"cpu_us": cpu / requests * 1e6, "rate": requests / wall}


def child(name: str, url: str, requests: int, concurrency: int) -> None:
    print(json.dumps(uvloop.run(run(name, url, requests, concurrency))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", help="a running simulator's base URL (default: start one)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    url = args.url
    if args.child:
        child(args.child, url, args.requests, args.concurrency)
        return
    simulator = None
    if url is None:
        port = int(os.environ.get("BENCH_SIM_PORT", "18573"))
        command = [sys.executable, "-m", "twilio_connector", "simulator", "--port", str(port), "--latency-ms", "0"]
        simulator = subprocess.Popen(command, stdout=subprocess.PIPE)
        assert simulator.stdout is not None
        simulator.stdout.readline()
        url = f"http://127.0.0.1:{port}"
    url = f"{url}/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
    names = [name for name, (module, _) in CLIENTS.items() if importlib.util.find_spec(module)]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    try:
        for round_ in range(args.rounds):
            for name in names if round_ % 2 == 0 else reversed(names):  # alternate the order between rounds
                command = [sys.executable, __file__, "--child", name, "--url", url]
                command += ["--requests", str(args.requests), "--concurrency", str(args.concurrency)]
                output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                results[name].append(json.loads(output.splitlines()[-1]))
    finally:
        if simulator is not None:
            simulator.terminate()
            simulator.wait()
    print(f"{args.requests} requests, {args.concurrency} at once, medians of {args.rounds} rounds\n")
    print("| client | client CPU us/request | requests/s | every round (us) |\n|---|---|---|---|")
    for name, rounds in results.items():
        cpu = sorted(r["cpu_us"] for r in rounds)
        rate = sorted(r["rate"] for r in rounds)
        every = ", ".join(f"{r['cpu_us']:.0f}" for r in rounds)
        print(f"| {name} | {cpu[len(cpu) // 2]:.0f} | {rate[len(rate) // 2]:.0f} | {every} |")


if __name__ == "__main__":
    main()
