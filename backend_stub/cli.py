"""``tinyml-backend``: run the backend (``serve``) and use it (datasets, train, compile,
bridges, deploy, observe).

Every parameter is an option with a default; ids are always arguments, never built in.
Plots are written to files (``--out``), never drawn in the terminal.
Exit status: 0 success, 1 a classified failure (code and message; the error JSON with
``--json``), 2 a usage error.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from backend_stub.client import DEFAULT_URL, ENV_URL, BackendClient
from backend_stub.config import ENV_TOKEN
from hal.errors import BugError, HalError, InfraError

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
CONTEXT = {"help_option_names": ["-h", "--help"]}


# ------------------------------------------------------------------------------ plumbing


class Call:
    """The connection and output options of one command run."""

    def __init__(self, url: str, token: str | None, timeout: float, as_json: bool) -> None:
        self.as_json = as_json
        self.client = BackendClient(url, token, timeout)

    def out(self, data: Any, text: str | Callable[[], str] | None = None) -> None:
        if self.as_json or text is None:
            click.echo(json.dumps(data, indent=2, default=str))
        else:
            click.echo(text() if callable(text) else text)


def _fail(err: HalError, as_json: bool) -> NoReturn:
    if as_json:
        click.echo(json.dumps(err.to_dict(), indent=2, default=str))
    else:
        click.echo(f"error {err.code} ({err.error_class.value}): {err.message}", err=True)
        for key, value in err.detail.items():
            if key == "problems":
                for p in value:
                    click.echo(f"  {p.get('entry')}: {p.get('problem')}", err=True)
            elif key == "errors":
                for e in value:
                    click.echo(f"  {e.get('field')}: {e.get('problem')}", err=True)
            else:
                click.echo(f"  {key}: {value}", err=True)
    sys.exit(EXIT_FAILED)


def _token(token: str | None, token_file: str | None) -> str | None:
    if token_file:
        try:
            return Path(token_file).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise click.UsageError(f"cannot read --token-file {token_file}: {exc.strerror}") \
                from None
    return token or os.environ.get(ENV_TOKEN) or None


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Connection options and ``--json``; HalErrors become exit status 1."""

    @click.option("--url", envvar=ENV_URL, default=DEFAULT_URL, show_default=True,
                  help=f"Backend URL (env {ENV_URL}).")
    @click.option("--token", envvar=ENV_TOKEN, help=f"Bearer token (env {ENV_TOKEN}).")
    @click.option("--token-file", type=click.Path(dir_okay=False),
                  help="Read the bearer token from this file.")
    @click.option("--timeout", type=click.FloatRange(0.5, 3600), default=30.0,
                  show_default=True, help="Seconds to wait for each HTTP answer.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
    @functools.wraps(fn)
    def wrapper(url, token, token_file, timeout, as_json, **kwargs):
        call = Call(url, _token(token, token_file), timeout, as_json)
        try:
            code = fn(call, **kwargs)
        except HalError as err:
            _fail(err, as_json)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException,
                SystemExit):
            raise
        except Exception as exc:
            log.debug("unexpected error", exc_info=True)
            _fail(BugError("internal", f"{type(exc).__name__}: {exc}"), as_json)
        finally:
            call.client.close()
        sys.exit(code or EXIT_OK)

    return wrapper


