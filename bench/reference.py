"""A reference design built like the original Greengrass connector, for comparison in the benchmark.

One thread, paho-mqtt, one synchronous HTTP call per message (a requests Session, as twilio-python uses), then
the status. No journal, no retries. Run by bench/throughput.py with --reference; not part of the product.

    python bench/reference.py --broker-port P --api-url URL
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

import paho.mqtt.client as mqtt
import requests

ACCOUNT = "AC" + "0" * 32


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker-port", type=int, required=True)
    parser.add_argument("--api-url", required=True)
    args = parser.parse_args()

    http = requests.Session()
    http.auth = (ACCOUNT, "simulator-token")
    url = f"{args.api_url}/2010-04-01/Accounts/{ACCOUNT}/Messages.json"

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        request = json.loads(message.payload)
        recipient = request["request"]["recipient"]
        form = {"To": recipient["phone_number"], "From": "+15005550006", "Body": recipient["message"]}
        answer = http.post(url, data=form, timeout=15).json()
        status = {
            "response": {
                "status": "success",
                "payload": {
                    "from_number": answer["from"],
                    "messages": {
                        "message_status": answer["status"],
                        "to_number": answer["to"],
                        "name": recipient["name"],
                    },
                },
            },
            "id": request["id"],
        }
        client.publish("twilio/message/status", json.dumps(status), qos=1)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="reference", clean_session=False)
    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe([("twilio/txt", 1)])
    client.connect("127.0.0.1", args.broker_port)
    signal.signal(signal.SIGTERM, lambda *_: client.disconnect())
    print("ready", flush=True)
    client.loop_forever()
    sys.exit(0)


if __name__ == "__main__":
    main()
