"""Hostile input: generated payloads never raise, and each yields notifications or one clear refusal.

CI runs a sample; the long run (50,000 of each) is `FUZZ_EXAMPLES=50000 .venv/bin/pytest --timeout=0 tests/test_fuzz.py`.
"""

from __future__ import annotations

import os
import tracemalloc
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twilio_connector.domain.contract import InvalidRequest, Kind, Notification, parse_request

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1500"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)
# Near-valid requests: every field may be missing, of the wrong type, or hostile.
field = st.one_of(
    json_values,
    st.sampled_from(
        [
            "",
            "+12345000000",
            "12345000000",
            "whatsapp:+12345000000",
            "https://e.example/t",
            "http://u:p@e.example",
            "<Say>&</Say>",
            "x" * 2000,
            "\u0000",
            "+1" + "9" * 20,
        ]
    ),
)
recipient = st.dictionaries(
    st.sampled_from(
        [
            "name",
            "phone_number",
            "message",
            "voice_message_location",
            "media_url",
            "twiml",
            "voice_message",
            "voice",
            "language",
        ]
    ),
    field,
)
request = st.fixed_dictionaries(
    {},
    optional={
        "recipient": st.one_of(recipient, st.lists(recipient, max_size=25), json_values),
        "from_number": field,
        "retries": st.one_of(st.integers(-5, 50), json_values),
        "messaging_service_sid": st.one_of(st.just("MG" + "a" * 32), field),
        "validity_period": st.one_of(st.integers(-10, 40000), json_values),
    },
)
documents = st.fixed_dictionaries({}, optional={"request": st.one_of(request, json_values), "id": field})


def check(payload: bytes, kind: Kind) -> None:
    result = parse_request(payload, kind, default_from="+15005550006", max_retries=10, max_payload_bytes=65536)
    if isinstance(result, InvalidRequest):
        assert result.message and (result.id is None or isinstance(result.id, str))
    else:
        assert result and all(isinstance(n, Notification) and n.to and n.id for n in result)
        assert len(result) <= 20


@FUZZ
@given(st.binary(max_size=2000), st.sampled_from(list(Kind)))
def test_arbitrary_bytes(payload: bytes, kind: Kind) -> None:
    check(payload, kind)


@FUZZ
@given(documents, st.sampled_from(list(Kind)))
def test_near_valid_documents(document: Any, kind: Kind) -> None:
    check(orjson.dumps(document), kind)


def test_memory_stays_flat_over_many_payloads() -> None:
    hostile = [
        b"[" * 5000,
        b'{"id": "' + b"\xff" * 100 + b'"}',
        orjson.dumps({"request": {"recipient": [{}] * 30}, "id": "x"}),
    ]
    tracemalloc.start()
    for payload in hostile * 200:
        check(payload, Kind.SMS)
    baseline = tracemalloc.get_traced_memory()[0]
    for payload in hostile * 2000:
        check(payload, Kind.SMS)
    grown = tracemalloc.get_traced_memory()[0] - baseline
    tracemalloc.stop()
    assert grown < 200_000, grown