def _table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[("" if v is None else str(v)) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def _job_line(job: dict) -> str:
    err = job.get("error")
    tail = f"  {err['code']}: {err['message']}" if err else ""
    return f"{job['id']}  {job['state']}{tail}"


# ------------------------------------------------------------------------------ the group


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="tinyml-bridge")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """The slim TinyML backend: datasets, training, int8 compiling, deployment via bridges.

    Start it with `tinyml-backend serve`, then use the other commands against it
    (--url / TINYML_BACKEND_URL, --token / TINYML_BACKEND_TOKEN).
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@cli.command(context_settings=CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8090, show_default=True,
              help="Port (0: any free port; the chosen one is printed).")
@click.option("--database", envvar="TINYML_BACKEND_DB_URL", default=None,
              help="SQLAlchemy URL, e.g. postgresql://user@host/db (env TINYML_BACKEND_DB_URL; "
                   "default: a SQLite file in $TINYML_BACKEND_DATA). Give the password with "
                   "--database-password-file, not in the URL.")
@click.option("--database-password-file", type=click.Path(dir_okay=False), default=None,
              help="Read the database password from this file (env "
                   "TINYML_BACKEND_DB_PASSWORD_FILE; or TINYML_BACKEND_DB_PASSWORD).")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="Also answer requests whose Host header names NAME (repeatable; env "
                   "TINYML_BACKEND_ALLOWED_HOSTS, comma-separated; '*' for any). Loopback "
                   "names and --host are always allowed.")
@click.option("--allowed-origin", "allowed_origins", multiple=True, metavar="ORIGIN",
              help="Accept browser requests from this Origin, e.g. https://ui.example "
                   "(repeatable; env TINYML_BACKEND_ALLOWED_ORIGINS). Default: none.")
@click.option("--token", envvar=ENV_TOKEN,
              help=f"Bearer token clients must send (env {ENV_TOKEN}).")
@click.option("--token-file", type=click.Path(dir_okay=False), help="Read the token from a file.")
@click.option("--insecure-no-auth", is_flag=True, help="Serve without a token (loopback tests).")
@click.option("--max-parallel-jobs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Training/compiling worker processes at once.")
@click.option("--threads", type=click.IntRange(1, 256), default=8, show_default=True,
              help="HTTP worker threads.")
@click.option("--max-upload-mb", type=click.IntRange(1, 1 << 20), default=1024,
              show_default=True, help="Largest dataset zip accepted.")
@click.option("--min-images-per-label", type=click.IntRange(1, 10000), default=5,
              show_default=True, help="Fewest images per label a new dataset may have.")
@click.option("--max-waits", type=click.IntRange(1, 4096), default=16, show_default=True,
              help="Concurrent long-polls (?wait=), each on a thread of its own beyond "
                   "--threads; one more gets 503 with Retry-After.")
@click.option("--max-connections", type=click.IntRange(8, 65536), default=256,
              show_default=True, help="Open connections in total; a new one beyond closes "
                                      "the oldest idle connection.")
@click.option("--max-connections-per-client", type=click.IntRange(2, 65536), default=64,
              show_default=True, help="Open connections per client address (same eviction).")
@click.option("--header-timeout", type=click.FloatRange(0.1, 3600), default=10.0,
              show_default=True, help="Seconds a request header may take from its first "
                                      "byte (slow clients are cut off).")
@click.option("--idle-timeout", type=click.FloatRange(0.1, 3600), default=60.0,
              show_default=True, help="Seconds an idle keep-alive connection or a stalled "
                                      "body is kept.")
def serve(host, port, database, database_password_file, allowed_hosts, allowed_origins, token,
          token_file, insecure_no_auth, max_parallel_jobs, threads, max_upload_mb,
          min_images_per_label, max_waits, max_connections, max_connections_per_client,
          header_timeout, idle_timeout) -> None:
    """Run the backend HTTP API (waitress) until interrupted.

    \b
    Environment: TINYML_BACKEND_TOKEN, TINYML_BACKEND_DB_URL, TINYML_BACKEND_DATA,
    TINYML_BACKEND_DB_PASSWORD(_FILE), TINYML_BACKEND_ALLOWED_HOSTS, _ALLOWED_ORIGINS.
    """
    import signal

    from backend_stub.app import create_app
    from backend_stub.app import serve as run_server
    from backend_stub.config import (
        ENV_ALLOWED_HOSTS,
        ENV_ALLOWED_ORIGINS,
        LOOPBACK_HOSTS,
        BackendConfig,
        DatasetLimits,
        database_password,
        default_database_url,
        env_list,
        with_password,
    )

    token = _token(token, token_file)
    if not token and not insecure_no_auth:
        raise click.UsageError(f"a token is required: --token, --token-file or {ENV_TOKEN} "
                               "(or --insecure-no-auth for a loopback test)")
    limits = DatasetLimits(max_upload_bytes=max_upload_mb << 20,
                           min_images_per_label=min_images_per_label)
    hosts = set(LOOPBACK_HOSTS) | set(allowed_hosts or env_list(ENV_ALLOWED_HOSTS))
    if host not in ("0.0.0.0", "::", ""):
        hosts.add(host)  # the address it listens on is a name it answers to
    try:
        url = with_password(database or default_database_url(),
                            database_password(database_password_file))
        config = BackendConfig(database_url=url, token=token,
                               max_parallel_jobs=max_parallel_jobs, limits=limits,
                               allowed_hosts=tuple(sorted(hosts)),
                               allowed_origins=tuple(allowed_origins
                                                     or env_list(ENV_ALLOWED_ORIGINS)),
                               max_waits=max_waits, max_connections=max_connections,
                               max_connections_per_client=max_connections_per_client,
                               header_timeout_s=header_timeout, idle_timeout_s=idle_timeout)
        if logging.getLogger().level > logging.DEBUG:
            logging.getLogger("alembic").setLevel(logging.WARNING)  # its plugin chatter
        logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
        app = create_app(config)
    except HalError as err:
        # One classified line (with the fix), never a traceback.
        fix = err.detail.get("fix")
        click.echo(f"error {err.code} ({err.error_class.value}): {err.message}"
                   + (f" (fix: {fix})" if fix else ""), err=True)
        sys.exit(EXIT_FAILED)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        run_server(app, host, port, threads=threads,
                   on_bound=lambda hp: click.echo(f"listening on http://{hp[0]}:{hp[1]}",
                                                  err=False))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        click.echo(f"error unavailable: cannot listen on {host}:{port}: {exc.strerror}",
                   err=True)
        sys.exit(EXIT_FAILED)


@cli.command(context_settings=CONTEXT)
@click.option("--wait", type=click.FloatRange(0, 600), default=0.0, show_default=True,
              help="Keep asking for up to this many seconds until the backend answers "
                   "(for scripts that just started it).")
@command
def health(call: Call, wait: float) -> int:
    """Whether the backend answers: version, database, running jobs (exit 1 if not)."""
    import time

    end = time.monotonic() + wait
    while True:
        try:
            body = call.client.json("GET", "/health")
            break
        except HalError as err:
            if err.code not in ("unavailable", "timeout") or time.monotonic() >= end:
                raise
            time.sleep(0.2)
    call.out(body, f"backend {body['status']}: version {body['version']}, database "
                   f"{body['database']}, {body['jobs_running']} job(s) running")
    return EXIT_OK


@cli.command(context_settings=CONTEXT)
@click.option("--write", is_flag=True, help="Write backend_stub/openapi.json.")
def openapi(write: bool) -> None:
    """Print (or --write) the OpenAPI document generated from the code."""
    from backend_stub.web import OPENAPI_FILE, openapi_text

    text = openapi_text()
    if write:
        OPENAPI_FILE.write_text(text, encoding="utf-8")
        click.echo(f"wrote {OPENAPI_FILE}")
    else:
        click.echo(text, nl=False)


# ------------------------------------------------------------------------------ datasets


@cli.group(context_settings=CONTEXT)
def datasets() -> None:
    """Upload, download, list and edit image datasets (one folder per label)."""


def _dataset_text(d: dict) -> str:
    labels = ", ".join(f"{k}={v}" for k, v in d["labels"].items())
    text = f"dataset {d['id']} {d['name']!r}: {d['images']} images ({labels})"
    for w in d.get("lossy_names") or ():
        text += f"\nwarning: {w['entry']!r} (raw bytes {w['raw']}): {w['problem']}"
    return text


@datasets.command("example", context_settings=CONTEXT)
@click.argument("zip_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--per-label", type=click.IntRange(5, 1000), default=20, show_default=True,
              help="Images per label.")
@click.option("--size", type=click.IntRange(8, 512), default=48, show_default=True,
              help="Width and height of each image, in pixels.")
@click.option("--rgb", is_flag=True, help="RGB images instead of grayscale.")
def datasets_example(zip_path: Path, per_label: int, size: int, rgb: bool) -> None:
    """Write the example dataset: a zip with one folder per label (blank, square, stripes)
    of generated PNG images, ready for `datasets upload`. Needs no server.

    \b
    Example:
      tinyml-backend datasets example shapes.zip && tinyml-backend datasets upload shapes.zip
    """
    import zipfile

    from backend_stub.synthetic import shapes_entries

    entries = shapes_entries(per_label=per_label, size=size, mode="RGB" if rgb else "L")
    tmp = zip_path.with_name(zip_path.name + ".part")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in entries.items():
                zf.writestr(name, data)
        tmp.replace(zip_path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        _fail(InfraError("unavailable", f"cannot write {zip_path}: {exc.strerror}",
                         path=str(zip_path)), False)
    labels = sorted({n.split("/")[0] for n in entries})
    click.echo(f"wrote {zip_path}: {len(entries)} {size}x{size} images, labels "
               f"{', '.join(labels)}")


@datasets.command("list", context_settings=CONTEXT)
@command
def datasets_list(call: Call) -> None:
    """List datasets with per-label image counts."""
    body = call.client.json("GET", "/datasets")
    call.out(body, lambda: _table(
        [[d["id"], d["name"], d["images"], ", ".join(f"{k}={v}" for k, v in d["labels"].items())]
         for d in body["datasets"]], ["ID", "NAME", "IMAGES", "LABELS"]))


@datasets.command("upload", context_settings=CONTEXT)
@click.argument("zip_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Dataset name (default: the zip's file name without .zip).")
@command
def datasets_upload(call: Call, zip_path: Path, name: str | None) -> None:
    """Upload a zip with one folder per label; it is validated before anything is stored."""
    body = call.client.upload_file("/datasets", zip_path, {"name": name or zip_path.stem})
    call.out(body, lambda: _dataset_text(body))


@datasets.command("show", context_settings=CONTEXT)
@click.argument("dataset_id", type=int)
@command
def datasets_show(call: Call, dataset_id: int) -> None:
    """One dataset with per-label counts."""
    body = call.client.json("GET", f"/datasets/{dataset_id}")
    call.out(body, lambda: _dataset_text(body))


@datasets.command("download", context_settings=CONTEXT)
@click.argument("dataset_id", type=int)
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the zip.")
@command
def datasets_download(call: Call, dataset_id: int, out: Path) -> None:
    """Download a dataset as a zip with one folder per label."""
    tmp = out.with_name(out.name + ".part")
    with tmp.open("wb") as f:
        n = call.client.download(f"/datasets/{dataset_id}/archive", f)
    tmp.replace(out)
    call.out({"path": str(out), "bytes": n}, f"wrote {out} ({n} bytes)")


@datasets.command("delete", context_settings=CONTEXT)
@click.argument("dataset_id", type=int)
@command
def datasets_delete(call: Call, dataset_id: int) -> None:
    """Delete a dataset and its images (trained models are kept)."""
    call.client.json("DELETE", f"/datasets/{dataset_id}")
    call.out({"deleted": dataset_id}, f"dataset {dataset_id} deleted")


@datasets.command("add-images", context_settings=CONTEXT)
@click.argument("dataset_id", type=int)
@click.argument("zip_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@command
def datasets_add_images(call: Call, dataset_id: int, zip_path: Path) -> None:
    """Add the images of a zip (one folder per label) to a dataset."""
    body = call.client.upload_file(f"/datasets/{dataset_id}/images", zip_path)
    call.out(body, lambda: f"{body['added']} images added; " + _dataset_text(body))


@datasets.command("add-image", context_settings=CONTEXT)
@click.argument("dataset_id", type=int)
@click.argument("label")
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@command
def datasets_add_image(call: Call, dataset_id: int, label: str, image: Path) -> None:
    """Add one image file under a label."""
    from urllib.parse import quote

    body = call.client.upload_file(f"/datasets/{dataset_id}/labels/{quote(label, safe='')}/images",
                                   image, {"filename": image.name}, "application/octet-stream")
    call.out(body, f"image {body['id']} {label}/{body['filename']} added")


@datasets.command("images", context_settings=CONTEXT)
@click.argument("dataset_id", type=int)
@click.option("--label", help="Only this label.")
@command
def datasets_images(call: Call, dataset_id: int, label: str | None) -> None:
    """List a dataset's images."""
    body = call.client.json("GET", f"/datasets/{dataset_id}/images",
                            params={"label": label} if label else None)
    call.out(body, lambda: _table([[i["id"], i["label"], i["filename"],
                                    f"{i['width']}x{i['height']}", i["size_bytes"]]
                                   for i in body["images"]],
                                  ["ID", "LABEL", "FILE", "SIZE", "BYTES"]))


