"""The virtual-driver fixtures of tests/virtual, shared."""

from tests.virtual.conftest import (  # noqa: F401 (fixtures)
    compiles,
    context,
    driver_defaults,
    make_driver,
)
