"""A fix to BentoML (1.4.40) that a long-running worker needs: request timers that end.

BentoML's TimeoutMiddleware (``traffic.timeout``, always on: the setting must be positive)
arms ``loop.call_later(timeout, ...)`` for every request and never cancels it. Each pending
timer keeps its request's future and a copy of the request's context, OpenTelemetry span
included, for the whole timeout: at ~750 requests/s and a 30 s timeout that is ~46,000 live
spans, timers and futures, and the worker's memory grows by ~80 MiB for the first half-minute
of load before it levels off (measured, bench/serve_notes.md). ``install()`` replaces the
middleware's ``__call__`` with the same logic plus the missing ``cancel()``; tests check that
no timer is left once a response is sent.
"""
from __future__ import annotations

import asyncio

from bentoml._internal.server.http.traffic import TimeoutMiddleware
from starlette.responses import JSONResponse

#: BentoML's own, kept so tests can show the bug is still there (and the fix still needed).
UPSTREAM_CALL = TimeoutMiddleware.__call__


async def _call_with_timer_cancelled(self: TimeoutMiddleware, scope, receive, send) -> None:
    """BentoML's TimeoutMiddleware.__call__, with the timer cancelled once the request is over."""
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def started(message) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    handling = asyncio.ensure_future(self.app(scope, receive, started), loop=loop)
    try:
        await waiter
    except asyncio.TimeoutError:
        if handling.cancel():
            await JSONResponse(
                {"error": f"Not able to process the request in {self.timeout} seconds"},
                status_code=504)(scope, receive, send)
    else:
        await handling
    finally:
        timer.cancel()


def install() -> None:
    """Patch BentoML's TimeoutMiddleware in this process (idempotent)."""
    TimeoutMiddleware.__call__ = _call_with_timer_cancelled
