"""The OpenAPI document: committed, generated from the pydantic models, and covering exactly
the routes the app serves."""

from __future__ import annotations

import json
import re

from backend_stub.web import OPENAPI_FILE, openapi_document, openapi_text


def test_committed_document_matches_the_code():
    assert OPENAPI_FILE.read_text() == openapi_text(), (
        "backend_stub/openapi.json is stale: run `tinyml-backend openapi --write`")


def test_document_covers_every_route_and_nothing_else(sqlite_app):
    doc = openapi_document()
    served = set()
    for rule in sqlite_app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:>]+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            served.add((method.lower(), path))
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert served == documented


def test_served_document_and_refs_resolve(sqlite_app):
    doc = sqlite_app.test_client().get("/openapi.json").get_json()
    assert doc == json.loads(openapi_text())
    assert doc["openapi"].startswith("3.1")
    refs = set(re.findall(r'"#/components/schemas/(\w+)"', json.dumps(doc)))
    assert refs and refs <= set(doc["components"]["schemas"])
    assert doc["paths"]["/health"]["get"]["security"] == []
    training = doc["components"]["schemas"]["TrainingIn"]["properties"]
    assert {"epochs", "image_width", "image_height", "color_mode", "batch_size",
            "learning_rate", "validation_split"} <= set(training)
