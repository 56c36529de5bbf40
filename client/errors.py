"""The client's errors: an update cannot proceed; ``exit_code`` is what the CLI returns.

Each carries a stable ``code``, a ``message`` and a ``detail``; wire-format errors are
``casformat.errors.DocumentError``.
"""
from __future__ import annotations


class ClientError(Exception):
    """An update cannot proceed; ``exit_code`` is what the CLI returns."""

    code = "client_error"
    exit_code = 1

    def __init__(self, message: str, detail: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class DownloadError(ClientError):
    """A transfer failed: status, length, digest or the network."""

    code = "download_failed"

    def __init__(self, message: str, retryable: bool = False, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


class NotAvailable(DownloadError):
    """The server has no such document (404): fall back, do not retry."""

    code = "not_available"


class UnsafeRoot(ClientError):
    """The install root or its state could be changed by another user (or its path is too long)."""

    code = "unsafe_root"


class UpdateInProgress(ClientError):
    code = "update_in_progress"
    exit_code = 3


class InsufficientSpace(ClientError):
    code = "insufficient_space"
    exit_code = 4


class HealthCheckFailed(ClientError):
    code = "health_failed"
    exit_code = 5


class NeedsIntervention(ClientError):
    code = "manual_intervention"
    exit_code = 6


class PolicyRefused(ClientError):
    """The channel's signed version compatibility policy forbids this move (casformat/compat.py)."""

    code = "policy_refused"
    exit_code = 7
