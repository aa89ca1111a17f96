"""Datasets over HTTP: upload validation (every hostile archive), download round trip,
listing, deletion, label and image management -- on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
import zlib

import pytest
from sqlalchemy import func, select

from backend_stub.storage import Dataset, Image, Label
from tests.backend.conftest import (
    AUTH,
    dataset_entries,
    make_zip,
    png_bytes,
    upload,
)


def _problems(resp) -> dict[str, str]:
    body = resp.get_json()
    assert body["code"] == "dataset_invalid", body
    return {p["entry"]: p["problem"] for p in body["detail"]["problems"]}


def _nothing_stored(app) -> None:
    store = app.extensions["tinyml_backend"].store
    with store.session() as s:
        for model in (Dataset, Label, Image):
            assert s.scalar(select(func.count()).select_from(model)) == 0


# ------------------------------------------------------------------------------ happy paths


def test_upload_list_download_round_trip(client, app):
    entries = dataset_entries(("cat", "dog"), per_label=4)
    entries["__MACOSX/cat/._000.png"] = b"junk"
    entries["cat/.DS_Store"] = b"junk"
    r = upload(client, "pets", entries)
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert body["labels"] == {"cat": 4, "dog": 4}
    assert body["images"] == 8
    assert sorted(body["skipped"]) == ["__MACOSX/cat/._000.png", "cat/.DS_Store"]

    listing = client.get("/datasets").get_json()["datasets"]
    assert [(d["name"], d["labels"]) for d in listing] == [("pets", {"cat": 4, "dog": 4})]

    r = client.get(f"/datasets/{body['id']}/archive")
    assert r.status_code == 200 and r.mimetype == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.data)) as zf:
        got = {n: zf.read(n) for n in zf.namelist()}
    want = {k: v for k, v in entries.items() if not k.startswith("__") and "DS_Store" not in k}
    assert got == want  # same structure, byte-identical images


def test_archive_with_one_top_folder_is_unwrapped(client):
    r = upload(client, "wrapped", dataset_entries(("a", "b"), 3, prefix="mydata/"))
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["labels"] == {"a": 3, "b": 3}


def test_upload_over_a_real_socket_streams_body(live_server):
    import requests

    data = make_zip(dataset_entries(("x", "y"), 3))
    r = requests.post(f"{live_server.url}/datasets", params={"name": "sock"}, data=data,
                      headers={**AUTH, "Content-Type": "application/zip"}, timeout=30)
    assert r.status_code == 201, r.text
    r = requests.get(f"{live_server.url}/datasets/{r.json()['id']}/archive", headers=AUTH,
                     timeout=30, stream=True)
    assert r.headers.get("Transfer-Encoding") == "chunked"  # streamed, not buffered
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert len(zf.namelist()) == 6


def test_manage_labels_and_images(client):
    ds = upload(client, "m", dataset_entries(("cat", "dog"), 3)).get_json()
    base = f"/datasets/{ds['id']}"

    r = client.post(f"{base}/labels", json={"name": "bird"})
    assert r.status_code == 201 and r.get_json()["labels"]["bird"] == 0
    assert client.post(f"{base}/labels", json={"name": "bird"}).status_code == 409
    assert client.post(f"{base}/labels", json={"name": "../x"}).status_code == 422

    r = client.post(f"{base}/labels/bird/images?filename=b1.png", data=png_bytes(seed=7),
                    content_type="application/octet-stream")
    assert r.status_code == 201, r.get_json()
    image_id = r.get_json()["id"]
    assert client.get(f"{base}/images/{image_id}").data == png_bytes(seed=7)
    r = client.post(f"{base}/labels/bird/images?filename=b2.png", data=b"not an image")
    assert r.status_code == 422 and r.get_json()["code"] == "dataset_invalid"

    r = client.patch(f"{base}/labels/bird", json={"name": "parrot"})
    assert r.status_code == 200 and r.get_json()["labels"] == {"cat": 3, "dog": 3, "parrot": 1}
    assert client.patch(f"{base}/labels/parrot", json={"name": "cat"}).status_code == 409
    assert client.patch(f"{base}/labels/nope", json={"name": "x"}).status_code == 404

    images = client.get(f"{base}/images?label=parrot").get_json()["images"]
    assert [i["filename"] for i in images] == ["b1.png"]
    assert client.delete(f"{base}/images/{image_id}").status_code == 204
    assert client.delete(f"{base}/images/{image_id}").status_code == 404

    r = client.post(f"{base}/images", data=make_zip(dataset_entries(("dog", "fox"), 2,
                                                                     prefix="")),
                    content_type="application/zip")
    # dog/000.png and dog/001.png exist already: listed, nothing added.
    assert r.status_code == 422
    assert set(_problems(r)) == {"dog/000.png", "dog/001.png"}
    new = {f"fox/{i}.png": png_bytes(seed=50 + i) for i in range(2)}
    r = client.post(f"{base}/images", data=make_zip(new), content_type="application/zip")
    assert r.status_code == 200 and r.get_json()["added"] == 2
    assert r.get_json()["labels"]["fox"] == 2

    r = client.delete(f"{base}/labels/dog")
    assert r.status_code == 200 and "dog" not in r.get_json()["labels"]

    with zipfile.ZipFile(io.BytesIO(client.get(f"{base}/archive").data)) as zf:
        names = set(zf.namelist())
    assert names == {"cat/000.png", "cat/001.png", "cat/002.png", "fox/0.png", "fox/1.png",
                     "parrot/"}

    assert client.delete(base).status_code == 204
    assert client.get(base).status_code == 404
    assert client.get("/datasets").get_json()["datasets"] == []


def test_duplicate_dataset_name_conflicts(client):
    assert upload(client, "dup", dataset_entries()).status_code == 201
    r = upload(client, "dup", dataset_entries())
    assert r.status_code == 409 and r.get_json()["code"] == "bad_request"


# ------------------------------------------------------------------------------ hostile zips


def _valid_plus(extra: dict[str, bytes], **kw) -> bytes:
    entries = dataset_entries(("cat", "dog"), 3)
    entries.update(extra)
    return make_zip(entries, **kw)


@pytest.mark.parametrize(("name", "needle"), [
    ("../evil.png", "path traversal"),
    ("cat/../../evil.png", "path traversal"),
    ("/etc/evil.png", "absolute path"),
    ("C:/evil.png", "absolute path"),
    ("cat\\evil.png", "backslash"),
    ("cat//evil.png", "empty"),
    ("cat/sub/evil.png", "one folder per label"),
    ("evil.png", "one folder per label"),
])
def test_bad_paths_are_listed_and_nothing_stored(sqlite_client, sqlite_app, name, needle):
    r = upload(sqlite_client, "bad", _valid_plus({name: png_bytes(seed=9)}))
    assert r.status_code == 422
    problems = _problems(r)
    assert needle in problems[name], problems
    _nothing_stored(sqlite_app)


@pytest.mark.parametrize(("mode", "needle"), [
    (stat.S_IFLNK | 0o777, "symbolic link"),
    (stat.S_IFCHR | 0o600, "device file"),
    (stat.S_IFBLK | 0o600, "device file"),
    (stat.S_IFIFO | 0o600, "FIFO"),
])
def test_symlinks_and_device_files_rejected(sqlite_client, sqlite_app, mode, needle):
    data = _valid_plus({"cat/link.png": b"/etc/passwd"}, attrs={"cat/link.png": mode})
    r = upload(sqlite_client, "bad", data)
    assert r.status_code == 422
    assert needle in _problems(r)["cat/link.png"]
    _nothing_stored(sqlite_app)


def test_zip_bomb_by_ratio_rejected_without_inflating_it(sqlite_client, sqlite_app):
    bomb = b"\0" * (8 << 20)  # 8 MiB of zeros deflate to ~8 KB: ratio ~1000
    r = upload(sqlite_client, "bomb", _valid_plus({"cat/bomb.png": bomb}))
    assert r.status_code == 422
    assert "compression ratio" in _problems(r)["cat/bomb.png"]
    _nothing_stored(sqlite_app)


def test_entry_and_total_size_limits(make_app, tmp_path):
    from backend_stub.config import DatasetLimits

    limits = DatasetLimits(min_images_per_label=3, max_entry_bytes=2000,
                           max_total_uncompressed_bytes=50_000)
    app = make_app(f"sqlite:///{tmp_path / 'a.sqlite3'}", limits=limits)
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = AUTH["Authorization"]
    big = png_bytes(64, 64, seed=3)  # noise: several KB, incompressible
    r = upload(c, "big", _valid_plus({"cat/big.png": big}, compression=zipfile.ZIP_STORED))
    assert r.status_code == 422
    assert "more than 2000 bytes" in _problems(r)["cat/big.png"]
    many = {f"cat/{i}.png": png_bytes(24, 24, seed=i) for i in range(100)}
    many.update({f"dog/{i}.png": png_bytes(24, 24, seed=500 + i) for i in range(3)})
    r = upload(c, "total", make_zip(many))
    assert r.status_code == 422
    assert any("in total" in p for p in _problems(r).values())
    _nothing_stored(app)


def test_too_many_entries_refused_from_the_directory_record(make_app, tmp_path):
    from backend_stub.config import DatasetLimits

    app = make_app(f"sqlite:///{tmp_path / 'a.sqlite3'}",
                   limits=DatasetLimits(min_images_per_label=3, max_entries=10))
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = AUTH["Authorization"]
    r = upload(c, "many", dataset_entries(("a", "b"), 6))
    assert r.status_code == 422
    body = r.get_json()
    assert body["detail"]["entries"] == 12 and body["detail"]["max_entries"] == 10
    _nothing_stored(app)


def _png_with_header_size(width: int, height: int) -> bytes:
    """A real 8x8 PNG whose IHDR claims another size (CRC fixed): a decompression bomb."""
    data = bytearray(png_bytes(8, 8))
    ihdr = data[12:29]
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.parametrize(("payload", "needle"), [
    (b"this is not an image", "not an image"),
    (png_bytes(32, 32)[:60], "does not decode"),  # truncated after the header
    (_png_with_header_size(100_000, 100_000), "exceed the limit"),
    (_png_with_header_size(8000, 8000), "exceed the limit"),
    (png_bytes(5000, 9), "exceed the limit"),
    (png_bytes(4, 4), "below the minimum"),
    (b"GIF89a" + b"\0" * 20, "not an image"),
])
def test_non_images_truncated_and_huge_images_rejected(sqlite_client, sqlite_app, payload, needle):
    r = upload(sqlite_client, "bad", _valid_plus({"cat/x.png": payload}))
    assert r.status_code == 422
    assert needle in _problems(r)["cat/x.png"], _problems(r)
    _nothing_stored(sqlite_app)


def test_corrupted_entry_crc_rejected(sqlite_client, sqlite_app):
    data = bytearray(_valid_plus({}, compression=zipfile.ZIP_STORED))
    # Flip a byte inside the first stored image: the CRC check must catch it.
    pos = data.find(b"IDAT")
    data[pos + 10] ^= 0xFF
    r = upload(sqlite_client, "crc", bytes(data))
    assert r.status_code == 422
    assert any("decompress" in p or "decode" in p for p in _problems(r).values())
    _nothing_stored(sqlite_app)


def test_single_label_and_too_few_per_label(sqlite_client, sqlite_app):
    r = upload(sqlite_client, "one", dataset_entries(("cat",), 5))
    assert r.status_code == 422
    assert "at least 2" in _problems(r)["(archive)"]
    entries = dataset_entries(("cat",), 5)
    entries.update(dataset_entries(("dog",), 1))
    r = upload(sqlite_client, "few", entries)
    assert r.status_code == 422
    assert _problems(r) == {"dog/": "1 image(s); at least 3 per label"}
    _nothing_stored(sqlite_app)


def test_duplicate_entries_and_bad_label_names(sqlite_client, sqlite_app):
    entries = dataset_entries(("cat", "dog"), 3)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, d in entries.items():
            zf.writestr(n, d)
        with pytest.warns(UserWarning):
            zf.writestr("cat/000.png", entries["cat/000.png"])
        zf.writestr(".hidden/x.png", entries["cat/000.png"])
    r = upload(sqlite_client, "dups", buf.getvalue())
    assert r.status_code == 422
    problems = _problems(r)
    assert problems["cat/000.png"] == "duplicate entry"
    assert "must not start with '.'" in problems[".hidden/x.png"]
    _nothing_stored(sqlite_app)


@pytest.mark.parametrize("body", [b"", b"PK\x03\x04 not really a zip", b"\x00" * 100])
def test_not_a_zip(sqlite_client, sqlite_app, body):
    r = sqlite_client.post("/datasets?name=x", data=body, content_type="application/zip")
    assert r.status_code in (400, 422)
    assert r.get_json()["code"] in ("bad_request", "dataset_invalid")
    _nothing_stored(sqlite_app)


def test_upload_over_the_size_limit_is_413(make_app, tmp_path):
    from backend_stub.config import DatasetLimits

    app = make_app(f"sqlite:///{tmp_path / 'a.sqlite3'}",
                   limits=DatasetLimits(max_upload_bytes=1000))
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = AUTH["Authorization"]
    r = upload(c, "big", dataset_entries())
    assert r.status_code == 413 and r.get_json()["code"] == "payload_too_large"


@pytest.mark.parametrize("name", ["", "../etc", "a/b", " lead", "x" * 65, "\x07bell"])
def test_bad_dataset_names(sqlite_client, name):
    r = sqlite_client.post("/datasets", query_string={"name": name},
                    data=make_zip(dataset_entries()), content_type="application/zip")
    assert r.status_code in (400, 422)
    assert r.get_json()["code"] in ("bad_request", "bad_option")


def test_auth_required(app):
    c = app.test_client()
    assert c.get("/health").status_code == 200
    assert c.get("/openapi.json").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        r = c.get("/datasets", headers=headers)
        assert r.status_code == 401 and r.get_json()["code"] == "unauthorized"
    assert c.get("/datasets", headers=AUTH).status_code == 200


def test_unknown_routes_and_methods_answer_json(sqlite_client):
    r = sqlite_client.get("/nope")
    assert r.status_code == 404 and r.get_json()["code"] == "not_found"
    r = sqlite_client.put("/datasets")
    assert r.status_code == 405 and r.get_json()["code"] == "bad_request"
    r = sqlite_client.get("/datasets/1")
    assert r.status_code == 404 and r.get_json()["code"] == "not_found"
    r = sqlite_client.get("/datasets/99999999999999999999999")  # beyond 32 bits: not a 500
    assert r.status_code == 404 and r.get_json()["code"] == "not_found"
    r = sqlite_client.post("/trainings", json={"dataset_id": 2**63})
    assert r.status_code == 422 and r.get_json()["code"] == "bad_option"


def test_every_attack_in_one_archive_on_both_backends(client, app):
    """All offences at once: each is listed, and nothing reaches either database."""
    attacks = {
        "../up.png": png_bytes(seed=1), "/abs.png": png_bytes(seed=2),
        "cat/link.png": b"/etc/passwd", "cat/bomb.png": b"\0" * (4 << 20),
        "cat/text.png": b"hello", "cat/cut.png": png_bytes(32, 32)[:70],
    }
    data = _valid_plus(attacks, attrs={"cat/link.png": stat.S_IFLNK | 0o777})
    r = upload(client, "all", data)
    assert r.status_code == 422
    assert set(_problems(r)) == set(attacks)
    assert r.get_json()["detail"]["total_problems"] == len(attacks)
    _nothing_stored(app)


# ------------------------------------------------------------------------------ name encodings


def _zip_with_raw_names(names: dict[bytes, bytes], utf8_flag: bool = False) -> bytes:
    """A zip whose entry names are exactly the given bytes. Python's zipfile always flags
    non-ASCII names as UTF-8, so the entries are written under ASCII placeholders of the same
    length, then the placeholders are replaced in the local and central headers."""
    placeholders = {raw: f"L{i:0{len(raw) - 1}d}".encode() for i, raw in enumerate(names)}
    assert all(len(p) == len(r) for r, p in placeholders.items())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for raw, data in names.items():
            for k, suffix in enumerate((b"/000.png", b"/001.png", b"/002.png")):
                zf.writestr((placeholders[raw] + suffix).decode(), data[k])
    blob = buf.getvalue()
    for raw, ph in placeholders.items():
        assert blob.count(ph + b"/") == 6  # three local headers, three central entries
        blob = blob.replace(ph + b"/", raw + b"/")
    if utf8_flag:  # set bit 11 in every local (offset 6) and central (offset 8) header
        out = bytearray(blob)
        for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            pos = out.find(sig)
            while pos >= 0:
                flags = struct.unpack_from("<H", out, pos + off)[0]
                struct.pack_into("<H", out, pos + off, flags | 0x800)
                pos = out.find(sig, pos + 4)
        blob = bytes(out)
    return blob


def _images(seed: int) -> list[bytes]:
    return [png_bytes(seed=seed + i) for i in range(3)]


def _labels_of(client, body) -> list[str]:
    return sorted(client.get(f"/datasets/{body['id']}").get_json()["labels"])


@pytest.mark.parametrize("flag", [True, False], ids=["utf8-flag", "no-flag"])
def test_utf8_names_are_kept_with_or_without_the_flag(sqlite_client, flag):
    blob = _zip_with_raw_names({"café".encode(): _images(0), b"plain": _images(10)},
                               utf8_flag=flag)
    r = sqlite_client.post("/datasets?name=enc", data=blob, content_type="application/zip")
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert _labels_of(sqlite_client, body) == ["café", "plain"]
    assert body["lossy_names"] == []


def test_latin1_name_without_flag_is_reported_as_lossy(sqlite_client):
    # The reproduction: Latin-1 "café" without the UTF-8 flag became "cafΘ" silently.
    blob = _zip_with_raw_names({"café".encode("latin-1"): _images(0), b"plain": _images(10)})
    r = sqlite_client.post("/datasets?name=latin", data=blob, content_type="application/zip")
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert _labels_of(sqlite_client, body) == ["cafΘ", "plain"]  # cp437, the zip default
    lossy = {w["entry"]: w for w in body["lossy_names"]}
    assert set(lossy) == {"cafΘ/000.png", "cafΘ/001.png", "cafΘ/002.png"}
    assert lossy["cafΘ/000.png"]["raw"] == "caf\\xe9/000.png"
    assert "cp437" in lossy["cafΘ/000.png"]["problem"]


def test_lossy_names_are_printed_by_the_cli(sqlite_client):
    from backend_stub.cli import _dataset_text

    blob = _zip_with_raw_names({"café".encode("latin-1"): _images(0), b"plain": _images(10)})
    body = sqlite_client.post("/datasets?name=l", data=blob,
                              content_type="application/zip").get_json()
    text = _dataset_text(body)
    assert "warning: 'cafΘ/000.png' (raw bytes caf\\xe9/000.png)" in text


def test_names_recovered_as_utf8_are_still_checked(sqlite_client, sqlite_app):
    # No flag; the bytes are UTF-8 for a C1 control character (U+0085): refused as a label.
    blob = _zip_with_raw_names({b"bad\xc2\x85": _images(0), b"plain": _images(10)})
    r = sqlite_client.post("/datasets?name=ctl", data=blob, content_type="application/zip")
    assert r.status_code == 422
    problems = _problems(r)
    assert any("control characters" in p for p in problems.values()), problems
    _nothing_stored(sqlite_app)


def test_overlong_utf8_dots_are_not_a_traversal(sqlite_client):
    # b"\xc0\xae" is an overlong (invalid) UTF-8 form of ".": never decoded as "..".
    blob = _zip_with_raw_names({b"\xc0\xae\xc0\xae": _images(0), b"plain": _images(10)})
    r = sqlite_client.post("/datasets?name=dots", data=blob, content_type="application/zip")
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert ".." not in body["labels"] and "└«└«" in body["labels"]
    assert {w["raw"] for w in body["lossy_names"]} == {f"\\xc0\\xae\\xc0\\xae/00{i}.png"
                                                       for i in range(3)}
