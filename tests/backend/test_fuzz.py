"""Schemathesis against a live backend (waitress on a real socket) with EVERY check enabled
(``tests/backend/schemathesis.toml`` declares the only expected answers JSON Schema cannot
express): generated requests for every documented operation, schema-valid and schema-invalid
ones, hostile bodies and parameters included. No 500, every answer conforms to the OpenAPI
document, every schema-valid request is accepted and every invalid one refused, every error is
the hal.errors wire form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig

from backend_stub.web import OPENAPI_FILE
from tests.backend.conftest import AUTH, LiveServer, dataset_entries, make_zip, png_bytes

CONFIG = Path(__file__).with_name("schemathesis.toml")

# Zip bodies: random bytes, a valid dataset, and hostile archives.
schemathesis.openapi.media_type("application/zip", st.one_of(
    st.binary(min_size=1, max_size=300),
    st.sampled_from([
        make_zip(dataset_entries(("a", "b"), 3)),
        make_zip({"../x.png": png_bytes(), "a/y.png": png_bytes()}),
        make_zip({"a/bomb.png": b"\0" * (1 << 20), "b/z.png": b"not an image"}),
    ]),
))
config = SchemathesisConfig.from_path(CONFIG)
schema = schemathesis.openapi.from_dict(json.loads(OPENAPI_FILE.read_text()), config=config)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    from backend_stub.app import create_app
    from tests.backend.conftest import make_config

    db = tmp_path_factory.mktemp("fuzz") / "fuzz.sqlite3"
    # Short bridge timeouts (generated bridge URLs point nowhere); a queued training fails
    # at once instead of starting TensorFlow.
    app = create_app(make_config(f"sqlite:///{db}", bridge_connect_timeout_s=0.3,
                                 bridge_read_timeout_s=0.3,
                                 worker_env={"TINYML_WORKER_FAULT": "raise"}))
    server = LiveServer(app)
    yield server
    server.close()
    app.extensions["tinyml_backend"].close()


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_live_backend_conforms(case, fuzz_server):
    response = case.call_and_validate(base_url=fuzz_server.url, headers=dict(AUTH), timeout=30)
    assert response.status_code != 500, response.text
    if response.status_code >= 400:
        assert set(response.json()) == {"code", "message", "detail", "class"}
