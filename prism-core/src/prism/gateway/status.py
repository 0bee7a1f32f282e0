"""Which gRPC status each Prism error becomes, and back again.

This is the one place that decides it. The server turns an exception into a
``google.rpc.Status`` (code, message, rich details) with :func:`status_for`; the
remote client turns that status back into the same ``prism.errors`` class, with
the same message and attributes, with :func:`error_from_status`. So code that
catches ``prism.LimitExceeded`` works unchanged whether Prism runs embedded or
behind the gateway.

==========================================  ===================  ==================================
error                                       status code          details
==========================================  ===================  ==================================
InvalidArgument, LimitExceeded,             INVALID_ARGUMENT     BadRequest (the field), ErrorInfo
InvalidPageToken
NamespaceNotFound                           NOT_FOUND            ErrorInfo
Unsupported, PlanError, WrongAbstraction,   FAILED_PRECONDITION  ErrorInfo (capability, reasons)
ConfigError
Overloaded (the namespace's calls in flight  RESOURCE_EXHAUSTED   ErrorInfo (namespace, limit)
are at gateway.limits.max_concurrency)
BreakerOpen (the backend's breaker is open) UNAVAILABLE          ErrorInfo (backend, retry_after_s)
BackendError, ConnectionError, TimeoutError UNAVAILABLE          ErrorInfo
the client's deadline passed                DEADLINE_EXCEEDED    ErrorInfo
no token, or one the gateway does not know  UNAUTHENTICATED      RequestInfo only
the token lacks the role on the namespace   PERMISSION_DENIED    ErrorInfo (namespace, role)
anything else                               INTERNAL             RequestInfo only, no traceback
==========================================  ===================  ==================================

Every status carries a ``RequestInfo`` with the request id the gateway logged the
call under, so an operator can find the one log line (and for INTERNAL, the
traceback) that goes with a user's report.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import grpc
from google.protobuf import any_pb2

# googleapis-common-protos ships .pyi files but no py.typed marker.
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from prism.errors import (
    BackendError,
    BreakerOpen,
    ConfigError,
    InvalidArgument,
    InvalidPageToken,
    LimitExceeded,
    NamespaceNotFound,
    Overloaded,
    PlanError,
    PrismError,
    Unsupported,
    WrongAbstraction,
)

#: ``ErrorInfo.domain`` of every error this gateway raises on purpose.
DOMAIN = "prism.v1"
#: The trailing metadata key gRPC's rich status model uses (grpcio-status).
DETAILS_KEY = "grpc-status-details-bin"


# -- errors the remote client adds ---------------------------------------------------------


class RemoteError(PrismError):
    """A gateway call failed in a way only a remote call can: the gateway is
    unreachable, the deadline passed, access was refused, or the gateway hit a
    bug. ``code`` is the gRPC status code; ``request_id`` finds the gateway's log
    line for the call."""

    def __init__(self, message: str, *, code: grpc.StatusCode, request_id: str | None = None) -> None:
        self.code = code
        self.request_id = request_id
        super().__init__(message)


class Unavailable(RemoteError, BackendError):
    """The gateway or the datastore behind it is unavailable (UNAVAILABLE). A
    :class:`prism.BackendError`, as embedded: the request may be retried."""


class DeadlineExceeded(RemoteError, TimeoutError):
    """The call did not finish within its deadline (DEADLINE_EXCEEDED). A write
    may or may not have happened: retry it with the same idempotency token."""


class PermissionDenied(RemoteError):
    """The gateway refused the call (PERMISSION_DENIED): the token lacks the
    role the call needs on ``namespace`` (``role``; None when any role would
    do), or the gateway does not allow the call at all (``role`` None)."""

    namespace: str | None = None
    role: str | None = None


class Unauthenticated(RemoteError):
    """The gateway did not accept the credentials (UNAUTHENTICATED): no token,
    a malformed one, or one it does not know."""


class InternalError(RemoteError):
    """The gateway failed unexpectedly (INTERNAL or UNKNOWN): a bug, reported with
    the request id under which the gateway logged the traceback."""


# -- server side: exception to status -------------------------------------------------------


def _pack(message: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _request_info(request_id: str) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(error_details_pb2.RequestInfo(request_id=request_id))
    return packed


def _error_info(exc: PrismError) -> error_details_pb2.ErrorInfo:
    """The attributes the client needs to rebuild ``exc``, as strings."""
    metadata: dict[str, str] = {}
    for name in ("namespace", "field", "limit_name", "capability", "backend", "abstraction"):
        value = getattr(exc, name, None)
        if value is not None:
            metadata[name] = str(value)
    for name in ("limit", "actual", "failures"):
        value = getattr(exc, name, None)
        if isinstance(value, int):
            metadata[name] = str(value)
    if isinstance(exc, BreakerOpen):
        metadata["retry_after_s"] = f"{exc.retry_after_s:.3f}"
    if isinstance(exc, PlanError):
        for backend, why in exc.reasons.items():
            metadata[f"reason.{backend}"] = why
    return error_details_pb2.ErrorInfo(reason=type(exc).__name__, domain=DOMAIN, metadata=metadata)


def code_for(exc: BaseException) -> grpc.StatusCode:
    """The status code for an exception raised while serving a call."""
    if isinstance(exc, InvalidArgument):  # LimitExceeded and InvalidPageToken too
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, NamespaceNotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, Unsupported | PlanError | WrongAbstraction | ConfigError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, Overloaded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, BackendError | ConnectionError | TimeoutError):
        # A driver's own timeout: the datastore did not answer in time.
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


def _status(code: grpc.StatusCode, message: str, details: Sequence[any_pb2.Any]) -> status_pb2.Status:
    number: int = code.value[0]
    return status_pb2.Status(code=number, message=message, details=list(details))


def status_for(exc: BaseException, request_id: str) -> status_pb2.Status:
    """The rich status for an exception raised while serving a call.

    Unexpected exceptions become INTERNAL with the request id only: their text
    may hold data or internals that must not leak to callers; the caller logs
    the traceback under the same id.
    """
    code = code_for(exc)
    details = [_request_info(request_id)]
    if code is grpc.StatusCode.INTERNAL:
        message = (
            f"internal error in the Prism gateway (request id {request_id}); "
            "the gateway's log has the details under this id"
        )
        return _status(code, message, details)
    if isinstance(exc, PrismError):
        details.insert(0, _pack(_error_info(exc)))
    if isinstance(exc, InvalidArgument):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=exc.field or "request", description=str(exc)
        )
        details.insert(1, _pack(error_details_pb2.BadRequest(field_violations=[violation])))
    message = str(exc)
    if isinstance(exc, ConnectionError | TimeoutError) and not isinstance(exc, PrismError):
        message = f"the datastore did not answer ({type(exc).__name__}: {exc}); retry the request"
    return _status(code, message, details)


def deadline_status(method: str, namespace: str, seconds: float, request_id: str) -> status_pb2.Status:
    message = (
        f"namespace {namespace!r}: {method} did not finish within the call's deadline of {seconds:.3g}s; "
        "retry with a longer deadline (writes: with the same idempotency token)"
    )
    info = error_details_pb2.ErrorInfo(
        reason="DeadlineExceeded", domain=DOMAIN, metadata={"namespace": namespace}
    )
    return _status(grpc.StatusCode.DEADLINE_EXCEEDED, message, [_pack(info), _request_info(request_id)])


def denied_status(message: str, request_id: str, namespace: str, role: str | None) -> status_pb2.Status:
    """PERMISSION_DENIED for a token without ``role`` on ``namespace``; the
    ErrorInfo lets the client tell which role is missing."""
    metadata = {"namespace": namespace}
    if role is not None:
        metadata["role"] = role
    info = error_details_pb2.ErrorInfo(reason="PermissionDenied", domain=DOMAIN, metadata=metadata)
    return _status(grpc.StatusCode.PERMISSION_DENIED, message, [_pack(info), _request_info(request_id)])


def plain_status(
    code: grpc.StatusCode, message: str, request_id: str, *, field: str | None = None
) -> status_pb2.Status:
    """A status for a refusal the gateway makes itself (a malformed request, a
    disabled feature); ``field`` adds a BadRequest naming the field."""
    details = [_request_info(request_id)]
    if field is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
        details.insert(0, _pack(error_details_pb2.BadRequest(field_violations=[violation])))
    return _status(code, message, details)


def to_grpc_status(status: status_pb2.Status) -> grpc.Status:
    """``status`` as what ``context.abort_with_status`` takes (grpcio-status)."""
    from grpc_status import rpc_status  # type: ignore[import-untyped]  # grpcio-status ships no stubs

    result: grpc.Status = rpc_status.to_status(status)
    return result


# -- client side: status to exception --------------------------------------------------------


def rich_status(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> status_pb2.Status | None:
    """The ``google.rpc.Status`` a gateway sent in the trailing metadata, if any."""
    for key, value in trailing_metadata or ():
        if key == DETAILS_KEY and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


_REBUILDABLE: dict[str, type[PrismError]] = {
    cls.__name__: cls
    for cls in (
        InvalidArgument,
        LimitExceeded,
        InvalidPageToken,
        NamespaceNotFound,
        WrongAbstraction,
        PlanError,
        Unsupported,
        Overloaded,
        BreakerOpen,
    )
}


def _rebuild(cls: type[PrismError], message: str, info: error_details_pb2.ErrorInfo) -> PrismError:
    """An instance of ``cls`` with the server's exact message and attributes,
    without re-running its constructor (which would compose a new message)."""
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    meta = dict(info.metadata)
    attributes: dict[str, object] = {}
    for name in ("namespace", "field", "limit_name", "capability", "backend", "abstraction"):
        attributes[name] = meta.get(name)
    for name in ("limit", "actual", "failures"):
        text = meta.get(name)
        attributes[name] = int(text) if text is not None and text.lstrip("-").isdigit() else None
    if cls is BreakerOpen:
        try:
            attributes["retry_after_s"] = float(meta.get("retry_after_s", ""))
        except ValueError:
            attributes["retry_after_s"] = None
    if cls is PlanError:
        attributes["reasons"] = {
            key.removeprefix("reason."): value for key, value in meta.items() if key.startswith("reason.")
        }
    # The InvalidArgument family always has namespace and field, None or not.
    always = ("namespace", "field") if issubclass(cls, InvalidArgument) else ()
    for name, value in attributes.items():
        if value is not None or name in always:
            exc.__dict__[name] = value
    return exc


def error_from_status(
    code: grpc.StatusCode, message: str, trailing_metadata: Iterable[tuple[str, str | bytes]] | None
) -> PrismError:
    """The exception a remote call raises for a failed status: the original
    ``prism.errors`` class when the gateway named it, else a :class:`RemoteError`
    (or, for INVALID_ARGUMENT from another implementation, InvalidArgument)."""
    status = rich_status(trailing_metadata)
    info: error_details_pb2.ErrorInfo | None = None
    bad_request: error_details_pb2.BadRequest | None = None
    request_id: str | None = None
    for packed in status.details if status is not None else ():
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
        elif packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            packed.Unpack(bad_request)
        elif packed.Is(error_details_pb2.RequestInfo.DESCRIPTOR):
            request_info = error_details_pb2.RequestInfo()
            packed.Unpack(request_info)
            request_id = request_info.request_id or None
    if info is not None and info.domain == DOMAIN and info.reason in _REBUILDABLE:
        return _rebuild(_REBUILDABLE[info.reason], message, info)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        field = (
            bad_request.field_violations[0].field if bad_request and bad_request.field_violations else None
        )
        return InvalidArgument(message, field=field)
    remote: type[RemoteError] = {
        grpc.StatusCode.UNAVAILABLE: Unavailable,
        grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
        grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
        grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
        grpc.StatusCode.INTERNAL: InternalError,
        grpc.StatusCode.UNKNOWN: InternalError,
    }.get(code, RemoteError)
    text = message or f"the gateway call failed with {code.name}"
    error = remote(text, code=code, request_id=request_id)
    if isinstance(error, PermissionDenied) and info is not None and info.domain == DOMAIN:
        error.namespace = info.metadata.get("namespace")
        error.role = info.metadata.get("role")
    return error


__all__ = [
    "DETAILS_KEY",
    "DOMAIN",
    "DeadlineExceeded",
    "InternalError",
    "PermissionDenied",
    "RemoteError",
    "Unauthenticated",
    "Unavailable",
    "code_for",
    "deadline_status",
    "denied_status",
    "error_from_status",
    "plain_status",
    "status_for",
]
