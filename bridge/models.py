"""Pydantic request and response models of the bridge HTTP API.

They are the single source of the wire format: request bodies are validated with them,
responses are passed through them before they leave, and ``/openapi.json`` is generated from
their JSON schemas (see :mod:`bridge.openapi`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bridge.config import DEVICE_ID_PATTERN
from hal.vectors import MAX_INPUT_VECTORS

JOB_ID_PATTERN = r"^[0-9a-f]{16}$"

# A label ends up in a device's source code and protocol lines: printable, no control chars.
Label = Annotated[str, Field(min_length=1, max_length=48, pattern=r"^[^\x00-\x1f\x7f]+$")]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ------------------------------------------------------------------------------ errors


class ErrorBody(_Response):
    """Every failure: a stable ``code``, a human ``message``, numbers in ``detail`` and the
    failure class (input, fit, device, infrastructure, bug)."""

    code: str
    message: str
    detail: dict[str, Any] = Field(default_factory=dict)
    class_: Literal["input", "fit", "device", "infrastructure", "bug"] = Field(alias="class")


# ----------------------------------------------------------------------------- health


class StreamCount(_Response):
    """Live streams open now, and the limit (``[server] max_streams``)."""

    active: int
    limit: int


class Health(_Response):
    """Liveness and host facts; the only endpoint that needs no token."""

    status: Literal["ok", "stopping"]
    version: str
    uptime_s: float
    drivers: dict[str, dict[str, Any]]
    streams: StreamCount




# ---------------------------------------------------------------------------- devices


class ModelRef(_Response):
    """The last model the device verifiably booted."""

    sha256: str
    since: str


class DeviceHealth(_Response):
    """Liveness of what runs on the device, from the driver's observation: ``ok`` (it runs,
    or its supervisor restarted it within the budget: ``restarts``), ``crashed`` (a Pi runner
    exited and its supervisor gave up: ``exit_code`` and ``stderr_tail``; a Nano printed
    nothing for ``silent_s`` seconds, more than its configured status periods), ``none``
    (nothing of ours is deployed)."""

    state: Literal["ok", "crashed", "none"]
    message: str
    exit_code: int | None = None
    stderr_tail: str = ""
    restarts: int = 0
    silent_s: float | None = None
    at: str


class Rollback(_Response):
    """What a failed install left running (``hal.driver.RollbackOutcome``), the same for every
    driver: ``needed`` (the install had changed the device), ``attempted``, ``verified`` (the
    model ``running_sha256`` -- full hash or a 16-hex prefix -- was seen running afterwards)
    and ``reason``."""

    needed: bool
    attempted: bool
    verified: bool
    running_sha256: str | None
    reason: str
    error: dict[str, Any] | None = None
    boot: dict[str, Any] | None = None


class Device(_Response):
    """A device: what it is, where, and what it is doing.

    ``state`` (README "Device states"), with what moves a device there:

    * ``idle``: no verified model yet (a new device; nothing deployed).
    * ``installing``: a job started (from any state); it ends in one of the others.
    * ``running``: a verified install; a failed install whose rollback was verified or that
      left the old model running (``rollback.verified``); a failed install that never touched
      the device (``rollback.needed`` false) keeps the state it had; a crashed runner that
      lives again (``health.state`` back to ``ok``).
    * ``failed``: a failed install that left no verified model running (the rollback failed
      or was impossible), or a job cut off by a restart (``interrupted``).
    * ``crashed``: ``health.state`` is ``crashed`` (a Pi runner exited and its supervisor gave
      up after its restart budget; a Nano printed nothing for its configured status periods).

    ``state_reason`` says why in words. Three separate fields that never overwrite each other:
    ``last_error`` (the last job's error, set only when a job ends), ``link_error`` (port or
    SSH trouble of the observation, cleared when the link works again) and ``health``;
    ``rollback`` is the last failed job's typed rollback outcome. ``connected`` is whether
    the port or SSH connection is there right now."""

    id: str
    driver: str
    board: str
    address: str
    connected: bool
    serial_number: str | None
    state: Literal["idle", "installing", "running", "failed", "crashed"]
    state_reason: str
    model: ModelRef | None
    last_error: ErrorBody | None
    link_error: ErrorBody | None
    health: DeviceHealth | None
    rollback: Rollback | None
    job_id: str | None


class DeviceList(_Response):
    devices: list[Device]


# ------------------------------------------------------------------------------- jobs


class InstallOptions(BaseModel):
    """Install options. ``input_vectors`` are in the model's real (dequantised) units."""

    model_config = ConfigDict(extra="forbid")

    labels: list[Label] = Field(default_factory=list, max_length=1024)
    input_vectors: list[Annotated[list[FiniteFloat], Field(max_length=1 << 20)]] = Field(
        default_factory=list, max_length=MAX_INPUT_VECTORS)
    arena_bytes: int | None = Field(None, ge=1024, le=256 * 1024 * 1024)
    boot_deadline_s: float = Field(20.0, gt=0, le=600, allow_inf_nan=False)
    input_source: str = Field("vectors", pattern=r"^[a-z][a-z0-9_-]{0,31}$")


class InstallJson(InstallOptions):
    """The JSON form of an install: the ``.tflite`` base64-encoded plus the options."""

    model_b64: str = Field(min_length=1)


class JobStep(_Response):
    name: str
    status: Literal["started", "done", "skipped", "failed"]
    started_at: str | None
    finished_at: str | None
    detail: dict[str, Any]


class Job(_Response):
    """An install job. Only ``succeeded`` has a report: the device booted the model and said
    so. ``interrupted`` means a restart or crash cut it off."""

    id: str
    device_id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
    created_at: str
    started_at: str | None
    finished_at: str | None
    model_sha256: str
    steps: list[JobStep]
    report: dict[str, Any] | None
    error: ErrorBody | None


class JobList(_Response):
    jobs: list[Job]


# -------------------------------------------------------------------------- observing


class ObservedLine(_Response):
    """One device line: bridge sequence number, arrival time and the parsed line
    (``hal.protocol.to_dict``: ``kind`` is boot, inference, error, status or raw)."""

    seq: int
    at: str
    line: dict[str, Any]


class Observation(_Response):
    device_id: str
    lines: list[ObservedLine]
    last_seq: int


# ----------------------------------------------------------------------------- legacy


class LegacyDeviceRef(BaseModel):
    model_config = ConfigDict(extra="ignore")

    serial: str = Field(min_length=1, max_length=128)
    installer: str | None = None


class LegacyInstall(BaseModel):
    """The old bridge's install body: the model as C source of a byte array."""

    model_config = ConfigDict(extra="ignore")

    device: LegacyDeviceRef
    model: str


class LegacyPredictionQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    device: LegacyDeviceRef


class LegacyDevice(_Response):
    manufacturer: str
    product: str
    serial: str


class LegacyDevices(_Response):
    devices: list[LegacyDevice]


# Models whose schemas go into components/schemas, in document order.
SCHEMA_MODELS: tuple[type[BaseModel], ...] = (
    ErrorBody, Health, Device, DeviceList, InstallOptions, InstallJson, Job, JobList,
    Observation, LegacyInstall, LegacyPredictionQuery, LegacyDevices,
)

__all__ = [
    "DEVICE_ID_PATTERN",
    "JOB_ID_PATTERN",
    "SCHEMA_MODELS",
    "Device",
    "DeviceList",
    "ErrorBody",
    "Health",
    "InstallJson",
    "InstallOptions",
    "Job",
    "JobList",
    "LegacyDevices",
    "LegacyInstall",
    "LegacyPredictionQuery",
    "Observation",
]
