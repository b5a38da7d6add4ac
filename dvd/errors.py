"""Domain errors and the one table that maps them to gRPC codes, HTTP statuses and
OpenAI error types. Servicers and routes raise these; one interceptor (gRPC) and one
exception handler (REST) translate them."""

from __future__ import annotations

from dataclasses import dataclass

import grpc


class DvdError(Exception):
    """Base of every error a client may see. `message` is safe to show to clients."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(DvdError):
    """The request is malformed (bad body, undecodable image, bad sampling values)."""


class ModelNotFound(DvdError):
    """The request names a model this deployment does not serve."""


class NotFound(DvdError):
    """A referenced object (embedding, request id) does not exist (or expired)."""


class ResourceExhausted(DvdError):
    """A queue or memory budget is full; retry later."""


class Unavailable(DvdError):
    """A pool has no healthy replica, or a replica is draining."""


class DataCorrupted(DvdError):
    """Bytes failed their checksum or could not be decoded."""


class DeadlineExceeded(DvdError):
    """An upstream call or fetch ran out of time."""


class Internal(DvdError):
    """A bug or unexpected failure inside a service."""


class Unauthenticated(DvdError):
    """No credentials, or credentials this service does not know."""


class PayloadTooLarge(DvdError):
    """The request body (or message) is larger than this service accepts."""


@dataclass(frozen=True)
class ErrorKind:
    grpc_code: grpc.StatusCode
    http_status: int
    openai_type: str


# The one table. Order matters only for `from_grpc_code` (first match wins).
ERROR_TABLE: dict[type[DvdError], ErrorKind] = {
    InvalidRequest: ErrorKind(grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error"),
    NotFound: ErrorKind(grpc.StatusCode.NOT_FOUND, 404, "not_found_error"),
    ModelNotFound: ErrorKind(grpc.StatusCode.NOT_FOUND, 404, "invalid_request_error"),
    ResourceExhausted: ErrorKind(grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate_limit_error"),
    Unavailable: ErrorKind(grpc.StatusCode.UNAVAILABLE, 503, "service_unavailable"),
    DataCorrupted: ErrorKind(grpc.StatusCode.DATA_LOSS, 502, "upstream_error"),
    DeadlineExceeded: ErrorKind(grpc.StatusCode.DEADLINE_EXCEEDED, 504, "timeout_error"),
    Internal: ErrorKind(grpc.StatusCode.INTERNAL, 500, "internal_error"),
    Unauthenticated: ErrorKind(grpc.StatusCode.UNAUTHENTICATED, 401, "authentication_error"),
    PayloadTooLarge: ErrorKind(grpc.StatusCode.RESOURCE_EXHAUSTED, 413, "invalid_request_error"),
}

_BY_CODE: dict[grpc.StatusCode, type[DvdError]] = {}
for _cls, _kind in ERROR_TABLE.items():
    _BY_CODE.setdefault(_kind.grpc_code, _cls)
_BY_CODE[grpc.StatusCode.CANCELLED] = Unavailable


def kind_of(exc: DvdError) -> ErrorKind:
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return ERROR_TABLE[Internal]


def from_grpc_error(err: grpc.RpcError) -> DvdError:
    """Turn a failed upstream call back into the domain error it came from."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    cls = _BY_CODE.get(code, Internal)
    return cls(details or code.name)
