"""Request and response models of the backend API. The OpenAPI document is generated from
these (``backend_stub.web.openapi_document``); handlers validate bodies with them and build
their answers through them, so the document and the behaviour cannot drift apart."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from backend_stub.agreement import DEFAULT_MIN_AGREEMENT
from backend_stub.names import (
    BRIDGE_URL_PATTERN,
    DEVICE_ID_PATTERN,
    NAME_PATTERN,
    BoardName,
)

# Row ids: 32-bit integers in SQLite and PostgreSQL alike.
Id = Annotated[int, Field(ge=1, le=2**31 - 1)]


class _Request(BaseModel):
    # Python's regex engine: patterns mean what the OpenAPI document's generators read.
    model_config = ConfigDict(extra="forbid", regex_engine="python-re")


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(_Response):
    """Every failure: the ``hal.errors`` wire form."""

    code: str
    message: str
    detail: dict[str, Any]
    class_: str = Field(alias="class")
    model_config = ConfigDict(populate_by_name=True)


class HealthOut(_Response):
    status: Literal["ok"]
    version: str
    uptime_s: float
    database: str  # "sqlite" or "postgresql"
    jobs_running: int


# ------------------------------------------------------------------------------ datasets


class DatasetOut(_Response):
    id: int
    name: str
    created_at: datetime
    updated_at: datetime
    labels: dict[str, int] = Field(description="image count per label")
    images: int
    size_bytes: int
    skipped: list[str] | None = Field(None, description="archiver junk that was ignored")
    added: int | None = Field(None, description="images added by this request")
    lossy_names: list[dict[str, str]] | None = Field(
        None, description="entry names without the zip UTF-8 flag that are not UTF-8 either, "
                          "decoded as cp437 and possibly wrong: {entry, raw, problem}")


class DatasetList(_Response):
    datasets: list[DatasetOut]


class ImageOut(_Response):
    id: int
    label: str
    filename: str
    format: str
    width: int
    height: int
    mode: str
    size_bytes: int
    sha256: str


class ImageList(_Response):
    images: list[ImageOut]


class LabelIn(_Request):
    name: str = Field(min_length=1, max_length=64, pattern=NAME_PATTERN)


# ------------------------------------------------------------------------------ training


class TrainingIn(_Request):
    """Training parameters; every one has a default except the dataset."""

    dataset_id: Id
    epochs: int = Field(10, ge=1, le=1000)
    image_width: int = Field(48, ge=8, le=512)
    image_height: int = Field(48, ge=8, le=512)
    color_mode: Literal["grayscale", "rgb"] = "grayscale"
    batch_size: int = Field(32, ge=1, le=4096)
    learning_rate: float = Field(0.001, gt=0.0, le=1.0)
    validation_split: float = Field(0.2, gt=0.0, le=0.5)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    conv_filters: list[Annotated[int, Field(ge=1, le=256)]] = Field(
        default_factory=lambda: [8, 16], min_length=1, max_length=4,
        description="filters of each Conv2D+MaxPool block",
    )
    dropout: float = Field(0.25, ge=0.0, lt=1.0)
    compile_board: BoardName | None = Field(
        None,
        description="also compile to int8 for this board, in the same worker right after "
                    "training (one TensorFlow start instead of two)")


class EpochOut(_Response):
    epoch: int
    loss: float | None
    accuracy: float | None
    val_loss: float | None
    val_accuracy: float | None
    seconds: float | None


class ProgressOut(_Response):
    epoch: int  # epochs finished
    epochs: int
    last: EpochOut | None


class TrainingOut(_Response):
    id: int
    dataset_id: int | None
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    params: dict[str, Any]
    labels: list[str] | None
    progress: ProgressOut
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: dict[str, Any] | None
    links: dict[str, str] = Field(description="metrics, curves and model resources")


class TrainingList(_Response):
    trainings: list[TrainingOut]


class MetricsOut(_Response):
    training_id: int
    epochs: list[EpochOut]
    final: dict[str, Any] | None = Field(
        None, description="float accuracy and loss on the validation split, split sizes")


class LabelRowOut(_Response):
    label: str
    support: int = Field(description="validation images of this label")
    predicted: int = Field(description="validation images predicted as this label")
    precision: float | None = Field(description="null when the label was never predicted")
    recall: float | None = Field(description="null when the label has no validation image")


class LabelMetricsOut(_Response):
    samples: int
    accuracy: float | None
    confusion: list[list[int]] = Field(description="rows: true label, columns: predicted")
    labels: list[LabelRowOut]


class PerLabelOut(_Response):
    """Per-label metrics on the validation split (float; and int8 for a compilation)."""

    training_id: int
    compilation_id: int | None = None
    labels: list[str]
    float_: LabelMetricsOut = Field(alias="float")
    int8: LabelMetricsOut | None = None
    model_config = ConfigDict(populate_by_name=True, extra="forbid")


# ------------------------------------------------------------------------------ compiling


class CompilationIn(_Request):
    training_id: Id
    board: BoardName = "nano33ble"
    representative_samples: int | None = Field(
        None, ge=1, description="cap on representative samples (default: every training sample)")


class CompilationOut(_Response):
    id: int
    training_id: Id
    board: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    params: dict[str, Any]
    sha256: str | None
    size_bytes: int | None
    report: dict[str, Any] | None = Field(
        None, description="model analysis, fit check and int8 vs float accuracy")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: dict[str, Any] | None
    links: dict[str, str]


class CompilationList(_Response):
    compilations: list[CompilationOut]


# ------------------------------------------------------------------------------ bridges


class BridgeIn(_Request):
    name: str = Field(min_length=1, max_length=64, pattern=NAME_PATTERN)
    # Checked by bridges.validate_bridge_url, which names the problem (and also requires
    # this pattern); the pattern is stated here for the OpenAPI document.
    url: str = Field(min_length=1, max_length=512,
                     json_schema_extra={"pattern": BRIDGE_URL_PATTERN})
    token: str | None = Field(None, max_length=512)


class BridgeOut(_Response):
    id: int
    name: str
    url: str
    has_token: bool
    created_at: datetime


class BridgeList(_Response):
    bridges: list[BridgeOut]


class BridgeHealthOut(_Response):
    bridge_id: int
    reachable: bool
    latency_ms: float | None
    health: dict[str, Any] | None = Field(None, description="the bridge's /health answer")
    error: dict[str, Any] | None


class DeviceListOut(_Response):
    bridge_id: int
    devices: list[dict[str, Any]] = Field(description="the bridge's Device objects")


class ObservationOut(_Response):
    bridge_id: int
    device_id: str
    lines: list[dict[str, Any]]
    last_seq: int | None


class DeploymentIn(_Request):
    compilation_id: Id
    bridge_id: Id
    device_id: str = Field(min_length=1, max_length=64, pattern=DEVICE_ID_PATTERN)
    input_vectors: int = Field(
        4, ge=0, le=64, description="held-out images sent along, drawn evenly across labels; "
                                    "the board's answers are checked against the host int8 "
                                    "model after its verified boot (0: no check)")
    arena_bytes: int | None = Field(None, ge=1024)
    boot_deadline_s: float = Field(20.0, gt=0.0, le=600.0)
    min_agreement: float = Field(
        DEFAULT_MIN_AGREEMENT, ge=0.0, le=1.0,
        description="label match rate with the host int8 model below which the deployment "
                    "fails with agreement_low")
    agreement_timeout_s: float = Field(
        120.0, gt=0.0, le=3600.0, description="seconds after the verified boot for the board to "
                                              "answer every vector (it runs one per inference "
                                              "period: 1 s on a Nano 33 BLE by default)")


class DeploymentOut(_Response):
    id: int
    compilation_id: int | None
    bridge_id: int | None
    device_id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    params: dict[str, Any]
    bridge_job_id: str | None
    bridge_job: dict[str, Any] | None = Field(None, description="the bridge's last Job")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: dict[str, Any] | None
    agreement: dict[str, Any] | None = Field(
        None, description="on-device agreement with the host int8 model: state (collecting, "
                          "passed, below_threshold, timeout, cancelled, failed, unavailable), "
                          "exact output and "
                          "label match rates, device and host accuracy, one row per vector")
    vectors: dict[str, Any] | None = Field(
        None, description="the vectors sent: image ids, expected classes, host int8 outputs")


class DeploymentList(_Response):
    deployments: list[DeploymentOut]
