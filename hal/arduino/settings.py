"""Configuration of one Arduino Nano 33 BLE (``driver = "nano33ble"``)."""

from __future__ import annotations

from pydantic import Field, model_validator

from hal.driver import DriverSettings


class Nano33BleSettings(DriverSettings):
    """Configuration of one Nano 33 BLE. Give ``serial_number`` (preferred: it survives
    re-enumeration and port renames) or ``port``."""

    serial_number: str | None = Field(
        None, min_length=1, max_length=128,
        description="the board's USB serial number (finds it on any port, after re-enumeration)")
    port: str | None = Field(None, min_length=1, max_length=4096,
                             description="serial port path; a hint when serial_number is set")
    arduino_cli: str | None = Field(None, min_length=1, max_length=4096,
                                    description="arduino-cli executable (overrides the host's)")
    fqbn: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+"
                             r"(:[A-Za-z0-9_.=,-]+)?$",
                             description="board FQBN for compile and upload (default: the "
                             "board profile's, arduino:mbed_nano:nano33ble)")
    boot_deadline_s: float | None = Field(None, gt=0, le=600,
                                          description="seconds to wait for the boot line after "
                                          "an upload (overrides the request's)")
    compile_timeout_s: float = Field(900.0, gt=0, le=7200,
                                     description="seconds an arduino-cli compile may take")
    upload_timeout_s: float = Field(180.0, gt=0, le=3600,
                                    description="seconds an arduino-cli upload (touch, flash, "
                                    "reset) may take")
    reenumerate_timeout_s: float = Field(2.0, gt=0, le=600,
                                         description="seconds to wait for the board to be "
                                         "listed (again) before an upload")
    inference_period_ms: int | None = Field(None, ge=0, le=3_600_000,
                                            description="ms between inferences on the board "
                                            "(0: back to back; default: the template's 1000)")
    status_period_ms: int | None = Field(None, ge=100, le=3_600_000,
                                         description="ms between status lines "
                                         "(default: the template's 5000)")
    silent_periods: int = Field(3, ge=2, le=1000,
                                description="status periods without any line from the board "
                                "after which it counts as crashed")
    virtual_ports_dir: str | None = Field(
        None, max_length=4096, description="also list virtual boards published here"
    )
    hotswap: bool = Field(True, description="install by hot-swapping the model into a flash "
                          "slot when the board's firmware allows it, and build the hot-swap "
                          "firmware when compiling (false: the exact-ops firmware)")
    hotswap_ops: list[str] = Field(
        default_factory=lambda: ["vision", "audio", "imu"], min_length=1, max_length=32,
        description="op families (vision, audio, imu) and/or op names of the hot-swap "
        "firmware's resolver")
    hotswap_arena_bytes: int | None = Field(
        None, ge=1024, le=200_000, description="arena of the hot-swap firmware (default: the "
        "board profile's, 65536; at least the model's)")

    @model_validator(mode="after")
    def _needs_identity(self) -> Nano33BleSettings:
        if not self.serial_number and not self.port:
            raise ValueError("give serial_number (preferred) or port")
        return self
