"""The one validation of input vectors (the test inputs an install feeds the model), shared
by every driver and the bridge's request models: how many, how long, and that every value is
a finite number the input's type can hold."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from hal.errors import InputError

# Most vectors one install may carry (the bridge's request model uses the same limit).
MAX_INPUT_VECTORS = 256
_FLOAT32_MAX = 3.4028234663852886e38


def _bad(message: str, **detail: Any) -> InputError:
    return InputError("bad_option", f"input_vectors: {message}", field="input_vectors",
                      **detail)


def check_input_vectors(vectors: Sequence[Any], elements: int,
                        shape: Sequence[int] | None = None, dtype: str | None = None) -> None:
    """Raise ``InputError("bad_option")`` naming the first problem: more than
    :data:`MAX_INPUT_VECTORS`, a vector that is not ``elements`` long, a value that is not
    a finite number, or (for a ``float32`` input) one out of float32 range."""
    if len(vectors) > MAX_INPUT_VECTORS:
        raise _bad(f"{len(vectors)} vectors exceed {MAX_INPUT_VECTORS}",
                   vectors=len(vectors), limit=MAX_INPUT_VECTORS)
    where = f"the input {list(shape)}" if shape is not None else "the model's input"
    for i, vector in enumerate(vectors):
        if not isinstance(vector, (tuple, list)):
            raise _bad(f"vector {i} is a {type(vector).__name__}, not a list of numbers",
                       index=i)
        if len(vector) != elements:
            raise _bad(f"vector {i} has {len(vector)} values; {where} takes {elements}",
                       index=i, expected=elements, got=len(vector))
        for v in vector:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise _bad(f"vector {i} holds a value that is not a number", index=i)
            try:
                finite = math.isfinite(v)
            except OverflowError:  # an int too large for a double
                finite = False
            if not finite:
                raise _bad(f"vector {i} holds a value that is not a finite number", index=i)
            if dtype == "float32" and abs(v) > _FLOAT32_MAX:
                raise _bad(f"vector {i} holds a value out of float32 range", index=i)
