"""The one error taxonomy shared by drivers, bridge, backend and CLI.

Every failure is a :class:`HalError` of exactly one class:

* ``input``  -- the caller asked for something invalid (bad model file, bad option).
* ``fit``    -- the model does not fit the target; ``detail`` carries every number.
* ``device`` -- the device misbehaved: did not boot, wrong model, port vanished,
  permission denied (``detail["fix"]`` says how to repair it).
* ``infrastructure`` -- the rig is broken: tool missing, timeout, transport broken.
  The only class worth retrying.
* ``bug``    -- our own fault; reported, never hidden.

Each error has a stable ``code`` (snake_case, listed in :data:`CODES`), a ``message`` for
humans and a JSON-serialisable ``detail`` dict. ``to_dict()`` gives the wire form
``{"code", "message", "detail", "class"}`` used by the HTTP API and ``--json`` output.
"""

from __future__ import annotations

import errno
from enum import Enum
from typing import Any, ClassVar


class ErrorClass(str, Enum):
    """The five classes of failure (see module docstring)."""

    INPUT = "input"
    FIT = "fit"
    DEVICE = "device"
    INFRA = "infrastructure"
    BUG = "bug"


# code -> (class, one-line meaning). Codes are API: never rename one, only add.
CODES: dict[str, tuple[ErrorClass, str]] = {
    # input
    "bad_request": (ErrorClass.INPUT, "the request is malformed"),
    "bad_option": (ErrorClass.INPUT, "an option has an invalid value"),
    "bad_config": (ErrorClass.INPUT, "the configuration file is invalid"),
    "model_empty": (ErrorClass.INPUT, "the model file is empty"),
    "model_too_large": (ErrorClass.INPUT, "the model file exceeds the size limit"),
    "model_not_tflite": (ErrorClass.INPUT, "the file is not a TFLite flatbuffer"),
    "model_corrupt": (ErrorClass.INPUT, "the flatbuffer does not parse against the schema"),
    "model_subgraphs": (ErrorClass.INPUT, "the model must have exactly one subgraph"),
    "model_not_int8": (ErrorClass.INPUT, "the target requires a fully int8 model"),
    "model_unsupported_ops": (ErrorClass.INPUT, "the model uses ops the target cannot run"),
    "unknown_device": (ErrorClass.INPUT, "no device with that id"),
    "unknown_job": (ErrorClass.INPUT, "no job with that id"),
    "unknown_board": (ErrorClass.INPUT, "no board profile with that name"),
    "unknown_driver": (ErrorClass.INPUT, "no driver registered under that name"),
    "device_busy": (ErrorClass.INPUT, "another job is running on the device"),
    "job_finished": (ErrorClass.INPUT, "the job already ended"),
    "cancelled": (ErrorClass.INPUT, "the caller cancelled the operation"),
    "unauthorized": (ErrorClass.INPUT, "missing or wrong bearer token"),
    "payload_too_large": (ErrorClass.INPUT, "the request body exceeds the limit"),
    "not_found": (ErrorClass.INPUT, "no such resource"),
    "dataset_invalid": (ErrorClass.INPUT, "the dataset archive failed validation"),
    "forbidden_origin": (ErrorClass.INPUT,
                         "the Host or browser Origin of the request is not allowed"),
    "unsupported_media_type": (ErrorClass.INPUT, "the request body's content type is refused"),
    # fit
    "fit_flash": (ErrorClass.FIT, "the program does not fit the target's flash"),
    "fit_ram": (ErrorClass.FIT, "static RAM plus arena exceed the target's RAM"),
    "fit_link": (ErrorClass.FIT, "the linker ran out of a memory region"),
    "alloc_failed": (ErrorClass.FIT, "the device could not allocate the tensor arena"),
    "fit_disk": (ErrorClass.FIT, "not enough free disk on the target"),
    "fit_memory": (ErrorClass.FIT, "not enough available memory on the target"),
    # device
    "boot_silent": (ErrorClass.DEVICE, "the device printed no protocol line after flashing"),
    "wrong_model": (ErrorClass.DEVICE, "the device runs a different model than was installed"),
    "port_vanished": (ErrorClass.DEVICE, "the device's port disappeared"),
    "permission_denied": (ErrorClass.DEVICE, "no permission to open the device's port"),
    "device_not_found": (ErrorClass.DEVICE, "the device is not attached"),
    "device_error": (ErrorClass.DEVICE, "the device reported an error line"),
    "agreement_low": (ErrorClass.DEVICE, "the device's outputs disagree with the host model"),
    "model_load_failed": (ErrorClass.DEVICE, "the target's interpreter rejected the model"),
    "runner_crashed": (ErrorClass.DEVICE, "the runner exited after starting"),
    "runtime_missing": (ErrorClass.DEVICE, "no TFLite interpreter is importable on the target"),
    "target_unsupported": (ErrorClass.DEVICE, "the target's architecture or Python is unsupported"),
    "target_not_writable": (ErrorClass.DEVICE, "the target's work directory is not writable"),
    "host_key_unknown": (ErrorClass.DEVICE, "the target's SSH host key is not known"),
    "host_key_changed": (ErrorClass.DEVICE, "the target's SSH host key changed"),
    "auth_failed": (ErrorClass.DEVICE, "SSH authentication was refused"),
    "upload_failed": (ErrorClass.DEVICE, "the upload tool failed"),
    "compile_failed": (ErrorClass.INPUT, "the sketch did not compile"),
    # infrastructure
    "timeout": (ErrorClass.INFRA, "an external call exceeded its deadline"),
    "tool_missing": (ErrorClass.INFRA, "a required external tool is not installed"),
    "tool_failed": (ErrorClass.INFRA, "an external tool failed unexpectedly"),
    "transport_broken": (ErrorClass.INFRA, "the connection to the target broke"),
    "unavailable": (ErrorClass.INFRA, "the service or device is temporarily unavailable"),
    "interrupted": (ErrorClass.INFRA, "the job was cut off by a restart or crash"),
    "disk_full": (ErrorClass.INFRA, "no space left on a disk the host writes (ENOSPC)"),
    "read_only": (ErrorClass.INFRA, "a file or directory the host writes is read-only"),
    "state_corrupt": (ErrorClass.INFRA, "a state file is corrupt or not what it should be"),
    # bug
    "internal": (ErrorClass.BUG, "an unexpected internal error"),
}


