"""The registry that builds drivers from configuration by name (re-exported by
:mod:`hal.driver`): built-in families are imported on first use, others come from the
entry-point group ``tinyml_bridge.drivers``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from hal.errors import InputError

if TYPE_CHECKING:
    from hal.driver import Driver, DriverContext


_REGISTRY: dict[str, type[Driver]] = {}
# Built-in families, imported on first use so that e.g. paramiko loads only when needed.
_BUILTIN_MODULES = {
    "nano33ble": "hal.arduino.driver",
    "virtual-nano33ble": "hal.virtual.driver",
    "rpi": "hal.rpi.driver",
}
_ENTRY_POINT_GROUP = "tinyml_bridge.drivers"


def register_driver(name: str) -> Callable[[type[Driver]], type[Driver]]:
    """Class decorator: make a driver buildable from configuration as ``driver = name``."""

    def deco(cls: type[Driver]) -> type[Driver]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def driver_names() -> list[str]:
    """Every driver name that can be configured."""
    names = set(_REGISTRY) | set(_BUILTIN_MODULES)
    names |= {ep.name for ep in entry_points(group=_ENTRY_POINT_GROUP)}
    return sorted(names)


def get_driver_class(name: str) -> type[Driver]:
    """The driver class registered as ``name``; ``InputError("unknown_driver")`` if none."""
    if name not in _REGISTRY:
        if name in _BUILTIN_MODULES:
            importlib.import_module(_BUILTIN_MODULES[name])
        else:
            for ep in entry_points(group=_ENTRY_POINT_GROUP):
                if ep.name == name:
                    ep.load()
    if name not in _REGISTRY:
        raise InputError(
            "unknown_driver", f"no driver registered as {name!r}", known=driver_names()
        )
    return _REGISTRY[name]


def build_driver(
    name: str, device_id: str, settings: dict[str, Any], context: DriverContext
) -> Driver:
    """Validate ``settings`` against the driver's model and build the driver."""
    cls = get_driver_class(name)
    return cls(device_id, cls.Settings.model_validate(settings), context)
