"""One row through a LightGBM booster by the C API's fast single-row prediction.

``Booster.predict`` sets up a predictor on every call (parameter parsing, a ``Predictor``
object, output sizing): for the service's one-contact requests that setup costs more than the
trees (about 17 µs of a 20-34 µs call, measured with a profiling script on this project's VM).
``LGBM_BoosterPredictForMatSingleRowFastInit`` does it once; each row then costs one C call.
The same numbers as ``Booster.predict`` (tests/training/test_single_row.py).

A handle belongs to one process (it is never pickled: the models drop it and build it again
on first use) and its output buffer is shared, so calls on one handle take a lock. The C
functions are LightGBM's public API; reaching them goes through names private to its Python
package (``_LIB``, ``Booster._handle``), so pyproject caps LightGBM below 5.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Literal

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
from lightgbm.basic import _LIB, _c_str, _safe_call

FloatArray = npt.NDArray[np.float64]
# the C API's predict types
_PREDICT_TYPES = {"normal": 0, "leaf": 2}
_FLOAT64 = 1


class SingleRowPredictor:
    """``booster.predict(row, num_iteration=...)`` for one row of float64 values (``normal``:
    what ``predict`` gives, probabilities for binary and multiclass models; ``leaf``: each
    tree's leaf).

    The predictor scores a private copy of the booster's first ``num_iteration`` iterations
    (all for ``num_iteration <= 0``): LightGBM keeps the iterations to predict on the booster,
    not on the fast handle, so another predictor on a shared booster would change what this
    one computes and how many values it writes; and a booster changed in place (e.g.
    ``model_from_string``) would free trees the handle still reads."""

    def __init__(
        self,
        booster: lgb.Booster,
        *,
        kind: Literal["normal", "leaf"],
        num_iteration: int = -1,
    ) -> None:
        own = lgb.Booster(model_str=booster.model_to_string(num_iteration=num_iteration))
        self.columns = own.num_feature()
        width = own.num_model_per_iteration() if kind == "normal" else own.num_trees()
        self._booster = own  # only this predictor uses it; the handle reads its trees
        self._out = np.zeros(width, dtype=np.float64)
        self._out_pointer = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        self._length = ctypes.c_int64(0)
        self._lock = threading.Lock()
        self._handle = ctypes.c_void_p()
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                own._handle,
                ctypes.c_int(_PREDICT_TYPES[kind]),
                ctypes.c_int(0),
                ctypes.c_int(-1),
                ctypes.c_int(_FLOAT64),
                ctypes.c_int32(self.columns),
                _c_str("num_threads=1"),
                ctypes.byref(self._handle),
            )
        )

    def __call__(self, row: FloatArray) -> FloatArray:
        """The prediction of one row (``columns`` float64 values), a new array."""
        values = np.ascontiguousarray(row, dtype=np.float64).reshape(-1)
        if values.shape[0] != self.columns:
            raise ValueError(f"one row of {self.columns} values expected; got {row.shape}")
        with self._lock:
            _safe_call(
                _LIB.LGBM_BoosterPredictForMatSingleRowFast(
                    self._handle,
                    values.ctypes.data_as(ctypes.c_void_p),
                    ctypes.byref(self._length),
                    self._out_pointer,
                )
            )
            if self._length.value != len(self._out):
                raise RuntimeError(
                    f"LightGBM returned {self._length.value} values; {len(self._out)} expected"
                )
            return self._out.copy()

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None and handle.value:
            try:
                _LIB.LGBM_FastConfigFree(handle)
            except (AttributeError, TypeError):  # interpreter shutdown: the library is gone
                return
            handle.value = None
