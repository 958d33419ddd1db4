"""API-key authentication: `Authorization: Bearer <key>` when a key is set (/health, /metrics stay public)."""

import hmac

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from .errors import APIError

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def require_api_key(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Litestar guard; a no-op when the server runs without an api_key."""
    expected = connection.app.state.service.settings.api_key
    if not expected:
        return
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise APIError(
            401,
            "You didn't provide an API key. Send it in an Authorization header using Bearer "
            "auth (Authorization: Bearer YOUR_KEY).",
            code="missing_api_key",
            headers=_CHALLENGE,
        )
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key", headers=_CHALLENGE)
