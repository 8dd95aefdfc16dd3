"""OpenAI-shaped error responses, and the one place exceptions become HTTP statuses."""

from __future__ import annotations

import json
import logging

import redis

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from fastapi.responses import JSONResponse

from seamless.errors import SeamlessError, SessionFinished, UnknownSession, UpstreamUnavailable
from seamless.traces.codec import CorruptRecord

log = logging.getLogger("seamless.proxy")


class ApiError(Exception):
    """An error to send to the client as {"error": {...}} with `status`."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code if self.code is not None else self.status}}

    def response(self) -> JSONResponse:
        # the openai client retries 409 by default; a finished session stays finished, so tell it
        # not to (it reads this header before its own rules)
        headers = {"x-should-retry": "false"} if self.status == 409 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def parse_json_object(raw: bytes) -> dict:
    """A request body that must be one JSON object; anything else is a 400 that says so."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "request body nests JSON too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def translate(exc: Exception) -> ApiError:
    """Map an exception raised while serving a request to the error the client gets."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, SessionFinished):
        return ApiError(409, str(exc), "conflict")
    if isinstance(exc, UnknownSession):
        return ApiError(404, str(exc), "not_found_error")
    if isinstance(exc, UpstreamUnavailable):
        return ApiError(503, str(exc), "service_unavailable")
    if isinstance(exc, redis.RedisError):
        return ApiError(503, f"the trace store (Redis) failed: {exc!r}; check the store's log", "store_unavailable")
    if isinstance(exc, CorruptRecord):
        return ApiError(500, f"stored data is corrupt: {exc}", "internal_error")
    if isinstance(exc, SeamlessError):
        return ApiError(400, str(exc))
    # our bug, not the client's: never dress it up as a bad request
    log.exception("internal error", exc_info=exc)
    return ApiError(500, f"internal error in the seamless proxy: {exc!r}", "internal_error")


async def handle_exception(request: Request, exc: Exception) -> JSONResponse:
    return translate(exc).response()


async def handle_http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Routing errors (unknown route, wrong method) in the OpenAI shape, like every other error."""
    if exc.status_code == 404:
        return ApiError(404, f"no route {request.method} {request.url.path} on the seamless proxy; agents use "
                             "/v1/chat/completions, /v1/completions, /v1/responses, /v1/messages, /v1/models, "
                             "/inference/v1/generate under their session's base URL", "not_found_error").response()
    return ApiError(exc.status_code, str(exc.detail)).response()


async def handle_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return ApiError(400, f"invalid request: {exc.errors()}").response()
