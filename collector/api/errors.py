"""Errors of the HTTP API and their RFC 9457 problem documents.

Views and helpers raise domain errors (these, or collector errors such as ``SoDError``,
``CorrectionConflictError``, ``LedgerError``); only the middleware turns them into responses,
through :func:`classify`. Problem ``type`` URIs are ``urn:timeclock:problem:<slug>`` and are
listed in docs/api.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from collector import (
    BadgeConflictError,
    CollectorError,
    DirectoryError,
    DirectoryNotFoundError,
    ForbiddenError,
    LedgerError,
    ReviewError,
    SoDError,
)
from collector.access.principals import PrincipalError
from collector.access.tokens import TokenError
from collector.ledger.row_check import ProjectionError
from collector.records.corrections import (
    CorrectionConflictError,
    CorrectionError,
    CorrectionIntegrityError,
    CorrectionNotFoundError,
)
from collector.records.exports import ExportError
from collector.records.proofs import ProofNotFoundError, ProofRequestError

PROBLEM_TYPE = "urn:timeclock:problem:"
PROBLEM_CONTENT_TYPE = "application/problem+json"


class ApiError(CollectorError):
    """Base of the API's own errors; ``status``/``slug``/``title`` make the problem."""

    status = 500
    slug = "internal"
    title = "Internal error"


class BadRequestError(ApiError):
    status, slug, title = 400, "bad-request", "Malformed request"


class UnauthenticatedError(ApiError):
    status, slug, title = 401, "unauthenticated", "Authentication required"

    def __init__(self, message: str, *, presented: bool = True) -> None:
        super().__init__(message)
        self.presented = presented      # a credential was sent and failed (throttle counts)


class RevokedCertificateError(UnauthenticatedError):
    """The connection's client certificate was revoked after its handshake (CRL reload)."""


class NotFoundError(ApiError):
    status, slug, title = 404, "not-found", "Not found"


class NotAcceptableError(ApiError):
    status, slug, title = 406, "not-acceptable", "No acceptable representation"


class ConflictError(ApiError):
    status, slug, title = 409, "conflict", "Conflict with the current state"


class ThrottledError(ApiError):
    status, slug, title = 429, "throttled", "Too many failed authentications"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UnavailableError(ApiError):
    status, slug, title = 503, "unavailable", "Service unavailable"


@dataclass(frozen=True, slots=True)
class Problem:
    status: int
    slug: str
    title: str
    detail: str
    outcome: str          # access-log outcome: denied, unauthenticated, invalid, error, …

    def to_dict(self, instance: str, request_id: str) -> dict[str, object]:
        return {"type": PROBLEM_TYPE + self.slug, "title": self.title, "status": self.status,
                "detail": self.detail, "instance": instance, "request_id": request_id}


def _outcome(status: int) -> str:
    return {401: "unauthenticated", 403: "denied", 429: "throttled"}.get(
        status, "invalid" if status < 500 else "error")


def classify(e: BaseException) -> Problem:
    """The problem document for an error (unknown errors: 500, detail hidden)."""
    if isinstance(e, ApiError):
        return Problem(e.status, e.slug, e.title, str(e), _outcome(e.status))
    table: tuple[tuple[type[BaseException], int, str, str], ...] = (
        (SoDError, 403, "segregation-of-duties", "Segregation of duties"),
        (ForbiddenError, 403, "forbidden", "Forbidden"),
        (TokenError, 401, "unauthenticated", "Authentication required"),
        (CorrectionNotFoundError, 404, "not-found", "Not found"),
        (CorrectionConflictError, 409, "conflict", "Conflict with the current state"),
        # Tampering found while reading, not a client mistake: the operator must look.
        (CorrectionIntegrityError, 500, "integrity", "Stored data disagrees with the ledger"),
        (CorrectionError, 400, "invalid-correction", "Invalid correction"),
        (PrincipalError, 400, "invalid-principal", "Invalid principal or token request"),
        (DirectoryNotFoundError, 404, "not-found", "Not found"),
        (BadgeConflictError, 409, "conflict", "Conflict with the current state"),
        (DirectoryError, 400, "invalid-directory-change", "Invalid directory change"),
        (ReviewError, 409, "conflict", "Conflict with the current state"),
        (ExportError, 400, "bad-request", "Malformed request"),
        (ProofNotFoundError, 404, "not-found", "Not found"),
        (ProofRequestError, 400, "bad-request", "Malformed request"),
        (ProjectionError, 500, "integrity", "Stored data disagrees with the ledger"),
        (LedgerError, 503, "ledger-unavailable", "The ledger is unavailable"),
    )
    for cls, status, slug, title in table:
        if isinstance(e, cls):
            return Problem(status, slug, title, str(e), _outcome(status))
    if isinstance(e, web.HTTPException):
        slug = {404: "not-found", 405: "method-not-allowed", 413: "too-large"}.get(
            e.status, "http-error")
        return Problem(e.status, slug, e.reason, e.text or e.reason, _outcome(e.status))
    return Problem(500, "internal", "Internal error",
                   "the request failed inside the collector; the operator has the details",
                   "error")
