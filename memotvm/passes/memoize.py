"""The memoization pass: neuron-level fuzzy memoization of every recurrent loop.

``MemoizeRecurrentLoops(config)`` is a module pass.  It finds each ``call_tir`` of a
recurrent-loop kernel (a PrimFunc carrying the ``memotvm.recurrent`` attribute), replaces
the kernel with its memoized form for that node's thresholds and predictor, and, for the
BNN predictor, feeds it the sign bits of W and R packed into 64-bit words by a small
packing kernel.  Where the weights are constants, constant folding (run at the end of
the pass) executes that packing once, at compile time, and the packed bits become
constants of the module.  The kernels' signatures for the outputs do not change, so the
rest of the graph is untouched.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax
from tvm.ir import GenericConst

from ..errors import ConfigError, UnsupportedModelError
from ..kernels import MemoPlan, build_kernel, build_sign_packer, kernel_weights, weight_data
from ..kernels.memo_table import TABLE_DTYPE, table_size
from ..frontend.recurrent import OPTIONAL_INPUTS, RecurrentLoop
from ..per_node import checked_per_node, per_direction, short
from ..predictors import BnnPredictor, get_predictor
from ._relax_util import fold_constants, rewrite_functions, with_blocks, without_uncalled_kernels
from .kernel_calls import in_loop_body, kernel_loop, recurrent_calls, recurrent_kernel, weights_are_constant
from .precision import effective_weights

def _check_threshold(value, where):
    if isinstance(value, (str, bytes)):
        raise ConfigError(f"threshold {where} must be a number, got {short(value)}")
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"threshold {where} must be a number, got {short(value)}") from None
    except OverflowError:  # an int beyond float's range: 10**400
        raise ConfigError(f"threshold {where} must be a finite number >= 0, got {short(value)}") from None
    if isinstance(value, (bool, np.bool_)) or not math.isfinite(t) or t < 0:
        raise ConfigError(f"threshold {where} must be a finite number >= 0, got {short(value)}")
    return t


@dataclass
class MemoConfig:
    """Thresholds and predictor of the memoization pass.

    ``threshold`` applies to every recurrent node and direction; ``per_node`` overrides
    it by ONNX node name, with either one number or ``{"forward": t, "reverse": t}``.
    """

    threshold: float = 0.0
    predictor: str = "bnn"
    per_node: dict = field(default_factory=dict)

    def __post_init__(self):
        self.threshold = _check_threshold(self.threshold, "(global)")
        if not isinstance(self.predictor, str):
            raise ConfigError(f"predictor must be a name, got {self.predictor!r}")
        get_predictor(self.predictor)  # raises ConfigError for unknown names
        self.per_node = checked_per_node(self.per_node, _check_threshold, "thresholds")

    def thresholds_text(self) -> str:
        """The thresholds as text: "0.3 everywhere", or per node (nodes not listed take
        the global one): "/gru/GRU forward 0.05, reverse 1; others 0"."""
        def one(value):
            if isinstance(value, dict):
                return ", ".join(f"{d} {t:g}" for d, t in value.items())
            return f"{value:g}"

        if not self.per_node:
            return f"{self.threshold:g} everywhere"
        listed = "; ".join(f"{node} {one(v)}" for node, v in self.per_node.items())
        return listed + (f"; others {self.threshold:g}" if self.threshold else "")

    @classmethod
    def coerce(cls, memo) -> "MemoConfig":
        """Accept a MemoConfig, a number (global BNN threshold), a dict, or a JSON path."""
        if isinstance(memo, MemoConfig):
            return memo
        # numbers.Real: thresholds often come from numpy (np.float32, np.int64).
        if isinstance(memo, numbers.Real) and not isinstance(memo, (bool, np.bool_)):
            return cls(threshold=memo)
        if isinstance(memo, dict):
            return cls.from_dict(memo)
        if isinstance(memo, str):
            return cls.load(memo)
        raise ConfigError(f"cannot use {type(memo).__name__} as a memoization configuration")

    @classmethod
    def from_dict(cls, raw: dict) -> "MemoConfig":
        if not isinstance(raw, dict):
            raise ConfigError("a memo configuration is an object with threshold, predictor "
                              f"and per_node, got {type(raw).__name__}")
        known = {"threshold", "predictor", "per_node"}
        extra = set(raw) - known
        if extra:
            raise ConfigError(f"unknown memo configuration key(s): {sorted(extra)}")
        return cls(**raw)

    @classmethod
    def load(cls, path: str, optional: bool = False) -> "MemoConfig | None":
        """The configuration of a JSON file (its ``memo`` section, where it has one);
        ``optional``: None where that section is null (calibrated: memoization does not
        pay) instead of an error."""
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except OSError as err:
            raise ConfigError(f"{path}: cannot read memo configuration: {err.strerror}") from err
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a JSON memo configuration (not UTF-8 text)") from None
        except RecursionError:
            raise ConfigError(f"{path}: not a usable memo configuration (nested too deeply)") from None
        except ValueError as err:  # JSONDecodeError, and numbers beyond Python's digit limit
            raise ConfigError(f"{path}: not a JSON memo configuration: {short(str(err), 120)}") from err
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a memo configuration is a JSON object")
        section = raw.get("memo", raw)
        if section is None and optional:
            return None
        if section is None:
            objective = (raw.get("calibration") or {}).get("objective", "time")
            raise ConfigError(f"{path}: calibrated for {objective}, this file says memoization does "
                              "not pay on the model: run it unmodified (without a memo configuration)")
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: 'memo' must be an object with threshold, predictor and "
                              f"per_node, got {type(section).__name__}")
        return cls.from_dict(section)

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "predictor": self.predictor, "per_node": self.per_node}

    def check_nodes(self, loops) -> None:
        names = {loop.name for loop in loops}
        unknown = sorted(set(self.per_node) - names)
        if unknown:
            raise ConfigError(
                f"memo configuration names node(s) not in the model: {', '.join(unknown)} "
                f"(recurrent nodes: {', '.join(sorted(names)) or 'none'})"
            )
        for loop in loops:
            value = self.per_node.get(loop.name)
            if isinstance(value, dict) and "reverse" in value and loop.direction == "forward":
                raise ConfigError(f"node '{loop.name}' runs forward only; it has no 'reverse' threshold")
            if isinstance(value, dict) and "forward" in value and loop.direction == "reverse":
                raise ConfigError(f"node '{loop.name}' runs in reverse only; it has no 'forward' threshold")

    def plan_for(self, loop: RecurrentLoop) -> MemoPlan:
        return MemoPlan(self.predictor, per_direction(self.per_node, self.threshold, loop))


THRESHOLD_INPUT = "memotvm::thresholds::"
# main's parameters and outputs for each memoized kernel's memo table (a session's state).
TABLE_INPUT = "memotvm::memo_table::"


@tvm.transform.module_pass(opt_level=0, name="MemoizeRecurrentLoops")
class MemoizeRecurrentLoops:
    """Rewrite every recurrent-loop kernel call of the module into its memoized form.

    The kernels read their thresholds from a small float64 tensor.  By default it is a
    constant of the module (the configuration's values); with ``tunable=True`` it becomes
    a parameter of ``main`` named ``memotvm::thresholds::<node>``, appended after the
    model's inputs, so that one compiled model runs with any thresholds (calibration).

    Each memoized kernel also reads and writes its memo table
    (:mod:`memotvm.kernels.memo_table`): a parameter ``memotvm::memo_table::<node>`` of
    ``main`` after the thresholds, and an output after the model's (and the kernels'
    counts), in node order.  A plain call passes an empty table; a streaming session
    passes the table the previous call returned.
    """

    def __init__(self, config: MemoConfig, tunable: bool = False):
        self.config = MemoConfig.coerce(config)
        self.tunable = tunable

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        loops = [loop for _, func in mod.functions_items()
                 if (loop := kernel_loop(func)) and not in_loop_body(func)]
        self.config.check_nodes(loops)
        rewriter = _KernelCallRewriter(mod, self.config, self.tunable)
        rewritten = rewrite_functions(rewriter, mod)
        params = rewriter.threshold_params + rewriter.table_params
        if params:
            rewritten = _append_params(rewritten, params)
        if rewriter.table_outputs:
            rewritten, outputs = _tables_of_branches(rewritten, rewriter.table_outputs,
                                                     rewriter.table_params)
            rewritten = _append_outputs(rewritten, outputs)
        folded = relax.transform.DeadCodeElimination()(fold_constants(rewritten))
        # The unmodified kernels the memoized ones replace (and sign packers that
        # folding ran) would otherwise be compiled too: half of a memoized model's code.
        return without_uncalled_kernels(folded)


def _append_params(mod, params):
    """``main`` with ``params`` appended to its parameters (as model inputs)."""
    main = mod["main"]
    func = relax.Function(list(main.params) + params, main.body, main.ret_ty, main.is_pure,
                          main.attrs)
    if main.attrs and "num_input" in main.attrs:
        func = func.with_attr("num_input", int(main.attrs["num_input"]) + len(params))
    mod["main"] = func
    return mod


def _tables_of_branches(mod, tables: list, params: list):
    """(``mod``, the memo tables main returns): a kernel in an If branch whose counts
    main selects by the branch's condition (:mod:`memotvm.frontend.importer`) returns
    its table selected the same way, the incoming one where the branch is not taken --
    a branch not taken leaves its nodes' tables as they were, and the kernel can move
    into its branch (:class:`memotvm.passes.branches.SinkIntoBranches`)."""
    main = mod["main"]
    blocks = list(main.body.blocks)
    if not blocks:
        return mod, tables
    values = {b.var: b.value for block in blocks for b in block.bindings}

    def origin(var):
        while isinstance(values.get(var), relax.Var):
            var = values[var]
        return var

    where = tvm.ir.Op.get("relax.where")
    conditions = {}  # (kernel call var, output index) -> condition of the select of it
    for value in values.values():
        if isinstance(value, relax.Call) and value.op == where and isinstance(value.args[1], relax.Var):
            picked = values.get(origin(value.args[1]))
            if isinstance(picked, relax.TupleGetItem) and isinstance(picked.tuple_value, relax.Var):
                conditions[(origin(picked.tuple_value), picked.index)] = value.args[0]
    first, last = [], []
    outputs, copy = [], None
    for table, param in zip(tables, params):
        got = values.get(table)
        cond = None
        if isinstance(got, relax.TupleGetItem) and isinstance(got.tuple_value, relax.Var):
            # The counts are the output two before the table (then status, then table).
            cond = conditions.get((origin(got.tuple_value), got.index - 2))
        if cond is None:
            outputs.append(table)
            continue
        kept = relax.Var(param.name + "::kept", table.ty)
        if copy is None:
            builder = relax.BlockBuilder(mod)
            copy = builder.add_func(_table_as_batch(), "memo_table_as_batch")
            mod = builder.get()
        first.append(relax.VarBinding(kept, relax.call_tir(copy, [param], out_ty=table.ty)))
        chosen = relax.Var(param.name + "::out", table.ty)
        last.append(relax.VarBinding(chosen, relax.op.where(cond, table, kept)))
        outputs.append(chosen)
    if not first:
        return mod, tables
    kind = type(blocks[0])
    blocks[0] = kind(first + list(blocks[0].bindings))
    kind = type(blocks[-1])
    blocks[-1] = kind(list(blocks[-1].bindings) + last)
    mod["main"] = with_blocks(main, blocks)
    return relax.transform.Normalize()(mod), outputs


def _table_as_batch() -> tvm.tirx.PrimFunc:
    """A memo table [directions, batch or 1, size] as one of [directions, batch, size]
    (an empty table of batch 1 for every batch element): topi's broadcast cannot take a
    batch it does not know to a static one."""
    from tvm import te

    nd, tb, n, size = (tvm.tirx.Var(name, "int64") for name in ("nd", "tb", "n", "size"))
    table = te.placeholder((nd, tb, size), TABLE_DTYPE, name="table")
    out = te.compute((nd, n, size),
                     lambda d, b, k: table[d, tvm.tirx.Select(tb == 1, tvm.tirx.const(0, "int64"), b), k],
                     name="kept")
    return te.create_prim_func([table, out]).with_attr("global_symbol", "memo_table_as_batch")


def _append_outputs(mod, outputs):
    """``main`` returning ``outputs`` after what it returned."""
    main = mod["main"]
    body = main.body
    returned = body.body
    if isinstance(returned, relax.Tuple):
        fields = list(returned.fields)
    else:
        fields = [relax.TupleGetItem(returned, i) for i in range(len(returned.ty.fields))]
    types = list(returned.ty.fields) + [out.ty for out in outputs]
    seq = relax.SeqExpr(body.blocks, relax.Tuple(fields + list(outputs)))
    mod["main"] = relax.Function(list(main.params), seq, relax.TupleType(types), main.is_pure,
                                 main.attrs)
    return relax.transform.Normalize()(mod)


def check_supported(mod, config: MemoConfig) -> None:
    """Raise ConfigError where a node's predictor needs constant weights it lacks
    (called before the pass: errors raised inside a TVM pass lose their type)."""
    for loop, call in recurrent_calls(mod, loop_bodies=False):
        spec = config.plan_for(loop).predictor
        predictor = get_predictor(spec)
        if predictor is not None and not isinstance(predictor, BnnPredictor) \
                and not weights_are_constant(call):
            raise ConfigError(
                f"predictor '{spec}' derives its data from the weights at compile time, "
                f"but node '{loop.name}' computes W or R at run time"
            )
        if predictor is not None and predictor.scheme == "delta" \
                and kernel_weights(recurrent_kernel(mod, call)[1]) == "bfloat16_pairs":
            raise ConfigError(f"delta execution does not run at precision bf16-act "
                              f"({loop.op} node '{loop.name}'); use bf16, or another predictor")
        # A memoized neuron that is not computed cannot pass on a NaN or infinite
        # weight (a skipped column of delta execution, a reused row): the unmodified
        # layer would, so such weights are refused rather than silently hidden.
        labels = ["X", "W", "R"] + [label for label in OPTIONAL_INPUTS.values() if loop.has(label)]
        for label, arg in zip(labels, call.args[1].fields):
            if label in ("W", "R", "B", "P") and isinstance(arg, GenericConst):
                value = arg.value.numpy()
                if not np.isfinite(value).all():
                    raise UnsupportedModelError(
                        f"{loop.op} node '{loop.name}': its {label} holds "
                        f"{int((~np.isfinite(value)).sum())} NaN or infinite value(s); "
                        "memoization needs finite weights (the unmodified model propagates them)")


@relax.expr_functor.mutator
class _KernelCallRewriter(relax.PyExprMutator):
    def __init__(self, mod, config, tunable=False):
        super().__init__(mod)
        self.mod_ = mod
        self.config = config
        self.tunable = tunable
        self.threshold_params: list = []
        self.table_params: list = []
        self.table_outputs: list = []

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        hit = recurrent_kernel(self.mod_, call)
        if hit is None or "memotvm.memo" in hit[1].attrs or in_loop_body(hit[1]):
            return call  # (already memoized, or run once per iteration of a Loop)
        loop, plain = hit
        plan = self.config.plan_for(loop)
        args = list(call.args[1].fields)
        predictor = get_predictor(plan.predictor)
        if predictor is not None:
            args += self._predictor_inputs(loop, predictor, args, effective_weights(loop, plain, args))
        if self.tunable:
            param = relax.Var(THRESHOLD_INPUT + loop.name,
                              relax.TensorType([loop.num_directions], "float64"))
            self.threshold_params.append(param)
            args.append(param)
        else:
            args.append(relax.const(np.array(plan.thresholds, np.float64), "float64"))
        size = table_size(loop, plan.predictor)
        table_batch = tvm.tirx.Var(f"table_batch_{len(self.table_params)}", "int64")
        table = relax.Var(TABLE_INPUT + loop.name,
                          relax.TensorType([loop.num_directions, table_batch, size], TABLE_DTYPE))
        self.table_params.append(table)
        args.append(table)
        batch = args[0].ty.shape.values[1]
        out_ty = list(call.ty_args[0].fields) + [
            relax.TensorType([loop.num_directions, batch, size], TABLE_DTYPE)]
        kernel = self.builder_.add_func(build_kernel(loop, plan, weights=kernel_weights(plain)),
                                        f"{loop.op.lower()}_memo_kernel")
        # Bound here, so that the table it returns can be an output of main (the other
        # outputs keep their positions: the table comes last).
        result = self.builder_.emit(relax.call_tir(kernel, args, out_ty=out_ty))
        emit = self.builder_.emit_output if self.builder_.current_block_is_dataflow() \
            else self.builder_.emit
        self.table_outputs.append(emit(relax.TupleGetItem(result, len(out_ty) - 1)))
        return result

    def _predictor_inputs(self, loop, predictor, args, constant):
        """The predictor's compile-time data as constants, from the ``constant`` weights
        (float32, as the kernel computes with them); for the BNN predictor with weights
        computed at run time (None), packing kernels instead."""
        if constant is not None:
            data = weight_data(loop, predictor, *constant)
            return [relax.const(value, str(value.dtype)) for value in data.values()]
        inputs = []
        for which, weights in (("W", args[1]), ("R", args[2])):
            packer = self.builder_.add_func(build_sign_packer(loop, which), f"pack_signs_{which}")
            bits_type = relax.TensorType(list(BnnPredictor.signs_shape(loop, which)), "uint64")
            inputs.append(self.builder_.emit(relax.call_tir(packer, [weights], out_ty=bits_type)))
        return inputs
