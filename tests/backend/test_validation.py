"""Early validation of training parameters (issue 13, item 3): an architecture that cannot
build for the image size, a model too large to train and data too large to hold are refused
with the reason before any training row or worker exists."""

from __future__ import annotations

import pytest

from backend_stub.architecture import MAX_PARAMETERS, max_blocks, shapes, training_problems
from tests.backend.test_jobs import _dataset

DEFAULTS = {"image_width": 48, "image_height": 48, "color_mode": "grayscale",
            "conv_filters": [8, 16]}


def test_reproduction_8x8_with_four_conv_blocks_is_refused_before_a_worker(sqlite_client):
    # Before: 202, then the worker failed with `internal: ValueError`.
    ds = _dataset(sqlite_client)
    r = sqlite_client.post("/trainings", json={"dataset_id": ds, "image_width": 8,
                                               "image_height": 8,
                                               "conv_filters": [8, 8, 8, 8]})
    assert r.status_code == 422, r.get_json()
    err = r.get_json()
    assert err["code"] == "bad_option"
    [e] = err["detail"]["errors"]
    assert e["field"] == "conv_filters"
    assert "8 -> 4 -> 2 -> 1 -> 0" in e["problem"] and "at most 3 block" in e["problem"]
    assert "16x16" in e["problem"]
    assert sqlite_client.get("/trainings").get_json()["trainings"] == []  # no job, no worker


@pytest.mark.parametrize(("width", "height", "blocks", "ok"), [
    (8, 8, 3, True), (8, 8, 4, False), (64, 8, 4, False), (8, 64, 3, True),
    (9, 9, 3, True), (15, 15, 4, False), (16, 16, 4, True), (512, 512, 4, True),
])
def test_blocks_against_image_size(width, height, blocks, ok):
    params = {**DEFAULTS, "image_width": width, "image_height": height,
              "conv_filters": [4] * blocks}
    assert (training_problems(params, 3, 10) == []) is ok
    assert (blocks <= max_blocks(min(width, height))) is ok


def test_a_model_with_too_many_parameters_is_refused(sqlite_client):
    ds = _dataset(sqlite_client)
    # 512x512 RGB, one block of 256 filters: 256*256*256 features into the Dense layer.
    r = sqlite_client.post("/trainings", json={"dataset_id": ds, "image_width": 512,
                                               "image_height": 512, "color_mode": "rgb",
                                               "conv_filters": [256]})
    assert r.status_code == 422
    [e] = r.get_json()["detail"]["errors"]
    assert e["field"] == "conv_filters" and f"{MAX_PARAMETERS:,}" in e["problem"]
    assert "33,561,602 parameters" in e["problem"]  # (256*256*256 + 1) * 2 + (27 + 1) * 256
    assert sqlite_client.get("/trainings").get_json()["trainings"] == []


def test_data_too_large_for_the_worker_is_refused():
    params = {**DEFAULTS, "image_width": 512, "image_height": 512, "color_mode": "rgb",
              "conv_filters": [8, 8, 8, 8, 8, 8]}
    assert training_problems(params, 2, 300) == []  # 900 MiB
    [e] = training_problems(params, 2, 400)  # 1200 MiB
    assert e["field"] == "image_width" and "1,200 MiB" in e["problem"]


def test_parameter_count_formula():
    s = shapes(48, 48, 1, [8, 16], 3)
    assert s.sides == ((24, 24), (12, 12))
    assert s.flatten == 12 * 12 * 16
    assert s.parameters == (9 + 1) * 8 + (9 * 8 + 1) * 16 + (12 * 12 * 16 + 1) * 3


def test_cli_prints_the_reason(live_server):
    from click.testing import CliRunner

    from backend_stub.cli import cli
    from tests.backend.conftest import TOKEN, dataset_entries, make_zip

    c = live_server.app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    ds = c.post("/datasets?name=v", data=make_zip(dataset_entries()),
                content_type="application/zip").get_json()["id"]
    r = CliRunner().invoke(cli, ["train", str(ds), "--image-width", "8", "--image-height", "8",
                                 "--conv-filters", "8,8,8,8", "--url", live_server.url,
                                 "--token", TOKEN], catch_exceptions=False)
    assert r.exit_code == 1
    assert "bad_option" in r.output and "8 -> 4 -> 2 -> 1 -> 0" in r.output