@datasets.command("remove-image", context_settings=CONTEXT)
@click.argument("dataset_id", type=int)
@click.argument("image_id", type=int)
@command
def datasets_remove_image(call: Call, dataset_id: int, image_id: int) -> None:
    """Remove one image."""
    call.client.json("DELETE", f"/datasets/{dataset_id}/images/{image_id}")
    call.out({"deleted": image_id}, f"image {image_id} removed")


@datasets.command("add-label", context_settings=CONTEXT)
@click.argument("dataset_id", type=int)
@click.argument("label")
@command
def datasets_add_label(call: Call, dataset_id: int, label: str) -> None:
    """Add an empty label."""
    body = call.client.json("POST", f"/datasets/{dataset_id}/labels", json={"name": label})
    call.out(body, lambda: _dataset_text(body))


@datasets.command("rename-label", context_settings=CONTEXT)
@click.argument("dataset_id", type=int)
@click.argument("label")
@click.argument("new_name")
@command
def datasets_rename_label(call: Call, dataset_id: int, label: str, new_name: str) -> None:
    """Rename a label."""
    from urllib.parse import quote

    body = call.client.json("PATCH", f"/datasets/{dataset_id}/labels/{quote(label, safe='')}",
                            json={"name": new_name})
    call.out(body, lambda: _dataset_text(body))


