"""Server-sent events: `data: <json>\\n\\n` frames, the error frame, and the final `data: [DONE]`."""

import msgspec

from .protocol import ErrorResponse

MEDIA_TYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of the stream
DONE = b"data: [DONE]\n\n"


def frame(obj) -> bytes:
    """One event carrying `obj` as JSON (a msgspec Struct or plain data)."""
    return b"data: " + msgspec.json.encode(obj) + b"\n\n"


def error_frame(body: ErrorResponse) -> bytes:
    """{"error": {...}}: the OpenAI client raises APIError on it; the stream ends after [DONE]."""
    return frame(body)
