"""Domain exceptions of the servers; the app turns each into the one error envelope.

Only these exceptions carry a message to the client. Anything else is logged and answered with a generic
500 whose message never includes the internal exception text.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base of errors that are the client's to see. ``status`` is the HTTP code, ``type`` the class."""

    status: int = 500
    type: str = "server_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidRequestError(ServingError):
    """The request is well-formed JSON but asks for something invalid (400)."""

    status = 400
    type = "invalid_request_error"


class ValidationFailedError(ServingError):
    """The body does not match the route's schema (422)."""

    status = 422
    type = "invalid_request_error"


class RequestTooLargeError(ServingError):
    """Too many inputs, an input over the length limit with truncation off, or an oversized body (413)."""

    status = 413
    type = "request_too_large"


class AuthenticationError(ServingError):
    status = 401
    type = "authentication_error"

    def __init__(self, message: str = "missing or invalid API key: send 'Authorization: Bearer <key>'") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class QueueFullError(ServingError):
    """The scheduler's queue cannot take the request now; the client should retry after a pause (429)."""

    status = 429
    type = "overloaded_error"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, int(retry_after_s)))})
        self.retry_after_s = retry_after_s


class NotReadyError(ServingError):
    """The model is still loading or warming up (503)."""

    status = 503
    type = "not_ready"

    def __init__(self, message: str = "model is loading; retry shortly") -> None:
        super().__init__(message, headers={"Retry-After": "2"})


class UnsupportedOperationError(ServingError):
    """The route exists but the loaded model cannot serve it (e.g. /rerank on a server without scorer)."""

    status = 400
    type = "unsupported_operation"
