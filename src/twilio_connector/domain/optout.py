"""Twilio's default opt-out keywords, as a reply's words mean them. Pure.

A reply that is one of Twilio's default opt-out keywords (its "Advanced Opt-Out" defaults: STOP, STOPALL,
UNSUBSCRIBE, CANCEL, END, QUIT, and since 2024 OPTOUT and REVOKE) opts its sender out of texts from that number:
Twilio then refuses every message to them with error 21610 until they send an opt-in keyword (START, YES,
UNSTOP). HELP and INFO are answered by Twilio and change nothing. Matching is Twilio's: the whole message, any
case, surrounding spaces and a trailing full stop ignored.
"""

from __future__ import annotations

__all__ = ["OPTED_OUT_CODE", "OPT_IN", "OPT_OUT", "opt_out_of"]

OPT_OUT = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"})
OPT_IN = frozenset({"START", "YES", "UNSTOP"})
#: Twilio's error for a message or call to someone who opted out ("Attempt to send to unsubscribed recipient").
OPTED_OUT_CODE = 21610


def opt_out_of(body: str) -> bool | None:
    """True: the reply opts its sender out; False: back in; None: neither."""
    word = body.strip().rstrip(".!").strip().upper()
    if word in OPT_OUT:
        return True
    if word in OPT_IN:
        return False
    return None
