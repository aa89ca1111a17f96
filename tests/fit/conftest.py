"""The virtual-driver fixtures of tests/virtual, shared."""

from tests.virtual.conftest import compiles, context, make_driver  # noqa: F401
