"""How late Twilio's Messages list shows a new message, measured against a real account (it sends real texts,
which cost money): the evidence the connector's reconcile window follows (docs/guarantees.md).

    TWILIO_ACCOUNT_SID=AC... TWILIO_AUTH_TOKEN=... .venv/bin/python bench/list_lag.py \\
        --from +15551234567 --to +15557654321 --count 5

Each text is created, then looked up in the list (To, From and body, newest first, as the connector looks)
0.25 s apart until it shows; prints each lag and the window the connector would derive from them. Against the
simulator (`--api-url http://127.0.0.1:8080` with its credentials) it checks the script itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from twilio_connector.domain.contract import Kind, Notification, SendResult
from twilio_connector.domain.lag import evidence_window
from twilio_connector.settings.secrets import Secret
from twilio_connector.twilio.client import TwilioClient

TICK, GIVE_UP = 0.25, 300.0


async def lag_of(client: TwilioClient, notification: Notification) -> float | None:
    created = await client.create(notification)
    if not isinstance(created, SendResult):
        raise SystemExit(f"create failed: {created.message}")
    began = time.time()
    while time.time() - began < GIVE_UP:
        found = await client.find(notification, began - 5)
        if not isinstance(found, list):
            raise SystemExit(f"list failed: {found.message}")
        if any(candidate.sid == created.sid for candidate in found):
            return time.time() - began
        await asyncio.sleep(TICK)
    return None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="sender", required=True)
    parser.add_argument("--to", required=True)
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--api-url", default="https://api.twilio.com")
    args = parser.parse_args()
    sid = os.environ["TWILIO_ACCOUNT_SID"]
    client = TwilioClient(args.api_url, sid, sid, Secret(os.environ["TWILIO_AUTH_TOKEN"]))
    lags: list[float] = []
    async with client:
        for n in range(args.count):
            body = f"list lag probe {n + 1}/{args.count} {time.strftime('%H:%M:%S')}"
            lag = await lag_of(client, Notification(f"lag-{n}", Kind.SMS, args.to, args.sender, "", body, 0))
            said = f"not listed within {GIVE_UP:g} s" if lag is None else f"listed after {lag:.2f} s"
            print(f"text {n + 1}: {said}")
            lags.append(GIVE_UP if lag is None else lag)
            await asyncio.sleep(1.0)
    print(f"largest {max(lags):.2f} s; the reconcile window these allow: {evidence_window(lags, 120.0):g} s")


if __name__ == "__main__":
    asyncio.run(main())
