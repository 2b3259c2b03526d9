"""The recurrent-loop code generator: one TIR PrimFunc per ONNX recurrent node.

Where things are:

* :mod:`.builder` -- the step skeleton: parameters, state, the time loop inside one
  parallel launch, the tasks of a step, the cell update (gate math from
  :mod:`memotvm.cells`) and the counts;
* :mod:`.products` -- the dense products (the input projection of many steps, the
  recurrent products four rows at a time), summed in one fixed order everywhere;
* :mod:`.schemes` -- how a step evaluates its neurons, one module per scheme: the
  unmodified kernel, memoization with a predictor of :mod:`memotvm.predictors`, delta
  execution and the oracle;
* :mod:`.tiling` -- vector lanes (from the target) and block sizes; :mod:`.row_blocks` -- R packed for the
  unmodified kernel; :mod:`.input_panels` -- W packed for the input projection, which
  then runs on the register tile of :mod:`.panels` (shared with the host's matrix
  products); :mod:`.tir_math` -- vectorizable exp, sigmoid and tanh;
  :mod:`.sign_packer` -- the BNN predictor's sign bits of run-time weights.

Every recurrent product, wherever it is computed, accumulates in the same lanes in the
same order, and every scheme reads its input parts from the same projection, so a
memoized kernel at threshold 0 is bit-identical to the unmodified one.
"""

from .builder import WEIGHT_DTYPES, KernelBuilder, build_kernel, kernel_memo_plan, kernel_weights
from .plan import MemoPlan, kernel_name
from .row_blocks import BlockRow, has_row_blocks, pack_row_blocks, row_blocks_shape
from .schemes import weight_data
from .sign_packer import build_sign_packer
from .tiling import i64, unit_block, vector_lanes
from .tir_math import TirMath

__all__ = [
    "WEIGHT_DTYPES",
    "BlockRow",
    "KernelBuilder",
    "MemoPlan",
    "TirMath",
    "build_kernel",
    "build_sign_packer",
    "has_row_blocks",
    "i64",
    "kernel_memo_plan",
    "kernel_name",
    "kernel_weights",
    "pack_row_blocks",
    "row_blocks_shape",
    "unit_block",
    "vector_lanes",
    "weight_data",
]