@datasets.command("remove-label", context_settings=CONTEXT)
@click.argument("dataset_id", type=int)
@click.argument("label")
@command
def datasets_remove_label(call: Call, dataset_id: int, label: str) -> None:
    """Remove a label and its images."""
    from urllib.parse import quote

    body = call.client.json("DELETE", f"/datasets/{dataset_id}/labels/{quote(label, safe='')}")
    call.out(body, lambda: _dataset_text(body))


# ------------------------------------------------------------------------------ training


def _progress_text(t: dict) -> str:
    p = t["progress"]
    last = p.get("last") or {}

    def f(key: str) -> str:
        v = last.get(key)
        return "-" if v is None else f"{v:.4f}"

    return (f"training {t['id']} {t['state']}: epoch {p['epoch']}/{p['epochs']}  "
            f"loss {f('loss')}  accuracy {f('accuracy')}  val_loss {f('val_loss')}  "
            f"val_accuracy {f('val_accuracy')}")


def _follow(call: Call, path: str, text: Callable[[dict], str]) -> dict:
    last_text = None
    body: dict = {}
    for body in call.client.follow(path, poll_s=1.0):
        line = text(body)
        if line != last_text and not call.as_json:
            click.echo(line)
            last_text = line
    return body


def _ended(call: Call, body: dict, what: str) -> int:
    if call.as_json:
        call.out(body)
    if body["state"] != "succeeded":
        err = body.get("error") or {}
        if not call.as_json:
            click.echo(f"{what} {body['id']} {body['state']}: {err.get('code')}: "
                       f"{err.get('message')}", err=True)
        return EXIT_FAILED
    return EXIT_OK


@cli.command(context_settings=CONTEXT)
@click.argument("dataset_id", type=int)
@click.option("--epochs", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--image-width", type=click.IntRange(8, 512), default=48, show_default=True)
@click.option("--image-height", type=click.IntRange(8, 512), default=48, show_default=True)
@click.option("--color-mode", type=click.Choice(["grayscale", "rgb"]), default="grayscale",
              show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True)
@click.option("--learning-rate", type=click.FloatRange(0, 1, min_open=True), default=0.001,
              show_default=True)
@click.option("--validation-split", type=click.FloatRange(0, 0.5, min_open=True), default=0.2,
              show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True)
@click.option("--conv-filters", default="8,16", show_default=True,
              help="Filters of each Conv2D+MaxPool block, comma-separated.")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.25,
              show_default=True)
@click.option("--compile-for", "compile_board", metavar="BOARD", default=None,
              help="Also compile to int8 for BOARD right after training, in the same worker.")
@click.option("--follow/--no-follow", default=False, show_default=True,
              help="Show progress until the training ends (exit 1 unless it succeeded).")
@command
def train(call: Call, dataset_id: int, epochs, image_width, image_height, color_mode,
          batch_size, learning_rate, validation_split, seed, conv_filters, dropout,
          compile_board, follow) -> int:
    """Train the default small CNN on a dataset (in a worker process)."""
    try:
        filters = [int(x) for x in conv_filters.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter("comma-separated integers, e.g. 8,16",
                                 param_hint="--conv-filters") from None
    body = call.client.json("POST", "/trainings", json={
        "dataset_id": dataset_id, "epochs": epochs, "image_width": image_width,
        "image_height": image_height, "color_mode": color_mode, "batch_size": batch_size,
        "learning_rate": learning_rate, "validation_split": validation_split, "seed": seed,
        "conv_filters": filters, "dropout": dropout, "compile_board": compile_board})
    comp_link = body["links"].get("compilation")
    if not follow:
        then = f" (then {comp_link.strip('/').replace('s/', ' ')})" if comp_link else ""
        call.out(body, f"training {body['id']} {body['state']}{then}")
        return EXIT_OK
    if not call.as_json:
        click.echo(f"training {body['id']} queued")
    code = _ended(call, _follow(call, f"/trainings/{body['id']}", _progress_text), "training")
    if code != EXIT_OK or not comp_link:
        return code
    end = _follow(call, comp_link, lambda c: f"compilation {c['id']} {c['state']}")
    if not call.as_json:
        click.echo(_compilation_text(end))
    return _ended(call, end, "compilation")


@cli.group(context_settings=CONTEXT)
def trainings() -> None:
    """Inspect trainings: progress, metrics, curves (PNG), cancel."""


@trainings.command("list", context_settings=CONTEXT)
@command
def trainings_list(call: Call) -> None:
    """List trainings, newest first."""
    body = call.client.json("GET", "/trainings")
    call.out(body, lambda: _table(
        [[t["id"], t["dataset_id"], t["state"], f"{t['progress']['epoch']}/"
          f"{t['progress']['epochs']}", (t.get("error") or {}).get("code")]
         for t in body["trainings"]], ["ID", "DATASET", "STATE", "EPOCH", "ERROR"]))


@trainings.command("show", context_settings=CONTEXT)
@click.argument("training_id", type=int)
@click.option("--follow/--no-follow", default=False, help="Show progress until it ends.")
@command
def trainings_show(call: Call, training_id: int, follow: bool) -> int:
    """A training's state and progress."""
    if follow:
        return _ended(call, _follow(call, f"/trainings/{training_id}", _progress_text),
                      "training")
    body = call.client.json("GET", f"/trainings/{training_id}")
    call.out(body, lambda: _progress_text(body))
    return EXIT_OK


@trainings.command("metrics", context_settings=CONTEXT)
@click.argument("training_id", type=int)
@command
def trainings_metrics(call: Call, training_id: int) -> None:
    """Per-epoch loss and accuracy, and the final validation figures."""
    body = call.client.json("GET", f"/trainings/{training_id}/metrics")

    def text() -> str:
        t = _table([[e["epoch"], e["loss"], e["accuracy"], e["val_loss"], e["val_accuracy"]]
                    for e in body["epochs"]],
                   ["EPOCH", "LOSS", "ACCURACY", "VAL_LOSS", "VAL_ACCURACY"])
        return t + (f"\nfinal: {json.dumps(body['final'])}" if body.get("final") else "")

    call.out(body, text)


@trainings.command("curves", context_settings=CONTEXT)
@click.argument("training_id", type=int)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="PNG file to write.")
@command
def trainings_curves(call: Call, training_id: int, out: Path) -> None:
    """Save the loss/accuracy curves as a PNG file."""
    with out.open("wb") as f:
        n = call.client.download(f"/trainings/{training_id}/curves.png", f)
    call.out({"path": str(out), "bytes": n}, f"wrote {out} ({n} bytes)")


