"""Twilio's webhooks, on one listener (`callback_listen`): status callbacks (`delivery_tracking = callback`),
handed to delivery tracking, and incoming texts (`reply_webhook_url`), handed to the reply poller, which takes
them once by SID whichever way (webhook or poll) comes first. A request without a valid `X-Twilio-Signature`
is refused with 403."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

from aiohttp import web

from ..domain.records import Reply
from ..domain.signature import signature
from ..settings.secrets import Secret
from .endpoints import serve_app

__all__ = ["CallbackListener"]

log = logging.getLogger(__name__)


class Reports(Protocol):
    async def reported(
        self, sid: str, state: str, error_code: int | None = None, duration: str | None = None
    ) -> None: ...


class Replies(Protocol):
    async def received(self, reply: Reply, media: list[str]) -> bool: ...


#: What answers an incoming text: TwiML saying nothing (so Twilio sends no reply of its own).
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


class CallbackListener:
    """Each webhook with the public URL Twilio calls (it signs that URL with `token`, the account's auth token)."""

    def __init__(
        self,
        token: Secret,
        listen: str,
        *,
        reports: tuple[Reports, str] | None = None,
        replies: tuple[Replies, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._token, self._listen, self._clock = token, listen, clock
        self._reports, self._replies = reports, replies

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        if self._reports is not None:
            app.router.add_post(urlsplit(self._reports[1]).path or "/", self._callback)
        if self._replies is not None:
            app.router.add_post(urlsplit(self._replies[1]).path or "/", self._incoming)
        return app

    async def serve(self) -> web.AppRunner:
        return await serve_app(self.app(), self._listen, "callback_listen", default_host="127.0.0.1")

    async def _signed(self, request: web.Request, url: str, what: str) -> dict[str, str] | None:
        """The form Twilio posted, or None if its signature is not Twilio's."""
        params = {key: str(value) for key, value in (await request.post()).items()}
        expected = signature(self._token.reveal(), url, params)
        if not hmac.compare_digest(expected, request.headers.get("X-Twilio-Signature", "")):
            log.warning("refused %s with a bad signature from %s", what, request.remote)
            return None
        return params

    async def _incoming(self, request: web.Request) -> web.Response:
        assert self._replies is not None
        replies, url = self._replies
        params = await self._signed(request, url, "an incoming text")
        if params is None:
            return web.Response(status=403, text="invalid signature")
        count = int(params["NumMedia"]) if params.get("NumMedia", "").isdigit() else 0
        media = [params[f"MediaUrl{i}"] for i in range(count) if f"MediaUrl{i}" in params]
        sid = params.get("MessageSid") or params.get("SmsSid") or ""
        if not (sid and params.get("From") and params.get("To")):
            return web.Response(status=400, text="MessageSid, From and To are required")
        reply = Reply(sid, params["From"], params["To"], params.get("Body", ""), self._clock(), count)
        await replies.received(reply, media)
        return web.Response(text=EMPTY_TWIML, content_type="text/xml")

    async def _callback(self, request: web.Request) -> web.Response:
        assert self._reports is not None
        reports, url = self._reports
        params = await self._signed(request, url, "a status callback")
        if params is None:
            return web.Response(status=403, text="invalid signature")
        sid = params.get("MessageSid") or params.get("CallSid") or ""
        state = params.get("MessageStatus") or params.get("CallStatus") or ""
        code = params.get("ErrorCode")
        # CallDuration: a call's seconds, in Twilio's report of a completed call (an answered page's evidence).
        error = int(code) if code and code.isdigit() else None
        await reports.reported(sid, state, error, params.get("CallDuration"))
        return web.Response(status=204)
