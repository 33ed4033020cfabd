"""Soak: a steady rate to distinct numbers for minutes, the connector's RSS sampled as it goes. It must level off.

    .venv/bin/python bench/soak.py --rate 150 --minutes 4                 # default guards (storm folding on)
    .venv/bin/python bench/soak.py --rate 150 --minutes 4 --policy strict  # rate caps counted too

Every request goes to a number of its own, so every per-recipient structure meets a new key each time: what the
connector keeps per recipient (storm windows, rate counts) must live in the journal, not in memory. Prints RSS
every `--every` seconds, and how many requests reached the simulator. Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import tempfile
import time
from pathlib import Path

import gmqtt
import orjson
from throughput import connector_command, rss_mb, start_broker, start_simulator


async def soak(args: argparse.Namespace, mqtt_port: int, command: list[str], env: dict[str, str]) -> list[str]:
    connector = await asyncio.create_subprocess_exec(*command, env=env)
    statuses: list[bytes] = []

    async def on_message(client: object, topic: str, payload: bytes, qos: int, properties: object) -> int:
        statuses.append(payload)
        return 0

    client = gmqtt.Client("soak-probe")
    client.on_message = on_message
    await client.connect("127.0.0.1", mqtt_port)
    client.subscribe("twilio/message/status", qos=1)
    await asyncio.sleep(2.0)
    lines = [f"t=0s sent=0 statuses=0 rss={rss_mb(connector.pid):.1f} MB"]
    started, total = time.perf_counter(), int(args.rate * args.minutes * 60)
    next_sample = started + args.every
    for n in range(total):
        await asyncio.sleep(max(0.0, started + n / args.rate - time.perf_counter()))
        number = f"+1212{2_000_000 + n % 8_000_000:07d}"  # valid New York numbers, a new one each time
        recipient = {"name": "Darla", "phone_number": number, "message": f"alert {n}"}
        client.publish("twilio/txt", orjson.dumps({"request": {"recipient": recipient}, "id": f"soak-{n}"}), qos=1)
        if time.perf_counter() >= next_sample:
            lines.append(
                f"t={time.perf_counter() - started:.0f}s sent={n + 1} statuses={len(statuses)} "
                f"rss={rss_mb(connector.pid):.1f} MB"
            )
            next_sample += args.every
    deadline = time.perf_counter() + 30
    while len(statuses) < total and time.perf_counter() < deadline:  # noqa: ASYNC110 (a bench: polling is fine)
        await asyncio.sleep(0.1)
    lines.append(f"end: sent={total} statuses={len(statuses)} rss={rss_mb(connector.pid):.1f} MB")
    success = sum(b'"success"' in status for status in statuses)
    lines.append(f"success statuses: {success}; peak RSS {rss_mb(connector.pid, 'VmHWM'):.1f} MB")
    connector.send_signal(signal.SIGTERM)
    await connector.wait()
    await client.disconnect()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=150.0)
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between RSS samples")
    parser.add_argument("--policy", choices=["default", "strict"], default="default")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker, mqtt_port = start_broker(Path(tmp))
        simulator, sim_port = start_simulator()
        env = {
            **os.environ,
            "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
            "TWILIO_AUTH_TOKEN": "simulator-token",
            "TWILIO_CONNECTOR_POLICY": args.policy,
            # strict's caps are counted (that is what is measured) but set high enough to refuse nothing
            "TWILIO_CONNECTOR_PER_MINUTE": "1000000",
            "TWILIO_CONNECTOR_PER_DAY": "100000000",
        }
        command = connector_command(mqtt_port, sim_port, str(Path(tmp) / "journal.db"))
        try:
            lines = asyncio.run(soak(args, mqtt_port, command, env))
        finally:
            for process in (simulator, broker):
                process.send_signal(signal.SIGTERM)
                process.wait(30)
    print(f"soak: {args.rate:g}/s to distinct numbers for {args.minutes:g} min, policy {args.policy}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
