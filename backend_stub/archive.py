"""Validation of dataset zip archives (one folder per label), entry by entry, before anything
is stored; and streaming of a dataset back out as a zip.

Nothing in a zip header is trusted: the entry count comes from the end-of-central-directory
record before the central directory is parsed (a million-entry zip is refused without building
a million ``ZipInfo`` objects), and every entry is decompressed with bounded reads that stop as
soon as the entry, the running total or the entry's compression ratio passes its limit. Memory
stays at one entry (at most ``max_entry_bytes``) whatever the archive's size.
"""

from __future__ import annotations

import hashlib
import io
import logging
import stat
import struct
import unicodedata
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from backend_stub.config import DatasetLimits
from hal.errors import InputError

log = logging.getLogger(__name__)

_CHUNK = 1 << 16
# Files that archivers add on their own; skipped (and reported), never an error.
_JUNK_DIRS = ("__MACOSX",)
_JUNK_FILES = (".DS_Store", "Thumbs.db", "desktop.ini")


@dataclass(frozen=True)
class ImageFacts:
    """What decoding an image established."""

    format: str
    width: int
    height: int
    mode: str


@dataclass(frozen=True)
class ArchiveEntry:
    """One validated image of the archive."""

    zip_name: str
    label: str
    filename: str
    size_bytes: int
    facts: ImageFacts
    name: str = ""  # the entry's name as decoded (see entry_name); zip_name finds it again


