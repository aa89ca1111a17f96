"""Dataset operations on the database: create from a validated archive, list, download,
delete, and manage labels and images. The web layer calls these; nothing here knows HTTP."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend_stub.archive import (
    ValidatedArchive,
    check_image,
    check_name,
    iter_entry_bytes,
    stream_zip,
    validate_archive,
)
from backend_stub.config import DatasetLimits
from backend_stub.storage import Dataset, Image, Label, Store, utcnow
from hal.errors import InputError

log = logging.getLogger(__name__)

# Rows per INSERT batch: bounds what the driver holds at once (a batch is a few MB).
_BATCH = 32


def conflict(message: str, **detail: Any) -> InputError:
    """An InputError the web layer answers with 409 Conflict."""
    err = InputError("bad_request", message, **detail)
    err.http_status = 409  # type: ignore[attr-defined]
    return err


T = TypeVar("T")


def not_found(what: str, ident: object) -> InputError:
    return InputError("not_found", f"no {what} {ident!r}", resource=what, id=str(ident))


def get_or_404(session: Session, model: type[T], what: str, ident: int) -> T:
    """The row of ``model`` with primary key ``ident``, or ``not_found`` naming ``what``."""
    row = session.get(model, ident)
    if row is None:
        raise not_found(what, ident)
    return row


def get_dataset(session: Session, dataset_id: int) -> Dataset:
    return get_or_404(session, Dataset, "dataset", dataset_id)


def _get_label(session: Session, dataset_id: int, name: str) -> Label:
    label = session.scalar(select(Label).where(Label.dataset_id == dataset_id,
                                               Label.name == name))
    if label is None:
        raise not_found("label", name)
    return label


def describe(session: Session, ds: Dataset) -> dict[str, Any]:
    """The dataset as the API shows it: per-label counts and totals, no image bytes."""
    rows = session.execute(
        select(Label.name, func.count(Image.id), func.coalesce(func.sum(Image.size_bytes), 0))
        .select_from(Label)
        .outerjoin(Image, Image.label_id == Label.id)
        .where(Label.dataset_id == ds.id)
        .group_by(Label.id, Label.name)
        .order_by(Label.name)
    ).all()
    return {
        "id": ds.id,
        "name": ds.name,
        "created_at": ds.created_at,
        "updated_at": ds.updated_at,
        "labels": {name: int(n) for name, n, _ in rows},
        "images": sum(int(n) for _, n, _ in rows),
        "size_bytes": sum(int(b) for _, _, b in rows),
    }


def list_datasets(store: Store) -> list[dict[str, Any]]:
    with store.session() as s:
        return [describe(s, ds) for ds in s.scalars(select(Dataset).order_by(Dataset.id))]


def _insert_entries(session: Session, archive: ValidatedArchive, limits: DatasetLimits,
                    label_ids: dict[str, int]) -> int:
    rows: list[dict[str, Any]] = []
    n = 0
    for entry, data, sha in iter_entry_bytes(archive, limits):
        rows.append({
            "label_id": label_ids[entry.label], "filename": entry.filename,
            "format": entry.facts.format, "width": entry.facts.width,
            "height": entry.facts.height, "mode": entry.facts.mode,
            "size_bytes": len(data), "sha256": sha, "data": data,
        })
        if len(rows) >= _BATCH:
            session.execute(insert(Image), rows)
            n += len(rows)
            rows = []
    if rows:
        session.execute(insert(Image), rows)
        n += len(rows)
    return n


def create_from_zip(store: Store, name: str, zip_path: Path,
                    limits: DatasetLimits) -> dict[str, Any]:
    """Validate the archive completely, then store it in one transaction."""
    name = check_name(name, "dataset name")
    archive = validate_archive(zip_path, limits)
    with store.session() as s:
        if s.scalar(select(Dataset.id).where(Dataset.name == name)) is not None:
            raise conflict(f"a dataset named {name!r} exists already", name=name)
        ds = Dataset(name=name)
        s.add(ds)
        s.flush()
        label_ids = {}
        for label in archive.counts():
            row = Label(dataset_id=ds.id, name=label)
            s.add(row)
            s.flush()
            label_ids[label] = row.id
        n = _insert_entries(s, archive, limits, label_ids)
        try:
            s.flush()
        except IntegrityError:  # a concurrent upload took the name
            raise conflict(f"a dataset named {name!r} exists already", name=name) from None
        log.info("dataset %d %r stored: %d images, %d labels, %d bytes", ds.id, name, n,
                 len(label_ids), archive.total_bytes)
        out = describe(s, ds)
    out["skipped"] = archive.skipped
    out["lossy_names"] = archive.lossy_names
    return out


def add_from_zip(store: Store, dataset_id: int, zip_path: Path,
                 limits: DatasetLimits) -> dict[str, Any]:
    """Add the images of an archive to a dataset (new label folders become labels). A file
    that exists already under its label is an offending entry; nothing is stored then."""
    with store.session() as s:
        get_dataset(s, dataset_id)
    archive = validate_archive(zip_path, limits, for_addition=True)
    with store.session() as s:
        ds = get_dataset(s, dataset_id)
        labels = {lb.name: lb.id for lb in s.scalars(select(Label).where(
            Label.dataset_id == ds.id))}
        clashes = []
        for e in archive.entries:
            if e.label in labels and s.scalar(select(Image.id).where(
                    Image.label_id == labels[e.label], Image.filename == e.filename)):
                clashes.append({"entry": e.name or e.zip_name,
                                "problem": "exists already in the dataset"})
        if clashes:
            raise InputError("dataset_invalid", f"{len(clashes)} file(s) exist already",
                             problems=clashes[: limits.max_listed_problems],
                             total_problems=len(clashes))
        for label in archive.counts():
            if label not in labels:
                row = Label(dataset_id=ds.id, name=label)
                s.add(row)
                s.flush()
                labels[label] = row.id
        n = _insert_entries(s, archive, limits, labels)
        ds.updated_at = utcnow()
        log.info("dataset %d: %d images added", ds.id, n)
        out = describe(s, ds)
    out["added"] = n
    out["skipped"] = archive.skipped
    out["lossy_names"] = archive.lossy_names
    return out


def add_image(store: Store, dataset_id: int, label: str, filename: str, data: bytes,
              limits: DatasetLimits) -> dict[str, Any]:
    """Add one image under an existing label, after decoding it completely."""
    filename = check_name(filename, "file name")
    if len(data) > limits.max_entry_bytes:
        raise InputError("payload_too_large",
                         f"the image has {len(data)} bytes; the limit is {limits.max_entry_bytes}")
    try:
        facts = check_image(data, limits)
    except ValueError as exc:
        raise InputError("dataset_invalid", f"{filename}: {exc}",
                         problems=[{"entry": filename, "problem": str(exc)}]) from None
    with store.session() as s:
        ds = get_dataset(s, dataset_id)
        lb = _get_label(s, ds.id, label)
        if s.scalar(select(Image.id).where(Image.label_id == lb.id, Image.filename == filename)):
            raise conflict(f"{label}/{filename} exists already")
        img = Image(label_id=lb.id, filename=filename, format=facts.format, width=facts.width,
                    height=facts.height, mode=facts.mode, size_bytes=len(data),
                    sha256=hashlib.sha256(data).hexdigest(), data=data)
        s.add(img)
        ds.updated_at = utcnow()
        s.flush()
        return image_dict(img, label)


def image_dict(img: Image, label: str) -> dict[str, Any]:
    return {"id": img.id, "label": label, "filename": img.filename, "format": img.format,
            "width": img.width, "height": img.height, "mode": img.mode,
            "size_bytes": img.size_bytes, "sha256": img.sha256}


def list_images(store: Store, dataset_id: int, label: str | None) -> list[dict[str, Any]]:
    with store.session() as s:
        get_dataset(s, dataset_id)
        q = (select(Image.id, Label.name, Image.filename, Image.format, Image.width,
                    Image.height, Image.mode, Image.size_bytes, Image.sha256)
             .join(Label, Image.label_id == Label.id).where(Label.dataset_id == dataset_id))
        if label is not None:
            _get_label(s, dataset_id, label)
            q = q.where(Label.name == label)
        keys = ("id", "label", "filename", "format", "width", "height", "mode", "size_bytes",
                "sha256")
        return [dict(zip(keys, row, strict=True))
                for row in s.execute(q.order_by(Label.name, Image.filename))]


def get_image(store: Store, dataset_id: int, image_id: int) -> tuple[dict[str, Any], bytes]:
    with store.session() as s:
        row = s.execute(select(Image, Label.name).join(Label, Image.label_id == Label.id)
                        .where(Label.dataset_id == dataset_id, Image.id == image_id)).first()
        if row is None:
            raise not_found("image", image_id)
        img, label = row
        return image_dict(img, label), img.data


def delete_image(store: Store, dataset_id: int, image_id: int) -> None:
    with store.session() as s:
        ds = get_dataset(s, dataset_id)
        label_ids = select(Label.id).where(Label.dataset_id == dataset_id)
        res = s.execute(delete(Image).where(Image.id == image_id,
                                            Image.label_id.in_(label_ids)))
        if res.rowcount == 0:
            raise not_found("image", image_id)
        ds.updated_at = utcnow()


def add_label(store: Store, dataset_id: int, name: str) -> dict[str, Any]:
    name = check_name(name, "label")
    with store.session() as s:
        ds = get_dataset(s, dataset_id)
        if s.scalar(select(Label.id).where(Label.dataset_id == ds.id, Label.name == name)):
            raise conflict(f"label {name!r} exists already", label=name)
        s.add(Label(dataset_id=ds.id, name=name))
        ds.updated_at = utcnow()
        s.flush()
        return describe(s, ds)


def rename_label(store: Store, dataset_id: int, name: str, new_name: str) -> dict[str, Any]:
    new_name = check_name(new_name, "label")
    with store.session() as s:
        ds = get_dataset(s, dataset_id)
        lb = _get_label(s, ds.id, name)
        if new_name != name and s.scalar(select(Label.id).where(
                Label.dataset_id == ds.id, Label.name == new_name)):
            raise conflict(f"label {new_name!r} exists already", label=new_name)
        lb.name = new_name
        ds.updated_at = utcnow()
        s.flush()
        return describe(s, ds)


def delete_label(store: Store, dataset_id: int, name: str) -> dict[str, Any]:
    """Remove a label and its images."""
    with store.session() as s:
        ds = get_dataset(s, dataset_id)
        lb = _get_label(s, ds.id, name)
        s.execute(delete(Image).where(Image.label_id == lb.id))
        s.delete(lb)
        ds.updated_at = utcnow()
        s.flush()
        return describe(s, ds)


def delete_dataset(store: Store, dataset_id: int) -> None:
    with store.session() as s:
        ds = get_dataset(s, dataset_id)
        # Explicit deletes: do not rely on ON DELETE CASCADE being enforced by every backend.
        label_ids = select(Label.id).where(Label.dataset_id == ds.id)
        s.execute(delete(Image).where(Image.label_id.in_(label_ids)))
        s.execute(delete(Label).where(Label.dataset_id == ds.id))
        s.delete(ds)
    log.info("dataset %d deleted", dataset_id)


def zip_stream(store: Store, dataset_id: int) -> Iterator[bytes]:
    """The dataset as a zip (``<label>/<file>``), streamed: image rows are fetched in small
    batches and written out one at a time. Raises ``not_found`` before the first byte."""
    with store.session() as s:
        get_dataset(s, dataset_id)

    def rows() -> Iterator[tuple[str, bytes]]:
        with store.session() as s:
            ids = s.execute(select(Image.id, Label.name, Image.filename)
                            .join(Label, Image.label_id == Label.id)
                            .where(Label.dataset_id == dataset_id)
                            .order_by(Label.name, Image.filename)).all()
            labels_with_images = {name for _, name, _ in ids}
            for i in range(0, len(ids), _BATCH):
                chunk = ids[i:i + _BATCH]
                data = dict(s.execute(select(Image.id, Image.data)
                                      .where(Image.id.in_([r[0] for r in chunk]))).all())
                for image_id, label, filename in chunk:
                    yield f"{label}/{filename}", data.pop(image_id)
            # Empty labels still appear, as folders.
            for name in s.scalars(select(Label.name).where(Label.dataset_id == dataset_id)):
                if name not in labels_with_images:
                    yield f"{name}/", b""

    return stream_zip(rows())


def load_images(session: Session, image_ids: list[int]) -> dict[int, bytes]:
    """Image bytes by id (the worker's input), fetched in batches."""
    out: dict[int, bytes] = {}
    for i in range(0, len(image_ids), 256):
        out.update(session.execute(select(Image.id, Image.data).where(
            Image.id.in_(image_ids[i:i + 256]))).all())
    return out


def image_index(session: Session, dataset_id: int) -> dict[str, list[int]]:
    """Image ids per label name (sorted by file name, so splits are reproducible)."""
    out: dict[str, list[int]] = {}
    for label, image_id in session.execute(
            select(Label.name, Image.id).join(Image, Image.label_id == Label.id)
            .where(Label.dataset_id == dataset_id).order_by(Label.name, Image.filename)):
        out.setdefault(label, []).append(image_id)
    return out
