"""Every failure as OpenAI's error envelope {"error": {message, type, param, code}}; never a traceback."""

import logging
import re
from http import HTTPStatus

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

from inference.errors import ContextLengthError, RequestError, TemplateError, TokenizerError

from .protocol import ErrorDetail, ErrorResponse

log = logging.getLogger("gguf_serve.api")

# OpenAI's `type` per status (its API and client libraries key on the status; the type is a hint).
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}


class APIError(Exception):
    """An HTTP error to send as an OpenAI envelope; `headers` e.g. Retry-After."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> ErrorResponse:
        return envelope(self.status, self.message, param=self.param, code=self.code)


def envelope(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> ErrorResponse:
    return ErrorResponse(
        error=ErrorDetail(
            message=message, type=_TYPES.get(status, "invalid_request_error"), param=param, code=code
        )
    )


def api_error_from(exc: Exception) -> APIError:
    """The APIError for a typed error from translate/the engine (400s), else a logged 500."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextLengthError):
        return APIError(400, exc.message, param=exc.param, code=exc.code or "context_length_exceeded")
    if isinstance(exc, RequestError):
        return APIError(400, exc.message, param=exc.param, code=exc.code)
    if isinstance(exc, TemplateError):
        return APIError(400, f"the chat template cannot render these messages: {exc}", param="messages")
    if isinstance(exc, TokenizerError):
        return APIError(400, str(exc), param="prompt")
    log.error("unhandled error", exc_info=exc)
    return APIError(500, "internal server error; the server log has the details")


# -- msgspec decoding errors -> the parameter they are about ----------------------------------------

_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_FIELD = re.compile(r"(?:unknown|missing required) field `(?P<field>[^`]+)`")


def request_error_from_undecodable(exc: Exception, body: bytes | None) -> RequestError:
    """The 400 for a body msgspec cannot decode: invalid UTF-8 in a string (msgspec raises
    UnicodeDecodeError, with an offset inside that string), nesting beyond the recursion limit, bad JSON
    or a value of the wrong type."""
    if isinstance(exc, UnicodeDecodeError):
        return _invalid_utf8(body or b"")
    if isinstance(exc, RecursionError):
        return RequestError(
            "the request body nests arrays or objects too deeply to decode; no request field needs more "
            "than a few levels",
            None,
            "invalid_json",
        )
    assert isinstance(exc, msgspec.MsgspecError)
    return request_error_from_msgspec(exc)


def _invalid_utf8(body: bytes) -> RequestError:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        where = f"byte 0x{body[e.start]:02x} at offset {e.start} ({e.reason})"
        return RequestError(f"the request body is not valid UTF-8: {where}", None, "invalid_json")
    return RequestError("the request body is not valid UTF-8", None, "invalid_json")


def request_error_from_msgspec(exc: msgspec.MsgspecError) -> RequestError:
    """'Expected `int`, got `str` - at `$.n`' -> RequestError(..., param='n')."""
    if isinstance(exc.__cause__, RequestError):  # raised by a Struct's __post_init__: its param and code
        return exc.__cause__
    text = str(exc)
    if not isinstance(exc, msgspec.ValidationError):  # (a ValidationError is also a DecodeError)
        return RequestError(f"the request body is not valid JSON: {text}", None, "invalid_json")
    match = _AT.match(text)
    path = (match["path"] or "").lstrip(".")
    field = _FIELD.search(text)
    if field:
        path = f"{path}.{field['field']}" if path else field["field"]
    if text.startswith("Object contains unknown field"):
        return RequestError(
            f"unrecognized request argument supplied: {path}", path or None, "unknown_parameter"
        )
    message = match["msg"]
    return RequestError(
        f"invalid value for '{path}': {message}" if path else f"invalid request body: {message}",
        path or None,
        "invalid_value" if path else None,
    )


# -- Litestar exception handlers -------------------------------------------------------------------


def _response(status: int, body: ErrorResponse, headers: dict[str, str] | None = None) -> Response:
    return Response(content=body, status_code=status, headers=headers, media_type="application/json")


def handle_api_error(request: Request, exc: APIError) -> Response:
    if exc.status >= 500:
        log.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message)
    return _response(exc.status, exc.body(), exc.headers)


def handle_request_error(request: Request, exc: Exception) -> Response:
    return handle_api_error(request, api_error_from(exc))


def handle_http_exception(request: Request, exc: HTTPException) -> Response:
    """Litestar's own errors: 404 route, 405 method, 413 body size, 400 from its parsing."""
    status = exc.status_code
    if status == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif status == 405:
        message = f"Method {request.method} is not allowed for {request.url.path}"
    elif status == 413:
        limit = request.app.state.get("max_body_bytes")
        message = "request body is too large" + (f" (the limit is {limit} bytes)" if limit else "")
    elif status >= 500:
        log.error("HTTP %d on %s %s: %s", status, request.method, request.url.path, exc.detail)
        message = "internal server error; the server log has the details"
    else:
        message = exc.detail or HTTPStatus(status).phrase
    headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() in ("allow", "retry-after")}
    return _response(status, envelope(status, message), headers)


def handle_unexpected(request: Request, exc: Exception) -> Response:
    """The catch-all: log the traceback, send a 500 envelope without it."""
    if isinstance(exc, HTTPException):
        return handle_http_exception(request, exc)
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _response(500, envelope(500, "internal server error; the server log has the details"))


EXCEPTION_HANDLERS = {
    APIError: handle_api_error,
    RequestError: handle_request_error,
    TemplateError: handle_request_error,
    TokenizerError: handle_request_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
