"""Converters for ONNX operators where TVM's frontend refuses valid models or departs
from the ONNX spec, which memotvm's importer uses before TVM's own.

* Shapes into any operator: TVM's frontend keeps the results of Shape (and of some
  operators on them) as shape values and lets only SHAPE_INPUT_OPS take them; it refuses
  one anywhere else ("cannot handle ShapeExpr inputs").  :func:`shapes_as_tensors`
  renames the other operators' inputs to ``name + AS_TENSOR``, which the importer's
  table of values answers with the shape as a tensor.
* TopK whose k is computed from shapes and equals its axis size (torch's export of
  ``pack_padded_sequence(..., enforce_sorted=False)`` sorts the lengths so): a stable
  sort.  TVM takes only a constant k.
* Slice with constant bounds, clamped as the spec says (TVM follows numpy, fails to
  compile empty slices of static axes, and overflows on extreme bounds).
* Expand to a shape held in a tensor, broadcast both ways as ONNX says (TVM broadcasts
  x to the shape as given, a 1 in it included); Expand of a shape value (tf2onnx
  expands a sequence's length to one per batch row), which TVM cannot take.
* Resize where TVM's departs from ONNX (:mod:`.resize`: scales whose product with a
  size is not whole, antialias, axes, aspect-ratio policies).
* Expand to a constant shape, Squeeze without axes, and Split into parts of size 0, on
  tensors with dynamic dimensions (TVM fails on them): Expand keeps a dynamic dimension
  against a 1 and requires it equal to any other size (checked at run time); Squeeze
  removes the dimensions known to be 1 and checks at run time that no dynamic one is 1
  (ONNX would remove it too); the parts of a Split are taken by index.
* Squeeze of given axes of dynamic size (a detector's frames, 1 for one chunk): checked
  at run time to be 1, as ONNX requires, then removed (TVM refuses them).
* A shape value gathered by a 1-D index stays a shape value, and ConstantOfShape and
  Reshape take a tensor computed from shapes (integer arithmetic, slices,
  concatenations, element counts): TVM asserted inside its lowering, or refused them.
* Concat of shape values with tensors (a shape value where the tensors derive from
  shapes too): TVM takes one kind or the other.
* Max and Min of floats propagate NaN, as onnx.reference and onnxruntime do (TVM's
  compare-and-select drops a NaN first operand).
* Conv and pools with auto_pad SAME over dynamic axes at stride 1 (explicit pads).
* Equal of shape values: decided where the dimensions' expressions prove it, else at
  run time (TVM compared the expressions' forms: a symbolic size was never equal to 1).
* Cast to bool of a shape value: true where non-zero (TVM made a bool constant of each
  dimension and failed on 2).
* Dropout at inference: its mask is boolean (TVM's has the data's type).
* Softmax, LogSoftmax and Hardmax before opset 13 over the input coerced to 2-D, or
  refused with the way out where that needs a shape not known when compiling.
* OneHot in the values' type (TVM's is float64), with values and indices from anywhere.
* Operators TVM's frontend lacks (:data:`SPEC_ONLY_OPS`): ReverseSequence (which
  sequence models use around recurrent layers), Celu, LpNormalization, ConvInteger
  (what onnxruntime's dynamic quantization makes of Conv: the convolution of the
  operands less their zero points, exact in int32), and QLinearConv and QLinearMatMul
  (what its static quantization makes of Conv and MatMul in the operator format: the
  same int32 sums, requantized as onnxruntime does).
"""

from __future__ import annotations

import numpy as np
import onnx
import tvm
from tvm import relax, te
from tvm.relax.frontend.onnx import onnx_frontend


from ..errors import UnsupportedModelError
from . import resize
from ..passes._relax_util import elements
from ..passes.native_checks import assert_that, checked, each_element
from ..passes.shape_checks import proven, provably_equal, require, shape_text, simplified

# The operators TVM's frontend lets take a shape value (a ShapeExpr: what Shape, and these
# operators applied to its result, give), as listed in its _construct_nodes.  It refuses a
# shape anywhere else ("cannot handle ShapeExpr inputs"): torch exports of packed
# sequences take ReduceProd of a Shape.  Such inputs are renamed with AS_TENSOR, and the
# importer hands those operators the shape as a tensor.
SHAPE_INPUT_OPS = {"Reshape", "Resize", "ConstantOfShape", "Gather", "Slice", "Shape", "Expand",
                   "Concat", "Equal", "Where", "Cast", "CastLike", "Squeeze", "If"}
AS_TENSOR = "::memotvm_as_tensor"
# Operators only this module converts (TVM's frontend has no converter for them).
SPEC_ONLY_OPS = {"ReverseSequence", "Celu", "LpNormalization", "ConvInteger", "QLinearConv", "QLinearMatMul"}
# Slice bounds of this magnitude or beyond mean an end of the axis (exporters write
# INT64_MIN, INT64_MAX, torch.flip -INT64_MAX, and TensorFlow's INT32_MAX): no axis of a
# tensor a model computes is 2^31 long, and clamping to the size instead would leave
# min(2147483647, n) in the shapes after it, which TVM's passes do not all treat as n.
_SLICE_BOUND = (1 << 31) - 1


class _Values(dict):
    """The importer's table of converted values, which also answers ``name + AS_TENSOR``:
    the value of ``name``, as a tensor where it is a shape."""

    def __init__(self, values, importer):
        super().__init__(values)
        self.importer = importer

    def __getitem__(self, name):
        if not name.endswith(AS_TENSOR):
            return super().__getitem__(name)
        value = super().__getitem__(name[:-len(AS_TENSOR)])
        if isinstance(value, relax.Expr) and isinstance(value.ty, relax.ShapeType):
            return self.importer.bb.normalize(relax.op.shape_to_tensor(value))
        return value

    def get(self, name, default=None):
        return self[name] if name in self else default

    def __contains__(self, name):
        return super().__contains__(name[:-len(AS_TENSOR)] if name.endswith(AS_TENSOR) else name)


