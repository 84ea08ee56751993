"""A compiled CPU kernel for the fused row-wise Adagrad update, built on first use.

`RowwiseAdagrad.update` with torch ops needs ~10 passes over the looked-up rows (mark, nonzero, slot
map, scatter-add per id slot, gathers and copies); this kernel does it in two: one pass over the ids
that sums each row's gradient into a compact buffer as rows are first seen, and one parallel pass
over the touched rows that applies the update. It is built with torch's C++ extension tooling
(a C++ compiler and ninja) and cached; where it cannot be built, `kernel()` says why and callers
keep the torch-ops path. Set `UNICTR_NATIVE=0` to never build it.
"""

from __future__ import annotations

import os
import warnings
from functools import cache
from typing import Any

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>

// slot: [rows] int32, all -1 on entry and on exit; touched: [>= unique ids] int64; gbuf: [>= unique ids, dim]
// float. All three are scratch owned by the caller and kept between steps (no allocation, no page faults).
void rowwise_adagrad_update(torch::Tensor weight, torch::Tensor sum_sq, torch::Tensor ids, torch::Tensor grad,
                            torch::Tensor slot, torch::Tensor touched, torch::Tensor gbuf, double lr, double eps,
                            double weight_decay) {
  TORCH_CHECK(weight.is_contiguous() && grad.is_contiguous() && ids.is_contiguous() && slot.is_contiguous()
              && touched.is_contiguous() && gbuf.is_contiguous(),
              "rowwise_adagrad_update: contiguous tensors expected");
  const int64_t n = ids.size(0), k = ids.size(1), dim = weight.size(1), rows = weight.size(0);
  TORCH_CHECK(rows < (int64_t{1} << 31), "rowwise_adagrad_update: table over 2^31 rows");
  TORCH_CHECK(touched.size(0) >= std::min(n * k, rows) && gbuf.size(0) >= touched.size(0) && gbuf.size(1) == dim,
              "rowwise_adagrad_update: scratch too small");
  const int64_t* id = ids.data_ptr<int64_t>();
  const float* g_in = grad.data_ptr<float>();
  int32_t* sl = slot.data_ptr<int32_t>();  // int32: half the cache footprint of the random lookups
  int64_t* tr = touched.data_ptr<int64_t>();
  float* g = gbuf.data_ptr<float>();
  float* w = weight.data_ptr<float>();
  float* acc = sum_sq.data_ptr<float>();
  for (int64_t i = 0; i < n * k; ++i)  // checked before anything is written: a bad id changes nothing
    TORCH_CHECK(id[i] >= 0 && id[i] < rows, "rowwise_adagrad_update: id ", id[i], " outside the table");
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {  // pass 1: each unique row's summed gradient, in first-seen order
    const float* src = g_in + i * dim;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t row = id[i * k + j];
      int64_t s = sl[row];
      float* dst;
      if (s < 0) {
        s = count++;
        sl[row] = static_cast<int32_t>(s);
        tr[s] = row;
        dst = g + s * dim;
        for (int64_t d = 0; d < dim; ++d) dst[d] = src[d];
      } else {
        dst = g + s * dim;
        for (int64_t d = 0; d < dim; ++d) dst[d] += src[d];
      }
    }
  }
  const float flr = static_cast<float>(lr), feps = static_cast<float>(eps), fwd = static_cast<float>(weight_decay);
  at::parallel_for(0, count, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {  // pass 2: the update of each touched row, rows independent
      const int64_t row = tr[t];
      float* wr = w + row * dim;
      float* gt = g + t * dim;
      float sq = 0.0f;
      for (int64_t d = 0; d < dim; ++d) {
        gt[d] += fwd * wr[d];
        sq += gt[d] * gt[d];
      }
      const float a = acc[row] + sq / static_cast<float>(dim);
      acc[row] = a;
      const float scale = flr / (std::sqrt(a) + feps);
      for (int64_t d = 0; d < dim; ++d) wr[d] -= scale * gt[d];
      sl[row] = -1;
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("rowwise_adagrad_update", &rowwise_adagrad_update); }
"""


@cache
def kernel() -> tuple[Any | None, str]:
    """(the compiled module, "") or (None, why it is not available). Built once per process, cached on disk;
    a failed build warns once, naming the reason, and callers fall back to torch ops."""
    if os.environ.get("UNICTR_NATIVE", "1") == "0":
        return None, "disabled by UNICTR_NATIVE=0"
    try:
        from torch.utils.cpp_extension import load_inline

        module = load_inline(
            name="unictr_rowwise_adagrad", cpp_sources=[_SOURCE], extra_cflags=["-O3"], verbose=False
        )
    except Exception as e:  # no compiler, no ninja, a failed build: the torch-ops path serves instead
        why = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}"
        warnings.warn(f"unictr: compiled row-wise Adagrad kernel unavailable ({why}); using torch ops (slower)",
                      RuntimeWarning, stacklevel=2)
        return None, why
    return module, ""
