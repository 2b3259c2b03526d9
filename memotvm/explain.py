"""What the memoization pass did to a recurrent kernel, as text (``memotvm inspect``)."""

from __future__ import annotations

import tvm

from .errors import ConfigError
from .kernels import build_kernel
from .log import captured_tvm_output
from .passes import MemoConfig
from .targets import host_target


def describe(imported, memo=None, node=None, asm=False) -> str:
    if not imported.loops:
        raise ConfigError("the model has no LSTM, GRU or RNN node")
    loops = {loop.name: loop for loop in imported.loops}
    if node is not None and node not in loops:
        raise ConfigError(f"no recurrent node '{node}' (nodes: {', '.join(loops)})")
    loop = loops[node] if node else imported.loops[0]
    config = MemoConfig.coerce(memo) if memo is not None else MemoConfig(threshold=0.3)
    config.check_nodes(imported.loops)
    plan = config.plan_for(loop)
    before = build_kernel(loop)
    after = build_kernel(loop, plan)
    parts = [
        f"# {loop.op} node '{loop.name}': D={loop.input_size} H={loop.hidden_size} "
        f"direction={loop.direction} ({loop.rows} neurons per direction)",
        "# ---- recurrent kernel before the memoization pass ----",
        before.script(),
        f"# ---- after the pass: predictor={plan.predictor} thresholds={list(plan.thresholds)} ----",
        after.script(),
    ]
    if asm:
        with captured_tvm_output("compile"):
            lib = tvm.compile(tvm.IRModule({"main": after}), target=host_target())
        parts += ["# ---- generated assembly of the memoized kernel ----", lib.mod.inspect_source("asm")
                  if hasattr(lib, "mod") else lib.inspect_source("asm")]
    return "\n".join(parts)
