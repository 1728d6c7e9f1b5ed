"""WebServer: uvicorn inside the running loop, on a port the system picks, without touching signal handlers."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, StreamingResponse

from pgproxy.web.server import WebServer


def tiny_app(release: asyncio.Event) -> FastAPI:
    app = FastAPI()

    @app.get("/hello")
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"hello from {request.url.port}")

    @app.get("/slow")
    async def slow() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"started;"
            await release.wait()
            yield b"finished"

        return StreamingResponse(body())

    return app


def refused(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


async def test_serves_on_port_zero_in_this_loop_and_stops_cleanly() -> None:
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    release = asyncio.Event()
    server = WebServer(tiny_app(release), port=0, shutdown_grace_seconds=5)
    await server.start()
    try:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
        assert {sig: signal.getsignal(sig) for sig in handlers} == handlers  # pgproxy keeps its signals
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.get("/hello")
            assert response.text == f"hello from {server.port}"
            # A request in flight when stop() is called still completes.
            async with client.stream("GET", "/slow") as slow:
                chunks = slow.aiter_bytes()
                assert await anext(chunks) == b"started;"
                stopping = asyncio.create_task(server.stop())
                await asyncio.sleep(0.3)
                assert not stopping.done()
                release.set()
                assert b"".join([chunk async for chunk in chunks]) == b"finished"
            await asyncio.wait_for(stopping, 10)
    finally:
        await server.stop()
    assert refused(server.port)
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers


async def test_a_port_in_use_fails_start_and_a_second_start_is_refused() -> None:
    first = WebServer(tiny_app(asyncio.Event()))
    await first.start()
    try:
        with pytest.raises(OSError, match="in use"):
            await WebServer(tiny_app(asyncio.Event()), port=first.port).start()
        with pytest.raises(RuntimeError, match="already running"):
            await first.start()
    finally:
        await first.stop()
    with pytest.raises(RuntimeError, match="has not started"):
        _ = WebServer(tiny_app(asyncio.Event())).port
    with pytest.raises(ValueError, match="both certfile and keyfile"):
        WebServer(tiny_app(asyncio.Event()), certfile=None, keyfile=Path("k.pem"))