def _per_label_text(body: dict) -> str:
    """Each model's per-label table and confusion matrix (rows true, columns predicted)."""
    from backend_stub.metrics import metrics_table

    parts = []
    for model in ("float", "int8"):
        m = body.get(model)
        if not m:
            continue
        acc = "-" if m["accuracy"] is None else f"{m['accuracy']:.4f}"
        parts.append(f"{model}: accuracy {acc} on {m['samples']} validation images\n"
                     + _table(metrics_table(m), ["LABEL", "IMAGES", "PREDICTED", "PRECISION",
                                                 "RECALL"]))
        names = body["labels"]
        parts.append("confusion (rows: true, columns: predicted)\n" + _table(
            [[name, *row] for name, row in zip(names, m["confusion"], strict=True)],
            ["TRUE\\PRED", *names]))
    return "\n\n".join(parts)


def _per_label(call: Call, base: str, out: Path | None, model: str | None = None) -> None:
    body = call.client.json("GET", f"{base}/per-label")
    if out is not None:
        with out.open("wb") as f:
            n = call.client.download(f"{base}/confusion.png"
                                     + (f"?model={model}" if model else ""), f)
        body = {**body, "png": {"path": str(out), "bytes": n}}
    call.out(body, lambda: _per_label_text(body) + (
        f"\n\nwrote {out} ({body['png']['bytes']} bytes)" if out is not None else ""))


@trainings.command("per-label", context_settings=CONTEXT)
@click.argument("training_id", type=int)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the confusion matrix as a PNG file.")
@command
def trainings_per_label(call: Call, training_id: int, out: Path | None) -> None:
    """Confusion matrix and per-label precision and recall of the float model on the
    validation split.

    \b
    Example: tinyml-backend trainings per-label 1 --out confusion.png
    """
    _per_label(call, f"/trainings/{training_id}", out)


@trainings.command("cancel", context_settings=CONTEXT)
@click.argument("training_id", type=int)
@command
def trainings_cancel(call: Call, training_id: int) -> None:
    """Cancel a queued or running training (its worker process is killed)."""
    body = call.client.json("POST", f"/trainings/{training_id}/cancel")
    call.out(body, f"training {training_id}: cancel requested ({body['state']})")


# ------------------------------------------------------------------------------ compiling


def _compilation_text(c: dict) -> str:
    rep = c.get("report") or {}
    acc = rep.get("accuracy") or {}
    fit = rep.get("fit") or {}
    line = f"compilation {c['id']} {c['state']} for {c['board']}"
    if c.get("size_bytes"):
        line += f": {c['size_bytes']} bytes, sha256 {c['sha256'][:16]}"
    if acc:
        line += (f"\n  accuracy on {acc['validation_samples']} validation images: float "
                 f"{acc['float']:.4f}, int8 {acc['int8']:.4f} (agreement {acc['agreement']:.4f})")
    if fit:
        line += (f"\n  fit {'ok' if fit['fits'] else 'NO'}: flash {fit['flash_needed_bytes']}/"
                 f"{fit['flash_limit_bytes']} B, RAM {fit['ram_needed_bytes']}/"
                 f"{fit['ram_limit_bytes']} B (arena {fit['arena_bytes']} B)")
    return line


@cli.command("compile", context_settings=CONTEXT)
@click.argument("training_id", type=int)
@click.option("--board", default="nano33ble", show_default=True,
              help="Board profile to fit-check against.")
@click.option("--representative-samples", type=click.IntRange(1, None), default=None,
              help="Cap on representative samples (default: every training sample).")
@click.option("--follow/--no-follow", default=True, show_default=True,
              help="Wait for the end (exit 1 unless it compiled and fits).")
@command
def compile_cmd(call: Call, training_id: int, board: str, representative_samples,
                follow: bool) -> int:
    """Convert a trained model to full-integer int8 and fit-check it for a board."""
    body = call.client.json("POST", "/compilations", json={
        "training_id": training_id, "board": board,
        "representative_samples": representative_samples})
    if not follow:
        call.out(body, f"compilation {body['id']} {body['state']}")
        return EXIT_OK
    end = _follow(call, f"/compilations/{body['id']}",
                  lambda c: f"compilation {c['id']} {c['state']}")
    if not call.as_json:
        click.echo(_compilation_text(end))
    return _ended(call, end, "compilation")


@cli.group(context_settings=CONTEXT)
def compilations() -> None:
    """Inspect compilations and download artifacts."""


@compilations.command("list", context_settings=CONTEXT)
@command
def compilations_list(call: Call) -> None:
    """List compilations, newest first."""
    body = call.client.json("GET", "/compilations")
    call.out(body, lambda: _table(
        [[c["id"], c["training_id"], c["board"], c["state"], c["size_bytes"],
          ((c.get("report") or {}).get("accuracy") or {}).get("int8"),
          (c.get("error") or {}).get("code")] for c in body["compilations"]],
        ["ID", "TRAINING", "BOARD", "STATE", "BYTES", "INT8_ACC", "ERROR"]))


