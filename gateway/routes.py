"""REST front end: OpenAI-compatible routes over `Pipeline.chat`. Serving logic lives in the
pipeline; this module only maps HTTP <-> pipeline objects and errors -> OpenAI error JSON."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from dvd.errors import DvdError, Internal, InvalidRequest, ResourceExhausted, kind_of
from dvd.identity import new_request_id
from dvd.types import Delta, Logprob, StageTimings, TokenLogprobs, Usage
from gateway.auth import Authenticator
from gateway.pipeline import Pipeline
from gateway.protocol import ERROR_RESPONSES, ChatCompletionRequest, error_body
from gateway.rest_guard import RestGuard

# Documents `Authorization: Bearer` in the OpenAPI schema; RestGuard does the checking.
BEARER = [Depends(HTTPBearer(auto_error=False, description="an API key, when the gateway has any"))]

log = logging.getLogger(__name__)

TIMEOUT_HEADER = "x-request-timeout-s"  # a client's budget for one request, in seconds


def create_app(pipeline: Pipeline) -> FastAPI:
    app = FastAPI(title="dvd-serve gateway", version="1")
    cfg = pipeline.cfg
    open_paths = frozenset(p for p, needs_key in (("/health", cfg.auth_health), ("/metrics", cfg.auth_metrics))
                           if not needs_key)
    app.add_middleware(RestGuard, auth=Authenticator(cfg.api_keys, cfg.tenant_header),
                       max_body_bytes=cfg.max_body_bytes, open_paths=open_paths)

    @app.exception_handler(DvdError)
    async def _domain_error(request: Request, exc: DvdError) -> JSONResponse:
        kind = kind_of(exc)
        headers = {"Retry-After": str(math.ceil(exc.retry_after_s))} if isinstance(exc, ResourceExhausted) else None
        return JSONResponse(error_body(exc.message, kind.openai_type, kind.http_status, exc.param), kind.http_status,
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        message = f"invalid request: {first.get('msg', 'malformed body')}" + (f" at {param}" if param else "")
        return JSONResponse(error_body(message, "invalid_request_error", 400, param), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """FastAPI's own errors (unparsable body, unknown path, wrong method) in OpenAI form too."""
        kind = "invalid_request_error" if exc.status_code < 500 else "internal_error"
        return JSONResponse(error_body(str(exc.detail), kind, exc.status_code), exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)  # details stay in the log
        return JSONResponse(error_body("internal error", "internal_error", 500), 500)

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = await pipeline.vision.healthy() and await pipeline.language.healthy()
        return JSONResponse({"status": "ok" if ok else "unavailable"}, 200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(pipeline.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=BEARER, responses={401: ERROR_RESPONSES[401]})
    async def models() -> dict:
        card = {"id": cfg.model_name, "object": "model", "created": 0, "owned_by": "dvd-serve", "root": cfg.model_root}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions", dependencies=BEARER, responses=ERROR_RESPONSES)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        request_id = new_request_id()
        chat = body.to_chat_request(request_id, tenant=request.state.tenant, timeout_s=_timeout_header(request))
        model = body.model or cfg.model_name
        deltas = pipeline.chat(chat)
        if body.stream:  # Starlette cancels the stream when the client goes away
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            # errors before the first token still get a proper status code; a client gone by then cancels
            first = await _unless_disconnected(request, anext(deltas), deltas)
            return StreamingResponse(_sse(request_id, model, first, deltas, include_usage, bool(body.logprobs)),
                                     media_type="text/event-stream")
        return await _unless_disconnected(request, _complete(request_id, model, deltas, bool(body.logprobs)), deltas)

    return app


def _timeout_header(request: Request) -> float | None:
    text = request.headers.get(TIMEOUT_HEADER)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < math.inf:
        raise InvalidRequest(f"{TIMEOUT_HEADER} must be a positive number of seconds, got {text!r}",
                             param=TIMEOUT_HEADER)
    return value


async def _unless_disconnected(request: Request, work: Awaitable, deltas: AsyncIterator[Delta]):
    """Run `work`, cancelling it (and closing `deltas`: the pool calls it started) when the
    client disconnects first: a non-streaming reply has nothing to write until it is done, so
    nothing else would notice the client went away."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await deltas.aclose()
    if task.cancelled():
        raise asyncio.CancelledError("the client disconnected")
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _complete(request_id: str, model: str, deltas: AsyncIterator[Delta], logprobs: bool) -> dict:
    text, entries, final = [], [], None
    async for delta in deltas:
        text.append(delta.text)
        entries += delta.logprobs
        final = delta
    message = {"role": "assistant", "content": "".join(text)}
    choice = {"index": 0, "message": message, "finish_reason": final.finish_reason.value,
              "logprobs": _logprobs(entries) if logprobs else None}
    return {
        "id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [choice],
        "usage": _usage(final.usage), "dvd": _dvd_extension(final),
    }


async def _sse(request_id: str, model: str, first: Delta, rest: AsyncIterator[Delta], include_usage: bool,
               logprobs: bool):
    created = int(time.time())

    def chunk(delta: dict, finish: str | None, usage: Usage | None = None, choices: bool = True,
              extension: dict | None = None, entries: list[TokenLogprobs] | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish,
                  "logprobs": _logprobs(entries) if logprobs and entries else None}
        body = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [choice] if choices else []}
        if usage is not None:
            body["usage"] = _usage(usage)
        if extension is not None:
            body["dvd"] = extension
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""}, None)
    async with contextlib.aclosing(rest):
        async for event in _events(chunk, first, rest, include_usage, request_id, logprobs):
            yield event


async def _events(chunk, first: Delta, rest: AsyncIterator[Delta], include_usage: bool, request_id: str,
                  logprobs: bool):
    delta = first
    try:
        while True:
            finish = delta.finish_reason.value if delta.finish_reason else None
            if delta.text or finish or (logprobs and delta.logprobs):
                yield chunk({"content": delta.text} if delta.text else {}, finish,
                            extension=_dvd_extension(delta) if finish else None, entries=delta.logprobs)
            if finish:
                if include_usage:
                    yield chunk({}, None, delta.usage, choices=False)
                break
            delta = await anext(rest)
    except DvdError as exc:  # mid-stream: the status is already sent; report in the stream
        kind = kind_of(exc)
        yield f"data: {json.dumps(error_body(exc.message, kind.openai_type, kind.http_status))}\n\n"
    except Exception as exc:  # noqa: BLE001 - never drop a stream silently
        log.exception("stream %s failed", request_id)
        err = Internal(str(exc))
        yield f"data: {json.dumps(error_body(err.message, kind_of(err).openai_type, 500))}\n\n"
    yield "data: [DONE]\n\n"


def _logprobs(entries: list[TokenLogprobs]) -> dict:
    """OpenAI's choices[].logprobs: one content entry per generated token."""
    return {"content": [{**_logprob(e.chosen), "top_logprobs": [_logprob(t) for t in e.top]} for e in entries],
            "refusal": None}


def _logprob(lp: Logprob) -> dict:
    return {"token": lp.token, "logprob": lp.logprob, "bytes": list(lp.token_bytes)}


def _dvd_extension(final: Delta) -> dict:
    """dvd-serve's addition to the final chunk (OpenAI clients ignore unknown fields): the
    server-side stage timings and the cache hits, as the gRPC API's final ChatResponse has them."""
    t = final.timings or StageTimings()
    timings = {"queue_ns": t.queue_ns, "encode_ns": t.encode_ns, "transfer_ns": t.transfer_ns,
               "prefill_ns": t.prefill_ns, "decode_ns": t.decode_ns}
    return {"timings": timings, "cached_images": final.cached_images}


def _usage(u: Usage | None) -> dict:
    u = u or Usage()
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": u.cached_tokens}}
