"""BentoML's request timeout middleware, as shipped and as the service runs it."""
import asyncio

from bentoml._internal.server.http.traffic import TimeoutMiddleware

from serving import bentoml_fixes


async def answer(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def too_slow(scope, receive, send):
    await asyncio.sleep(5)


def serve(middleware, requests=3):
    """Run ``requests`` requests through ``middleware``; the statuses sent and the timers
    still pending on the loop afterwards."""
    async def main():
        sent = []

        async def send(message):
            sent.append(message)

        for _ in range(requests):
            await middleware({"type": "http", "path": "/"}, None, send)
        pending = [h for h in asyncio.get_running_loop()._scheduled if not h.cancelled()]
        return [m["status"] for m in sent if m["type"] == "http.response.start"], len(pending)

    return asyncio.run(main())


def test_upstream_middleware_leaves_a_timer_per_request(monkeypatch):
    """The bug bentoml_fixes exists for. If this fails after a BentoML upgrade, upstream has
    fixed it: drop serving/bentoml_fixes.py."""
    monkeypatch.setattr(TimeoutMiddleware, "__call__", bentoml_fixes.UPSTREAM_CALL)
    assert serve(TimeoutMiddleware(answer, timeout=30)) == ([200, 200, 200], 3)


def test_fixed_middleware_leaves_no_timer_and_still_times_out(monkeypatch):
    monkeypatch.setattr(TimeoutMiddleware, "__call__", TimeoutMiddleware.__call__)
    bentoml_fixes.install()
    assert serve(TimeoutMiddleware(answer, timeout=30)) == ([200, 200, 200], 0)
    assert serve(TimeoutMiddleware(too_slow, timeout=0.05), requests=1)[0] == [504]