@compilations.command("show", context_settings=CONTEXT)
@click.argument("compilation_id", type=int)
@command
def compilations_show(call: Call, compilation_id: int) -> None:
    """A compilation's report: size, fit check, int8 vs float accuracy."""
    body = call.client.json("GET", f"/compilations/{compilation_id}")
    call.out(body, lambda: _compilation_text(body))


@compilations.command("download", context_settings=CONTEXT)
@click.argument("compilation_id", type=int)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help=".tflite file to write.")
@command
def compilations_download(call: Call, compilation_id: int, out: Path) -> None:
    """Save the int8 .tflite artifact (only one that compiled and fits)."""
    with out.open("wb") as f:
        n = call.client.download(f"/compilations/{compilation_id}/model.tflite", f)
    call.out({"path": str(out), "bytes": n}, f"wrote {out} ({n} bytes)")


@compilations.command("per-label", context_settings=CONTEXT)
@click.argument("compilation_id", type=int)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a confusion matrix as a PNG file.")
@click.option("--model", type=click.Choice(["int8", "float"]), default="int8",
              show_default=True, help="Which model's confusion matrix --out draws.")
@command
def compilations_per_label(call: Call, compilation_id: int, out: Path | None,
                           model: str) -> None:
    """Confusion matrices and per-label precision and recall of the float and the int8
    model on the validation split.

    \b
    Example: tinyml-backend compilations per-label 1 --out int8.png
    """
    _per_label(call, f"/compilations/{compilation_id}", out, model)


# ------------------------------------------------------------------------------ bridges


@cli.group(context_settings=CONTEXT)
def bridges() -> None:
    """Register bridges and look at their devices."""


@bridges.command("add", context_settings=CONTEXT)
@click.argument("name")
@click.argument("bridge_url")
@click.option("--bridge-token", help="The bridge's bearer token (stored, never shown).")
@click.option("--bridge-token-file", type=click.Path(dir_okay=False),
              help="Read the bridge's token from a file.")
@command
def bridges_add(call: Call, name: str, bridge_url: str, bridge_token, bridge_token_file) -> None:
    """Register a bridge by URL (http(s)://host[:port]) and its token."""
    if bridge_token_file:
        bridge_token = Path(bridge_token_file).read_text(encoding="utf-8").strip()
    body = call.client.json("POST", "/bridges", json={"name": name, "url": bridge_url,
                                                      "token": bridge_token})
    call.out(body, f"bridge {body['id']} {body['name']} at {body['url']}")


@bridges.command("list", context_settings=CONTEXT)
@command
def bridges_list(call: Call) -> None:
    """List bridges (tokens are never shown)."""
    body = call.client.json("GET", "/bridges")
    call.out(body, lambda: _table([[b["id"], b["name"], b["url"], "yes" if b["has_token"]
                                    else "no"] for b in body["bridges"]],
                                  ["ID", "NAME", "URL", "TOKEN"]))


@bridges.command("remove", context_settings=CONTEXT)
@click.argument("bridge_id", type=int)
@command
def bridges_remove(call: Call, bridge_id: int) -> None:
    """Forget a bridge."""
    call.client.json("DELETE", f"/bridges/{bridge_id}")
    call.out({"deleted": bridge_id}, f"bridge {bridge_id} removed")


@bridges.command("health", context_settings=CONTEXT)
@click.argument("bridge_id", type=int)
@command
def bridges_health(call: Call, bridge_id: int) -> int:
    """Health check through the bridge's /health (exit 1 if unreachable)."""
    body = call.client.json("GET", f"/bridges/{bridge_id}/health")
    if body["reachable"]:
        h = body["health"]
        call.out(body, f"bridge {bridge_id} ok: version {h.get('version')}, "
                       f"{body['latency_ms']} ms")
        return EXIT_OK
    err = body["error"]
    call.out(body, f"bridge {bridge_id} unreachable: {err['code']}: {err['message']}")
    return EXIT_FAILED


@bridges.command("devices", context_settings=CONTEXT)
@click.argument("bridge_id", type=int)
@command
def bridges_devices(call: Call, bridge_id: int) -> None:
    """The bridge's devices."""
    body = call.client.json("GET", f"/bridges/{bridge_id}/devices")
    call.out(body, lambda: _table(
        [[d.get("id"), d.get("board"), d.get("state"), "yes" if d.get("connected") else "no",
          ((d.get("model") or {}).get("sha256") or "")[:16]] for d in body["devices"]],
        ["ID", "BOARD", "STATE", "CONNECTED", "MODEL"]))


# ------------------------------------------------------------------------------ deploy


@cli.command(context_settings=CONTEXT)
@click.argument("compilation_id", type=int)
@click.option("--bridge", "bridge_id", type=int, required=True, help="Bridge id.")
@click.option("--device", "device_id", required=True, help="Device id on that bridge.")
@click.option("--input-vectors", type=click.IntRange(0, 64), default=4, show_default=True,
              help="Held-out images sent along as the device's inputs, drawn evenly across "
                   "labels; the board's answers are checked against the host int8 model.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=0.95, show_default=True,
              help="Label match rate with the host int8 model the deployment needs.")
@click.option("--agreement-timeout", type=click.FloatRange(0, 3600, min_open=True),
              default=120.0, show_default=True,
              help="Seconds after the verified boot for the board to answer every vector.")
@click.option("--arena-bytes", type=click.IntRange(1024, None), default=None,
              help="Override the tensor arena size.")
@click.option("--boot-deadline", type=click.FloatRange(0, 600, min_open=True), default=20.0,
              show_default=True, help="Seconds the device has to boot the model.")
@click.option("--follow/--no-follow", default=True, show_default=True,
              help="Wait until the bridge job ends (exit 1 unless verified).")