class HalError(Exception):
    """A classified failure. Subclasses fix the class; ``code`` must be in :data:`CODES`."""

    error_class: ClassVar[ErrorClass] = ErrorClass.BUG

    def __init__(self, code: str, message: str, **detail: Any) -> None:
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}; add it to hal.errors.CODES")
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail: dict[str, Any] = detail

    @property
    def retryable(self) -> bool:
        """Only infrastructure failures are worth retrying."""
        return self.error_class is ErrorClass.INFRA

    def to_dict(self) -> dict[str, Any]:
        """Wire form: ``{"code", "message", "detail", "class"}``."""
        return {
            "code": self.code,
            "message": self.message,
            "detail": self.detail,
            "class": self.error_class.value,
        }

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InputError(HalError):
    """The caller's fault."""

    error_class = ErrorClass.INPUT


class FitError(HalError):
    """The model does not fit the target; ``detail`` holds every number."""

    error_class = ErrorClass.FIT


class DeviceError(HalError):
    """The device misbehaved or is unreachable in a way retrying will not fix."""

    error_class = ErrorClass.DEVICE


class InfraError(HalError):
    """The rig is broken (tool missing, timeout, transport): worth retrying."""

    error_class = ErrorClass.INFRA


class BugError(HalError):
    """Our own fault."""

    error_class = ErrorClass.BUG


class Cancelled(InputError):
    """The caller cancelled the operation (job cancel, SIGTERM)."""

    def __init__(self, message: str = "cancelled by the caller", **detail: Any) -> None:
        super().__init__("cancelled", message, **detail)


_BY_CLASS = {
    cls.error_class: cls for cls in (InputError, FitError, DeviceError, InfraError, BugError)
}


def make_error(code: str, message: str, **detail: Any) -> HalError:
    """Build an error of the class that :data:`CODES` assigns to ``code``."""
    if code == "cancelled":
        return Cancelled(message, **detail)
    cls = _BY_CLASS[CODES[code][0]]
    return cls(code, message, **detail)


def from_dict(data: dict[str, Any]) -> HalError:
    """Rebuild an error from its wire form (e.g. a job record). Unknown codes become bugs."""
    code = str(data.get("code", "internal"))
    message = str(data.get("message", ""))
    detail = data.get("detail") or {}
    if code not in CODES:
        return BugError("internal", message or code, original_code=code, **detail)
    return make_error(code, message, **detail)


def as_hal_error(exc: BaseException) -> HalError:
    """Classify any exception: HalErrors pass through, a full or read-only disk is
    infrastructure (:func:`storage_error`), anything else is a bug."""
    if isinstance(exc, HalError):
        return exc
    if isinstance(exc, OSError):
        storage = storage_error(exc)
        if storage is not None:
            return storage
    return BugError("internal", f"{type(exc).__name__}: {exc}")


# errno -> code of a write the host could not make; and the phrases tools print for them.
_STORAGE_ERRNOS = {errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full",
                   errno.EROFS: "read_only"}
_STORAGE_PHRASES = (("no space left on device", "disk_full"), ("disk quota exceeded", "disk_full"),
                    ("database or disk is full", "disk_full"),
                    ("read-only file system", "read_only"),
                    ("attempt to write a readonly database", "read_only"))
_STORAGE_FIX = {"disk_full": "free space on that file system (or give it more), then retry",
                "read_only": "make that file system writable for the bridge user (remount it "
                             "read-write), then retry"}


def storage_error(exc: BaseException | str, path: object = None, **detail: Any) -> HalError | None:
    """``disk_full`` or ``read_only`` (infrastructure, with the path and a fix) when ``exc``
    -- an OSError, or a tool's output -- says a write failed for lack of space or a
    read-only file system; None otherwise."""
    code = None
    if isinstance(exc, OSError):
        code = _STORAGE_ERRNOS.get(exc.errno or 0)
        path = path if path is not None else exc.filename
    if code is None:
        text = str(exc).lower()
        code = next((c for phrase, c in _STORAGE_PHRASES if phrase in text), None)
    if code is None:
        return None
    where = f" writing {path}" if path else ""
    what = "no space left on device" if code == "disk_full" else "read-only file system"
    fix = _STORAGE_FIX[code]
    return InfraError(code, f"{what}{where}: {fix}", path=None if path is None else str(path),
                      fix=fix, **detail)


def storage_cause(error: HalError) -> HalError:
    """``error`` itself, or -- when a tool's failure (``compile_failed``, ``tool_failed``,
    ``internal``) was really a full or read-only disk on this host -- that infrastructure
    error, with the original in ``detail["cause"]``."""
    if error.code not in ("compile_failed", "tool_failed", "internal"):
        return error
    text = " ".join([error.message, *(str(v) for v in error.detail.values())])
    storage = storage_error(text, error.detail.get("path"), cause=error.to_dict())
    return storage if storage is not None else error
