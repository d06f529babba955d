"""Typed API errors and the one place where exceptions become HTTP responses.

Every error is JSON `{"error": {"message", "type", "param", "code"}}` (OpenAI's shape). Client
mistakes are 4xx naming the field; overload is 503 with Retry-After; nothing carries a stack trace.
"""

from __future__ import annotations

import logging

from fastapi.responses import JSONResponse

from models.errors import AdapterError, CheckpointError, InvalidRequestError

logger = logging.getLogger("sana_serve.gateway")


class ApiError(Exception):
    """An error with its HTTP status, OpenAI error type and offending field."""

    status = 500
    type = "server_error"

    def __init__(self, message: str, param: str | None = None, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, str | None]:
        """OpenAI's error object: what the JSON answer, a stream's error event and a job carry."""
        return {"message": self.message, "type": self.type, "param": self.param, "code": None}


class BadRequest(ApiError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(ApiError):
    status = 401
    type = "authentication_error"


class RateLimited(ApiError):
    status = 429
    type = "rate_limit_error"


class NotFound(ApiError):
    status = 404
    type = "invalid_request_error"


class ModelNotFound(NotFound):
    pass


class Conflict(ApiError):
    status = 409
    type = "invalid_request_error"


class PayloadTooLarge(ApiError):
    status = 413
    type = "invalid_request_error"


class UnsupportedMediaType(ApiError):
    status = 415
    type = "invalid_request_error"


class Overloaded(ApiError):
    status = 503
    type = "overloaded_error"


class StageFailed(ApiError):
    status = 503
    type = "service_unavailable_error"


class DeadlineExceeded(ApiError):
    """The request's own time limit (X-Request-Timeout) ran out; its work was cancelled."""

    status = 504
    type = "timeout_error"


class Cancelled(ApiError):
    """The caller cancelled the generation (or went away); nginx's 499 "client closed request"."""

    status = 499
    type = "cancelled_error"


def error_response(error: ApiError, request_id: str | None = None) -> JSONResponse:
    body = {"error": error.body()}
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after_s)))
    if request_id:
        headers["X-Request-Id"] = request_id
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=error.status, headers=headers)


def to_api_error(exc: BaseException) -> ApiError:
    """Map any exception from validation, the stages or Ray to an ApiError."""
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, InvalidRequestError):
        return BadRequest(str(exc), exc.field)
    if isinstance(exc, AdapterError):  # the request's adapter cannot be used; others can
        return BadRequest(str(exc), "lora")
    if isinstance(exc, BackPressureError):
        return Overloaded("the server is busy; retry later", retry_after_s=exc.retry_after_s or 1.0)
    if isinstance(exc, (DeploymentUnavailableError, CheckpointError)):
        return StageFailed("a pipeline stage is unavailable; retry later", retry_after_s=5.0)
    cause = _ray_cause(exc)
    if cause is not exc and cause is not None:
        return to_api_error(cause)
    if is_replica_failure(exc):
        return StageFailed("a pipeline stage failed; retry later", retry_after_s=1.0)
    return ApiError("internal error")


def _ray_cause(exc: BaseException) -> BaseException | None:
    # A stage's own exception arrives wrapped in RayTaskError; `.cause` is the original.
    from ray.exceptions import RayTaskError

    if isinstance(exc, RayTaskError):
        return exc.cause
    return None


def is_replica_failure(exc: BaseException) -> bool:
    """A replica died or became unreachable mid-call: the call may be retried (stage calls are pure)."""
    from ray.exceptions import (
        ActorDiedError,
        ActorUnavailableError,
        RayActorError,
        WorkerCrashedError,
    )
    from ray.serve.exceptions import ReplicaUnavailableError

    seen: BaseException | None = exc
    for _ in range(5):
        if isinstance(seen, (RayActorError, ActorDiedError, ActorUnavailableError, WorkerCrashedError,
                             ReplicaUnavailableError)):
            return True
        if seen is None:
            return False
        # A downstream stage sees the upstream death as a RayTaskError cause, or as Serve's
        # "upstream actor died" RayServeException whose __cause__ is the ActorDiedError.
        seen = _ray_cause(seen) or seen.__cause__
    return False
