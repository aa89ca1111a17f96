"""The representative dataset and the preprocessing it shares with training (no TensorFlow)."""

from __future__ import annotations

import numpy as np

from backend_stub.compiling import representative_batches
from backend_stub.preprocess import preprocess, split_ids
from tests.backend.conftest import png_bytes


def test_every_sample_of_every_batch_is_yielded_in_order():
    x = np.arange(10 * 4 * 4 * 1, dtype=np.float32).reshape(10, 4, 4, 1)
    got = list(representative_batches(x, batch_size=4))
    assert len(got) == 10  # not one per batch (3), not the last of each batch
    for i, item in enumerate(got):
        assert len(item) == 1 and item[0].shape == (1, 4, 4, 1)
        assert item[0].dtype == np.float32
        np.testing.assert_array_equal(item[0][0], x[i])
    assert len(list(representative_batches(x, batch_size=3, limit=5))) == 5


def test_preprocessing_is_normalised_and_shaped():
    data = png_bytes(20, 10, seed=1)
    g = preprocess(data, 16, 8, "grayscale")
    assert g.shape == (8, 16, 1) and g.dtype == np.float32
    assert g.min() >= 0.0 and g.max() <= 1.0 and g.max() > 0.1
    c = preprocess(data, 16, 8, "rgb")
    assert c.shape == (8, 16, 3)
    np.testing.assert_allclose(c[..., 0], c[..., 1])  # grey in, grey channels out


def test_split_is_stratified_seeded_and_disjoint():
    index = {"a": list(range(0, 10)), "b": list(range(10, 13)), "c": [20, 21]}
    train, val = split_ids(index, 0.2, seed=3)
    assert split_ids(index, 0.2, seed=3) == (train, val)
    assert {i for i, _ in train}.isdisjoint({i for i, _ in val})
    assert sorted(i for i, _ in train + val) == sorted(i for ids in index.values() for i in ids)
    for cls in range(3):  # every label has at least one sample on each side
        assert any(c == cls for _, c in train) and any(c == cls for _, c in val)
    assert dict(train + val)[20] == 2  # classes numbered by sorted label name
