"""Every rule of CONTRACT.md, and the original documentation's own examples verbatim."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from twilio_connector.domain.contract import (
    Content,
    ErrorCode,
    InvalidRequest,
    Kind,
    Notification,
    SendResult,
    encode_status,
    failure_status,
    parse_request,
    success_status,
)

SEED_TXT = b"""{
    "request": {
        "recipient": {
            "name": "Darla",
            "phone_number": "12345000000",
            "message": "Hello from the edge"
        },
        "from_number": "19999999999",
        "retries": 3
    },
    "id": "request123"
}"""

SEED_CALL = b"""{
    "request": {
        "recipient": {
            "name": "Darla",
            "phone_number": "12345000000",
            "voice_message_location": "https://some-public-TwiML"
        },
        "from_number": "19999999999",
        "retries": 3
    },
    "id": "request123"
}"""

# The seed's Lambda example: no retries, no "+" anywhere.
SEED_LAMBDA = {
    "request": {
        "recipient": {"name": "Darla", "phone_number": "12345000000", "message": "Hello from the edge"},
        "from_number": "19999999999",
    },
    "id": "request123",
}


def parse_all(document: Any, kind: Kind = Kind.SMS, default_from: str | None = "+15005550006", max_retries: int = 10):
    payload = document if isinstance(document, bytes) else orjson.dumps(document)
    return parse_request(payload, kind, default_from=default_from, max_retries=max_retries, max_payload_bytes=65536)


def parse(document: Any, kind: Kind = Kind.SMS, default_from: str | None = "+15005550006", max_retries: int = 10):
    """The single notification of a one-recipient request, or the InvalidRequest."""
    result = parse_all(document, kind, default_from, max_retries)
    if isinstance(result, list):
        [single] = result
        return single
    return result


def txt(**recipient: Any) -> dict[str, Any]:
    base = {"name": "Darla", "phone_number": "+12345000000", "message": "hi"}
    return {"request": {"recipient": {**base, **recipient}}, "id": "r"}


def invalid(result: object) -> InvalidRequest:
    assert isinstance(result, InvalidRequest), result
    return result


def test_seed_txt_example_verbatim() -> None:
    assert parse(SEED_TXT) == Notification(
        "request123", Kind.SMS, "+12345000000", "+19999999999", "Darla", "Hello from the edge", 3
    )


def test_seed_call_example_verbatim() -> None:
    assert parse(SEED_CALL, Kind.CALL) == Notification(
        "request123", Kind.CALL, "+12345000000", "+19999999999", "Darla", "https://some-public-TwiML", 3, Content.URL
    )


def test_seed_lambda_example_defaults_retries_to_zero() -> None:
    result = parse(SEED_LAMBDA)
    assert isinstance(result, Notification) and result.retries == 0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+12345000000", "+12345000000"),
        ("12345000000", "+12345000000"),
        ("+1 (234) 500-0000", "+12345000000"),
        ("+44 20 7946 0958", "+442079460958"),
        ("+12345678", "+12345678"),
        ("+123456789012345", "+123456789012345"),
    ],
)
def test_numbers_are_normalised_to_e164(raw: str, expected: str) -> None:
    result = parse(txt(phone_number=raw))
    assert isinstance(result, Notification) and result.to == expected


@pytest.mark.parametrize(
    "raw", ["", "+", "+0123456789", "+1234567", "+1234567890123456", "12a45000000", "++12345000000"]
)
def test_bad_numbers_are_invalid(raw: str) -> None:
    assert "phone_number is not a valid phone number" in invalid(parse(txt(phone_number=raw))).message


def test_number_must_be_a_string() -> None:
    assert invalid(parse(txt(phone_number=12345000000))).message == "request.recipient.phone_number must be a string"


def test_missing_name_uses_the_original_wording() -> None:
    document = txt()
    del document["request"]["recipient"]["name"]
    assert invalid(parse(document)) == InvalidRequest("r", "Recipient name cannot be None")


def test_empty_name_is_fine_for_sms_but_not_for_calls() -> None:
    assert isinstance(parse(txt(name="")), Notification)
    document = {
        "request": {
            "recipient": {"name": "", "phone_number": "+12345000000", "voice_message_location": "https://x.example/t"}
        },
        "id": "r",
    }
    assert invalid(parse(document, Kind.CALL)).message == "request.recipient.name must not be empty"


def test_message_only_on_txt_and_location_only_on_call() -> None:
    assert invalid(parse(txt(voice_message_location="https://x.example/t"))).message == (
        "request.recipient.voice_message_location is not allowed on a text request"
    )
    document = txt()
    assert invalid(parse(document, Kind.CALL)).message == "request.recipient.message is not allowed on a call request"
    del document["request"]["recipient"]["message"]
    assert invalid(parse(document, Kind.CALL)).message == "request.recipient.voice_message_location is required"
    assert invalid(parse(document)).message == "request.recipient.message is required"


@pytest.mark.parametrize("message", ["", "   ", 5, None, ["hi"]])
def test_message_must_be_non_empty_text(message: object) -> None:
    assert "request.recipient.message" in invalid(parse(txt(message=message))).message


def test_message_longer_than_twilio_allows_is_refused() -> None:
    assert "longer than 1600" in invalid(parse(txt(message="x" * 1601))).message
    assert isinstance(parse(txt(message="x" * 1600)), Notification)


@pytest.mark.parametrize("url", ["ftp://x.example/t", "not a url", "https://", "javascript:alert(1)"])
def test_voice_location_must_be_an_http_url(url: str) -> None:
    document = {
        "request": {"recipient": {"name": "D", "phone_number": "+12345000000", "voice_message_location": url}},
        "id": "r",
    }
    assert "must be an https URL" in invalid(parse(document, Kind.CALL)).message


def test_from_number_overrides_the_default_and_is_required_without_one() -> None:
    with_default = parse(txt(), default_from="+15005550006")
    assert isinstance(with_default, Notification) and with_default.from_ == "+15005550006"
    document = txt()
    document["request"]["from_number"] = "19999999999"
    overridden = parse(document, default_from="+15005550006")
    assert isinstance(overridden, Notification) and overridden.from_ == "+19999999999"
    assert invalid(parse(txt(), default_from=None)).message == (
        "request.from_number is required when no DefaultFromPhoneNumber is configured"
    )


@pytest.mark.parametrize(
    ("retries", "message"),
    [(-1, "must be >= 0"), (1.5, "must be an integer"), ("3", "must be an integer"), (True, "must be an integer")],
)
def test_retries_must_be_a_non_negative_integer(retries: object, message: str) -> None:
    document = txt()
    document["request"]["retries"] = retries
    assert message in invalid(parse(document, default_from="+15005550006")).message


def test_retries_are_capped_by_configuration() -> None:
    document = txt()
    document["request"]["retries"] = 1000
    result = parse(document, default_from="+15005550006", max_retries=4)
    assert isinstance(result, Notification) and result.retries == 4


@pytest.mark.parametrize(
    ("document", "expected_id", "message"),
    [
        ({"request": {}}, None, "id is required"),
        ({"request": {}, "id": ""}, None, "id must not be empty"),
        ({"request": {}, "id": 7}, None, "id must be a string"),
        ({"request": {}, "id": "x" * 257}, None, "id is longer than 256 characters"),
        ({"id": "a"}, "a", "request is required"),
        ({"id": "a", "request": []}, "a", "request must be an object"),
        ({"id": "a", "request": {"recipient": "Darla"}}, "a", "request.recipient must be an object"),
        ([1, 2], None, "payload must be a JSON object"),
        ("text", None, "payload must be a JSON object"),
    ],
)
def test_structural_errors(document: Any, expected_id: str | None, message: str) -> None:
    assert invalid(parse(document)) == InvalidRequest(expected_id, message)


@pytest.mark.parametrize(
    "payload",
    [b"", b"not json", b"{", b"\xff\xfe{}", b"[" * 5000 + b"]" * 5000, b'{"id": "a"' + b"," * 10],
)
def test_unparseable_payloads_are_invalid_without_raising(payload: bytes) -> None:
    result = invalid(parse(payload))
    assert result.id is None and result.message.startswith("payload is not valid JSON")


def test_oversized_payload_is_refused_before_parsing() -> None:
    result = parse_request(b"{" * 70000, Kind.SMS, default_from=None, max_retries=1, max_payload_bytes=65536)
    assert result == InvalidRequest(None, "payload is larger than 65536 bytes")


def test_unknown_fields_are_ignored() -> None:
    document = txt(nickname="D")
    document["extra"] = {"deep": [1, 2]}
    assert isinstance(parse(document, default_from="+15005550006"), Notification)


def test_success_status_shape() -> None:
    notification = Notification("id1", Kind.SMS, "+12345000000", "+19999999999", "Darla", "hi", 0)
    status = success_status(notification, SendResult("SM1", "queued", "+12345000000", "+19999999999"), 2)
    assert json.loads(encode_status(status)) == {
        "response": {
            "status": "success",
            "payload": {
                "from_number": "+19999999999",
                "messages": {"message_status": "queued", "to_number": "+12345000000", "name": "Darla", "sid": "SM1"},
            },
            "attempts": 2,
        },
        "id": "id1",
    }


def test_failure_status_shape_uses_json_null() -> None:
    encoded = encode_status(failure_status(None, ErrorCode.INVALID_PARAMETER, "Recipient name cannot be None"))
    assert json.loads(encoded) == {
        "response": {
            "status": "fail",
            "error": "InvalidParameter",
            "error_message": "Recipient name cannot be None",
            "payload": None,
        },
        "id": None,
    }
    assert b'"payload":null' in encoded and b'"id":null' in encoded


def test_error_codes_are_the_documented_stable_set() -> None:
    assert {code.value for code in ErrorCode} == {
        "InvalidParameter",
        "TwilioError",
        "TwilioUnavailable",
        "OutcomeUnknown",
        "Rejected",
        "InternalError",
    }


# -- optional fields beyond the original contract --------------------------------------------------------


def call_doc(**recipient: Any) -> dict[str, Any]:
    return {"request": {"recipient": {"name": "Darla", "phone_number": "+12345000000", **recipient}}, "id": "c"}


def test_mms_media_urls() -> None:
    one = parse(txt(media_url="https://e.example/a.jpg"))
    assert isinstance(one, Notification) and one.media_urls == ("https://e.example/a.jpg",)
    document = txt(media_url=[f"https://e.example/{n}.jpg" for n in range(10)])
    del document["request"]["recipient"]["message"]
    many = parse(document)
    assert isinstance(many, Notification) and len(many.media_urls) == 10 and many.content == ""
    assert "more than 10 URLs" in invalid(parse(txt(media_url=[f"https://e.example/{n}" for n in range(11)]))).message
    assert "must be an https URL" in invalid(parse(txt(media_url=["ftp://e.example/a"]))).message
    assert (
        "media_url is not allowed on a call request"
        in invalid(
            parse(call_doc(voice_message_location="https://e.example/t", media_url="https://e.example/a"), Kind.CALL)
        ).message
    )


def test_messaging_service_picks_the_sender() -> None:
    service = "MG" + "a" * 32
    document = txt()
    document["request"]["messaging_service_sid"] = service
    result = parse(document, default_from="+15005550006")
    assert isinstance(result, Notification) and (result.from_, result.messaging_service_sid) == ("", service)
    document["request"]["from_number"] = "+19999999999"
    both = parse(document)
    assert isinstance(both, Notification) and (both.from_, both.messaging_service_sid) == ("+19999999999", service)
    document["request"]["messaging_service_sid"] = "MG123"
    assert "MG followed by 32 hexadecimal digits" in invalid(parse(document)).message


def test_whatsapp_addresses() -> None:
    document = txt(phone_number="whatsapp:+1 234 500 0000")
    document["request"]["from_number"] = "whatsapp:14155238886"
    result = parse(document)
    assert isinstance(result, Notification)
    assert (result.to, result.from_) == ("whatsapp:+12345000000", "whatsapp:+14155238886")
    assert "needs a WhatsApp sender" in invalid(parse(txt(phone_number="whatsapp:+12345000000"))).message
    assert (
        "not a valid phone number"
        in invalid(
            parse(
                call_doc(phone_number="whatsapp:+12345000000", voice_message_location="https://e.example/t"), Kind.CALL
            )
        ).message
    )


def test_inline_twiml_and_spoken_messages_are_escaped() -> None:
    twiml = parse(call_doc(twiml="<Response><Say>Hi</Say></Response>"), Kind.CALL)
    assert isinstance(twiml, Notification) and twiml.content_type is Content.TWIML
    spoken = parse(call_doc(voice_message='Fire in <Hall> & "B"', voice="Polly.Joanna", language="en-US"), Kind.CALL)
    assert isinstance(spoken, Notification) and spoken.content_type is Content.TWIML
    assert spoken.content == (
        '<Response><Say voice="Polly.Joanna" language="en-US">Fire in &lt;Hall&gt; &amp; "B"</Say></Response>'
    )
    assert "short name" in invalid(parse(call_doc(voice_message="x", voice='a" onload="'), Kind.CALL)).message
    assert (
        "give only one of"
        in invalid(parse(call_doc(voice_message="x", voice_message_location="https://e.example/t"), Kind.CALL)).message
    )
    assert "twiml is not allowed on a text request" in invalid(parse(txt(twiml="<Response/>"))).message


def test_validity_period() -> None:
    document = txt()
    document["request"]["validity_period"] = 600
    result = parse(document)
    assert isinstance(result, Notification) and result.validity_period == 600
    document["request"]["validity_period"] = 0
    assert "from 1 to 36000" in invalid(parse(document)).message


def test_several_recipients_one_notification_each() -> None:
    document = {
        "request": {
            "recipient": [
                {"name": "A", "phone_number": "+12345000001", "message": "hi A"},
                {"name": "B", "phone_number": "12345000002", "message": "hi B"},
            ]
        },
        "id": "multi",
    }
    result = parse_all(document)
    assert isinstance(result, list) and [(n.id, n.to, n.content, n.listed) for n in result] == [
        ("multi", "+12345000001", "hi A", True),
        ("multi", "+12345000002", "hi B", True),
    ]
    status = success_status(result[1], SendResult("SM2", "queued", "+12345000002", "+15005550006"), 1)
    assert status["recipient"] == "+12345000002" and status["id"] == "multi"
    document["request"]["recipient"][1]["phone_number"] = "+12345000001"
    assert "same phone number twice" in invalid(parse_all(document)).message
    document["request"]["recipient"] = []
    assert "1 to 20 recipients" in invalid(parse_all(document)).message


def test_options_round_trip_for_storage() -> None:
    document = txt(media_url=["https://e.example/a"])
    document["request"].update(messaging_service_sid="MG" + "b" * 32, validity_period=60)
    note = parse(document)
    assert isinstance(note, Notification)
    bare = Notification(note.id, note.kind, note.to, note.from_, note.name, note.content, note.retries)
    assert bare.with_options(note.options()) == note


def test_urls_are_https_without_credentials_unless_http_is_allowed() -> None:
    plain = call_doc(voice_message_location="http://e.example/t")
    assert invalid(parse(plain, Kind.CALL)).message == "request.recipient.voice_message_location must be an https URL"
    allowed = parse_request(
        orjson.dumps(plain),
        Kind.CALL,
        default_from="+15005550006",
        max_retries=0,
        max_payload_bytes=65536,
        allow_http=True,
    )
    assert isinstance(allowed, list) and allowed[0].content == "http://e.example/t"
    secret = call_doc(voice_message_location="https://user:pw@e.example/t")
    assert invalid(parse(secret, Kind.CALL)).message == (
        "request.recipient.voice_message_location must not carry credentials"
    )
    long = call_doc(voice_message_location="https://e.example/" + "a" * 2100)
    assert "longer than 2048" in invalid(parse(long, Kind.CALL)).message
