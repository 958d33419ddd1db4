"""Exception handlers alone: every failure becomes the OpenAI envelope; a crash never leaks a traceback."""

from litestar import Litestar, get
from litestar.testing import TestClient

from app.errors import EXCEPTION_HANDLERS, APIError
from inference.errors import ContextLengthError, RequestError, TemplateError


@get("/crash")
async def crash() -> None:
    raise RuntimeError("secret internal detail")


@get("/request-error")
async def request_error() -> None:
    raise RequestError("n must be positive", "n", "invalid_value")


@get("/context")
async def context() -> None:
    raise ContextLengthError("too long", "messages")


@get("/template")
async def template() -> None:
    raise TemplateError("raise_exception: roles must alternate")


@get("/busy")
async def busy() -> None:
    raise APIError(429, "full", code="queue_full", headers={"Retry-After": "1"})


def client() -> TestClient:
    app = Litestar(
        [crash, request_error, context, template, busy],
        exception_handlers=EXCEPTION_HANDLERS,
        logging_config=None,
    )
    return TestClient(app, raise_server_exceptions=False)


def test_unhandled_exception_is_a_500_envelope_without_details():
    with client() as c:
        r = c.get("/crash")
    assert r.status_code == 500
    assert r.json() == {
        "error": {
            "message": "internal server error; the server log has the details",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert "secret" not in r.text and "Traceback" not in r.text


def test_typed_errors_map_to_400_with_param_and_code():
    with client() as c:
        assert c.get("/request-error").json()["error"] == {
            "message": "n must be positive",
            "type": "invalid_request_error",
            "param": "n",
            "code": "invalid_value",
        }
        context = c.get("/context")
        assert context.status_code == 400 and context.json()["error"]["code"] == "context_length_exceeded"
        template = c.get("/template").json()["error"]
        assert template["param"] == "messages" and "roles must alternate" in template["message"]


def test_headers_travel_with_the_envelope():
    with client() as c:
        r = c.get("/busy")
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["error"] == {
        "message": "full",
        "type": "rate_limit_error",
        "param": None,
        "code": "queue_full",
    }