class SpecConverters:
    """Mixin for a subclass of TVM's ONNXGraphImporter: the converters above, tried
    by :meth:`convert_by_spec` before TVM's."""

    # TVM's importer assigns its table of values (again after each If branch): keep it a
    # _Values.
    @property
    def _nodes(self):
        return self._values

    @_nodes.setter
    def _nodes(self, values):
        self._values = _Values(values, self)

    def convert_by_spec(self, op_name, inputs, attrs, opset):
        """This module's conversion of the node, or None where TVM's applies."""
        method = _CONVERTERS.get(op_name)
        if method is None:
            return None
        return getattr(self, method)(op_name, attrs["tvm_custom"]["name"], inputs, attrs, opset)

    def _tvm_convert(self, op_name, inputs, attrs, opset):
        """TVM's own converter of op_name (on inputs or attributes this module fixed)."""
        return onnx_frontend._get_convert_map()[op_name].get_converter(opset)(
            self.bb, inputs, attrs, [self._nodes, self._params])

    def _expand(self, op_name, name, inputs, attrs, opset):
        """Expand to a shape held in a tensor, or to a constant shape where x has
        dynamic dimensions; TVM's converter for the rest."""
        if isinstance(inputs[0].ty, relax.ShapeType):
            return self._expand_shape_value(name, inputs[0], inputs[1])
        target = self._constant(inputs[1])
        if target is None and isinstance(inputs[1].ty, relax.ShapeType):  # (in a loop's body)
            expanded = self._expand_to_symbolic_shape(inputs[0], inputs[1])
            if expanded is not None:
                return expanded
            inputs = _copied([inputs[0], self.bb.normalize(relax.op.shape_to_tensor(inputs[1]))])
        if target is None and isinstance(inputs[1].ty, relax.TensorType):
            return self._expand_to_tensor_shape(inputs, attrs, opset)
        if target is not None and _dynamic_dims(inputs[0]):
            return self._expand_to_constant_shape(name, inputs[0], target)
        return None

    def _squeeze(self, op_name, name, inputs, attrs, opset):
        if not _dynamic_dims(inputs[0]):
            return None
        axes = attrs.get("axes")
        if len(inputs) > 1 and inputs[1] is not None:
            axes = self._constant(inputs[1])
            if axes is None:
                return None  # (TVM's converter says what it cannot do)
        if axes is None or len(np.asarray(axes).reshape(-1)) == 0:
            return self._squeeze_known_ones(name, inputs[0])
        return self._squeeze_checked_axes(name, inputs[0], [int(a) for a in np.asarray(axes).reshape(-1)])

    def _squeeze_checked_axes(self, name, data, axes):
        """Squeeze of given axes some of which have symbolic sizes (the frames left
        after a detector's strided convolutions, 1 for one chunk): each is checked at
        run time to be 1, as ONNX requires of a squeezed axis, then removed.  None where
        every axis is static (TVM's converter does it) or one is out of range."""
        dims = list(data.ty.shape.values)
        if any(not -len(dims) <= a < len(dims) for a in axes):
            return None
        axes = sorted({a % len(dims) for a in axes})
        symbolic = [a for a in axes if not isinstance(dims[a], tvm.tirx.IntImm)]
        if not symbolic:
            return None
        data = require(self.bb, data, [dims], {
            "op": f"node '{name}' (Squeeze)", "names": ["its input"], "one": [[0, a] for a in symbolic],
            "why": "; a squeezed axis must have size 1"})
        ones = [tvm.tirx.const(1, "int64") if a in symbolic else dim for a, dim in enumerate(dims)]
        data = self.bb.match_cast(data, relax.TensorType(ones, data.ty.dtype))
        return self.bb.normalize(relax.op.squeeze(data, axes))

    def _gather(self, op_name, name, inputs, attrs, opset):
        if isinstance(inputs[0], relax.ShapeExpr) and attrs.get("axis", 0) in (0, -1):
            return self._gather_dimensions(inputs[0], inputs[1])
        return None

    def _constant_of_shape(self, op_name, name, inputs, attrs, opset):
        """ConstantOfShape of a tensor whose values derive from shapes (TVM takes only
        a shape value there)."""
        values = _shape_values(self.bb, inputs[0]) if isinstance(inputs[0].ty, relax.TensorType) else None
        return None if values is None else self._tvm_convert(
            "ConstantOfShape", [relax.ShapeExpr(values)], attrs, opset)

    def _reshape(self, op_name, name, inputs, attrs, opset):
        """Reshape to a tensor whose values derive from shapes (TVM takes only a shape
        value or a constant there).  ``allowzero`` (torch's dynamo exporter sets it)
        changes only what a 0 means, so it is taken where no value is 0."""
        if not isinstance(inputs[1].ty, relax.TensorType):
            return None
        values = _shape_values(self.bb, inputs[1])
        if values is None:
            return None
        if attrs.get("allowzero", 0) and any(isinstance(v, tvm.tirx.IntImm) and int(v) == 0 for v in values):
            return None
        data = inputs[0]
        if isinstance(data, relax.ShapeExpr):
            data = self.bb.normalize(relax.op.shape_to_tensor(data))
        # 0 (copy) and -1 (inferred) as reshape takes them from a constant.
        dims = [int(v) if isinstance(v, tvm.tirx.IntImm) else v for v in values]
        return self.bb.normalize(relax.op.reshape(data, dims))

    def _concat(self, op_name, name, inputs, attrs, opset):
        """Concat of shape values and tensors (torch's dynamo export builds the shape
        [T, B, directions * H] of a recurrent output from sliced Shapes and a product
        of two of them): TVM takes shapes or tensors, not both.  Where the tensors'
        values derive from shapes too, the result is a shape value; otherwise the
        shapes become tensors."""
        is_shape = [isinstance(x.ty, relax.ShapeType) for x in inputs]
        if all(is_shape) or not any(is_shape):
            return None
        values = [_shape_values(self.bb, x) for x in inputs]
        if all(v is not None for v in values) and all(
                is_shape[i] or (x.ty.ndim == 1 and x.ty.dtype == "int64") for i, x in enumerate(inputs)):
            flat = [v for part in values for v in part]
            # (-1 and 0 mean "inferred" and "copied" to Reshape: left to the tensor form,
            # which _reshape reads.)
            if not any(isinstance(v, tvm.tirx.IntImm) and int(v) <= 0 for v in flat):
                return relax.ShapeExpr(flat)
        parts = [self.bb.normalize(relax.op.shape_to_tensor(x)) if is_shape[i] else x
                 for i, x in enumerate(inputs)]
        return self.bb.normalize(relax.op.concat(parts, axis=int(attrs.get("axis", 0))))

    def _clip(self, op_name, name, inputs, attrs, opset):
        """Clip of a float tensor by constant bounds as Relax's ``clip``, which the
        passes after import recognize (the convolution epilogues: a hard-swish after a
        convolution).  TVM's converter emits two kernels of its own behind a NaN test
        of each bound.  A NaN bound is no bound (as onnxruntime).  None (TVM's
        converter) for a bound computed at run time, an integer tensor, or a lower
        bound above the upper one (ONNX then gives the upper bound everywhere)."""
        x = inputs[0]
        if not isinstance(x.ty, relax.TensorType) or not str(x.ty.dtype).startswith("float"):
            return None
        if opset < 11:
            bounds = [attrs.get("min", -np.inf), attrs.get("max", np.inf)]
        else:
            bounds = []
            for i, unbounded in ((1, -np.inf), (2, np.inf)):
                given = inputs[i] if len(inputs) > i else None
                value = unbounded if given is None else self._constant(given)
                if value is None or np.size(value) != 1:
                    return None
                bounds.append(unbounded if np.isnan(value).any() else float(np.asarray(value).reshape(())))
        lo, hi = (float(b) for b in bounds)
        if lo > hi:
            return None
        return self.bb.normalize(relax.op.clip(x, lo, hi))

    def _extremum(self, op_name, name, inputs, attrs, opset):
        if all(isinstance(x.ty, relax.TensorType) and str(x.ty.dtype).startswith("float") for x in inputs):
            return self._nan_propagating_extremum(op_name, inputs)
        return None

    def _pooling(self, op_name, name, inputs, attrs, opset):
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad in ("SAME_UPPER", "SAME_LOWER") and _dynamic_dims(inputs[0]):
            return self._same_padding(op_name, name, inputs, attrs, opset, upper=auto_pad == "SAME_UPPER")
        if auto_pad in ("NOTSET", "VALID") and _dynamic_dims(inputs[0]):
            checked_x = self._window_fits(op_name, name, inputs, attrs, auto_pad)
            if checked_x is not None:
                inputs = _copied(inputs)
                inputs[0] = checked_x
                return self.bb.normalize(self._tvm_convert(op_name, inputs, attrs, opset))
        return None

    def _window_fits(self, op_name, name, inputs, attrs, auto_pad):
        """The input of a convolution or pooling, checked at run time to be, along each
        dynamic spatial axis and with its padding, at least as long as the kernel's
        window: a shorter one has no output position (the generated code would index
        with a negative size).  None where the window is not known."""
        x = inputs[0]
        dims = list(x.ty.shape.values)[2:]
        kernel = attrs.get("kernel_shape")
        weight_shape = getattr(getattr(inputs[1], "ty", None), "shape", None) if op_name == "Conv" else None
        if kernel is None and isinstance(weight_shape, relax.ShapeExpr):
            kernel = [int(k) if isinstance(k, tvm.tirx.IntImm) else None for k in weight_shape.values[2:]]
        if kernel is None or None in kernel or len(kernel) != len(dims):
            return None
        nd = len(dims)
        pads = [0] * 2 * nd if auto_pad == "VALID" else list(attrs.get("pads", [0] * 2 * nd))
        strides = list(attrs.get("strides", [1] * nd))
        dilations = list(attrs.get("dilations", [1] * nd))
        ceil = bool(attrs.get("ceil_mode", 0))
        axes = [a for a in range(nd) if not isinstance(dims[a], tvm.tirx.IntImm)]
        # At least one output position: (n + pads - span) // stride >= 0, or with
        # ceil_mode, its ceiling > -1 (span = dilation * (k - 1) + 1).
        least = {a: dilations[a] * (kernel[a] - 1) + 1 - pads[a] - pads[nd + a]
                 - ((strides[a] - 1) if ceil else 0) for a in axes}
        least = {a: least[a] for a in axes if least[a] > 1}
        if not least:
            return None
        return self._at_least(op_name, name, x, dims, least, lambda a: (
            f" for its window of {kernel[a]} (dilation {dilations[a]}, padding {pads[a]} + "
            f"{pads[nd + a]}); it has no output position otherwise"))

    def _at_least(self, op_name, name, x, dims, least, why):
        """x, checked at run time to be at least ``least[a]`` long along each spatial
        axis a in ``least`` (``dims``: its spatial sizes); ``why(a)`` ends the message."""
        axes = list(least)
        shown = shape_text(x.ty.shape.values)

        def asserts(_x, v):
            for i, a in enumerate(axes):
                assert_that(v[i] >= tvm.tirx.const(least[a], "int64"),
                            f"{op_name} node '{name}': axis {a + 2} of its input {shown} must be "
                            f"at least {least[a]} long{why(a)}")

        return checked(self.bb, x, [dims[a] for a in axes], asserts, "check_window")

    def _conv_transpose(self, op_name, name, inputs, attrs, opset):
        """ConvTranspose with ``output_shape`` (TVM's converter ignores it: a silently
        different output), made explicit pads and output padding as ONNX defines them;
        and over symbolic sizes, the input checked at run time to be long enough for an
        output position where the padding crops more than the taps add."""
        x = inputs[0]
        if not isinstance(x.ty, relax.TensorType) or not isinstance(x.ty.shape, relax.ShapeExpr):
            return None
        dims = list(x.ty.shape.values)[2:]
        nd = len(dims)
        kernel = attrs.get("kernel_shape")
        weight_shape = getattr(getattr(inputs[1], "ty", None), "shape", None)
        if kernel is None and isinstance(weight_shape, relax.ShapeExpr):
            kernel = [int(k) if isinstance(k, tvm.tirx.IntImm) else None for k in weight_shape.values[2:]]
        if kernel is None or None in kernel or len(kernel) != nd:
            return None
        strides = list(attrs.get("strides", [1] * nd))
        dilations = list(attrs.get("dilations", [1] * nd))
        extra = list(attrs.get("output_padding", [0] * nd))
        if "output_shape" in attrs:
            attrs = self._pads_of_output_shape(name, dims, kernel, strides, dilations, extra, attrs)
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad == "NOTSET":
            pads = list(attrs.get("pads", [0] * 2 * nd))
            extra = list(attrs.get("output_padding", [0] * nd))
            # out = (n - 1) * stride + span + extra - pads >= 1
            least = {a: 1 - (-(pads[a] + pads[nd + a] - dilations[a] * (kernel[a] - 1) - extra[a])
                             // strides[a]) for a in range(nd) if not isinstance(dims[a], tvm.tirx.IntImm)}
            least = {a: n for a, n in least.items() if n > 1}
            if least:
                inputs = _copied(inputs)
                inputs[0] = self._at_least(op_name, name, x, dims, least, lambda a: (
                    f": its padding {pads[a]} + {pads[nd + a]} crops every output position otherwise"))
        return self.bb.normalize(self._tvm_convert(op_name, inputs, attrs, opset))

    @staticmethod
    def _pads_of_output_shape(name, dims, kernel, strides, dilations, extra, attrs):
        """``attrs`` with ``output_shape`` replaced by the pads and output padding that
        give it (ONNX: total padding = stride * (n - 1) + output_padding + (k - 1) *
        dilation + 1 - output size, split with the extra at the start unless auto_pad is
        SAME_UPPER; a larger output than that formula gives has zeros at its end, less
        than a stride of them, as onnxruntime allows)."""
        nd = len(dims)
        wanted = [int(v) for v in attrs["output_shape"]][-nd:]
        if any(not isinstance(d, tvm.tirx.IntImm) for d in dims):
            raise UnsupportedModelError(
                f"node '{name}' (ConvTranspose): output_shape {wanted} with input sizes "
                f"{shape_text(dims)} not known at compile time; fix them (--shape)")
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        upper = (auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad) == "SAME_UPPER"
        pads, padding = [0] * 2 * nd, list(extra)
        for a in range(nd):
            natural = strides[a] * (int(dims[a]) - 1) + extra[a] + (kernel[a] - 1) * dilations[a] + 1
            total = natural - wanted[a]
            if total < 0:
                if -total >= strides[a]:
                    raise UnsupportedModelError(
                        f"node '{name}' (ConvTranspose): output_shape {wanted} is inconsistent "
                        f"with its input sizes {shape_text(dims)}: axis {a + 2} can be at most "
                        f"{natural + strides[a] - 1} long")
                padding[a] = extra[a] - total
            else:
                head = total // 2 if upper else total - total // 2
                pads[a], pads[nd + a] = head, total - head
        out = {k: v for k, v in attrs.items() if k not in ("output_shape", "auto_pad")}
        out.update(pads=pads, output_padding=padding)
        return out

    def _slice(self, op_name, name, inputs, attrs, opset):
        if opset < 10:
            return None
        # Constant bounds of any shape read as a list, as onnxruntime reads them (torch's
        # scripted exports give [1, 1]); TVM's converter wants them 1-D.
        inputs = _copied(inputs)
        for i in range(1, min(len(inputs), 5)):
            value = None if inputs[i] is None else self._constant(inputs[i])
            if value is not None and value.ndim != 1:
                inputs[i] = relax.const(value.reshape(-1))
        out = self._onnx_slice(inputs)
        return out if out is not None else self.bb.normalize(self._tvm_convert(op_name, inputs, attrs, opset))

    def _top_k(self, op_name, name, inputs, attrs, opset):
        if opset >= 10 and self._constant(inputs[1]) is None:
            return self._convert_full_topk(name, inputs, attrs)
        return None

    def _cast(self, op_name, name, inputs, attrs, opset):
        """Cast of a shape value or a number to bool: true where non-zero, as ONNX says
        (TVM makes a bool constant of the number, which fails for 2)."""
        if attrs.get("to") != onnx.TensorProto.BOOL:
            return None
        value = inputs[0]
        if isinstance(value, relax.ShapeExpr) or (isinstance(value, relax.Expr)
                                                  and isinstance(value.ty, relax.ShapeType)):
            value = self.bb.normalize(relax.op.shape_to_tensor(value))
        elif tvm.ir.is_prim_expr(value):
            value = self.bb.normalize(relax.op.reshape(
                relax.op.shape_to_tensor(relax.ShapeExpr([value])), []))
        else:  # tensors: TVM's astype is right (and keeps NaN true, which != 0 would not)
            return None
        return relax.op.not_equal(value, relax.const(0, value.ty.dtype))

    def _equal(self, op_name, name, inputs, attrs, opset):
        """Equal of shape values (a dimension gathered from a Shape against a number):
        true or false where the dimensions' expressions prove it, else compared when
        the model runs.  TVM compared the expressions' forms, so that a symbolic frame
        count was never equal to 1, even where the inputs make it 1 (silero-vad squeezes
        a chunk's single frame when it is 1)."""
        if not all(isinstance(v, (relax.ShapeExpr, tvm.ir.GenericConst)) for v in inputs) \
                or not any(isinstance(v, relax.ShapeExpr) for v in inputs):
            return None
        lhs, rhs = (list(onnx_frontend.get_prim_expr_list(v)) for v in inputs)
        if len(lhs) != len(rhs) and 1 not in (len(lhs), len(rhs)):
            raise UnsupportedModelError(f"node '{name}' (Equal): its operands have {len(lhs)} "
                                        f"and {len(rhs)} elements")
        size = max(len(lhs), len(rhs))
        lhs, rhs = (side * size if len(side) == 1 else side for side in (lhs, rhs))
        decided = []
        for a, b in zip(lhs, rhs):
            a, b = (tvm.tirx.IntImm("int64", v) if isinstance(v, int) else v for v in (a, b))
            if provably_equal(a, b):
                decided.append(True)
            elif proven(a != b):
                decided.append(False)
            else:
                operands = [self.bb.normalize(relax.op.shape_to_tensor(relax.ShapeExpr(side)))
                            for side in (lhs, rhs)]
                return relax.op.equal(*operands)
        return relax.const(np.array(decided, bool), "bool")

    def _coerced_to_2d(self, op_name, name, inputs, attrs, opset):
        """Softmax, LogSoftmax and Hardmax before opset 13: over the input coerced to
        2-D at ``axis`` (the dimensions before it as rows, from it on as columns), as
        ONNX defined them then.  Where it knew only the input's rank, TVM's converter
        computed along ``axis`` alone (another result wherever ``axis`` is not the last),
        and its Hardmax failed inside TVM where the columns are not known when compiling:
        both are refused here with the way out."""
        if opset >= 13:
            return None
        x = inputs[0]
        if not isinstance(x.ty, relax.TensorType) or x.ty.ndim < 0:
            return None  # (TVM's converter says what it cannot do)
        rank = x.ty.ndim
        axis = int(attrs.get("axis", 1))
        if not -rank <= axis < max(rank, 1):
            raise UnsupportedModelError(f"node '{name}' ({op_name}): axis {axis} is out of range "
                                        f"for an input of rank {rank}")
        axis %= max(rank, 1)
        modern = {**attrs, "axis": -1}
        if axis >= rank - 1:  # (one axis: the two definitions agree)
            return self._tvm_convert(op_name, _copied([x]), modern, 13)
        if not isinstance(x.ty.shape, relax.ShapeExpr):
            raise UnsupportedModelError(
                f"node '{name}' ({op_name}, opset {opset}) flattens its input from axis {axis}, "
                "whose shape is not known when compiling: declare the input shapes (--shape)")
        dims = list(x.ty.shape.values)
        columns = simplified(elements(dims[axis:]))
        if op_name == "Hardmax" and not isinstance(columns, tvm.tirx.IntImm):
            raise UnsupportedModelError(
                f"node '{name}' (Hardmax, opset {opset}) makes one-hot rows of {columns} columns, "
                "not known when compiling: declare the input shapes (--shape)")
        flat = self.bb.normalize(relax.op.reshape(x, [simplified(elements(dims[:axis])), columns]))
        out = self.bb.normalize(self._tvm_convert(op_name, _copied([flat]), modern, 13))
        return relax.op.reshape(out, dims)

    def _conv_integer(self, op_name, name, inputs, attrs, opset):
        """Conv of (x - x_zero_point) and (w - w_zero_point) in int32; w's zero point is
        a scalar or one per output channel."""
        x, w = inputs[0], inputs[1]
        x_zero = inputs[2] if len(inputs) > 2 else None
        w_zero = inputs[3] if len(inputs) > 3 else None
        x = relax.op.astype(x, "int32")
        w = relax.op.astype(w, "int32")
        if x_zero is not None:
            x = relax.op.subtract(x, relax.op.astype(x_zero, "int32"))
        if w_zero is not None:
            zero = self.bb.normalize(relax.op.astype(w_zero, "int32"))
            if w_zero.ty.ndim == 1:  # per output channel: [M] against w's [M, C, k...]
                zero = relax.op.reshape(zero, [-1] + [1] * (inputs[1].ty.ndim - 1))
            w = relax.op.subtract(w, zero)
        return self._tvm_convert("Conv", _copied([self.bb.normalize(x), self.bb.normalize(w)]),
                                 attrs, opset)

    def _qlinear_conv(self, op_name, name, inputs, attrs, opset):
        """ConvInteger of x and w less their zero points, plus the int32 bias B,
        requantized to y's scale and zero point (:meth:`_requantized`); w's scale and
        zero point are scalars or one per output channel."""
        x, x_scale, x_zero, w, w_scale, w_zero, y_scale, y_zero = (inputs[i] for i in range(8))
        acc = self.bb.normalize(self._conv_integer("ConvInteger", name, [x, w, x_zero, w_zero], attrs, opset))
        channels = [1, -1] + [1] * (acc.ty.ndim - 2)
        if len(inputs) > 8 and inputs[8] is not None:
            acc = relax.op.add(acc, relax.op.reshape(relax.op.astype(inputs[8], "int32"), channels))
        return self._requantized(name, op_name, acc, (x_scale, w_scale, y_scale), y_zero, channels)

    def _qlinear_matmul(self, op_name, name, inputs, attrs, opset):
        """The int32 product of a and b less their zero points (b's per column or not),
        requantized to y's scale and zero point (:meth:`_requantized`)."""
        a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero = (inputs[i] for i in range(8))
        a = relax.op.subtract(relax.op.astype(a, "int32"), relax.op.astype(a_zero, "int32"))
        b = relax.op.subtract(relax.op.astype(b, "int32"), relax.op.astype(b_zero, "int32"))
        acc = relax.op.matmul(self.bb.normalize(a), self.bb.normalize(b), out_dtype="int32")
        return self._requantized(name, op_name, acc, (a_scale, b_scale, y_scale), y_zero, [-1])

    def _requantized(self, name, op_name, acc, scales, y_zero, per_channel_shape):
        """int32 sums ``acc`` in y's type as onnxruntime computes them: each times the
        float32 multiplier in_scale * weight_scale / y_scale (per channel, reshaped to
        ``per_channel_shape``, where the weight's scale is), clamped to the type's range
        less y's zero point, rounded half to even, plus the zero point."""
        values = [self._constant(s) for s in scales] + [self._constant(y_zero)]
        if any(v is None for v in values):
            raise UnsupportedModelError(
                f"node '{name}' ({op_name}): its scales and the output's zero point must be "
                "constants (they are when onnxruntime's quantization writes the model)")
        in_scale, weight_scale, y_scale, zero = values
        multiplier = np.float32(in_scale.reshape(())) * weight_scale.astype(np.float32).reshape(-1) \
            / np.float32(y_scale.reshape(()))
        multiplier = multiplier.reshape(per_channel_shape if multiplier.size > 1 else ())
        info = np.iinfo(zero.dtype)
        zero = int(zero.reshape(()))
        scaled = relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(multiplier, "float32"))
        clamped = relax.op.clip(scaled, float(info.min - zero), float(info.max - zero))
        rounded = relax.op.astype(relax.op.round(clamped), "int32")
        return self.bb.normalize(relax.op.astype(
            relax.op.add(rounded, relax.const(zero, "int32")), str(y_zero.ty.dtype)))

    def _resize(self, op_name, name, inputs, attrs, opset):
        """Resize whose scales (or sizes) input is an empty tensor, which ONNX reads as
        not given (Paddle2ONNX passes empty roi and scales with sizes); TVM's converter
        took it for given, and refused the node for having both."""
        empty = [k for k in (2, 3) if k < len(inputs) and inputs[k] is not None
                 and (value := self._constant(inputs[k])) is not None and value.size == 0]
        if empty:
            inputs = _copied(inputs)
            for k in empty:
                inputs[k] = None
        sizes = inputs[3] if len(inputs) > 3 else None
        exact = self._exact_resize(name, inputs, attrs)
        if exact is not None:
            return exact
        if sizes is not None and self._constant(sizes) is None and inputs[0].ty.ndim == 4:
            return self._resize_to_sizes_known_at_run_time(name, inputs, attrs)
        return self._tvm_convert(op_name, inputs, attrs, opset) if empty else None

    def _exact_resize(self, name, inputs, attrs):
        """Resize as ONNX defines it (:mod:`.resize`) where TVM's departs from it (its
        scales and sizes constants); None where TVM's is right."""
        x = inputs[0]
        if not isinstance(x.ty, relax.TensorType) or not isinstance(x.ty.shape, relax.ShapeExpr):
            return None
        scales = inputs[2] if len(inputs) > 2 else None
        sizes = inputs[3] if len(inputs) > 3 else None
        values = [self._constant(v) if v is not None else None for v in (inputs[1] if len(inputs) > 1 else None,
                                                                           scales, sizes)]
        if (scales is not None and values[1] is None) or (sizes is not None and values[2] is None) \
                or (scales is None) == (sizes is None):
            return None
        if len(inputs) > 1 and inputs[1] is not None and values[0] is None:
            return None
        in_shape = [int(d) if isinstance(d, tvm.tirx.IntImm) else None for d in x.ty.shape.values]
        detail = resize.resize_attributes(attrs)
        if sizes is not None and detail["keep_aspect_ratio_policy"] != "stretch" and None in in_shape:
            return None
        out, scale, bounds = resize.output_plan(in_shape, values[1], values[2], values[0], detail)
        if not resize.needs_exact_resize(in_shape, out, scale, bounds, detail, scales is not None):
            return None
        return resize.exact_resize(self.bb, name, x, out, scale, bounds, detail)

    def _resize_to_sizes_known_at_run_time(self, name, inputs, attrs):
        """A 2-d Resize to ``sizes`` computed when the model runs (a feature pyramid
        upsamples a map to its neighbour's size, over an image of symbolic size), which
        TVM's converter refuses: the sizes become symbols that the match defines, and
        checks against the input's batch and channels (ONNX resizes those too; a
        network that does is refused at run time)."""
        x, sizes = inputs[0], inputs[3]
        roi = self._constant(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else None
        if len(inputs) > 1 and inputs[1] is not None and (roi is None or roi.size not in (0, 8)):
            return None  # (TVM's converter says why)
        if isinstance(sizes.ty, relax.TensorType):
            sizes = self.bb.normalize(relax.op.tensor_to_shape(relax.op.astype(sizes, "int64")))
        n, c = x.ty.shape.values[:2] if isinstance(x.ty.shape, relax.ShapeExpr) else (None, None)
        if n is None:
            return None
        h, w = (tvm.tirx.Var(f"{name}_{axis}", "int64") for axis in ("height", "width"))
        self.bb.match_cast(sizes, relax.ShapeType([n, c, h, w]))
        mode = attrs.get("mode", b"nearest").decode("ascii")
        transformation = attrs.get("coordinate_transformation_mode", b"half_pixel").decode("ascii")
        if mode != "nearest" and transformation in ("asymmetric", "align_corners"):
            # (TVM's resize then makes a float IntImm from the symbolic sizes)
            raise UnsupportedModelError(
                f"node '{name}' (Resize): {mode} resizing with coordinate_transformation_mode "
                f"{transformation} to sizes known only when the model runs is not supported; "
                "fix the inputs' shapes (shapes=, --shape) so that the sizes are known when compiling")
        roi = [0.0] * 4 if roi is None or roi.size == 0 else [float(v) for v in (roi[2], roi[3], roi[6], roi[7])]
        return self.bb.normalize(relax.op.image.resize2d(
            x, size=relax.ShapeExpr([h, w]), roi=roi, layout="NCHW",
            method="nearest_neighbor" if mode == "nearest" else mode,
            coordinate_transformation_mode=transformation,
            rounding_method=attrs.get("nearest_mode", b"round_prefer_floor").decode("ascii"),
            cubic_alpha=attrs.get("cubic_coeff_a", -0.75), cubic_exclude=attrs.get("exclude_outside", 0),
            extrapolation_value=attrs.get("extrapolation_value", 0.0)))

    def _celu(self, op_name, name, inputs, attrs, opset):
        """max(0, x) + min(0, alpha (exp(x / alpha) - 1))."""
        x, alpha = inputs[0], float(attrs.get("alpha", 1.0))
        scaled = relax.op.multiply(relax.op.subtract(relax.op.exp(relax.op.divide(
            x, _scalar(alpha, x))), _scalar(1.0, x)), _scalar(alpha, x))
        return self.bb.normalize(relax.op.add(relax.op.maximum(x, _scalar(0.0, x)),
                                              relax.op.minimum(scaled, _scalar(0.0, x))))

    def _constant(self, expr):
        """The numpy value of a constant input, else None."""
        value = onnx_frontend.get_constant(expr, [self._nodes, self._params])
        return value.value.numpy() if isinstance(value, tvm.ir.GenericConst) else None

    def _gather_dimensions(self, shape, indices):
        """Gather of a shape value by a constant 1-D index: the picked dimensions, still
        a shape value (TVM makes it a tensor, which ConstantOfShape and Reshape then
        cannot take: tf2onnx and hand-written graphs gather a shape so).  None for
        other indices (TVM's converter)."""
        picked = self._constant(indices)
        dims = list(shape.values)
        if picked is None or picked.ndim != 1 or not all(-len(dims) <= int(i) < len(dims) for i in picked):
            return None
        return relax.ShapeExpr([dims[int(i)] for i in picked])

    def _expand_shape_value(self, name, data, shape):
        """Expand of a shape value (tf2onnx reverses a sequence by expanding its length,
        a dimension, to one per batch row): a tensor filled with the dimensions, which
        TVM's converter cannot take."""
        values = _shape_values(self.bb, data)
        target = _shape_values(self.bb, shape)
        if values is None or target is None:
            raise UnsupportedModelError(
                f"node '{name}' (Expand): expanding a shape to a shape computed from tensor values "
                "is not supported")
        count = len(values)
        target = [tvm.tirx.const(1, "int64")] * (1 - len(target)) + list(target)
        last = target[-1]
        if count == 1 or provably_equal(last, count):
            size = last if count == 1 else tvm.tirx.const(count, "int64")
        elif isinstance(last, tvm.tirx.IntImm) and int(last) == 1:
            size = tvm.tirx.const(count, "int64")
        else:
            raise UnsupportedModelError(
                f"node '{name}' (Expand): cannot broadcast a shape of {count} values to "
                f"{shape_text(target)}")
        out = [simplified(d) for d in target[:-1]] + [simplified(size)]

        def compute(dims, shape):  # (the sizes passed, so that emit_te passes them on)
            def element(*index):
                value = tvm.tirx.Cast("int64", dims[-1])
                for k in reversed(range(count - 1)):
                    value = tvm.tirx.Select(index[-1] == k, tvm.tirx.Cast("int64", dims[k]), value)
                return value
            return te.compute(shape, element, name="expanded_shape")

        # Opaque: fused with the operators after it, TVM's FuseTIR defined the sizes it
        # takes as scalars twice.
        return self.bb.emit_te(compute, list(values), out, primfunc_attrs={"op_pattern": 8})

    def _expand_to_constant_shape(self, name, data, target):
        """Expand to a constant shape where x has dynamic dimensions: right-aligned, a 1
        in the shape keeps x's size, x's static 1s take the shape's, and a dynamic size
        meeting another must equal it (CheckShapeRelations tests it at run time)."""
        dims = list(data.ty.shape.values)
        target = [int(v) for v in np.asarray(target).reshape(-1)]
        if any(v < 0 for v in target):
            raise UnsupportedModelError(f"node '{name}' (Expand): negative size in shape {target}")
        rank = max(len(dims), len(target))
        dims = [tvm.tirx.const(1, "int64")] * (rank - len(dims)) + dims
        target = [1] * (rank - len(target)) + target
        out = []
        for dim, want in zip(dims, target):
            if want == 1:
                out.append(dim)
            elif isinstance(dim, tvm.tirx.IntImm) and int(dim) not in (1, want):
                raise UnsupportedModelError(
                    f"node '{name}' (Expand): cannot broadcast {list(data.ty.shape.values)} to {target}")
            else:
                out.append(tvm.tirx.const(want, "int64"))
        return self.bb.normalize(relax.op.broadcast_to(data, relax.ShapeExpr(out)))

    def _squeeze_known_ones(self, name, data):
        """Squeeze without axes of a tensor with dynamic dimensions: the dimensions known
        to be 1 go; a check at run time refuses a dynamic one that is 1 (ONNX would
        remove it, and the output's rank would differ)."""
        dims = list(data.ty.shape.values)
        dynamic = [i for i, dim in enumerate(dims) if not isinstance(dim, tvm.tirx.IntImm)]
        data = require(self.bb, data, [dims], {
            "op": f"node '{name}' (Squeeze)", "names": ["its input"], "not_one": [[0, i] for i in dynamic],
            "why": "; a Squeeze without axes would remove it, which changes the output's rank: "
                   "memotvm removes only the dimensions of size 1 known when compiling (give the "
                   "Squeeze its axes, or fix the inputs' shapes when compiling: compile(..., "
                   "shapes={name: dims}), CLI --shape NAME=D1,D2,...)"})
        ones = [i for i, dim in enumerate(dims) if isinstance(dim, tvm.tirx.IntImm) and int(dim) == 1]
        return self.bb.normalize(relax.op.squeeze(data, ones)) if ones else data

    def _split_with_empty_parts(self, op_name, name, inputs, attrs, opset):
        """Split into constant parts some of which are empty (TVM requires increasing
        split points): each part taken by index along the axis.  None for other splits."""
        data = inputs[0]
        sizes = attrs.get("split")
        if opset >= 13 and len(inputs) > 1 and inputs[1] is not None:
            sizes = self._constant(inputs[1])
        if sizes is None or not isinstance(data.ty.shape, relax.ShapeExpr):
            return None
        sizes = [int(v) for v in np.asarray(sizes).reshape(-1)]
        if 0 not in sizes or any(v < 0 for v in sizes):
            return None
        dims = list(data.ty.shape.values)
        axis = attrs.get("axis", 0) % len(dims)
        if isinstance(dims[axis], tvm.tirx.IntImm):
            if int(dims[axis]) != sum(sizes):
                raise UnsupportedModelError(
                    f"Split: parts {sizes} do not add up to the axis size {int(dims[axis])}")
        else:
            data = require(self.bb, data, [dims, [tvm.tirx.const(sum(sizes), "int64")]],
                           {"op": "Split", "names": ["its input", "the parts' total"],
                            "equal": [[[0, axis], [1, 0]]]})
        parts, start = [], 0
        for size in sizes:
            index = relax.const(np.arange(start, start + size, dtype=np.int64), "int64")
            parts.append(self.bb.normalize(relax.op.take(data, index, axis=axis, mode="clip")))
            start += size
        return relax.Tuple(parts)

    def _nan_propagating_extremum(self, op_name, inputs):
        """Max / Min of float tensors, NaN where any operand is NaN (onnx.reference's
        np.maximum, and onnxruntime); TVM's maximum is a compare-and-select, which
        returns the other operand when the first is NaN."""
        pick = relax.op.maximum if op_name == "Max" else relax.op.minimum
        out = inputs[0]
        for x in inputs[1:]:
            both = pick(out, x)
            out = self.bb.normalize(relax.op.where(
                relax.op.isnan(out), out, relax.op.where(relax.op.isnan(x), x, both)))
        return out

    def _same_padding(self, op_name, name, inputs, attrs, opset, upper):
        """auto_pad SAME_UPPER / SAME_LOWER over dynamic spatial dimensions (TVM needs
        their sizes): with stride 1 the total padding of an axis is (k - 1) d whatever
        its size, so the node gets those pads explicitly (the odd one at the end for
        SAME_UPPER, at the start for SAME_LOWER) and TVM converts it.  A stride > 1 on a
        dynamic axis makes the padding depend on its size: refused."""
        dims = list(inputs[0].ty.shape.values)[2:]
        kernel = attrs.get("kernel_shape")
        if kernel is None and op_name == "Conv":
            kernel = [int(k) for k in inputs[1].ty.shape.values[2:]]
        kernel = list(kernel)
        strides = list(attrs.get("strides", [1] * len(kernel)))
        dilations = list(attrs.get("dilations", [1] * len(kernel)))
        begin, end = [], []
        for dim, k, stride, dilation in zip(dims, kernel, strides, dilations):
            if stride != 1 and not isinstance(dim, tvm.tirx.IntImm):
                raise UnsupportedModelError(
                    f"node '{name}' ({op_name}): auto_pad SAME with stride {stride} over a dynamic "
                    "axis pads by an amount that depends on the axis's size; give the model "
                    "explicit pads or a static size")
            size = int(dim) if isinstance(dim, tvm.tirx.IntImm) else None
            out = -(-size // stride) if size is not None else None
            total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0) if size is not None \
                else (k - 1) * dilation
            small = total // 2
            begin.append(small if upper else total - small)
            end.append(total - small if upper else small)
        return self._tvm_convert(op_name, inputs, dict(attrs, auto_pad=b"NOTSET", pads=begin + end), opset)

    def _inference_dropout(self, op_name, name, inputs, attrs, opset):
        """Dropout outside training: the data unchanged and a mask of ones (boolean from
        opset 10, the data's type before).  Training mode (random) is refused unless its
        ratio is 0."""
        data = inputs[0]
        ratio = float(attrs.get("ratio", 0.5))
        training = False
        if opset >= 12:
            if len(inputs) > 1 and inputs[1] is not None:
                value = self._constant(inputs[1])
                if value is None:
                    raise UnsupportedModelError(f"node '{name}' (Dropout): the ratio must be a constant")
                ratio = float(value)
            if len(inputs) > 2 and inputs[2] is not None:
                value = self._constant(inputs[2])
                if value is None:
                    raise UnsupportedModelError(
                        f"node '{name}' (Dropout): training_mode must be a constant")
                training = bool(value)
        if training and ratio != 0.0:
            raise UnsupportedModelError(
                f"node '{name}' (Dropout): training mode with ratio {ratio} drops at random; "
                "export the model for inference (model.eval())")
        mask = relax.op.ones_like(data, dtype="bool" if opset >= 10 else data.ty.dtype)
        return relax.Tuple([data, self.bb.normalize(mask)])

    def _one_hot(self, op_name, name, inputs, attrs, opset):
        """out[..., i at axis, ...] = on where i == index (negative indices count from
        depth), else off: any index outside [-depth, depth) gives a row of off values,
        as ONNX says; in the type of ``values`` (off, on)."""
        indices, depth, values = inputs
        depth_value = self._constant(depth)
        if depth_value is None or depth_value.size != 1:
            raise UnsupportedModelError(
                f"node '{name}' (OneHot): depth must be a constant (it sets the output's shape)")
        depth_value = int(depth_value.reshape(()))
        if depth_value < 1:
            raise UnsupportedModelError(f"node '{name}' (OneHot): depth {depth_value} is not positive")
        rank = len(indices.ty.shape.values) if isinstance(indices.ty.shape, relax.ShapeExpr) else None
        if rank is None:
            return None
        axis = attrs.get("axis", -1)
        if not -rank - 1 <= axis <= rank:
            raise UnsupportedModelError(f"node '{name}' (OneHot): axis {axis} is out of range")
        axis %= rank + 1
        index = relax.op.astype(indices, "int64")
        n = relax.const(depth_value, "int64")
        index = relax.op.where(relax.op.less(index, relax.const(0, "int64")), relax.op.add(index, n), index)
        index = relax.op.expand_dims(index, axis)
        positions = relax.op.reshape(relax.op.arange(0, depth_value, 1, "int64"),
                                     [depth_value if i == axis else 1 for i in range(rank + 1)])
        off = relax.op.take(values, relax.const(0, "int64"), axis=0)
        on = relax.op.take(values, relax.const(1, "int64"), axis=0)
        return self.bb.normalize(relax.op.where(relax.op.equal(index, positions), on, off))

    def _reverse_sequence(self, op_name, name, inputs, attrs, opset):
        """out[t, b] = x[lens[b] - 1 - t, b] for t < lens[b], else x[t, b] (time and
        batch axes 0 and 1 either way round); the lengths are checked at run time to
        lie in [0, T] (an InputError, as onnxruntime raises one)."""
        data, lens = inputs
        if not isinstance(data.ty.shape, relax.ShapeExpr) or len(data.ty.shape.values) < 2:
            raise UnsupportedModelError(f"node '{name}' (ReverseSequence): the input needs a known rank >= 2")
        shape = list(data.ty.shape.values)
        time_axis, batch_axis = attrs.get("time_axis", 0), attrs.get("batch_axis", 1)
        if {time_axis, batch_axis} != {0, 1}:
            raise UnsupportedModelError(
                f"node '{name}' (ReverseSequence): time_axis and batch_axis must be 0 and 1")
        steps = shape[time_axis]
        lens = _require_sequence_lens(self.bb, self.bb.emit(relax.op.astype(lens, "int64")), steps)
        grid = [1] * len(shape)
        grid[time_axis] = steps
        t = relax.op.reshape(relax.op.arange(tvm.tirx.const(0, "int64"), steps, tvm.tirx.const(1, "int64"),
                                             "int64"), relax.ShapeExpr(grid[:2]))
        length = relax.op.reshape(lens, relax.ShapeExpr([1, shape[1]] if batch_axis == 1 else [shape[0], 1]))
        source = relax.op.where(relax.op.less(t, length),
                                relax.op.subtract(relax.op.subtract(length, relax.const(1, "int64")), t), t)
        source = relax.op.reshape(source, relax.ShapeExpr(shape[:2] + [1] * (len(shape) - 2)))
        source = relax.op.broadcast_to(source, relax.ShapeExpr(shape))
        return self.bb.normalize(relax.op.gather_elements(data, self.bb.normalize(source), time_axis))

    def _lp_normalization(self, op_name, name, inputs, attrs, opset):
        """x / ||x||_p along the axis (p = 1 or 2), as onnx.reference computes it."""
        p, axis = attrs.get("p", 2), attrs.get("axis", -1)
        if p not in (1, 2):
            raise UnsupportedModelError(f"node '{name}' (LpNormalization): p must be 1 or 2, got {p}")
        x = inputs[0]
        if p == 1:
            norm = relax.op.sum(relax.op.abs(x), axis=[axis], keepdims=True)
        else:
            norm = relax.op.sqrt(relax.op.sum(relax.op.multiply(x, x), axis=[axis], keepdims=True))
        return self.bb.normalize(relax.op.divide(x, norm))

    def _expand_to_symbolic_shape(self, data, shape):
        """Expand to a shape of symbolic sizes (the shape of a value whose sizes depend
        on values), where each axis's size follows from the sizes alone: a 1 (or a
        missing axis) of x takes the shape's size, a 1 of the shape keeps x's.  The
        result keeps the shape's symbols, so that it adds to the value it was shaped
        after without a run-time check.  None where an axis is undecided."""
        dims = data.ty.shape.values if isinstance(data.ty.shape, relax.ShapeExpr) else None
        target = shape.values if isinstance(shape, relax.ShapeExpr) else getattr(shape.ty, "values", None)
        if dims is None or target is None or len(dims) > len(target):
            return None
        dims = [tvm.tirx.IntImm("int64", 1)] * (len(target) - len(dims)) + list(dims)
        out = []
        for d, t in zip(dims, target):
            if isinstance(d, tvm.tirx.IntImm) and int(d) == 1:
                out.append(t)
            elif isinstance(t, tvm.tirx.IntImm) and int(t) == 1 or d.same_as(t):
                out.append(d)
            else:
                return None
        return self.bb.normalize(relax.op.broadcast_to(data, relax.ShapeExpr(out)))

    def _expand_to_tensor_shape(self, inputs, attrs, opset):
        """Expand to a shape held in a tensor: TVM broadcasts x to the shape as given,
        where ONNX broadcasts both ways (a 1 in the shape keeps x's size there); the
        shape's 1s are replaced by x's sizes (right-aligned) first."""
        data, shape = inputs[0], inputs[1]
        dims = data.ty.shape.values if isinstance(data.ty.shape, relax.ShapeExpr) else None
        rank = shape.ty.shape.values[0] if isinstance(shape.ty.shape, relax.ShapeExpr) else None
        if dims is None or not isinstance(rank, tvm.tirx.IntImm):
            return None
        one = tvm.tirx.const(1, "int64")
        shape = self.bb.normalize(relax.op.astype(shape, "int64"))
        if int(rank) < len(dims):  # the shape is right-aligned too
            ones = relax.const(np.ones(len(dims) - int(rank), np.int64), "int64")
            shape = self.bb.normalize(relax.op.concat([ones, shape], axis=0))
        aligned = relax.op.shape_to_tensor(relax.ShapeExpr([one] * (max(int(rank), len(dims)) - len(dims))
                                                           + list(dims)))
        fixed = relax.op.where(relax.op.equal(shape, relax.const(1, "int64")), aligned, shape)
        return self._tvm_convert("Expand", [data, self.bb.normalize(fixed)], attrs, opset)

    def _onnx_slice(self, inputs):
        """A Slice with constant starts, ends, axes and steps, as ONNX defines it: each
        bound made non-negative by adding the axis size, then clamped (into [0, dim]
        for positive steps; [0, dim - 1] for the start and [-1, dim - 1] for the end of
        negative ones), and the elements start + i * step for i < max(0, ceil((end -
        start) / step)) taken.  TVM's slice follows numpy instead (a start before the
        axis empties a reversed slice) and fails to compile, or computes a wrong extent,
        for empty and some out-of-range slices; it is kept for the slices it gets right:
        positive steps whose every sliced extent is proven positive.  None where the
        bounds are not constants (TVM's converter then applies)."""
        data = inputs[0]
        if not isinstance(data.ty, relax.TensorType) or not isinstance(data.ty.shape, relax.ShapeExpr):
            return None
        shape = list(data.ty.shape.values)
        params = [None if i >= len(inputs) or inputs[i] is None
                  else onnx_frontend.get_constant(inputs[i], [self._nodes, self._params]) for i in range(1, 5)]
        if params[0] is None or params[1] is None \
                or any(p is not None and not isinstance(p, tvm.ir.GenericConst) for p in params):
            return None
        # Flattened: torch's scripted exports give axes and steps of shape [1, 1], which
        # onnxruntime reads as a list.
        starts, ends = (p.value.numpy().astype(np.int64).ravel().tolist() for p in params[:2])
        axes = params[2].value.numpy().astype(np.int64).ravel().tolist() if params[2] is not None \
            else list(range(len(starts)))
        steps = params[3].value.numpy().astype(np.int64).ravel().tolist() if params[3] is not None \
            else [1] * len(starts)
        if not (len(starts) == len(ends) == len(axes) == len(steps)) or 0 in steps:
            return None  # TVM's converter reports it
        zero, one = tvm.tirx.const(0, "int64"), tvm.tirx.const(1, "int64")
        sliced = []
        for axis, start, end, step in zip(axes, starts, ends, steps):
            dim = shape[axis % len(shape)]
            # A whole axis (torch writes x[0:INT64_MAX] for a batch) is no slice at all:
            # left out rather than gathered, which would keep every later operator
            # from fusing with it (silero's STFT with a symbolic batch).
            if _whole_axis(dim, start, end, step):
                continue
            if step > 0:
                first, stop = _clamped_bound(start, dim, zero, dim), _clamped_bound(end, dim, zero, dim)
                count = (stop - first + step - 1) // step
            else:
                first = _clamped_bound(start, dim, zero, dim - one)
                stop = _clamped_bound(end, dim, -one, dim - one)
                count = (first - stop - step - 1) // -step
            count = simplified(tvm.tirx.max(count, zero))
            sliced.append((axis % len(shape), simplified(first), count, step))
        if not sliced:
            return data
        if all(step > 0 and proven(count > 0) for _, _, count, step in sliced):
            if len(sliced) == len(axes):
                return None
            # (The whole axes left out; the others end just after their last element.)
            return self.bb.normalize(relax.op.strided_slice(
                data, [a for a, *_ in sliced], [f for _, f, _, _ in sliced],
                [simplified(f + (c - 1) * s + 1) for _, f, c, s in sliced], [s for *_, s in sliced],
                assume_inbound=True))
        out = data
        for axis, first, count, step in sliced:
            index = relax.op.arange(zero, count, tvm.tirx.const(1, "int64"), dtype="int64")
            index = relax.op.add(relax.op.multiply(index, relax.const(step, "int64")),
                                 relax.op.shape_to_tensor(relax.ShapeExpr([first])))
            out = self.bb.normalize(relax.op.take(out, self.bb.normalize(index), axis=axis, mode="clip"))
        return out

    def _convert_full_topk(self, name, inputs, attrs):
        """TopK whose k is computed from shapes: when k is the size of its axis (torch's
        export of pack_padded_sequence sorts the lengths this way), a stable sort, which
        puts equal values in order of index as ONNX asks; any other computed k is
        refused (TVM's topk takes k as a constant)."""
        data, k = inputs[0], inputs[1]
        shape = data.ty.shape.values if isinstance(data.ty.shape, relax.ShapeExpr) else None
        axis = attrs.get("axis", -1)
        values = _shape_values(self.bb, k)
        if shape is None or values is None or len(values) != 1 \
                or not provably_equal(values[0], shape[axis % len(shape)]):
            raise UnsupportedModelError(
                f"node '{name}' (TopK): k is computed at run time and not the size of axis "
                f"{axis}; only constant k, or k equal to that size (a sort), is supported")
        if not attrs.get("sorted", 1):
            raise UnsupportedModelError(f"node '{name}' (TopK): sorted = 0 is not supported")
        order = self.bb.normalize(relax.op.argsort(data, axis=axis, descending=bool(attrs.get("largest", 1)),
                                                   dtype="int64"))
        return relax.Tuple([self.bb.normalize(relax.op.gather_elements(data, order, axis)), order])


def _clamped_bound(v: int, dim, low, high):
    """A Slice bound ``v`` on an axis of size ``dim`` made non-negative and clamped into
    [low, high]; a bound beyond _SLICE_BOUND is an end of the axis (no huge constant:
    TVM's simplifier overflows on them)."""
    if v >= _SLICE_BOUND:
        return high
    if v <= -_SLICE_BOUND:
        return low
    value = tvm.tirx.const(v, "int64") + (dim if v < 0 else tvm.tirx.const(0, "int64"))
    return tvm.tirx.min(tvm.tirx.max(value, low), high)


def _whole_axis(dim, start: int, end: int, step: int) -> bool:
    """Whether a Slice from ``start`` to ``end`` by ``step`` takes an axis of size
    ``dim`` whole, in order, for every size it may have (a size is never negative,
    whatever the expression TVM gives it: a convolution's ``(n - 192) // 128 + 1``)."""
    if step != 1:
        return False
    size = dim if isinstance(dim, tvm.tirx.IntImm) else tvm.tirx.Var("size", "int64")
    zero = tvm.tirx.const(0, "int64")
    analyzer = tvm.sym.Analyzer()
    if isinstance(size, tvm.tirx.Var):
        analyzer.update(size, tvm.sym.ConstIntBound(0, tvm.sym.ConstIntBound.POS_INF))
    first, stop = _clamped_bound(start, size, zero, size), _clamped_bound(end, size, zero, size)
    return bool(analyzer.can_prove(first == 0) and analyzer.can_prove(stop == size))


# ONNX operator -> the SpecConverters method that converts it (op_name, node name,
# inputs, attrs, opset), or returns None where TVM's converter applies.
_CONVERTERS = {
    "Slice": "_slice", "Expand": "_expand", "TopK": "_top_k", "Squeeze": "_squeeze",
    "Gather": "_gather", "ConstantOfShape": "_constant_of_shape", "Reshape": "_reshape",
    "Split": "_split_with_empty_parts", "Max": "_extremum", "Min": "_extremum",
    "Conv": "_pooling", "MaxPool": "_pooling", "AveragePool": "_pooling",
    "Dropout": "_inference_dropout", "OneHot": "_one_hot", "ReverseSequence": "_reverse_sequence",
    "Celu": "_celu", "LpNormalization": "_lp_normalization", "Concat": "_concat",
    "ConvInteger": "_conv_integer", "Cast": "_cast", "ConvTranspose": "_conv_transpose",
    "Softmax": "_coerced_to_2d", "LogSoftmax": "_coerced_to_2d", "Hardmax": "_coerced_to_2d",
    "Clip": "_clip", "Equal": "_equal", "QLinearConv": "_qlinear_conv", "QLinearMatMul": "_qlinear_matmul",
    "Resize": "_resize",
}


def _copied(inputs) -> onnx_frontend.onnx_input:
    """A converter's list of inputs (which answers None past its end), as TVM's
    converters expect."""
    copy = onnx_frontend.onnx_input()
    for value in inputs:
        copy.append(value)
    return copy


def _dynamic_dims(x) -> bool:
    """Whether x is a tensor of known rank with a dimension not known when compiling."""
    shape = x.ty.shape if isinstance(x.ty, relax.TensorType) else None
    return isinstance(shape, relax.ShapeExpr) and any(
        not isinstance(dim, tvm.tirx.IntImm) for dim in shape.values)


def _scalar(value, like):
    """A scalar constant of ``like``'s element type."""
    return relax.const(value, like.ty.dtype)


def _require_sequence_lens(bb, lens, steps):
    """``lens`` after checking that each lies in [0, steps]."""
    shown = str(int(steps)) if isinstance(steps, tvm.tirx.IntImm) else \
        (steps.name if isinstance(steps, tvm.tirx.Var) else "the number of steps")

    def asserts(x, v):
        def one(value):
            assert_that(tvm.tirx.And(value >= tvm.tirx.const(0, "int64"), value <= v[0]),
                        f"ReverseSequence: a sequence_lens value is outside [0, {shown}] (the "
                        "size of the time axis)")

        each_element(x, one)

    return checked(bb, lens, [steps], asserts, "check_sequence_lens")


# Element-wise operators _shape_values evaluates (TVM's Gather wraps its indices in
# where(i < 0, i + n, i)).
_SHAPE_ARITHMETIC = {
    "relax.add": lambda a, b: a + b, "relax.subtract": lambda a, b: a - b,
    "relax.multiply": lambda a, b: a * b, "relax.less": lambda a, b: a < b,
    "relax.less_equal": lambda a, b: a <= b, "relax.greater": lambda a, b: a > b,
    "relax.greater_equal": lambda a, b: a >= b,
}


def _shape_values(bb, expr):
    """The values of an integer tensor computed from shapes alone (shape_of, size,
    shape_to_tensor, take, strided slices, concatenations, reshapes, casts, integer
    arithmetic and division, where), as a list of simplified PrimExprs; else None."""
    if isinstance(expr, relax.Var):
        bound = _bound(bb, expr)
        return None if bound is expr else _shape_values(bb, bound)
    if isinstance(expr, relax.ShapeExpr):
        return list(expr.values)
    if isinstance(expr, tvm.ir.GenericConst):
        array = expr.value.numpy()
        if array.dtype.kind not in "iub":
            return None
        return [tvm.tirx.const(bool(v), "bool") if array.dtype.kind == "b" else tvm.tirx.const(int(v), "int64")
                for v in array.reshape(-1)]
    if not isinstance(expr, relax.Call) or not isinstance(expr.op, tvm.ir.Op):
        return None
    name = expr.op.name
    if name == "relax.shape_of":
        shape = expr.args[0].ty.shape
        return list(shape.values) if isinstance(shape, relax.ShapeExpr) else None
    args = [_shape_values(bb, a) if isinstance(a, relax.Expr) else None for a in expr.args]
    if name == "relax.concat":
        fields = _bound(bb, expr.args[0])
        if not isinstance(fields, relax.Tuple):
            return None
        parts = [_shape_values(bb, field) for field in fields.fields]
        return None if any(p is None for p in parts) else [v for p in parts for v in p]
    if name == "relax.strided_slice":
        source = args[0]
        bounds = [[_int_field(f) for f in b.fields] if isinstance(b, relax.Tuple) else None
                  for b in expr.args[1:]]
        if source is None or len(bounds) < 3 or any(b is None or None in b for b in bounds):
            return None
        axes, begin, end = bounds[:3]
        step = bounds[3] if len(bounds) > 3 else [1]
        if axes != [0] or step[0] < 1:
            return None
        return source[begin[0]:end[0]:step[0]]
    if name == "relax.size":
        shape = expr.args[0].ty.shape
        return [simplified(elements(shape.values))] if isinstance(shape, relax.ShapeExpr) else None
    if name in ("relax.shape_to_tensor", "relax.reshape", "relax.squeeze", "relax.expand_dims",
                "relax.astype"):
        return args[0]
    if name == "relax.divide" and "int" in str(expr.ty.dtype):
        return _elementwise(args, tvm.tirx.truncdiv)
    if name == "relax.where":
        return _elementwise(args, tvm.tirx.Select)
    if name in _SHAPE_ARITHMETIC:
        return _elementwise(args, _SHAPE_ARITHMETIC[name])
    if name in ("relax.prod", "relax.sum") and args[0] is not None and expr.args[0].ty.ndim == 1:
        # (tf2onnx reshapes to [prod(leading dims), last dim] for a Dense on a sequence)
        total = args[0][0] if args[0] else tvm.tirx.const(int(name == "relax.prod"), "int64")
        for value in args[0][1:]:
            total = total * value if name == "relax.prod" else total + value
        return [simplified(total)]
    if name == "relax.take":
        source, index = args[0], args[1]
        if source is None or index is None or not all(isinstance(i, tvm.tirx.IntImm) for i in index):
            return None
        picked = [int(i) for i in index]
        if not all(-len(source) <= i < len(source) for i in picked):
            return None
        return [source[i] for i in picked]
    return None


def _int_field(field):
    """The integer a constant bound of a strided_slice holds, else None."""
    value = getattr(field, "value", field)
    return int(value) if isinstance(value, (int, tvm.tirx.IntImm)) else None


def _bound(bb, expr):
    """The expression a variable is bound to (expr itself if not a bound variable)."""
    if isinstance(expr, relax.Var):
        bound = bb.lookup_binding(expr)
        return expr if bound is None else _bound(bb, bound)
    return expr


def _elementwise(args, op):
    """op over the values of args (lists, a single value broadcasting), simplified; None
    where a value is unknown."""
    if any(a is None for a in args) or len({len(a) for a in args} - {1}) > 1:
        return None
    n = max(len(a) for a in args)
    return [simplified(op(*[a[i] if len(a) > 1 else a[0] for a in args])) for i in range(n)]


def shapes_as_tensors(graph, produced=frozenset()) -> None:
    """Rename the inputs of operators that cannot take a shape value (not in
    SHAPE_INPUT_OPS) to ``name + AS_TENSOR`` where another node produces them, in
    ``graph`` and in its loops' bodies (converted as graphs are, node by node)."""
    produced = set(produced) | {out for node in graph.node for out in node.output if out}
    for node in graph.node:
        if node.op_type == "Loop":
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    shapes_as_tensors(attr.g, produced)
        if node.op_type in SHAPE_INPUT_OPS or node.domain not in ("", "ai.onnx"):
            continue
        for i, name in enumerate(node.input):
            if name in produced:
                node.input[i] = name + AS_TENSOR
