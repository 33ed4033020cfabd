"""`twilio-connector status`: a running connector's /readyz."""

from __future__ import annotations

import argparse

from .common import EXIT_FAILURE, UserError, os_error_words

__all__ = ["status"]


async def status(args: argparse.Namespace) -> int:
    """Print a running connector's /readyz. Exit 0: ready; 1: not ready; 2: no connector answers."""
    import aiohttp  # noqa: PLC0415 (only this command needs an HTTP client of aiohttp's)

    base = args.url if "://" in args.url else f"http://{args.url}"  # `127.0.0.1:9108`, as metrics_listen says it
    url = f"{base.rstrip('/')}/readyz"
    try:
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            print(await response.text())
            return 0 if response.status == 200 else EXIT_FAILURE
    except aiohttp.InvalidURL:
        raise UserError(f"--url {args.url!r} is not an http:// URL") from None
    except aiohttp.ClientConnectorDNSError:
        raise UserError(f"no connector answers at {args.url}: the host name does not resolve") from None
    except aiohttp.ClientConnectorError as exc:
        raise UserError(f"no connector answers at {args.url}: {os_error_words(exc.os_error)}") from None
    except (aiohttp.ClientError, TimeoutError):
        raise UserError(f"no connector answers at {args.url}") from None
