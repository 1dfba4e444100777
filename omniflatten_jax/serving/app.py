"""The web server: the page at ``/``, a conversation per WebSocket at ``/ws``, ``/metrics``.

aiohttp rather than `websockets`: one well-kept library serves the page, the metrics and the
sockets on one port, with bounded message sizes, heartbeats and graceful shutdown built in;
`websockets` would need a second HTTP server for the page and metrics.

Every failure of one conversation stays in it: a malformed, oversized or out-of-order
message closes that socket with a close code and a reason (`protocol.CloseCode`) and frees
its slot; the clock and the other callers go on. Shutting down (SIGTERM, Ctrl-C) tells every
caller why and closes each socket with 1001 before the process exits.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.resources
import urllib.parse

from aiohttp import WSMsgType, web

from omniflatten_jax.config.serving import ServeConfig
from omniflatten_jax.serving.conversation import Conversation
from omniflatten_jax.serving.engine import Busy, Engine
from omniflatten_jax.serving.protocol import (
    CloseCode,
    ProtocolError,
    check_hello,
    message,
    parse_text,
    pcm_to_float,
)

ENGINE = web.AppKey("engine", Engine)
PUMPS = web.AppKey("pumps", set)
CLOCK = web.AppKey("clock", asyncio.Task)
HELLO_TIMEOUT_S = 10.0
SHUTDOWN_REASON = "shutdown: the server is stopping"


def make_app(engine: Engine) -> web.Application:
    app = web.Application(client_max_size=engine.cfg.max_message_bytes)
    app[ENGINE], app[PUMPS] = engine, set()
    app.router.add_get("/", page("index.html", "text/html"))
    app.router.add_get("/page.js", page("page.js", "text/javascript"))
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/ws", conversation_socket)
    app.on_startup.append(start_clock)
    app.on_shutdown.append(close_conversations)
    return app


def page(name: str, content_type: str):
    body = importlib.resources.files("omniflatten_jax.serving").joinpath("page", name).read_bytes()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type,
                            headers={"Cache-Control": "no-store"})
    return handler


def refusal(request: web.Request) -> web.Response | None:
    """An HTTP refusal before any WebSocket: a wrong token (401) or a page of another origin
    (403). None when the request may go on."""
    cfg = request.app[ENGINE].cfg
    if cfg.token:
        offered = request.query.get("token", "")
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            offered = auth[len("Bearer "):]
        if not hmac.compare_digest(offered.encode(), cfg.token.encode()):
            request.app[ENGINE].metrics.refused["token"] += 1
            return web.Response(status=401, text="this server needs its access token: "
                                "?token=... or Authorization: Bearer ...\n")
    origin = request.headers.get("Origin")
    if origin is not None and request.path == "/ws":
        same = urllib.parse.urlsplit(origin).netloc == request.host
        if not same and origin not in cfg.allowed_origins:
            request.app[ENGINE].metrics.refused["origin"] += 1
            return web.Response(status=403, text=f"pages from {origin} may not talk to this "
                                "server (serve it with --allowed_origins to allow them)\n")
    return None


async def metrics(request: web.Request) -> web.Response:
    refused = refusal(request)
    if refused is not None:
        return refused
    return web.Response(text=request.app[ENGINE].metrics.render(),
                        content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


async def conversation_socket(request: web.Request) -> web.StreamResponse:
    refused = refusal(request)
    if refused is not None:
        return refused
    engine: Engine = request.app[ENGINE]
    limit = engine.cfg.max_message_bytes
    # aiohttp itself drops anything past twice the limit; up to that, the reason is ours.
    ws = web.WebSocketResponse(max_msg_size=2 * limit, heartbeat=30.0)
    await ws.prepare(request)
    try:
        first = await ws.receive(timeout=HELLO_TIMEOUT_S)
        if first.type != WSMsgType.TEXT:
            raise ProtocolError(CloseCode.POLICY, 'the first message must be the "hello"')
        seed = check_hello(parse_text(first.data, limit))
    except (ProtocolError, asyncio.TimeoutError) as e:
        engine.metrics.refused["protocol"] += 1
        reason = e.reason if isinstance(e, ProtocolError) else "no hello within 10 s"
        await ws.send_str(message("refused", reason=reason))
        await ws.close(code=getattr(e, "code", CloseCode.POLICY), message=_short(reason))
        return ws
    try:
        conversation = engine.admit(seed)
    except Busy as e:
        await ws.send_str(message("refused", reason=str(e)))
        await ws.close(code=CloseCode.TRY_AGAIN_LATER, message=_short(str(e)))
        return ws
    await ws.send_str(engine.ready_message(conversation))
    pump = asyncio.create_task(send_replies(ws, conversation))
    request.app[PUMPS].add(pump)
    pump.add_done_callback(request.app[PUMPS].discard)
    try:
        await receive_audio(ws, engine, conversation)
    except ProtocolError as e:
        conversation.close_code = e.code
        conversation.send(message("end", reason=e.reason))
        engine.hang_up(conversation, f"error: {e.reason}")
    finally:
        engine.hang_up(conversation, "hang_up: the client ended the conversation")
    await pump
    return ws


async def receive_audio(ws: web.WebSocketResponse, engine: Engine,
                        conversation: Conversation) -> None:
    limit = engine.cfg.max_message_bytes
    async for msg in ws:
        if conversation.ending:
            return
        if msg.type == WSMsgType.BINARY:
            conversation.receive(pcm_to_float(msg.data, limit), engine.clock())
        elif msg.type == WSMsgType.TEXT:
            if parse_text(msg.data, limit)["type"] == "end":
                conversation.send(message("end", reason="hang_up: the client ended it"))
                return
            raise ProtocolError(CloseCode.POLICY, 'a second "hello" in one conversation')
        elif msg.type == WSMsgType.ERROR:
            raise ProtocolError(CloseCode.TOO_BIG, f"unreadable message: {ws.exception()}")


async def send_replies(ws: web.WebSocketResponse, conversation: Conversation) -> None:
    """The conversation's queue to its socket, until the engine frees its slot."""
    while (item := await conversation.outbox.get()) is not None:
        if ws.closed:
            continue
        try:
            await (ws.send_bytes(item) if isinstance(item, bytes) else ws.send_str(item))
        except ConnectionError:
            continue
    if not ws.closed:
        await ws.close(code=conversation.close_code,
                       message=_short(conversation.ending or ""))


def _short(reason: str) -> bytes:
    """A close frame's reason holds at most 123 bytes; the full one went in an "end"."""
    data = reason.encode()
    return data if len(data) <= 123 else data[:120] + b"..."


async def start_clock(app: web.Application) -> None:
    app[CLOCK] = asyncio.create_task(app[ENGINE].run())


async def close_conversations(app: web.Application) -> None:
    app[CLOCK].cancel()
    for conversation in [c for c in app[ENGINE].slots if c is not None]:
        conversation.close_code = CloseCode.GOING_AWAY
    app[ENGINE].close_all(SHUTDOWN_REASON)
    if app[PUMPS]:
        await asyncio.wait(list(app[PUMPS]), timeout=5.0)


def serve(engine: Engine, *, ssl_context=None) -> None:
    """Runs until SIGTERM or Ctrl-C, then closes every conversation with a reason."""
    cfg: ServeConfig = engine.cfg
    web.run_app(make_app(engine), host=cfg.host, port=cfg.port, ssl_context=ssl_context,
                print=None, shutdown_timeout=10.0, handle_signals=True)
