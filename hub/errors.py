"""The errors users can cause, one family for the library, the CLI and the REST API.

Each error carries a stable ``code`` (sent in JSON bodies and mapped back to the same class by
the HTTP client) and the HTTP status the server answers with. Messages say what to do.

Each class also derives from the built-in exception it refines (a malformed request is a
``ValueError``, a missing thing a ``LookupError``, a refused token a ``PermissionError``), so
``except ValueError`` works for library users who never heard of lorahive's types.

Library messages speak of the Python parameters a caller passed (``rank``, ``device``); an
error names them in ``params`` and the CLI rewrites them as its flags (``--rank``).
"""

from __future__ import annotations


class LorahiveError(Exception):
    """Base of every error a user can cause; the CLI prints it in one line."""

    code = "error"
    status = 400

    def __init__(self, message: str, *, params: tuple[str, ...] | str = ()):
        super().__init__(message)
        self.message = message
        self.params = (params,) if isinstance(params, str) else tuple(params)

    def __str__(self) -> str:
        return self.message


class InvalidAdapterError(LorahiveError, ValueError):
    """Files are missing, inconsistent (shapes vs ``r``, lone A or B) or malformed."""

    code = "invalid_adapter"
    status = 422


class UnsafeFileError(LorahiveError, ValueError):
    """A pickle-based file was offered where only safetensors are accepted."""

    code = "unsafe_file"
    status = 422


class UnsupportedAdapterError(LorahiveError, ValueError):
    """Math was asked of an adapter type stored opaquely (not LoRA-family)."""

    code = "unsupported_adapter"
    status = 422


class ShapeMismatchError(LorahiveError, ValueError):
    """Adapters do not line up with each other or with a base model."""

    code = "shape_mismatch"
    status = 422


class BaseModelMismatchError(ShapeMismatchError):
    """Adapters were trained on different base models."""

    code = "base_model_mismatch"


class InvalidReferenceError(LorahiveError, ValueError):
    """A reference is not ``namespace/name[@version|:alias]``."""

    code = "invalid_reference"
    status = 400


class InvalidRequestError(LorahiveError, ValueError):
    """A request is malformed: bad filename, bad parameter, bad manifest."""

    code = "invalid_request"
    status = 400


class NotFoundError(LorahiveError, LookupError):
    code = "not_found"
    status = 404


class AdapterNotFoundError(NotFoundError):
    """No such adapter, or it is private and the caller may not see it."""

    code = "adapter_not_found"


class VersionNotFoundError(NotFoundError):
    """The adapter exists but not this version or alias."""

    code = "version_not_found"


class EntryNotFoundError(NotFoundError):
    """The version exists but has no file at this path, or the blob is missing."""

    code = "entry_not_found"


class NamespaceNotFoundError(NotFoundError):
    code = "namespace_not_found"


class ConflictError(LorahiveError):
    """The resource exists already with different content (versions are immutable)."""

    code = "conflict"
    status = 409


class AuthenticationError(LorahiveError, PermissionError):
    """No token, an unknown token, or an expired or revoked one."""

    code = "unauthenticated"
    status = 401


class PermissionDeniedError(LorahiveError, PermissionError):
    """The token is valid but lacks the scope for this namespace."""

    code = "forbidden"
    status = 403


class PayloadTooLargeError(LorahiveError, ValueError):
    code = "payload_too_large"
    status = 413


class IntegrityError(LorahiveError, ValueError):
    """Content does not match its declared sha256 or size."""

    code = "integrity_error"
    status = 422


class RateLimitedError(LorahiveError):
    code = "rate_limited"
    status = 429


class ServiceUnavailableError(LorahiveError, ConnectionError):
    """A backing service (database, object store) is unreachable; retry later."""

    code = "service_unavailable"
    status = 503


class OfflineError(LorahiveError, ConnectionError):
    """The registry cannot be reached and the cache does not hold what was asked."""

    code = "offline"
    status = 503


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


ERRORS_BY_CODE: dict[str, type[LorahiveError]] = {
    c.code: c for c in [LorahiveError, *_all_subclasses(LorahiveError)]
}


def error_from_code(code: str, message: str) -> LorahiveError:
    """Rebuild the exception a server reported, so remote and local calls raise the same."""
    return ERRORS_BY_CODE.get(code, LorahiveError)(message)


class PublishInterrupted(KeyboardInterrupt):
    """A publish stopped by the user (Ctrl-C), with what it left behind."""

    def __init__(self, name: str, stage: str, uploaded: int = 0, to_upload: int = 0,
                 uploaded_bytes: int = 0):
        self.name, self.stage = name, stage
        self.uploaded, self.to_upload, self.uploaded_bytes = uploaded, to_upload, uploaded_bytes
        super().__init__(self.message)

    @property
    def message(self) -> str:
        if self.stage == "commit":
            return (f"interrupted while committing: {self.name} may or may not have the new "
                    f"version; `lorahive versions {self.name}` shows it, and publishing again "
                    "is safe (identical files are not published twice)")
        if self.stage == "upload" and self.uploaded:
            return (f"interrupted: nothing was committed; {self.uploaded} of {self.to_upload} "
                    f"files were uploaded ({self.uploaded_bytes} bytes) and publishing again "
                    "reuses them; unpublished, they are freed by `lorahive gc` once older than "
                    "its grace period (1 h by default)")
        return "interrupted: nothing was uploaded or committed"
