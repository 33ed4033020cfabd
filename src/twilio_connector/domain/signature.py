"""Twilio's request signature (X-Twilio-Signature), which Twilio puts on the requests it makes to us."""

from __future__ import annotations

import base64
import hashlib
import hmac

__all__ = ["signature"]


def signature(token: str, url: str, params: dict[str, str]) -> str:
    """Twilio's X-Twilio-Signature: base64(HMAC-SHA1(auth token, URL + each POST parameter name and value,
    sorted by name))."""
    data = url + "".join(f"{key}{params[key]}" for key in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()