@command
def deploy(call: Call, compilation_id: int, bridge_id: int, device_id: str, input_vectors,
           min_agreement, agreement_timeout, arena_bytes, boot_deadline, follow) -> int:
    """Deploy an int8 artifact to a device through its bridge, and follow the job."""
    body = call.client.json("POST", "/deployments", json={
        "compilation_id": compilation_id, "bridge_id": bridge_id, "device_id": device_id,
        "input_vectors": input_vectors, "arena_bytes": arena_bytes,
        "boot_deadline_s": boot_deadline, "min_agreement": min_agreement,
        "agreement_timeout_s": agreement_timeout})
    if not follow:
        call.out(body, f"deployment {body['id']} {body['state']}")
        return EXIT_OK

    def text(d: dict) -> str:
        job = d.get("bridge_job") or {}
        steps = [s["name"] for s in job.get("steps", []) if s.get("status") == "done"]
        agr = d.get("agreement") or {}
        tail = (f"; agreement: {agr.get('answered')}/{agr.get('vectors')} vectors answered"
                if agr.get("state") == "collecting" else "")
        return (f"deployment {d['id']} {d['state']}: bridge job {d.get('bridge_job_id')} "
                f"{job.get('state', '-')} ({', '.join(steps) or 'no step done'}){tail}")

    end = _follow(call, f"/deployments/{body['id']}", text)
    if not call.as_json:
        boot = ((end.get("bridge_job") or {}).get("report") or {}).get("boot") or {}
        if boot and (end["state"] == "succeeded" or end.get("agreement")):
            click.echo(f"verified boot on {device_id}: {json.dumps(boot)}")
        if end.get("agreement"):
            click.echo(_agreement_text(end["agreement"]))
    return _ended(call, end, "deployment")


@cli.group(context_settings=CONTEXT)
def deployments() -> None:
    """List, show and cancel deployments (one artifact to one device)."""


def _deployment_text(d: dict) -> str:
    job = d.get("bridge_job") or {}
    err = d.get("error") or {}
    line = (f"deployment {d['id']} {d['state']}: compilation {d['compilation_id']} -> bridge "
            f"{d['bridge_id']} device {d['device_id']}, bridge job {d.get('bridge_job_id')} "
            f"{job.get('state', '-')}")
    if d["params"].get("rollout_id"):
        line += f" (rollout {d['params']['rollout_id']})"
    steps = [f"{st['name']} {st.get('status')}" for st in job.get("steps", [])]
    if steps:
        line += "\n  steps: " + ", ".join(steps)
    if d.get("agreement"):
        line += "\n  " + _agreement_text(d["agreement"])
    if err:
        line += f"\n  error {err.get('code')}: {err.get('message')}"
    return line


@deployments.command("list", context_settings=CONTEXT)
@command
def deployments_list(call: Call) -> None:
    """List deployments, newest first."""
    body = call.client.json("GET", "/deployments")
    call.out(body, lambda: _table(
        [[d["id"], d["compilation_id"], d["bridge_id"], d["device_id"], d["state"],
          d["params"].get("rollout_id"), d.get("bridge_job_id"),
          (d.get("error") or {}).get("code")] for d in body["deployments"]],
        ["ID", "COMPILATION", "BRIDGE", "DEVICE", "STATE", "ROLLOUT", "BRIDGE_JOB", "ERROR"]))


@deployments.command("show", context_settings=CONTEXT)
@click.argument("deployment_id", type=int)
@click.option("--follow/--no-follow", default=False, help="Follow it until it ends.")
@command
def deployments_show(call: Call, deployment_id: int, follow: bool) -> int:
    """A deployment, its bridge job's steps and its error (exit 1 if it did not succeed
    with --follow)."""
    if follow:
        return _ended(call, _follow(call, f"/deployments/{deployment_id}", _deployment_text),
                      "deployment")
    body = call.client.json("GET", f"/deployments/{deployment_id}")
    call.out(body, lambda: _deployment_text(body))
    return EXIT_OK


@deployments.command("cancel", context_settings=CONTEXT)
@click.argument("deployment_id", type=int)
@command
def deployments_cancel(call: Call, deployment_id: int) -> None:
    """Cancel a deployment (its bridge job is cancelled)."""
    body = call.client.json("POST", f"/deployments/{deployment_id}/cancel")
    call.out(body, f"deployment {deployment_id}: cancel requested ({body['state']})")


# ------------------------------------------------------------------------------ rollouts


def _target(value: str) -> dict:
    bridge, sep, device = value.partition(":")
    if not sep or not bridge.isdigit() or not device:
        raise click.BadParameter(f"{value!r}: give BRIDGE_ID:DEVICE_ID, e.g. 1:nano-1",
                                 param_hint="--target")
    return {"bridge_id": int(bridge), "device_id": device}


def _rollout_text(r: dict) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(r.get("counts", {}).items()))
    line = f"rollout {r['id']} {r['state']}: {r['devices']} device(s) ({counts or '-'})"
    if r.get("targets"):
        line += "\n" + _table(
            [[t["position"], t["wave"], t["bridge_id"], t["device_id"], t["state"],
              t.get("deployment_id"), t.get("bridge_job_id"), t.get("note")]
             for t in r["targets"]],
            ["#", "WAVE", "BRIDGE", "DEVICE", "STATE", "DEPLOYMENT", "BRIDGE_JOB", "NOTE"])
    err = r.get("error")
    if err:
        line += f"\nerror {err.get('code')}: {err.get('message')}"
    return line


@cli.command(context_settings=CONTEXT)
@click.argument("compilation_id", type=int)
@click.option("--target", "targets", multiple=True, metavar="BRIDGE_ID:DEVICE_ID",
              help="A device, in rollout order (repeat the option).")
@click.option("--bridge-devices", "bridge_all", type=int, multiple=True, metavar="BRIDGE_ID",
              help="Every device of this bridge, after the --target devices (repeatable).")
@click.option("--canary", type=click.IntRange(0, 1000), default=1, show_default=True,
              help="Devices in the canary wave (deployed and verified first).")
