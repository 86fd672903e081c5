"""One exception tree for the control plane; the API maps each to an HTTP problem.

``Retryable`` errors may succeed later unchanged (503); every other error is
terminal for the request as sent (4xx).
"""

from __future__ import annotations

from typing import Any


class SagarayError(Exception):
    status = 500
    title = "Internal error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class NotFound(SagarayError):
    status, title = 404, "Not found"


class BadRequest(SagarayError):
    status, title = 400, "Bad request"


class Conflict(SagarayError):
    status, title = 409, "Conflict"


class InvalidInput(SagarayError):
    """The input breaks the saga's schema; ``extra['errors']`` lists every violation."""

    status, title = 422, "Input does not match the saga's input_schema"


class Retryable(SagarayError):
    status, title = 503, "Service unavailable"

    def __init__(self, detail: str, retry_after: float = 1.0, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = retry_after


class TooManyRequests(Retryable):
    """Admission refused a start: too many executions in flight (``extra`` says which limit)."""

    status, title = 429, "Too many requests"
