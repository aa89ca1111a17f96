"""The HTTP layer: one route table that both registers the Flask views and generates the
OpenAPI document, plus the helpers every view uses (body validation, query parameters,
answers built through the response models)."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, current_app, request
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from backend_stub import __version__, schemas
from backend_stub.names import DEVICE_ID_PATTERN, NAME_PATTERN
from hal.errors import InputError

# Raw (non-JSON) bodies and answers, by short name: (media type, description).
MEDIA = {
    "zip": ("application/zip", "a zip archive with one folder per label"),
    "image": ("application/octet-stream", "one image file (PNG, JPEG, BMP...)"),
    "png": ("image/png", "a PNG image"),
    "tflite": ("application/octet-stream", "the int8 .tflite flatbuffer"),
    "keras": ("application/octet-stream", "the trained Keras model (.keras zip)"),
}


# The schema of each parameter, by name: the OpenAPI document states it and every request is
# checked against it before the view runs, so both always agree.
PARAM_SCHEMAS: dict[str, dict[str, Any]] = {
    "wait": {"type": "number", "minimum": 0, "maximum": 60},
    "lines": {"type": "integer", "minimum": 1, "maximum": 1000},
    "name": {"type": "string", "pattern": NAME_PATTERN},
    "filename": {"type": "string", "pattern": NAME_PATTERN},
    "device_id": {"type": "string", "pattern": DEVICE_ID_PATTERN},
    "model": {"type": "string", "enum": ["int8", "float"]},
}


@dataclass(frozen=True)
class Query:
    """A query parameter of an endpoint (its bounds: :data:`PARAM_SCHEMAS`)."""

    name: str
    type: str = "string"  # "string", "integer" or "number"
    required: bool = False
    description: str = ""

    def schema(self) -> dict[str, Any]:
        return {**PARAM_SCHEMAS.get(self.name, {}), "type": self.type}


def check_param(name: str, raw: str, where: str) -> None:
    """Refuse a parameter outside :data:`PARAM_SCHEMAS` (422 ``bad_option``)."""
    spec = PARAM_SCHEMAS.get(name)
    if spec is None:
        return
    problem = None
    if spec["type"] in ("integer", "number"):
        try:
            value = int(raw) if spec["type"] == "integer" else float(raw)
        except ValueError:
            problem = f"is not {'an integer' if spec['type'] == 'integer' else 'a number'}"
        else:
            if not spec["minimum"] <= value <= spec["maximum"]:  # NaN fails too
                problem = f"is outside {spec['minimum']}..{spec['maximum']}"
    elif "pattern" in spec and not re.fullmatch(spec["pattern"], raw):
        problem = f"does not match {spec['pattern']}"
    elif "enum" in spec and raw not in spec["enum"]:
        problem = f"is not one of {', '.join(spec['enum'])}"
    if problem:
        raise InputError("bad_option", f"{where} parameter {name}={raw[:80]!r} {problem}",
                         parameter=name)


@dataclass
class Endpoint:
    method: str
    path: str  # "/datasets/{dataset_id:int}"
    view: Callable[..., Any]
    summary: str
    body: type[BaseModel] | str | None
    response: type[BaseModel] | str | None
    status: int
    query: Sequence[Query]
    auth: bool
    tag: str

    @property
    def rule(self) -> str:
        """The Flask rule: ``{x:int}`` -> ``<int:x>``, ``{x}`` -> ``<x>``."""
        # Ids are 32-bit in both databases: larger numbers are simply not found (404).
        return re.sub(r"\{(\w+):int\}", r"<int(max=2147483647):\1>",
                      re.sub(r"\{(\w+)\}", r"<\1>", self.path))

    @property
    def openapi_path(self) -> str:
        return re.sub(r"\{(\w+):int\}", r"{\1}", self.path)

    def path_params(self) -> list[tuple[str, str]]:
        return [(m.group(1), "integer" if m.group(2) else "string")
                for m in re.finditer(r"\{(\w+)(:int)?\}", self.path)]


@dataclass
class Api:
    """The route table. ``@api.route(...)`` declares a view; :meth:`register` adds every view
    to a Flask app; :meth:`openapi` describes the same table."""

    endpoints: list[Endpoint] = field(default_factory=list)

    def route(self, method: str, path: str, *, summary: str, tag: str,
              body: type[BaseModel] | str | None = None,
              response: type[BaseModel] | str | None = None, status: int = 200,
              query: Sequence[Query] = (), auth: bool = True) -> Callable:
        def deco(fn: Callable) -> Callable:
            self.endpoints.append(Endpoint(method.upper(), path, fn, summary, body, response,
                                           status, tuple(query), auth, tag))
            return fn
        return deco

    def register(self, app: Flask) -> None:
        for e in self.endpoints:
            app.add_url_rule(e.rule, endpoint=f"{e.method} {e.path}",
                             view_func=_checked(e), methods=[e.method])

    def public_rules(self) -> set[str]:
        return {e.rule for e in self.endpoints if not e.auth}

    def _links(self, e: Endpoint) -> dict[str, Any]:
        """OpenAPI links from a creating ``POST /things`` to every operation on
        ``/things/{thing_id}...``: the new row's ``id`` is that parameter (clients and
        stateful testers follow them)."""
        if e.method != "POST" or e.path_params() or not isinstance(e.response, type):
            return {}
        links = {}
        for t in self.endpoints:
            if t.path.startswith(e.path + "/{") and t.path_params():
                first = t.path_params()[0][0]
                links[t.view.__name__] = {"operationId": t.view.__name__,
                                          "parameters": {first: "$response.body#/id"}}
        return links

    def openapi(self) -> dict[str, Any]:
        models = {schemas.ErrorOut}
        for e in self.endpoints:
            for m in (e.body, e.response):
                if isinstance(m, type) and issubclass(m, BaseModel):
                    models.add(m)
        ordered = sorted(models, key=lambda m: m.__name__)
        _, defs = models_json_schema(
            [(m, "serialization") for m in ordered], ref_template="#/components/schemas/{model}"
        )
        paths: dict[str, dict[str, Any]] = {}
        for e in sorted(self.endpoints, key=lambda e: (e.openapi_path, e.method)):
            op: dict[str, Any] = {
                "operationId": e.view.__name__, "summary": e.summary, "tags": [e.tag],
                "parameters": [
                    {"name": n, "in": "path", "required": True, "schema": (
                        {"type": t, "minimum": 0, "maximum": 2**31 - 1} if t == "integer"
                        else {**PARAM_SCHEMAS.get(n, {}), "type": t})}
                    for n, t in e.path_params()
                ] + [
                    {"name": q.name, "in": "query", "required": q.required,
                     "description": q.description, "schema": q.schema()}
                    for q in e.query
                ],
                "responses": {
                    str(e.status): _content(e.response, "success"),
                    "default": _content(schemas.ErrorOut, "an error (hal.errors wire form)"),
                },
            }
            if e.body is not None:
                op["requestBody"] = {"required": True, **_content(e.body, "")}
                op["requestBody"].pop("description")
                if isinstance(e.body, str):  # a file as the body: never empty
                    content = op["requestBody"]["content"]
                    if e.body == "zip":  # also accepted as plain bytes (generic clients)
                        content["application/octet-stream"] = {
                            "schema": {"type": "string", "format": "binary"}}
                    for media in content.values():
                        media["schema"]["minLength"] = 1
            if not e.auth:
                op["security"] = []
            links = self._links(e)
            if links:
                op["responses"][str(e.status)]["links"] = links
            paths.setdefault(e.openapi_path, {})[e.method.lower()] = op
        return {
            "openapi": "3.1.0",
            "info": {"title": "tinyml-backend", "version": __version__,
                     "description": "Datasets, training, int8 compiling and deployment "
                                    "through bridges."},
            "security": [{"bearer": []}],
            "paths": paths,
            "components": {
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                "schemas": defs["$defs"],
            },
        }


def _checked(e: Endpoint) -> Callable[..., Any]:
    """The view of ``e``, after its path and query parameters are checked against the
    document (:data:`PARAM_SCHEMAS`)."""
    import functools

    @functools.wraps(e.view)
    def view(**kwargs: Any) -> Any:
        for name, value in kwargs.items():
            if isinstance(value, str):
                check_param(name, value, "path")
        for q in e.query:
            raw = request.args.get(q.name)
            if raw is not None:
                check_param(q.name, raw, "query")
        return e.view(**kwargs)

    return view


def _content(model: type[BaseModel] | str | None, description: str) -> dict[str, Any]:
    if model is None:
        return {"description": description or "no content"}
    if isinstance(model, str):
        media, text = MEDIA[model]
        return {"description": description or text,
                "content": {media: {"schema": {"type": "string", "format": "binary"}}}}
    return {"description": description or model.__name__, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}


api = Api()
MAX_JSON_BYTES = 1 << 20


# ------------------------------------------------------------------------------ view helpers


def backend():  # -> backend_stub.app.Backend
    """The app's :class:`~backend_stub.app.Backend` (store, config, job runner)."""
    return current_app.extensions["tinyml_backend"]