@dataclass
class ValidatedArchive:
    """The result of :func:`validate_archive`: every image, by label, and what was skipped."""

    path: Path
    entries: list[ArchiveEntry] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    total_bytes: int = 0
    # Names neither flagged UTF-8 nor valid UTF-8, decoded as cp437 (perhaps not what the
    # archiver meant): [{"entry", "raw", "problem"}]. Reported with the upload's answer.
    lossy_names: list[dict[str, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.entries:
            out[e.label] = out.get(e.label, 0) + 1
        return dict(sorted(out.items()))


class _Problems:
    """Collects offending entries; the error lists each of them (up to a cap)."""

    def __init__(self, cap: int) -> None:
        self.items: list[dict[str, str]] = []
        self.count = 0
        self.cap = cap

    def add(self, entry: str, problem: str) -> None:
        self.count += 1
        if len(self.items) < self.cap:
            self.items.append({"entry": entry, "problem": problem})

    def raise_if_any(self, what: str) -> None:
        if self.count:
            raise invalid(
                f"{what}: {self.count} offending entr{'y' if self.count == 1 else 'ies'}",
                self.items,
                total_problems=self.count,
            )


def invalid(message: str, problems: list[dict[str, str]], **detail: object) -> InputError:
    """The ``dataset_invalid`` error with its list of ``{"entry", "problem"}``."""
    return InputError("dataset_invalid", message, problems=problems, **detail)


# ------------------------------------------------------------------------------ names


def check_name(name: str, what: str) -> str:
    """A label or dataset name: 1-64 printable characters, no path separators, no leading or
    trailing space, not ``.`` or ``..``. Returns the NFC-normalised name."""
    norm = unicodedata.normalize("NFC", name)
    problem = None
    if not norm or len(norm) > 64:
        problem = "must be 1 to 64 characters"
    elif any(c in norm for c in "/\\") or any(unicodedata.category(c)[0] == "C" for c in norm):
        problem = "must not contain '/', '\\' or control characters"
    elif norm != norm.strip():
        problem = "must not start or end with white space"
    elif norm.startswith("."):
        problem = "must not start with '.'"
    if problem:
        raise InputError("bad_option", f"{what} {name!r} {problem}", name=name)
    return norm


_UTF8_FLAG = 0x800  # general purpose bit 11: the name and comment are UTF-8


def entry_name(info: zipfile.ZipInfo) -> tuple[str, bool]:
    """The entry's name and whether it may have been decoded lossily.

    Python's zipfile decodes a name as UTF-8 when the entry has the UTF-8 flag (bit 11),
    and as cp437 otherwise. Many archivers (Windows Explorer, older Info-ZIP, macOS) write
    UTF-8 or their code page without the flag, so a name without the flag is tried as UTF-8
    first; only when its bytes are not valid UTF-8 does cp437 stay, and then the name is
    reported as possibly wrong (``café`` written in Latin-1 reads ``cafΘ`` in cp437; no
    decoding can tell the code page for certain)."""
    if info.flag_bits & _UTF8_FLAG:
        return info.orig_filename, False
    # cp437 maps all 256 byte values, so encoding the decoded name gives the raw bytes back.
    raw = info.orig_filename.encode("cp437")
    if raw.isascii():
        return info.orig_filename, False
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return info.orig_filename, True


def _entry_path_problem(name: str) -> str | None:
    if "\x00" in name:
        return "NUL character in the name"
    if "\\" in name:
        return "backslash in the name (not a portable zip path)"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    parts = name.rstrip("/").split("/")
    if any(p == ".." for p in parts):
        return "'..' in the path (path traversal)"
    if any(p in ("", ".") for p in parts):
        return "empty or '.' path component"
    return None


def _entry_kind_problem(info: zipfile.ZipInfo) -> str | None:
    """Symlinks and device files are flagged by the Unix mode in ``external_attr``."""
    mode = info.external_attr >> 16
    if not stat.S_IFMT(mode):
        return None  # no Unix file type recorded (Windows, Python's writestr): a plain entry
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return "FIFO or socket"
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return f"not a regular file (mode {oct(mode)})"
    return None


# ------------------------------------------------------------------------------ zip structure


def _declared_entry_count(path: Path) -> int:
    """Entry count from the end-of-central-directory record (zip64 aware), read from the
    file's tail only. Raises ``dataset_invalid`` when there is no such record."""
    with path.open("rb") as f:
        f.seek(0, io.SEEK_END)
        size = f.tell()
        tail_len = min(size, 22 + 65535 + 20)
        f.seek(size - tail_len)
        tail = f.read(tail_len)
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or len(tail) - pos < 22:
        raise invalid("the upload is not a zip archive", [
            {"entry": "(archive)", "problem": "no end-of-central-directory record"}])
    (total,) = struct.unpack("<H", tail[pos + 10 : pos + 12])
    if total == 0xFFFF:
        loc = tail.rfind(b"PK\x06\x07", 0, pos)
        if loc >= 0:
            (eocd64_at,) = struct.unpack("<Q", tail[loc + 8 : loc + 16])
            with path.open("rb") as f:
                f.seek(eocd64_at)
                rec = f.read(56)
            if rec[:4] == b"PK\x06\x06" and len(rec) == 56:
                (total,) = struct.unpack("<Q", rec[32:40])
    return total


def _open_zip(path: Path, limits: DatasetLimits) -> zipfile.ZipFile:
    declared = _declared_entry_count(path)
    if declared > limits.max_entries:
        raise invalid(
            f"the archive has {declared} entries, more than the limit of {limits.max_entries}",
            [{"entry": "(archive)", "problem": f"{declared} entries > {limits.max_entries}"}],
            entries=declared, max_entries=limits.max_entries,
        )
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
        raise invalid("the upload is not a readable zip archive",
                      [{"entry": "(archive)", "problem": str(exc)}]) from None
    if len(zf.infolist()) > limits.max_entries:  # the record lied; the directory is authority
        n = len(zf.infolist())
        zf.close()
        raise invalid(f"the archive has {n} entries, more than the limit of {limits.max_entries}",
                      [{"entry": "(archive)", "problem": f"{n} entries > {limits.max_entries}"}])
    return zf


class _Budget:
    """The archive-wide decompressed byte budget."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


def read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: DatasetLimits,
               budget: _Budget) -> bytes:
    """Decompress one entry with bounded reads. Raises ``ValueError`` naming the limit passed
    (the caller turns it into a listed problem); the header's sizes are never trusted."""
    ratio_cap = max(info.compress_size, 1) * limits.max_compression_ratio
    # One byte over the cap proves the violation without reading the rest.
    cap = min(limits.max_entry_bytes, int(ratio_cap), budget.limit - budget.used) + 1
    buf = bytearray()
    try:
        with zf.open(info) as src:
            while True:
                chunk = src.read(min(_CHUNK, cap - len(buf)))
                if not chunk:
                    break
                buf += chunk
                if len(buf) >= cap:
                    break
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, NotImplementedError) as exc:
        # RuntimeError: encrypted entry; BadZipFile: CRC mismatch or bad local header.
        raise ValueError(f"cannot be decompressed: {exc}") from None
    except Exception as exc:  # zlib/bz2/lzma errors have no common base class
        raise ValueError(f"cannot be decompressed: {type(exc).__name__}: {exc}") from None
    n = len(buf)
    if n > limits.max_entry_bytes:
        raise ValueError(f"decompresses to more than {limits.max_entry_bytes} bytes")
    if n > ratio_cap:
        raise ValueError(
            f"compression ratio over {limits.max_compression_ratio:g}:1 "
            f"({info.compress_size} bytes compressed; zip bomb?)"
        )
    if budget.used + n > budget.limit:
        raise OverflowError(
            f"the archive decompresses to more than {budget.limit} bytes in total")
    budget.used += n
    return bytes(buf)


def check_image(data: bytes, limits: DatasetLimits) -> ImageFacts:
    """Decode ``data`` fully with Pillow: header, ``verify()`` and a full ``load()``.
    Dimensions are checked from the header before any pixel is decoded. Raises ``ValueError``
    with the reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt, (w, h), mode = img.format or "?", img.size, img.mode
                if fmt not in limits.formats:
                    raise ValueError(f"image format {fmt} is not accepted "
                                     f"(accepted: {', '.join(limits.formats)})")
                if w > limits.max_width or h > limits.max_height or w * h > limits.max_pixels:
                    raise ValueError(f"{w}x{h} pixels: dimensions exceed the limit of "
                                     f"{limits.max_width}x{limits.max_height}")
                if w < limits.min_width or h < limits.min_height:
                    raise ValueError(f"{w}x{h} pixels is below the minimum of "
                                     f"{limits.min_width}x{limits.min_height}")
                img.verify()
            # verify() leaves the image unusable; decode every pixel from a fresh open.
            with Image.open(io.BytesIO(data)) as img:
                img.load()
    except ValueError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"image dimensions exceed the limit ({exc})") from None
    except UnidentifiedImageError:
        raise ValueError("not an image Pillow can identify") from None
    except (OSError, SyntaxError, EOFError) as exc:
        raise ValueError(f"image does not decode: {exc}") from None
    except Exception as exc:  # a decoder bug must not become a 500
        raise ValueError(f"image does not decode: {type(exc).__name__}: {exc}") from None
    return ImageFacts(format=fmt, width=w, height=h, mode=mode)


def _is_junk(parts: list[str]) -> bool:
    return parts[0] in _JUNK_DIRS or parts[-1] in _JUNK_FILES or parts[-1].startswith("._")


def _layout(names: Iterable[str]) -> int:
    """How many leading folders to strip: 1 when every file sits under one common top folder
    (a zipped ``mydata/`` folder), else 0."""
    tops = set()
    depths = set()
    for n in names:
        parts = n.split("/")
        tops.add(parts[0])
        depths.add(len(parts))
    return 1 if len(tops) == 1 and depths == {3} else 0


def validate_archive(path: Path, limits: DatasetLimits, *, for_addition: bool = False,
                     existing_labels: Iterable[str] = ()) -> ValidatedArchive:
    """Validate the zip at ``path`` completely; store nothing. Raises ``dataset_invalid``
    listing every offending entry. With ``for_addition`` the label-count and per-label
    minimums are not applied (images added to an existing dataset)."""
    result = ValidatedArchive(path=path)
    problems = _Problems(limits.max_listed_problems)
    budget = _Budget(limits.max_total_uncompressed_bytes)
    with _open_zip(path, limits) as zf:
        files: list[tuple[zipfile.ZipInfo, str]] = []
        for info in zf.infolist():
            name, lossy = entry_name(info)
            path_problem = _entry_path_problem(name)
            if path_problem:
                problems.add(name, path_problem)
                continue
            kind_problem = _entry_kind_problem(info)
            if kind_problem:
                problems.add(name, kind_problem)
                continue
            if info.is_dir():
                continue
            if _is_junk(name.split("/")):
                result.skipped.append(name)
                continue
            if info.flag_bits & 0x1:
                problems.add(name, "encrypted entry")
                continue
            if lossy:
                raw = info.orig_filename.encode("cp437")
                result.lossy_names.append({
                    "entry": name, "raw": raw.decode("ascii", "backslashreplace"),
                    "problem": "no UTF-8 flag and not valid UTF-8: decoded as cp437, the zip "
                               "default; if the archiver used another code page (e.g. Latin-1)"
                               " this name is wrong; re-create the zip with UTF-8 names"})
                log.warning("zip entry %r: name decoded as cp437 (raw %r)", name, raw)
            files.append((info, name))
        strip = _layout(n for _, n in files)
        seen: set[tuple[str, str]] = set()
        for info, name in files:
            parts = name.split("/")[strip:]
            if len(parts) != 2:
                problems.add(name, "expected <label>/<image file> (one folder per label)")
                continue
            try:
                label = check_name(parts[0], "label")
            except InputError as exc:
                problems.add(name, exc.message)
                continue
            filename = unicodedata.normalize("NFC", parts[1])
            if len(filename.encode()) > 255:
                problems.add(name, "file name longer than 255 bytes")
                continue
            if (label, filename) in seen:
                problems.add(name, "duplicate entry")
                continue
            seen.add((label, filename))
            try:
                data = read_entry(zf, info, limits, budget)
                facts = check_image(data, limits)
            except OverflowError as exc:
                # The whole archive is over budget: stop reading, report what we have.
                problems.add(name, str(exc))
                problems.raise_if_any("the archive is too large when decompressed")
                raise AssertionError("unreachable") from None
            except ValueError as exc:
                problems.add(name, str(exc))
                continue
            result.entries.append(ArchiveEntry(info.filename, label, filename, len(data), facts,
                                               name))
            result.total_bytes += len(data)
    problems.raise_if_any("the dataset archive is invalid")
    if for_addition:
        if not result.entries:
            raise invalid("the archive contains no images", [])
        return result
    counts = result.counts()
    label_problems = []
    if len(counts) < limits.min_labels:
        label_problems.append({
            "entry": "(archive)",
            "problem": f"{len(counts)} label folder(s) with images; at least "
                       f"{limits.min_labels} are needed",
        })
    for label, n in counts.items():
        if n < limits.min_images_per_label:
            label_problems.append({
                "entry": f"{label}/",
                "problem": f"{n} image(s); at least {limits.min_images_per_label} per label",
            })
    if label_problems:
        raise invalid("the dataset does not have enough labels or images per label",
                      label_problems, counts=counts, min_labels=limits.min_labels,
                      min_images_per_label=limits.min_images_per_label)
    return result


def iter_entry_bytes(archive: ValidatedArchive, limits: DatasetLimits
                     ) -> Iterator[tuple[ArchiveEntry, bytes, str]]:
    """Second pass over a validated archive: each entry's bytes and sha256, one at a time."""
    budget = _Budget(limits.max_total_uncompressed_bytes)
    with zipfile.ZipFile(archive.path) as zf:
        for entry in archive.entries:
            data = read_entry(zf, zf.getinfo(entry.zip_name), limits, budget)
            yield entry, data, hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------ download


class _Sink(io.RawIOBase):
    """An unseekable write target whose bytes are drained by the streaming generator."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.pos = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        self.parts.append(bytes(b))
        self.pos += len(b)
        return len(b)

    def tell(self) -> int:
        return self.pos

    def drain(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def stream_zip(files: Iterable[tuple[str, bytes]]) -> Iterator[bytes]:
    """A zip of ``(arcname, data)`` pairs, produced incrementally: only one file is held at
    a time. Images are already compressed, so entries are stored, not deflated."""
    sink = _Sink()
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED) as zf:
        for arcname, data in files:
            info = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))
            if arcname.endswith("/"):  # an empty label folder
                info.external_attr = ((stat.S_IFDIR | 0o755) << 16) | 0x10
            else:
                info.external_attr = (stat.S_IFREG | 0o644) << 16
            zf.writestr(info, data)
            chunk = sink.drain()
            if chunk:
                yield chunk
    tail = sink.drain()
    if tail:
        yield tail
