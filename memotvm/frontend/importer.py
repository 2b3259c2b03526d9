"""ONNX -> Relax, with LSTM/GRU/RNN nodes turned into recurrent-loop kernels.

Every operator except the recurrent ones goes through TVM's own Relax ONNX frontend; we
extend its importer class rather than copy it.  A recurrent node becomes one
``call_tir`` of its kernel (:mod:`memotvm.kernels`), with layout 1 handled by transposes around
it.  Each kernel's ``stats`` and ``status`` outputs are appended to ``main``'s outputs
(after the ONNX outputs, in node order) so that the runtime can report reuse and reject
out-of-range sequence lengths.
"""

from __future__ import annotations

import gc
import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
import tvm
from tvm import relax, tirx
from tvm.relax.frontend.onnx import onnx_frontend

from ..errors import ConfigError, MemoTVMError, UnreachableBranchWarning, UnsupportedModelError
from ..kernels import build_kernel
from ..log import captured_tvm_output
from ..passes.constant_calls import FoldConstantCalls
from ..passes.kernel_calls import LOOP_BODY_ATTR
from ..passes.native_checks import stop_if
from ..passes.param_sizes import UnifyParameterSizes
from ..passes.safe_gather import BoundedGather
from ..passes.shape_checks import CheckShapeRelations, require_equal, unproven, with_shape_relations
from .qlinear_contrib import DequantizeContribOps
from .quantized import DequantizeRecurrentWeights
from .rank_branches import SplitOnRankChangingIfs
from .legacy_forms import LegacyOperatorForms
from .folding import ConstantFolding, all_nodes, bind_inputs, node_inputs, with_input_shapes
from .loops import LoopConverter
from .loop_sequences import SequencesAsScanOutputs
from .scan import ScanAsLoop
from .converters import SPEC_ONLY_OPS, SpecConverters, shapes_as_tensors
from .recurrent import OPTIONAL_INPUTS, RecurrentLoop, parse_recurrent_node

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
STATS_PREFIX = "memotvm::stats::"
STATUS_PREFIX = "memotvm::status::"


@dataclass
class ImportedModel:
    """A Relax module plus what the runtime needs to call it with ONNX names."""

    mod: tvm.IRModule
    input_names: list  # ONNX graph inputs (not initializers), in main's parameter order
    input_types: dict  # name -> (shape with ints / None for dynamic dims, dtype)
    output_names: list  # ONNX graph outputs, in order
    loops: list  # RecurrentLoop per recurrent node, in graph order
    loop_body_nodes: list  # names of the recurrent nodes that Loop bodies run (not in loops)
    index_ranges: dict  # input name -> size of the table it indexes (Gather), checked at run time
    output_types: dict = field(default_factory=dict)  # name -> (dims, dtype), as input_types
    operators: dict = field(default_factory=dict)  # op type -> count, after folding, branches included
    # Graph inputs that reach a recurrent node's initial state, and graph outputs that
    # its final state reaches: where a session's state pairs are (memotvm.session).
    recurrent_state: dict = field(default_factory=lambda: {"inputs": [], "outputs": []})
    # Symbol of an initial state's dimension -> the size (int) or symbol (str) a recurrent
    # node requires of it (TEN VAD's states name their batch apart from everything else;
    # its LSTMs' batch is 1): what a session's zero state takes where no input tells.
    implied_sizes: dict = field(default_factory=dict)


