"""Exceptions raised by the rag-plugins clients."""

from __future__ import annotations


class RagPluginsError(Exception):
    """Base of every error this package raises on purpose."""


class MissingExtraError(RagPluginsError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, module: str, extra: str, install: str | None = None) -> None:
        command = install or f"pip install 'rag-plugins[{extra}]'"
        super().__init__(f"{module} is not installed; install it with: {command}")
        self.module = module
        self.extra = extra


class ServerResponseError(RagPluginsError):
    """The server answered with an error (after retries, for retryable ones).

    Attributes:
        status: HTTP status code.
        message: The server's own message (from the error envelope when there is one).
        error_type: The envelope's ``type`` (e.g. ``invalid_request_error``), or ``http_error``.
    """

    def __init__(self, status: int, message: str, error_type: str = "http_error", url: str = "") -> None:
        super().__init__(f"{status} from {url or 'server'}: {message}")
        self.status = status
        self.message = message
        self.error_type = error_type
        self.url = url


class ServerUnavailableError(RagPluginsError):
    """The server could not be reached, or stayed overloaded, through every retry."""
