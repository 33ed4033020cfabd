"""Twilio's status callbacks (`delivery_tracking = callback`): an HTTP endpoint that takes each signed report
and hands it to delivery tracking. A report without a valid `X-Twilio-Signature` is refused with 403."""

from __future__ import annotations

import hmac
import logging
from typing import Protocol
from urllib.parse import urlsplit

from aiohttp import web

from ..domain.signature import signature
from ..settings.secrets import Secret
from .endpoints import serve_app

__all__ = ["CallbackListener"]

log = logging.getLogger(__name__)


class Reports(Protocol):
    async def reported(
        self, sid: str, state: str, error_code: int | None = None, duration: str | None = None
    ) -> None: ...


class CallbackListener:
    """`url`: the public URL Twilio calls (it signs the URL with `token`, the account's auth token)."""

    def __init__(self, reports: Reports, url: str, token: Secret, listen: str) -> None:
        self._reports, self._url, self._token, self._listen = reports, url, token, listen

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_post(urlsplit(self._url).path or "/", self._callback)
        return app

    async def serve(self) -> web.AppRunner:
        return await serve_app(self.app(), self._listen, "callback_listen", default_host="127.0.0.1")

    async def _callback(self, request: web.Request) -> web.Response:
        params = {key: str(value) for key, value in (await request.post()).items()}
        expected = signature(self._token.reveal(), self._url, params)
        if not hmac.compare_digest(expected, request.headers.get("X-Twilio-Signature", "")):
            log.warning("refused a status callback with a bad signature from %s", request.remote)
            return web.Response(status=403, text="invalid signature")
        sid = params.get("MessageSid") or params.get("CallSid") or ""
        state = params.get("MessageStatus") or params.get("CallStatus") or ""
        code = params.get("ErrorCode")
        # CallDuration: a call's seconds, in Twilio's report of a completed call (an answered page's evidence).
        error = int(code) if code and code.isdigit() else None
        await self._reports.reported(sid, state, error, params.get("CallDuration"))
        return web.Response(status=204)