class RecurrentGraphImporter(LoopConverter, SpecConverters, onnx_frontend.ONNXGraphImporter):
    """TVM's ONNX importer that also converts LSTM, GRU and RNN nodes, ONNX loops
    (:mod:`.loops`), and the operators of :mod:`.converters` where TVM's frontend
    refuses valid models or departs from the ONNX spec."""

    def __init__(self, *args, unreachable: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loops: list[RecurrentLoop] = []
        # Recurrent nodes that Loop bodies run (not memoized: see _in_loop_body).
        self.loop_body_nodes: list[RecurrentLoop] = []
        # Symbolic sizes of initial states that the recurrent nodes fix (see implied_sizes).
        self.implied_sizes: dict = {}
        self._node_names: dict[int, str] = {}
        # If branches: key of the branch graph -> (name of the If's condition, whether
        # the branch is taken when it is true); the conditions of the branches being
        # converted, innermost last; the kernels' stats and status outputs.
        self._branches: dict[tuple, tuple[str, bool]] = {}
        self._conditions: list = []
        self._kernel_outputs: dict = {}
        # Branches that could not be built for the inputs' shapes (key -> why), each
        # branch's sibling and If, and the converted branches (an unreachable branch
        # takes its sibling's types).
        self._unreachable: dict = dict(unreachable or {})
        self._siblings: dict[tuple, tuple] = {}
        self._converted: dict[tuple, relax.Expr] = {}

    def _check_for_unsupported_ops(self, graph):
        convert_map = onnx_frontend._get_convert_map()
        for node in graph.node:
            op = node.op_type
            if node.domain not in ("", "ai.onnx"):
                raise UnsupportedModelError(
                    f"node '{node.name}': operator {node.domain}.{op} is not an ai.onnx "
                    "operator and cannot be converted"
                )
            if op not in convert_map and op not in RECURRENT_OPS and op not in SPEC_ONLY_OPS \
                    and op not in ("If", "Constant", "Loop"):
                raise UnsupportedModelError(
                    f"node '{node.name}': operator '{op}' is not supported by memotvm "
                    "(neither a recurrent op nor one TVM's ONNX frontend converts)"
                )
            if op == "If":
                branches = {a.name: a.g for a in node.attribute if a.name in ("then_branch", "else_branch")}
                for label, branch in branches.items():
                    self._branches[_branch_key(branch)] = (node.input[0], label == "then_branch")
                    other = branches.get("else_branch" if label == "then_branch" else "then_branch")
                    self._siblings[_branch_key(branch)] = (other, node.name, label.split("_")[0])
                    self._check_for_unsupported_ops(branch)
            if op == "Loop":
                body = next(a.g for a in node.attribute if a.name == "body")
                for inner in all_nodes(body):
                    if inner.op_type in SEQUENCE_OPS:
                        raise UnsupportedModelError(_sequence_message(node, inner))
                self._check_for_unsupported_ops(body)

    def _convert_subgraph(self, bb, graph):
        """An If branch.  TVM's importer computes both branches before the If selects
        one, so a recurrent node in a branch runs whatever the condition; its counts are
        kept only when its branch is the one taken (:meth:`_convert_recurrent`).  A
        branch that cannot be converted raises :class:`BranchFailure` (the import is
        then redone with the branch unreachable, :meth:`_unreachable_branch`)."""
        key = _branch_key(graph)
        if key in self._converted:
            return self._converted[key]
        if key in self._unreachable:
            return self._unreachable_branch(bb, key)
        self._conditions.append(self._branch_condition(key))
        try:
            result = super()._convert_subgraph(bb, graph)
        except BranchFailure:
            raise
        except UnsupportedModelError as err:
            raise BranchFailure(str(err), key) from err
        except MemoTVMError:
            raise
        except Exception as err:  # TVM's loop over a branch's nodes (an optional value)
            raise BranchFailure(f"a node of If branch '{graph.name}' could not be converted: "
                                f"{_last_line(err)}", key) from err
        finally:
            self._conditions.pop()
        # TVM restores the outer table of values after a branch; the counts of the
        # branch's kernels are outputs of main.
        for name, value in self._kernel_outputs.items():
            self._nodes[name] = value
        self._converted[key] = result
        return result

    def _branch_condition(self, key):
        """The condition under which the branch ``key`` is taken (given its If is
        reached), a bool scalar."""
        cond_name, taken_when = self._branches[key]
        # Bound here, before the If, where SinkIntoBranches looks for what stands for
        # the If's condition.
        cond = self.bb.emit(relax.op.astype(self._nodes[cond_name], "bool"))
        cond = self.bb.emit(relax.op.reshape(cond, []))
        if not taken_when:
            cond = self.bb.emit(relax.op.logical_not(cond))
        return cond

    def _unreachable_branch(self, bb, key):
        """A branch that could not be built for the inputs' shapes (the 8 kHz path of a
        detector compiled for 16 kHz chunks, or the path for chunks of several frames of
        one that squeezes a single frame): values of its sibling's types, behind a check
        that stops the call, with the reason, where the branch is taken.  onnxruntime
        runs such a model until an input takes the branch, and so does memotvm."""
        sibling, if_name, label = self._siblings[key]
        why = self._unreachable[key]
        if sibling is None or _branch_key(sibling) in self._unreachable:
            raise UnsupportedModelError(why)
        other = self._convert_subgraph(bb, sibling)
        taken = self._branch_condition(key)
        for cond in self._conditions:
            taken = bb.normalize(relax.op.logical_and(cond, taken))
        message = (f"the {label} branch of If '{if_name}' is taken for these inputs, but it "
                   f"could not be compiled: {_first_sentence(why)}")
        fields = list(other.fields) if isinstance(other, relax.Tuple) else [other]
        values = []
        for value in fields:
            ty = value.ty
            if not isinstance(ty, relax.TensorType):
                raise UnsupportedModelError(why)
            if isinstance(ty.shape, relax.ShapeExpr):
                shape = ty.shape
            else:  # (an unknown rank is what the If's result then has)
                shape = relax.ShapeExpr([0] * ty.ndim if ty.ndim >= 0 else [0])
            zeros = bb.emit(relax.op.zeros(shape, ty.dtype))
            values.append(stop_if(bb, zeros, taken, message))
        return values[0] if not isinstance(other, relax.Tuple) else relax.Tuple(values)

    def _convert_operator(self, op_name, inputs, attrs, opset):
        name = attrs["tvm_custom"]["name"]
        try:
            if op_name in RECURRENT_OPS:
                return self._convert_recurrent(op_name, inputs, attrs)
            if op_name == "Loop":
                return self._convert_loop(inputs, attrs)
            converted = self.convert_by_spec(op_name, inputs, attrs, opset)
            if converted is None:
                converted = super()._convert_operator(op_name, inputs, attrs, opset)
            return self._shape_known(converted)
        except UnsupportedModelError as err:
            hinted = self._with_way_out(str(err), inputs)
            if hinted == str(err):
                raise
            raise UnsupportedModelError(hinted) from err
        except MemoTVMError:
            raise
        except Exception as err:  # TVM's converters raise anything: name the node
            raise UnsupportedModelError(self._with_way_out(
                f"node '{name}' ({op_name}) could not be converted: {_last_line(err)}", inputs)) from err

    def _shape_known(self, value):
        """``value``, an operator's result whose shape TVM could not infer because it
        does not prove a relation of its operands' shapes (an FPN's upsampled map plus
        the lateral one, of sizes 2 * ((h - 1) // 32 + 1) and (h - 1) // 16 + 1), rebuilt
        on operands checked for it at run time (:func:`with_shape_relations`), so that
        the converters of the nodes after it, many of which need a shape, have one."""
        ty = getattr(value, "ty", None)
        if isinstance(value, relax.Call) and isinstance(ty, relax.TensorType) and ty.ndim >= 0 \
                and not isinstance(ty.shape, relax.ShapeExpr):
            rebuilt = with_shape_relations(self.bb, value)
            if rebuilt is not value:
                return self.bb.normalize(rebuilt)
            if self._loop_depth:
                return self._sized(value)
        return value

    def _with_way_out(self, message: str, inputs) -> str:
        """A conversion error's ``message`` with the way out where one is known: an
        input of unknown rank (:data:`_UNKNOWN_RANK_HINT`), a node in an If branch
        (:data:`_BRANCH_HINT`)."""
        if any(_unknown_rank(value) for value in inputs):
            hint = _UNKNOWN_RANK_HINT
        elif self._conditions:
            hint = _BRANCH_HINT
        else:
            return message
        return message if hint in message else message.rstrip(".") + hint

    # -- the recurrent ops ---------------------------------------------------------

    def _convert_recurrent(self, op, inputs, attrs):
        bb = self.bb
        index = len(self.loops)
        name = attrs["tvm_custom"]["name"] or f"{op}_{index}"
        if any(loop.name == name for loop in self.loops):
            name = f"{name}_{index}"
        x, w, r = (inputs[i] if i < len(inputs) else None for i in range(3))
        if x is None or w is None or r is None:
            raise UnsupportedModelError(f"{op} node '{name}': inputs X, W and R are required")
        present = {
            label: inputs[i]
            for i, label in OPTIONAL_INPUTS.items()
            if i < len(inputs) and inputs[i] is not None
        }
        dtype = str(x.ty.dtype)
        loop = parse_recurrent_node(
            op, name, dict(attrs), set(present), _static_shape(w), _static_shape(r), dtype
        )
        if x.ty.ndim != 3:
            raise UnsupportedModelError(f"{op} node '{name}': X must be 3-d, got {x.ty}")
        fixed = {"B": [loop.num_directions, 2 * loop.rows], "P": [loop.num_directions, 3 * loop.hidden_size]}
        for label, want in fixed.items():
            if label in present and _static_shape(present[label]) != want:
                got = _static_shape(present[label])
                raise UnsupportedModelError(
                    f"{op} node '{name}': input {label} has shape "
                    f"{['?' if v is None else v for v in got]}, expected {want} "
                    f"({loop.num_directions} direction(s), hidden size {loop.hidden_size})")
        for label, expr in [("W", w), ("R", r)] + list(present.items()):
            want = "int32" if label == "sequence_lens" else dtype
            if label == "sequence_lens" and str(expr.ty.dtype) in ("int64", "int16", "int8"):
                continue
            if str(expr.ty.dtype) != want:
                raise UnsupportedModelError(
                    f"{op} node '{name}': input {label} has type {expr.ty.dtype}, expected {want}"
                )

        x, present = self._with_sizes(op, name, loop, x, w, present)
        if loop.layout == 1:  # batch-major: make it time-major for the kernel
            x = bb.normalize(relax.op.permute_dims(x, [1, 0, 2]))
            for label in ("initial_h", "initial_c"):
                if label in present:
                    present[label] = bb.normalize(relax.op.permute_dims(present[label], [1, 0, 2]))
        given = dict(present)  # (before the checks cast the states to X's batch)
        x, w, r, present = self._checked_shapes(op, name, loop, x, w, r, present)
        if "sequence_lens" in present and str(present["sequence_lens"].ty.dtype) != "int32":
            present["sequence_lens"] = bb.normalize(relax.op.astype(present["sequence_lens"], "int32"))
        seq, batch, _ = x.ty.shape.values
        nd, hidden = loop.num_directions, loop.hidden_size
        # The final states sized as the initial ones where given (checked equal to X's
        # batch above): a state carried through a Loop or passed around an If's other
        # branch then keeps one type.
        states = ["initial_h"] + (["initial_c"] if op == "LSTM" else [])
        out_types = [relax.TensorType([seq, nd, batch, hidden], dtype)] + [
            relax.TensorType(_state_shape(given.get(label), [nd, batch, hidden]), dtype)
            for label in states]
        out_types.append(relax.TensorType([nd, batch, loop.num_gates, 2], "int64"))
        out_types.append(relax.TensorType([nd, batch], "int32"))

        kernel = build_kernel(loop)
        if self._loop_depth:
            kernel = kernel.with_attr(LOOP_BODY_ATTR, True)
        kernel = bb.add_func(kernel, f"{op.lower()}_kernel")
        args = [x, w, r] + [present[label] for label in OPTIONAL_INPUTS.values() if label in present]
        call = bb.emit(relax.call_tir(kernel, args, out_ty=out_types))
        outs = [bb.emit(relax.TupleGetItem(call, i)) for i in range(len(out_types))]
        y, y_h = outs[0], outs[1]
        y_c = outs[2] if op == "LSTM" else None
        if loop.layout == 1:
            y = bb.normalize(relax.op.permute_dims(y, [2, 0, 1, 3]))
            y_h = bb.normalize(relax.op.permute_dims(y_h, [1, 0, 2]))
            if y_c is not None:
                y_c = bb.normalize(relax.op.permute_dims(y_c, [1, 0, 2]))
        results = [y, y_h] + ([y_c] if y_c is not None else [])
        if self._loop_depth:
            return self._in_loop_body(loop, results, outs[-1])
        self.loops.append(loop)
        stats, status = outs[-2], outs[-1]
        # In an If branch: counted only when the branch is taken.  One select per
        # enclosing If, the innermost first, left unbound so that each is bound after
        # its If (with the graph's outputs): SinkIntoBranches then takes each into its
        # If, and the kernel moves into its innermost branch.
        if self._conditions:
            no_stats, no_status = bb.emit(_zeros_of_type(stats)), bb.emit(_zeros_of_type(status))
        for cond in reversed(self._conditions):
            stats = relax.op.where(cond, stats, no_stats)
            status = relax.op.where(cond, status, no_status)
        for key, value in ((STATS_PREFIX + name, stats), (STATUS_PREFIX + name, status)):
            self._nodes[key] = self._kernel_outputs[key] = value
        return relax.Tuple(results)

    def _in_loop_body(self, loop, results, status):
        """The results of a recurrent node that a Loop's body runs, once per iteration.
        Its kernel is not one of the model's memoizable loops (each call is a sequence
        of its own, whose memo table starts empty) and has no counts among main's
        outputs; a sequence_lens out of range stops the call where it happens."""
        self.loop_body_nodes.append(loop)
        if not loop.has("sequence_lens"):
            return relax.Tuple(results)
        bad = self.bb.normalize(relax.op.not_equal(relax.op.max(status), relax.const(0, "int32")))
        message = f"{loop.op} node '{loop.name}' (in a Loop's body): a sequence_lens is outside [0, seq_length]"
        # Each result checked: the body may use any one of them (dead code goes).
        return relax.Tuple([self.bb.normalize(stop_if(self.bb, value, bad, message)) for value in results])


    def _with_sizes(self, op, name, loop, x, w, present):
        """x and the initial states and lengths with sizes where TVM knows only their
        rank (a Slice to a length computed at run time): symbolic steps and batch, the
        input size of W and the node's directions and hidden size.  The match checks them
        at run time (an InputError, see :func:`memotvm.passes.native_checks.input_error_message`).
        """
        labels = ["X"] + [label for label in ("initial_h", "initial_c", "sequence_lens") if label in present]
        operands = dict(present, X=x)
        if all(isinstance(operands[k].ty.shape, relax.ShapeExpr) for k in labels):
            return x, present
        for label in labels:
            if operands[label].ty.ndim != (1 if label == "sequence_lens" else 3):
                raise UnsupportedModelError(
                    f"{op} node '{name}': the rank of its input {label} is not known when "
                    "compiling; fix the inputs' shapes (shapes=, --shape)")
        if isinstance(x.ty.shape, relax.ShapeExpr):
            steps, batch, size = x.ty.shape.values
            if loop.layout == 1:
                steps, batch = batch, steps
        else:
            steps, batch = (tirx.Var(f"{name}_{axis}", "int64") for axis in ("steps", "batch"))
            size = (_static_shape(w) or [None] * 3)[2]
            size = tirx.Var(f"{name}_input_size", "int64") if size is None else tirx.IntImm("int64", size)
        nd, hidden = (tirx.IntImm("int64", v) for v in (loop.num_directions, loop.hidden_size))
        wanted = {"X": [steps, batch, size], "initial_h": [nd, batch, hidden],
                  "initial_c": [nd, batch, hidden], "sequence_lens": [batch]}
        for label in labels:
            expr = operands[label]
            if isinstance(expr.ty.shape, relax.ShapeExpr):
                continue
            dims = wanted[label]
            if loop.layout == 1 and label != "sequence_lens":
                dims = [dims[1], dims[0], dims[2]]
            operands[label] = self.bb.match_cast(expr, relax.TensorType(dims, expr.ty.dtype))
        return operands.pop("X"), operands

    def _checked_shapes(self, op, name, loop, x, w, r, present):
        """x, w, r and the optional inputs, checked at run time where their shapes are
        not known to fit together (the kernel's buffers assume they do): x's size
        against W's D, the initial states' and lengths' batch against x's, the initial
        states' directions and hidden size against W and R."""
        labels = ["X", "W", "R"] + [label for label in ("initial_h", "initial_c", "sequence_lens")
                                     if label in present]
        operands = [x, w, r] + [present[label] for label in labels[3:]]
        shapes = [list(e.ty.shape.values) if isinstance(e.ty.shape, relax.ShapeExpr) else None
                  for e in operands]
        if any(s is None for s in shapes):
            return x, w, r, present
        want = []
        for k, label in enumerate(labels[3:], start=3):
            if len(shapes[k]) != (1 if label == "sequence_lens" else 3):
                raise UnsupportedModelError(
                    f"{op} node '{name}': input {label} has rank {len(shapes[k])}")
            if label == "sequence_lens":
                want.append(((0, 1), (k, 0)))
            else:
                want += [((1, 0), (k, 0)), ((0, 1), (k, 1)), ((2, 2), (k, 2))]
        want.append(((1, 2), (0, 2)))
        # Sizes that cannot match whatever the inputs (a model exported wrong) are the
        # model's error, said before the run-time checks' casts fail inside TVM.
        for (i, a), (j, b) in want:
            da, db = shapes[i][a], shapes[j][b]
            if isinstance(da, tirx.IntImm) and isinstance(db, tirx.IntImm) and int(da) != int(db):
                axis = _AXIS_NAMES.get(labels[j], _STATE_AXES)[b]
                raise UnsupportedModelError(
                    f"{op} node '{name}': input {labels[j]} has {axis} {int(db)}, but "
                    f"{labels[i]} has {int(da)}")
        for (i, a), (j, b) in want:  # a state's own batch symbol is X's batch
            if j >= 3 and isinstance(shapes[j][b], tirx.Var):
                known = _as_size(shapes[i][a])
                if isinstance(known, (tirx.IntImm, tirx.Var)):
                    self.implied_sizes.setdefault(shapes[j][b].name, _dim(known))
        equal = [pair for first, second in want if (pair := unproven(shapes, first, second))]
        if not equal:
            return x, w, r, present
        out = require_equal(self.bb, operands, shapes, equal, f"{op} node '{name}'", labels)
        return out[0], out[1], out[2], {**present, **dict(zip(labels[3:], out[3:]))}


# What the axes of a recurrent node's inputs are (the initial states: _STATE_AXES).
_AXIS_NAMES = {"X": ("steps", "batch", "input size"), "sequence_lens": ("batch",)}
_STATE_AXES = ("directions", "batch", "hidden size")


def _static_shape(expr):
    shape = expr.ty.shape
    if shape is None or not hasattr(shape, "values"):
        return [None]
    return [int(v) if isinstance(v, tvm.tirx.IntImm) else None for v in shape.values]


def _as_size(v):
    """A dimension simplified knowing that the sizes it is computed from are not
    negative (TVM's converters leave a batch as ``T.max(n, 0)``)."""
    if isinstance(v, (tirx.IntImm, tirx.Var)):
        return v
    analyzer = tvm.sym.Analyzer()
    for var in tirx.analysis.undefined_vars(v):
        analyzer.update(var, tvm.sym.ConstIntBound(0, tvm.sym.ConstIntBound.POS_INF))
    return analyzer.simplify(v)


def _dim(v):
    """A static dimension as int, a symbolic one by its name, anything else None."""
    if isinstance(v, tvm.tirx.IntImm):
        return int(v)
    if isinstance(v, tvm.tirx.Var):
        return v.name
    return None


def _opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 1


def import_onnx(model: onnx.ModelProto, shapes: dict | None = None,
                fixed_inputs: dict | None = None) -> ImportedModel:
    """Convert a loaded, checked ONNX model into an :class:`ImportedModel`.

    ``shapes`` optionally fixes input shapes (name -> list of ints), as TVM's importer
    allows; by default dynamic dimensions stay symbolic.  ``fixed_inputs`` binds inputs
    to values (name -> array or number): they become constants and are no longer inputs.
    Values computable from constants are folded first (:mod:`.folding`).
    """
    _check_value_types(model.graph)
    model = _unknown_sizes_named(model)
    shapes = checked_shape_overrides(model.graph, shapes)
    model = DequantizeContribOps()(DequantizeRecurrentWeights()(bind_inputs(model, fixed_inputs)))
    model = SequencesAsScanOutputs()(ScanAsLoop()(model))
    shapes = {name: dims for name, dims in shapes.items() if name not in (fixed_inputs or {})}
    model = SplitOnRankChangingIfs()(ConstantFolding()(with_input_shapes(model, shapes)))
    model = LegacyOperatorForms()(model)
    mod, importer, graph, rec_names = _converted(model, shapes)
    assert [loop.name for loop in importer.loops] == rec_names, "recurrent node order"
    # (Folded before BoundedGather too: an index that folds needs no run-time check.)
    mod = FoldConstantCalls()(CheckShapeRelations()(BoundedGather()(FoldConstantCalls()(mod))))
    mod = UnifyParameterSizes()(mod)
    initializers = {t.name for t in graph.initializer}
    input_names = [i.name for i in model.graph.input if i.name not in initializers]
    params = mod["main"].params
    input_types = {}
    for name, var in zip(input_names, params):
        shape = var.ty.shape
        dims = [_dim(v) for v in shape.values] if hasattr(shape, "values") else None
        input_types[name] = (dims, str(var.ty.dtype))
    output_names = [o.name for o in model.graph.output]
    returned = mod["main"].ret_ty
    returned = list(returned.fields) if hasattr(returned, "fields") else [returned]
    output_types = {name: _tensor_type(ty) for name, ty in zip(output_names, returned)}
    return ImportedModel(
        mod=mod,
        input_names=input_names,
        input_types=input_types,
        output_names=output_names,
        output_types=output_types,
        loops=importer.loops,
        loop_body_nodes=list(dict.fromkeys(loop.name for loop in importer.loop_body_nodes)),
        index_ranges=_gather_index_ranges(model.graph, set(input_names)),
        operators=_operator_counts(model.graph),
        recurrent_state=_recurrent_state(model.graph, input_names),
        implied_sizes=dict(importer.implied_sizes),
    )


# At most this many If branches of a model are compiled as unreachable.
_MAX_UNREACHABLE = 16


def _converted(model: onnx.ModelProto, shapes: dict):
    """The Relax module of ``model`` (folded), its importer, the graph it converted
    (with the kernels' counts as extra outputs) and the recurrent nodes' names.

    A branch of an If that cannot be converted for the inputs' shapes is compiled as
    unreachable (a run-time stop where it is taken, with a warning now), and the
    import redone: its recurrent nodes are then not kernels of the model."""
    unreachable = {}
    while True:
        graph = onnx.GraphProto()
        graph.CopyFrom(model.graph)
        shapes_as_tensors(graph)
        _name_branches_apart(graph)
        rec_names = _recurrent_node_names(graph, skipped=set(unreachable))
        for name in rec_names:  # extra outputs: each kernel's stats and status
            graph.output.add().name = STATS_PREFIX + name
            graph.output.add().name = STATUS_PREFIX + name
        importer = RecurrentGraphImporter(shapes, "float32", keep_params_in_input=False,
                                          unreachable=unreachable)
        error = None
        with captured_tvm_output("import"):
            try:
                mod = importer.from_onnx(graph, _opset(model))
            except BranchFailure as err:
                error = BranchFailure(str(err), err.key)
            except MemoTVMError as err:
                # Raised again without the frames that hold the importer: its block
                # builder, destroyed mid-build, prints a warning from C++, which is to be
                # captured here rather than land on the user's terminal later.
                error = type(err)(str(err))
            if error is not None:
                del importer
                gc.collect()
        if isinstance(error, BranchFailure):
            if error.key in unreachable or len(unreachable) >= _MAX_UNREACHABLE:
                raise UnsupportedModelError(str(error))
            unreachable[error.key] = str(error)
            warnings.warn(f"{_first_sentence(str(error))}. The node is in a branch of an If: "
                          "the model compiles without that branch, and a call that takes it stops "
                          "with an InputError; where your inputs never take it, bind the input its "
                          "condition depends on (compile(..., fixed_inputs={name: value}), CLI --fix "
                          "NAME=VALUE) so that the If folds away", UnreachableBranchWarning, stacklevel=4)
            continue
        if error is not None:
            raise error
        return mod, importer, graph, rec_names


def _recurrent_state(graph, input_names) -> dict:
    """The graph inputs from which a recurrent node's initial_h or initial_c is computed,
    and the graph outputs computed from a recurrent node's Y_h or Y_c (through any
    operators: tf2onnx slices one state tensor into both LSTMs' h and c, and stacks
    their finals into one output)."""
    nodes = list(all_nodes(graph))
    consumers = {}
    for node in nodes:
        for name in node_inputs(node):
            consumers.setdefault(name, []).append(node)

    def reached_from(start, edge):  # value names reachable from ``start`` along ``edge``
        seen, todo = set(start), list(start)
        while todo:
            for name in edge(todo.pop()):
                if name and name not in seen:
                    seen.add(name)
                    todo.append(name)
        return seen

    producers = {out: node for node in nodes for out in node.output}
    initial = [node.input[i] for node in nodes if node.op_type in RECURRENT_OPS
               for i in (5, 6) if i < len(node.input) and node.input[i]]
    final = [node.output[i] for node in nodes if node.op_type in RECURRENT_OPS
             for i in (1, 2) if i < len(node.output) and node.output[i]]
    upstream = reached_from(initial, lambda v: node_inputs(producers[v]) if v in producers else [])
    downstream = reached_from(final, lambda v: [o for n in consumers.get(v, []) for o in n.output])
    return {"inputs": [name for name in input_names if name in upstream],
            "outputs": [o.name for o in graph.output if o.name in downstream]}


def _operator_counts(graph, counts=None) -> dict:
    counts = {} if counts is None else counts
    for node in graph.node:
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        counts[op] = counts.get(op, 0) + 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _operator_counts(attr.g, counts)
    return counts


# Element types the compiled code can take as inputs (TVM has no string or complex type).
_INPUT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32,
                onnx.TensorProto.INT64, onnx.TensorProto.UINT8, onnx.TensorProto.UINT16,
                onnx.TensorProto.UINT32, onnx.TensorProto.UINT64, onnx.TensorProto.BOOL}


