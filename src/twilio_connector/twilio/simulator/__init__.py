"""A local stand-in for Twilio's REST API (Messages, Calls, the account, its numbers), for tests, benchmarks and
trying the connector.

It answers the way Twilio does: Basic auth, Twilio-shaped resources and error bodies, lists with Twilio's filters
and PageToken paging, calls ended and messages redacted by update, a trial account that sends only to verified
numbers, the magic numbers of Twilio's test credentials. It adds latency and fault injection, Twilio's awkward
habits on demand (a list that shows new resources only after `list_lag` seconds, as twilio-node #647 and
twilio-java #442 report; a trial account's body prefix; a gateway error or a dropped connection after the
resource was created), and a record of what it received:

    POST   /_sim/faults     {"status": 503, "code": 20503, "count": 2, "retry_after": 1, "resource": "Messages"}
    POST   /_sim/faults     {"status": 502, "store": true}      (Twilio acted, then its edge answered 502)
    POST   /_sim/faults     {"status": 0, "store": true, "drop": true}     (acted, then the connection dropped)
    POST   /_sim/faults     {"status": 403, "code": 20003, "count": 100, "list": true}      (lookups refused)
    DELETE /_sim/faults     the outage is over: faults not yet taken are dropped
    POST   /_sim/config     {"latency_ms": 100, "delivery": {"Messages": "delivered", "after_ms": 50}}
    POST   /_sim/config     {"concurrency_limit": 100}      (429, 20429 past 100 concurrent creates)
    POST   /_sim/config     {"list_lag_ms": 300, "list_lag_spread_ms": 2000}   (each message 0.3 s + an exponential draw)
    POST   /_sim/config     {"trial": true, "verified": ["+15551230000"]}
    POST   /_sim/config     {"numbers": {"+15005550006": {"sms": true, "voice": true, "mms": false}}}
    POST   /_sim/inbound    {"from": "+15557654321", "to": "+15005550006", "body": "ACK"}   (someone replies)
    GET    /_sim/requests   every create request received, in order, with its outcome
    DELETE /_sim/requests   forget everything (resources, record, faults)
"""

from typing import Any

from .defaults import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN

__all__ = ["DEFAULT_ACCOUNT_SID", "DEFAULT_AUTH_TOKEN", "Fault", "Simulator"]


def __getattr__(name: str) -> Any:
    """`Simulator` and `Fault` on first use: the application imports aiohttp, which the connector's other commands
    (the defaults above serve the command line's help) need not load."""
    if name in ("Simulator", "Fault"):
        from . import app  # noqa: PLC0415

        return getattr(app, name)
    raise AttributeError(name)
