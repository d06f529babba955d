"""Errors caught in one place: every exception a route raises becomes our JSON error here.

A pure ASGI middleware (streaming responses pass through untouched) that gives each request an id
(the client's `X-Request-Id` or a new one) and answers every failure through `to_api_error`:
counted in the metrics and logged with the request id (5xx at error level, with the cause).
"""

from __future__ import annotations

import logging
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.errors import ApiError, BadRequest, error_response, to_api_error
from serve.logs import error_text, log_event
from serve.metrics import GatewayMetrics

logger = logging.getLogger("sana_serve.api")
REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_CHARS = 128
SERVED_BY_HEADER = "x-served-by"


def failure_response(exc: Exception, request_id: str | None, path: str, metrics: GatewayMetrics) -> Response:
    """The one mapping from an exception to an HTTP response, with its metric and log line."""
    error = to_api_error(exc)
    metrics.request_failed(error.type, error.status)
    level = logging.WARNING if error.status < 500 else logging.ERROR
    log_event(logger, "request_failed", level, request_id=request_id, path=path, status=error.status,
              type=error.type, param=error.param, error=error_text(exc))
    return error_response(error, request_id)


def http_error(exc: StarletteHTTPException) -> ApiError:
    # Unknown paths (404) and wrong methods (405) in the same JSON shape as every other error.
    error = ApiError(str(exc.detail))
    error.status, error.type = exc.status_code, "invalid_request_error"
    return error


class RequestContextMiddleware:
    """Request id in, X-Request-Id out, and any exception a route raises turned into JSON."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics, served_by: str = "") -> None:
        self.app = app
        self.metrics = metrics
        self.served_by = served_by

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The client's id when it sends a sane one (it goes into every log line), else ours.
        request_id = Request(scope).headers.get(REQUEST_ID_HEADER, "")[:MAX_REQUEST_ID_CHARS] or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"], state["received_at"] = request_id, time.perf_counter()
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                headers = MutableHeaders(scope=message)
                headers.setdefault(REQUEST_ID_HEADER, request_id)
                if self.served_by:
                    headers.setdefault(SERVED_BY_HEADER, self.served_by)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a typed JSON error
            if response_started:
                raise  # a stream already under way cannot change its status
            response = failure_response(exc, request_id, scope.get("path", ""), self.metrics)
            await response(scope, receive, send_with_id)


def add_error_handling(app: FastAPI, metrics: GatewayMetrics, served_by: str = "") -> None:
    async def routing_error(request: Request, exc: StarletteHTTPException) -> Response:
        # The router raises these itself (404/405) and Starlette would answer them in its own
        # shape before our middleware sees them: map them the same way.
        response = failure_response(http_error(exc), request.state.request_id, request.url.path, metrics)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    async def parameter_error(request: Request, exc: RequestValidationError) -> Response:
        # Query and path parameters FastAPI checks (e.g. a page's `limit`): 400 naming the parameter.
        first = exc.errors()[0]
        name = str(first["loc"][-1]) if first.get("loc") else None
        message = f"{name}: {first.get('msg', 'invalid value')}" if name else first.get("msg", "invalid value")
        return failure_response(BadRequest(message, name), request.state.request_id, request.url.path, metrics)

    app.add_exception_handler(StarletteHTTPException, routing_error)
    app.add_exception_handler(RequestValidationError, parameter_error)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, served_by=served_by)