def _graph_inputs(graph) -> list:
    initializers = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in initializers]


def _check_value_types(graph) -> None:
    """Inputs must be tensors of the types memotvm supports, and outputs declared with a
    type tensors (a sequence or optional output would be returned as something else)."""
    for value in graph.output:
        kind = value.type.WhichOneof("value")
        if kind not in (None, "tensor_type"):
            raise UnsupportedModelError(f"output '{value.name}' has {kind.replace('_type', '')} type, "
                                        "not tensor type; memotvm compiles models whose outputs are tensors")
    for value in _graph_inputs(graph):
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            raise UnsupportedModelError(f"input '{value.name}' is a {kind or 'value without a type'}, "
                                        "not a tensor; memotvm compiles tensor inputs only")
        elem = value.type.tensor_type.elem_type
        if elem not in _INPUT_TYPES:
            raise UnsupportedModelError(
                f"input '{value.name}' has element type "
                f"{onnx.TensorProto.DataType.Name(elem) if elem in onnx.TensorProto.DataType.values() else elem}, "
                "which memotvm does not support (floats, integers and bool are)")


def _unknown_sizes_named(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every input dimension of unknown size given a name of its own:
    one declared with a negative size (paddle2onnx writes -1), with neither size nor
    name, or named "?".  TVM's importer took -1 for a size (a batch of -1), gave every
    nameless dimension one shared variable (so that inputs which onnxruntime runs
    were refused), and "?" a new one at each use, which memotvm's input checks, by
    name, took for one."""
    taken = {dim.dim_param for value in model.graph.input
             for dim in value.type.tensor_type.shape.dim}
    unknown = [(value.name, axis) for value in _graph_inputs(model.graph)
               for axis, dim in enumerate(value.type.tensor_type.shape.dim)
               if not (dim.HasField("dim_value") and dim.dim_value > 0)
               and dim.dim_param in ("", "?")]
    if not unknown:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    inputs = {value.name: value for value in copy.graph.input}
    for name, axis in unknown:
        symbol = f"{name}_size{axis}"
        while symbol in taken:
            symbol += "_"
        taken.add(symbol)
        inputs[name].type.tensor_type.shape.dim[axis].dim_param = symbol
    return copy


def checked_shape_overrides(graph, shapes) -> dict:
    """``shapes`` of compile(): input name -> a list of positive ints, one per axis of an
    input of the graph (inputs not named keep the shapes the model declares)."""
    if shapes is None:
        return {}
    if not isinstance(shapes, dict):
        raise ConfigError(f"shapes must map input names to shapes, got {type(shapes).__name__}")
    inputs = {v.name: v for v in _graph_inputs(graph)}
    for name, shape in shapes.items():
        if name not in inputs:
            raise ConfigError(f"shapes names '{name}', which is not an input of the model "
                              f"(inputs: {', '.join(inputs) or 'none'})")
        if not isinstance(shape, (list, tuple)) or not all(
                isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)) and d > 0
                for d in shape):
            raise ConfigError(f"shapes['{name}'] must be a list of positive ints, got {shape!r}")
        declared = inputs[name].type.tensor_type.shape
        if inputs[name].type.tensor_type.HasField("shape") and len(declared.dim) != len(shape):
            raise ConfigError(f"shapes['{name}'] has {len(shape)} axes; input '{name}' has "
                              f"{len(declared.dim)}")
    return {name: [int(d) for d in shape] for name, shape in shapes.items()}


def _tensor_type(ty):
    """(dims, dtype) of a Relax tensor type, as input_types holds them (dims None where
    the rank is unknown)."""
    shape = getattr(ty, "shape", None)
    dims = [_dim(v) for v in shape.values] if hasattr(shape, "values") else None
    return dims, str(getattr(ty, "dtype", "unknown"))


def _gather_index_ranges(graph, inputs) -> dict:
    """Inputs used directly as Gather indices into a constant table (embeddings).

    TVM's gather reads without bounds checks, so the runtime checks these indices
    against the table size before the call: an out-of-range token is an input error,
    not an out-of-bounds read.
    """
    tables = {t.name: list(t.dims) for t in graph.initializer}
    ranges = {}
    for node in graph.node:
        if node.op_type != "Gather" or len(node.input) < 2:
            continue
        data, indices = node.input[0], node.input[1]
        if indices in inputs and data in tables:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            dims = tables[data]
            size = dims[axis % len(dims)] if dims else 0
            ranges[indices] = min(size, ranges.get(indices, size))
    return ranges


def _recurrent_node_names(graph, names=None, skipped=frozenset()) -> list:
    """The names the importer will give the recurrent nodes (unique, never empty), in
    the order it converts them: graph order, an If's then branch before its else;
    none from the branches whose keys are ``skipped`` (unreachable)."""
    names = [] if names is None else names
    for node in graph.node:
        if node.op_type == "If":
            for label in ("then_branch", "else_branch"):
                branch = next((a.g for a in node.attribute if a.name == label), None)
                if branch is not None and _branch_key(branch) not in skipped:
                    _recurrent_node_names(branch, names, skipped)
        if node.op_type in RECURRENT_OPS:
            index = len(names)
            name = node.name or f"{node.op_type}_{index}"
            if name in names:
                name = f"{name}_{index}"
            names.append(name)
    return names


class BranchFailure(UnsupportedModelError):
    """A node of an If branch could not be converted; ``key`` is the branch's
    (:func:`_branch_key`)."""

    def __init__(self, message: str, key: tuple):
        super().__init__(message)
        self.key = key


def _last_line(err: BaseException) -> str:
    """What an error TVM raised says last (its traceback lines come before)."""
    lines = str(err).strip().splitlines()
    return lines[-1] if lines else type(err).__name__


def _first_sentence(message: str) -> str:
    """A conversion error without the way out appended to it (:data:`_BRANCH_HINT`)."""
    return message.split(_BRANCH_HINT)[0].split(_UNKNOWN_RANK_HINT)[0]


def _name_branches_apart(graph, names=None) -> None:
    """Give every If branch of ``graph`` (at any depth) a name no other branch has, so
    that :func:`_branch_key` tells them apart: two Ifs may have branches of the same
    name, size and outputs (names need only be unique within a graph and its own
    subgraphs), which took each other's condition."""
    names = set() if names is None else names
    for node in graph.node:
        for attr in node.attribute:
            if attr.type != onnx.AttributeProto.GRAPH:
                continue
            base, count = attr.g.name, 1
            while attr.g.name in names:
                count += 1
                attr.g.name = f"{base}_{count}"
            names.add(attr.g.name)
            _name_branches_apart(attr.g, names)


# A recurrent cell written out by hand: a matrix product and a gate function.
_PRODUCT_OPS = {"MatMul", "Gemm"}
_GATE_OPS = {"Sigmoid", "Tanh", "HardSigmoid"}


def hand_written_cell(operators) -> list:
    """The operators among ``operators`` that make what looks like a recurrent cell
    written out by hand (a matrix product and a gate function, as exporters unroll a
    cell), or [] where they do not."""
    ops = set(operators)
    if ops & _PRODUCT_OPS and ops & _GATE_OPS:
        return sorted(ops & (_PRODUCT_OPS | _GATE_OPS))
    return []


# ONNX's operators on sequences (a list of tensors, as torch exports a Python list).
SEQUENCE_OPS = {"SequenceEmpty", "SequenceConstruct", "SequenceInsert", "SequenceAt", "SequenceErase",
                "SequenceLength", "SequenceMap", "SplitToSequence", "ConcatFromSequence"}


def _sequence_message(loop, node) -> str:
    """Why a Loop that works on an ONNX sequence in its body is refused: the one use of
    sequences that compiles was rewritten (:mod:`.loop_sequences`), and this is another."""
    return (f"node '{node.name or node.output[0]}' ({node.op_type}) in the body of Loop "
            f"'{loop.name}': ONNX sequences in a loop are supported only as a list the loop "
            "appends one tensor to per iteration (SequenceEmpty before it, one SequenceInsert "
            "at the end in its body) and that is only concatenated or stacked after it "
            "(ConcatFromSequence); this one is used otherwise. Where you can, collect the "
            "values by concatenating tensors instead, or return the list stacked")


def _state_shape(initial, shape: list) -> list:
    """The shape of a recurrent node's final state: its initial state's where that is
    given with a known shape (the same sizes, proven so), else ``shape``."""
    if initial is not None and isinstance(initial.ty.shape, relax.ShapeExpr):
        return list(initial.ty.shape.values)
    return shape


def _branch_key(graph) -> tuple:
    """Identifies an If branch (protobuf gives a new wrapper object at each access):
    output names are unique in a model, and the name and size tell apart branches that
    only pass outer values through."""
    return graph.name, len(graph.node), tuple(o.name for o in graph.output)


def _zeros_of_type(x):
    """Zeros of x's shape and type, from its declared shape where it has one: a branch
    that is not taken reports zero counts without reading the kernel's, so that the
    kernel can move into its branch (:class:`memotvm.passes.branches.SinkIntoBranches`)."""
    if isinstance(x.ty, relax.TensorType) and isinstance(x.ty.shape, relax.ShapeExpr):
        return relax.op.zeros(x.ty.shape, x.ty.dtype)
    return relax.op.zeros_like(x)


# Why a value's rank can be unknown, and what settles it.
_UNKNOWN_RANK_HINT = (
    ". Its input has no known rank: it comes from an If whose branches give different "
    "ranks (as torch exports a scripted squeeze or an unbatched-input test), decided by "
    "the inputs' shapes; compile with the inputs' shapes fixed (compile(..., shapes="
    "{name: [sizes]}), CLI --shape NAME=D0,D1,...) so that its condition folds")


# A branch that cannot be built for the inputs' shapes is often one they never take
# (a detector's 8 kHz branch given a 16 kHz chunk).
_BRANCH_HINT = (
    ". The node is in a branch of an If: where that branch is not taken for your "
    "inputs, bind the input its condition depends on (compile(..., fixed_inputs="
    "{name: value}), CLI --fix NAME=VALUE) so that the If folds away")


def _unknown_rank(value) -> bool:
    """Whether ``value`` (a converter's input) is a tensor or shape of unknown rank."""
    ty = getattr(value, "ty", None)
    return isinstance(ty, (relax.TensorType, relax.ShapeType)) and ty.ndim == -1
