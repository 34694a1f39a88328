"""One error tree for the whole gateway.

Every refusal is an instance of one of these classes; each carries a stable
``code`` (published as ``urn:gateway:error:<code>``), an HTTP status and a
short title. The caller's fault and the upstream's fault are separate branches
so that a service provider can tell "you sent something wrong" from "the data
provider failed".

    GatewayError
    ├── ClientError                 the caller's fault (4xx)
    │   ├── InvalidRequest          400 malformed input
    │   ├── QueryNotAllowed         400 query parameter outside the resource's allowlist
    │   ├── Unauthenticated         401 DPoP proof or consent token missing or invalid
    │   ├── Forbidden               403 consent or policy does not cover the request
    │   ├── NotFound                404 unknown provider, resource, consent
    │   └── LoginFailed             400 the person's login could not be completed
    ├── UpstreamError               the data provider's fault (502/504)
    │   ├── ProviderUnavailable     502 connection refused or reset
    │   ├── ProviderFailed          502 provider answered 5xx or an unexpected status
    │   ├── ProviderBadResponse     502 non-JSON or oversized body
    │   └── ProviderTimeout         504 no answer in time
    ├── ServiceUnavailable          503 the gateway itself cannot proceed (trail not writable)
    └── OAuthError                  RFC 6749 §5.2 errors on OAuth endpoints (own body format)
"""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_TYPE_PREFIX = "urn:gateway:error:"


class GatewayError(Exception):
    """Base of every refusal. ``code`` is stable; ``detail`` is for humans."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"

    def __init__(self, code: str, detail: str, **extra: Any) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.extra = extra

    def problem(self) -> dict[str, Any]:
        """The RFC 9457 problem object for this error."""
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE_PREFIX + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        body.update(self.extra)
        return body


class ClientError(GatewayError):
    status = 400
    title = "Bad request"


class InvalidRequest(ClientError):
    status = 400
    title = "Invalid request"


class QueryNotAllowed(ClientError):
    status = 400
    title = "Query parameter not allowed"


class Unauthenticated(ClientError):
    """401: the DPoP proof or the consent token failed a check (RFC 9449 §7.1)."""

    status = 401
    title = "Authentication failed"


class Forbidden(ClientError):
    status = 403
    title = "Not permitted"


class NotFound(ClientError):
    status = 404
    title = "Not found"


class LoginFailed(ClientError):
    status = 400
    title = "Login failed"


class UpstreamError(GatewayError):
    status = 502
    title = "Data provider failed"


class ProviderUnavailable(UpstreamError):
    status = 502
    title = "Data provider unavailable"


class ProviderFailed(UpstreamError):
    status = 502
    title = "Data provider failed"


class ProviderBadResponse(UpstreamError):
    status = 502
    title = "Data provider sent an unusable answer"


class ProviderTimeout(UpstreamError):
    status = 504
    title = "Data provider did not answer in time"


class ServiceUnavailable(GatewayError):
    status = 503
    title = "Service unavailable"


class OAuthError(Exception):
    """An RFC 6749 error: ``{"error": ..., "error_description": ...}``."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}
