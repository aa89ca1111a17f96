"""Dataset views: upload (zip), download (zip, streamed), list, delete, labels and images."""

from __future__ import annotations

import contextlib

from flask import Response, request

from backend_stub import datasets as ops
from backend_stub import schemas
from backend_stub.web import Query, answer, api, backend, parse_body, spool_body
from hal.errors import InputError

TAG = "datasets"
_IMAGE_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "BMP": "image/bmp",
                "GIF": "image/gif", "TIFF": "image/tiff", "WEBP": "image/webp"}


@api.route("GET", "/datasets", summary="List datasets with per-label counts", tag=TAG,
           response=schemas.DatasetList)
def list_datasets():
    return answer(schemas.DatasetList, {"datasets": ops.list_datasets(backend().store)})


@api.route("POST", "/datasets", summary="Upload a dataset (zip, one folder per label)",
           tag=TAG, body="zip", response=schemas.DatasetOut, status=201,
           query=[Query("name", required=True, description="the new dataset's name")])
def create_dataset():
    b = backend()
    name = request.args.get("name")
    if not name:
        raise InputError("bad_request", "the query parameter 'name' is required")
    path = spool_body(b.config.limits.max_upload_bytes)
    try:
        out = ops.create_from_zip(b.store, name, path, b.config.limits)
    finally:
        path.unlink(missing_ok=True)
    return answer(schemas.DatasetOut, out, 201)


@api.route("GET", "/datasets/{dataset_id:int}", summary="One dataset", tag=TAG,
           response=schemas.DatasetOut)
def get_dataset(dataset_id: int):
    with backend().store.session() as s:
        return answer(schemas.DatasetOut, ops.describe(s, ops.get_dataset(s, dataset_id)))


@api.route("DELETE", "/datasets/{dataset_id:int}", summary="Delete a dataset and its images",
           tag=TAG, status=204)
def delete_dataset(dataset_id: int):
    ops.delete_dataset(backend().store, dataset_id)
    return Response(status=204)


@api.route("GET", "/datasets/{dataset_id:int}/archive",
           summary="Download the dataset as a zip (streamed)", tag=TAG, response="zip")
def download_dataset(dataset_id: int):
    b = backend()
    with b.store.session() as s:
        name = ops.get_dataset(s, dataset_id).name
    stream = ops.zip_stream(b.store, dataset_id)
    safe = "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in name)
    return Response(stream, mimetype="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{safe}.zip"'})


@api.route("POST", "/datasets/{dataset_id:int}/images",
           summary="Add images from a zip (one folder per label)", tag=TAG, body="zip",
           response=schemas.DatasetOut)
def add_images(dataset_id: int):
    b = backend()
    path = spool_body(b.config.limits.max_upload_bytes)
    try:
        out = ops.add_from_zip(b.store, dataset_id, path, b.config.limits)
    finally:
        path.unlink(missing_ok=True)
    return answer(schemas.DatasetOut, out)


@api.route("GET", "/datasets/{dataset_id:int}/images", summary="List images", tag=TAG,
           response=schemas.ImageList, query=[Query("label", description="only this label")])
def list_images(dataset_id: int):
    images = ops.list_images(backend().store, dataset_id, request.args.get("label"))
    return answer(schemas.ImageList, {"images": images})


@api.route("GET", "/datasets/{dataset_id:int}/images/{image_id:int}",
           summary="Download one image", tag=TAG, response="image")
def get_image(dataset_id: int, image_id: int):
    info, data = ops.get_image(backend().store, dataset_id, image_id)
    return Response(data, mimetype=_IMAGE_TYPES.get(info["format"], "application/octet-stream"))


@api.route("DELETE", "/datasets/{dataset_id:int}/images/{image_id:int}",
           summary="Remove one image", tag=TAG, status=204)
def delete_image(dataset_id: int, image_id: int):
    ops.delete_image(backend().store, dataset_id, image_id)
    return Response(status=204)


@api.route("POST", "/datasets/{dataset_id:int}/labels", summary="Add an (empty) label",
           tag=TAG, body=schemas.LabelIn, response=schemas.DatasetOut, status=201)
def add_label(dataset_id: int):
    body = parse_body(schemas.LabelIn)
    return answer(schemas.DatasetOut, ops.add_label(backend().store, dataset_id, body.name), 201)


@api.route("PATCH", "/datasets/{dataset_id:int}/labels/{label}", summary="Rename a label",
           tag=TAG, body=schemas.LabelIn, response=schemas.DatasetOut)
def rename_label(dataset_id: int, label: str):
    body = parse_body(schemas.LabelIn)
    return answer(schemas.DatasetOut,
                  ops.rename_label(backend().store, dataset_id, label, body.name))


@api.route("DELETE", "/datasets/{dataset_id:int}/labels/{label}",
           summary="Remove a label and its images", tag=TAG, response=schemas.DatasetOut)
def delete_label(dataset_id: int, label: str):
    return answer(schemas.DatasetOut, ops.delete_label(backend().store, dataset_id, label))


@api.route("POST", "/datasets/{dataset_id:int}/labels/{label}/images",
           summary="Add one image under a label", tag=TAG, body="image",
           response=schemas.ImageOut, status=201,
           query=[Query("filename", required=True, description="the image's file name")])
def add_image(dataset_id: int, label: str):
    b = backend()
    filename = request.args.get("filename")
    if not filename:
        raise InputError("bad_request", "the query parameter 'filename' is required")
    path = spool_body(b.config.limits.max_entry_bytes, suffix=".img")
    try:
        data = path.read_bytes()  # bounded by max_entry_bytes
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
    return answer(schemas.ImageOut,
                  ops.add_image(b.store, dataset_id, label, filename, data, b.config.limits), 201)