@click.option("--wave-size", type=click.IntRange(1, 1000), default=4, show_default=True,
              help="Devices per later wave.")
@click.option("--max-parallel", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Deployments at once within a wave.")
@click.option("--input-vectors", type=click.IntRange(0, 64), default=4, show_default=True,
              help="Validation images sent along as each device's inputs.")
@click.option("--arena-bytes", type=click.IntRange(1024, None), default=None,
              help="Override the tensor arena size.")
@click.option("--boot-deadline", type=click.FloatRange(0, 600, min_open=True), default=20.0,
              show_default=True, help="Seconds each device has to boot the model.")
@click.option("--follow/--no-follow", default=True, show_default=True,
              help="Show progress until the rollout ends (exit 1 unless every device "
                   "verified).")
@command
def rollout(call: Call, compilation_id: int, targets, bridge_all, canary, wave_size,
            max_parallel, input_vectors, arena_bytes, boot_deadline, follow) -> int:
    """Deploy an artifact to many devices across bridges: a canary first, then waves; the
    first failure halts it (devices not reached keep their model).

    \b
    Example:
      tinyml-backend rollout 3 --target 1:nano-1 --bridge-devices 2 --wave-size 8
    """
    body_targets = [_target(t) for t in targets]
    for bid in bridge_all:
        devices = call.client.json("GET", f"/bridges/{bid}/devices")["devices"]
        body_targets += [{"bridge_id": bid, "device_id": d["id"]} for d in devices
                         if {"bridge_id": bid, "device_id": d["id"]} not in body_targets]
    if not body_targets:
        raise click.UsageError("give at least one --target or --bridge-devices")
    body = call.client.json("POST", "/rollouts", json={
        "compilation_id": compilation_id, "targets": body_targets, "canary": canary,
        "wave_size": wave_size, "max_parallel": max_parallel, "input_vectors": input_vectors,
        "arena_bytes": arena_bytes, "boot_deadline_s": boot_deadline})
    if not follow:
        call.out(body, lambda: _rollout_text(body))
        return EXIT_OK
    end = _follow(call, f"/rollouts/{body['id']}", lambda r: (
        f"rollout {r['id']} {r['state']}: " + ", ".join(
            f"{k} {v}" for k, v in sorted(r["counts"].items()))))
    if not call.as_json:
        click.echo(_rollout_text(end))
    return _ended(call, end, "rollout")


@cli.group(context_settings=CONTEXT)
def rollouts() -> None:
    """List, show (the per-device table) and cancel rollouts."""


@rollouts.command("list", context_settings=CONTEXT)
@command
def rollouts_list(call: Call) -> None:
    """List rollouts, newest first."""
    body = call.client.json("GET", "/rollouts")
    call.out(body, lambda: _table(
        [[r["id"], r["compilation_id"], r["state"], r["devices"],
          ", ".join(f"{k} {v}" for k, v in sorted(r["counts"].items())),
          (r.get("error") or {}).get("code")] for r in body["rollouts"]],
        ["ID", "COMPILATION", "STATE", "DEVICES", "COUNTS", "ERROR"]))


@rollouts.command("show", context_settings=CONTEXT)
@click.argument("rollout_id", type=int)
@click.option("--follow/--no-follow", default=False, help="Follow it until it ends.")
@command
def rollouts_show(call: Call, rollout_id: int, follow: bool) -> int:
    """A rollout and its per-device table."""
    if follow:
        end = _follow(call, f"/rollouts/{rollout_id}", lambda r: (
            f"rollout {r['id']} {r['state']}: " + ", ".join(
                f"{k} {v}" for k, v in sorted(r["counts"].items()))))
        if not call.as_json:
            click.echo(_rollout_text(end))
        return _ended(call, end, "rollout")
    body = call.client.json("GET", f"/rollouts/{rollout_id}")
    call.out(body, lambda: _rollout_text(body))
    return EXIT_OK


@rollouts.command("cancel", context_settings=CONTEXT)
@click.argument("rollout_id", type=int)
@command
def rollouts_cancel(call: Call, rollout_id: int) -> None:
    """Cancel a rollout: nothing new starts; deployments under way are cancelled."""
    body = call.client.json("POST", f"/rollouts/{rollout_id}/cancel")
    call.out(body, f"rollout {rollout_id}: cancel requested ({body['state']})")


def _agreement_text(a: dict) -> str:
    """The on-device agreement summary of a deployment."""
    if a.get("state") in ("unavailable", "collecting"):
        return f"on-device agreement: {a['state']}" + (f" ({a['reason']})"
                                                       if a.get("reason") else "")

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.2%}"

    return (f"on-device agreement {a['state']}: {a['answered']}/{a['vectors']} vectors answered;"
            f" exact int8 outputs {pct(a['exact_output_match_rate'])}, labels "
            f"{pct(a['label_match_rate'])} (minimum {pct(a['min_agreement'])}); accuracy on "
            f"the board {pct(a['device_accuracy'])}, on the host {pct(a['host_accuracy'])}")


@cli.command(context_settings=CONTEXT)
@click.argument("bridge_id", type=int)
@click.argument("device_id")
@click.option("--lines", type=click.IntRange(1, 1000), default=20, show_default=True)
@command
def observe(call: Call, bridge_id: int, device_id: str, lines: int) -> None:
    """Recent lines of a device (boot, inference, status, errors), through its bridge."""
    from urllib.parse import quote

    body = call.client.json("GET", f"/bridges/{bridge_id}/devices/{quote(device_id, safe='')}"
                                   "/observe", params={"lines": lines})

    def text() -> str:
        out = []
        for e in body["lines"]:
            line = e.get("line") or {}
            kind = line.get("kind", "?")
            rest = {k: v for k, v in line.items() if k not in ("kind", "raw")}
            out.append(f"{e.get('at')} #{e.get('seq')} {kind} {json.dumps(rest)}")
        return "\n".join(out) or "(no lines yet)"

    call.out(body, text)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="tinyml-backend")