def parse_body(model: type[BaseModel]) -> Any:
    """The JSON body validated against ``model``; ``bad_request`` when it is not a JSON
    object, ``bad_option`` listing each invalid field otherwise."""
    # JSON bodies are small: never read more than this, whatever the upload limit is.
    request.max_content_length = MAX_JSON_BYTES
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise InputError("bad_request", "the body must be a JSON object "
                                        "(Content-Type: application/json)")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{"field": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]}
                  for e in exc.errors()]
        boards = [e for e in exc.errors() if e["type"] == "literal_error"
                  and e["loc"][-1] in ("board", "compile_board")]
        if boards:  # the stable code for it, as hal.boards.get_profile says it
            from hal.boards import profiles

            raise InputError("unknown_board", f"no board profile named {boards[0]['input']!r}",
                             known=sorted(profiles()), errors=errors) from None
        raise InputError(
            "bad_option", "; ".join(f"{e['field']}: {e['problem']}" for e in errors),
            errors=errors) from None


def answer(model: type[BaseModel], data: dict[str, Any], status: int = 200):
    """Validate ``data`` against the response model and serialise it."""
    return current_app.response_class(
        model.model_validate(data).model_dump_json(by_alias=True), status=status,
        mimetype="application/json")


def query_int(name: str, default: int | None = None, *, lo: int | None = None,
              hi: int | None = None) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InputError("bad_option", f"query parameter {name}={raw!r} is not an integer",
                         parameter=name) from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise InputError("bad_option", f"query parameter {name}={value} is outside "
                                       f"{lo}..{hi}", parameter=name)
    return value


def query_float(name: str, default: float, *, lo: float, hi: float) -> float:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InputError("bad_option", f"query parameter {name}={raw!r} is not a number",
                         parameter=name) from None
    if not lo <= value <= hi:
        raise InputError("bad_option", f"query parameter {name}={value} is outside {lo}..{hi}",
                         parameter=name)
    return value


def spool_body(limit: int, suffix: str = ".zip") -> Path:
    """Stream the request body into a temporary file (never into memory), at most ``limit``
    bytes. The caller deletes the file."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise InputError("payload_too_large",
                         f"the body has {declared} bytes; the limit is {limit}",
                         limit=limit, size=declared)
    fd, name = tempfile.mkstemp(prefix="tinyml-upload-", suffix=suffix)
    path = Path(name)
    total = 0
    try:
        with open(fd, "wb") as out:
            stream = request.stream
            while True:
                chunk = stream.read(1 << 20)
                if not chunk:
                    break
                total += len(chunk)
                if total > limit:
                    raise InputError("payload_too_large",
                                     f"the body exceeds the limit of {limit} bytes", limit=limit)
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if total == 0:
        path.unlink(missing_ok=True)
        raise InputError("bad_request", "the request body is empty; send the file as the body")
    return path


def job_links(kind: str, ident: int) -> dict[str, str]:
    base = f"/{kind}/{ident}"
    if kind == "trainings":
        return {"self": base, "metrics": f"{base}/metrics", "curves": f"{base}/curves.png",
                "model": f"{base}/model.keras"}
    return {"self": base, "artifact": f"{base}/model.tflite"}


def _load_views() -> None:
    from backend_stub.web import (  # noqa: F401  (fill `api`)
        bridges,
        datasets,
        jobs,
        meta,
        metrics,
        rollouts,
    )


def register_views(app: Flask) -> None:
    """Import the view modules (they fill :data:`api`) and register them on ``app``."""
    _load_views()
    api.register(app)


OPENAPI_FILE = Path(__file__).resolve().parents[1] / "openapi.json"


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route (committed as ``backend_stub/openapi.json``;
    regenerate with ``tinyml-backend openapi --write``)."""
    _load_views()
    return api.openapi()


def openapi_text() -> str:
    import json

    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"
