"""ONNX Resize computed as ONNX defines it, where TVM's resize departs from it.

TVM's ``image.resize*`` takes the output size and maps coordinates with the scale
``output / input``.  ONNX maps them with the ``scales`` input when one is given, and
the output size is ``floor(input * scale)``: where that product is not a whole number
(0.5 of 7 rows, 1.5 of 9 columns) the two scales differ and TVM interpolates from the
wrong places, a silent error of the size of the data.  TVM's converter also ignores
``antialias``, ``axes`` and ``keep_aspect_ratio_policy``, and scales of the batch and
channel axes.

:func:`needs_exact_resize` says when a node is one of those; :func:`exact_resize` then
computes it from tables made when compiling: for each resized axis and each output
index, the input indices it reads (the taps: 1 for nearest, 2 for linear, 4 for
cubic, more for antialiased downsampling) and their weights, from the source
coordinate as onnxruntime computes it (float32, the same formulas).  The output is
the sum over the taps of every resized axis of the weighted input; an axis that is
not resized is read in place.  The resized axes' sizes must be known when compiling
(the others may be symbolic).
"""

from __future__ import annotations

import itertools

import numpy as np
from tvm import relax, te, tirx

from ..errors import UnsupportedModelError

# Coordinate transformations that use the scale (align_corners and tf_crop_and_resize
# use the sizes, as TVM does).
_SCALED = {"half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "asymmetric",
           "tf_half_pixel_for_nn"}


def resize_attributes(attrs: dict) -> dict:
    """The node's attributes, decoded, with ONNX's defaults."""
    text = {k: (v.decode("ascii") if isinstance(v, bytes) else v) for k, v in attrs.items()}
    return {
        "mode": text.get("mode", "nearest"),
        "coordinate_transformation_mode": text.get("coordinate_transformation_mode", "half_pixel"),
        "nearest_mode": text.get("nearest_mode", "round_prefer_floor"),
        "cubic_coeff_a": float(text.get("cubic_coeff_a", -0.75)),
        "exclude_outside": int(text.get("exclude_outside", 0)),
        "extrapolation_value": float(text.get("extrapolation_value", 0.0)),
        "antialias": int(text.get("antialias", 0)),
        "axes": list(text["axes"]) if "axes" in text else None,
        "keep_aspect_ratio_policy": text.get("keep_aspect_ratio_policy", "stretch"),
    }


def output_plan(in_shape: list, scales, sizes, roi, attrs: dict):
    """(output sizes, float32 scale per axis, roi per axis as (start, end)) of a Resize
    of an input of ``in_shape`` (ints; None where not known), as onnxruntime computes
    them.  ``scales``/``sizes``/``roi``: numpy arrays or None."""
    rank = len(in_shape)
    axes = [a % rank for a in attrs["axes"]] if attrs["axes"] is not None else list(range(rank))
    scale = [np.float32(1.0)] * rank
    out = list(in_shape)
    if scales is not None:
        for axis, s in zip(axes, np.asarray(scales, np.float32).ravel()):
            scale[axis] = np.float32(s)
            if in_shape[axis] is not None:
                out[axis] = int(np.float32(in_shape[axis]) * np.float32(s))
    else:
        sizes = [int(v) for v in np.asarray(sizes).ravel()]
        policy = attrs["keep_aspect_ratio_policy"]
        if policy != "stretch":
            ratios = [np.float32(size) / np.float32(in_shape[axis]) for axis, size in zip(axes, sizes)]
            common = min(ratios) if policy == "not_larger" else max(ratios)
            sizes = [int(np.floor(np.float32(in_shape[axis]) * common + np.float32(0.5))) for axis in axes]
            for axis in axes:
                scale[axis] = np.float32(common)
        for axis, size in zip(axes, sizes):
            out[axis] = size
            if policy == "stretch" and in_shape[axis] is not None:
                scale[axis] = np.float32(size) / np.float32(in_shape[axis])
    bounds = [(0.0, 1.0)] * rank
    if roi is not None and np.asarray(roi).size:
        roi = np.asarray(roi, np.float32).ravel()
        n = len(axes)
        for k, axis in enumerate(axes):
            bounds[axis] = (float(roi[k]), float(roi[n + k]))
    return out, scale, bounds


def resized_axes(in_shape: list, out: list, scale: list, bounds: list, attrs: dict) -> list:
    """The axes a Resize changes (``in_shape``: ints, None where not known when
    compiling): scaled, resized, or cropped by tf_crop_and_resize's roi."""
    cropped = attrs["coordinate_transformation_mode"] == "tf_crop_and_resize"
    return [a for a in range(len(out)) if scale[a] != 1 or out[a] != in_shape[a]
            or cropped and bounds[a] != (0.0, 1.0)]


def needs_exact_resize(in_shape: list, out: list, scale: list, bounds: list, attrs: dict,
                       given_scales: bool) -> bool:
    """Whether TVM's resize would compute this node otherwise than ONNX (module doc)."""
    rank = len(in_shape)
    if rank not in (3, 4, 5) or attrs["axes"] is not None or attrs["keep_aspect_ratio_policy"] != "stretch":
        return True
    resized = resized_axes(in_shape, out, scale, bounds, attrs)
    if any(a < 2 for a in resized):
        return True
    if attrs["antialias"] and attrs["mode"] != "nearest" and any(scale[a] < 1 for a in resized):
        return True
    if attrs["coordinate_transformation_mode"] == "half_pixel_symmetric":
        return True
    if attrs["coordinate_transformation_mode"] == "align_corners" and any(out[a] == 1 for a in resized):
        return True  # (TVM divides by output - 1)
    if given_scales and attrs["coordinate_transformation_mode"] in _SCALED:
        # TVM maps with input / output; ONNX with 1 / scale.
        # (Over a size known only when running, a whole scale maps it exactly.)
        return any(float(scale[a]) != int(scale[a]) if in_shape[a] is None
                   else float(out[a]) != float(in_shape[a]) * float(scale[a]) for a in resized)
    return False


def axis_taps(in_len: int, out_len: int, scale: np.float32, bounds: tuple, attrs: dict):
    """(indices [out_len, K] int64, weights [out_len, K] float32, outside [out_len] bool)
    of one resized axis: output index i reads input indices[i, k] with weights[i, k];
    ``outside`` marks the outputs that tf_crop_and_resize extrapolates."""
    f32 = np.float32
    x = np.arange(out_len, dtype=f32)
    mode = attrs["coordinate_transformation_mode"]
    if mode == "half_pixel":
        x_ori = (x + f32(0.5)) / scale - f32(0.5)
    elif mode == "half_pixel_symmetric":
        adjustment = f32(out_len) / (scale * f32(in_len))
        offset = f32(in_len) / f32(2) * (f32(1) - adjustment)
        x_ori = offset + (x + f32(0.5)) / scale - f32(0.5)
    elif mode == "pytorch_half_pixel":
        x_ori = (x + f32(0.5)) / scale - f32(0.5) if out_len > 1 else np.zeros_like(x)
    elif mode == "asymmetric":
        x_ori = x / scale
    elif mode == "tf_half_pixel_for_nn":
        x_ori = (x + f32(0.5)) / scale
    elif mode == "align_corners":
        x_ori = x * f32(in_len - 1) / f32(out_len - 1) if out_len > 1 else np.zeros_like(x)
    elif mode == "tf_crop_and_resize":
        start, end = f32(bounds[0]), f32(bounds[1])
        if out_len > 1:
            x_ori = start * f32(in_len - 1) + x * (end - start) * f32(in_len - 1) / f32(out_len - 1)
        else:
            x_ori = np.full_like(x, f32(0.5) * (start + end) * f32(in_len - 1))
    else:
        raise UnsupportedModelError(f"Resize: unknown coordinate_transformation_mode '{mode}'")
    x_ori = x_ori.astype(f32)
    outside = (x_ori < 0) | (x_ori > f32(in_len - 1)) if mode == "tf_crop_and_resize" else \
        np.zeros(out_len, bool)
    if attrs["mode"] == "nearest":
        index = _nearest(x_ori, attrs["nearest_mode"])
        return np.clip(index, 0, in_len - 1)[:, None], np.ones((out_len, 1), f32), outside
    # Taps around x_ori, with the ratio in (0, 1] (the reference's convention: an
    # integral x_ori takes the tap below it with weight 0).
    x64 = x_ori.astype(np.float64)
    below = np.where(x64 == np.floor(x64), x64 - 1, np.floor(x64)).astype(np.int64)
    ratio = x64 - below
    coeffs = _coefficients(ratio, float(scale), attrs)
    taps = coeffs.shape[1]
    index = below[:, None] + (np.arange(taps) - taps // 2 + 1)[None, :]
    if attrs["exclude_outside"]:
        coeffs = np.where((index < 0) | (index >= in_len), 0.0, coeffs)
        coeffs = coeffs / coeffs.sum(axis=1, keepdims=True)
    return np.clip(index, 0, in_len - 1), coeffs.astype(f32), outside


def _nearest(x_ori: np.ndarray, rounding: str) -> np.ndarray:
    floor = np.floor(x_ori)
    fraction = x_ori - floor
    if rounding == "round_prefer_floor":
        index = floor + (fraction > np.float32(0.5))
    elif rounding == "round_prefer_ceil":
        index = floor + (fraction >= np.float32(0.5))
    elif rounding == "floor":
        index = floor
    elif rounding == "ceil":
        index = np.ceil(x_ori)
    else:
        raise UnsupportedModelError(f"Resize: unknown nearest_mode '{rounding}'")
    return index.astype(np.int64)


def _coefficients(ratio: np.ndarray, scale: float, attrs: dict) -> np.ndarray:
    """Weights [n, taps] of the taps below..above each source coordinate."""
    a = attrs["cubic_coeff_a"]
    if attrs["antialias"] and scale < 1:
        reach = 1.0 if attrs["mode"] == "linear" else 2.0
        start = int(np.floor(-reach / scale) + 1)
        args = (np.arange(start, 2 - start)[None, :] - ratio[:, None]) * scale
        if attrs["mode"] == "linear":
            coeffs = np.clip(1 - np.abs(args), 0, 1)
        else:
            coeffs = _cubic_kernel(np.abs(args), a)
        return coeffs / coeffs.sum(axis=1, keepdims=True)
    if attrs["mode"] == "linear":
        return np.stack([1 - ratio, ratio], axis=1)
    if attrs["mode"] == "cubic":
        return _cubic_kernel(np.abs(np.arange(-1, 3)[None, :] - ratio[:, None]), a)
    raise UnsupportedModelError(f"Resize: unknown mode '{attrs['mode']}'")


def _cubic_kernel(d: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel of parameter ``a`` at distances ``d`` >= 0."""
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def exact_resize(bb, name: str, x, out: list, scale: list, bounds: list, attrs: dict):
    """The Relax value of the Resize of ``x`` to ``out`` (see the module)."""
    in_shape = list(x.ty.shape.values)
    known = [int(d) if isinstance(d, tirx.IntImm) else None for d in in_shape]
    resized = resized_axes(known, out, scale, bounds, attrs)
    for axis in resized:
        if not isinstance(in_shape[axis], tirx.IntImm) or out[axis] is None:
            raise UnsupportedModelError(
                f"node '{name}' (Resize): axis {axis} has a size known only when the model runs, "
                "and this Resize (its scales, antialias, axes or aspect-ratio policy) is computed "
                "from tables made when compiling; fix the inputs' shapes (shapes=, CLI --shape)")
    dtype = str(x.ty.dtype)
    if attrs["mode"] != "nearest" and not dtype.startswith(("float", "bfloat")):
        raise UnsupportedModelError(
            f"node '{name}' (Resize): {attrs['mode']} resizing of {dtype} data with these scales "
            "is not supported (only nearest)")
    nearest = attrs["mode"] == "nearest"
    extrapolate = attrs["coordinate_transformation_mode"] == "tf_crop_and_resize"
    tables = {a: axis_taps(int(in_shape[a]), out[a], scale[a], bounds[a], attrs) for a in resized}
    # Per resized axis, the tables the kernel reads: indices, weights (not for nearest),
    # outside flags (tf_crop_and_resize only).
    used = [k for k, needed in enumerate((True, not nearest, extrapolate)) if needed]
    consts = [relax.const(tables[a][k]) for a in resized for k in used]
    taps = [range(tables[a][0].shape[1]) for a in resized]
    out_shape = [out[a] if a in tables else in_shape[a] for a in range(len(out))]

    def compute(data, *arrays):
        per_axis = {axis: dict(zip(used, arrays[len(used) * j: len(used) * (j + 1)]))
                    for j, axis in enumerate(resized)}

        def element(*i):
            total = None
            for combo in itertools.product(*taps):
                src = list(i)
                weight = None
                for axis, k in zip(resized, combo):
                    src[axis] = per_axis[axis][0][i[axis], k]
                    if not nearest:
                        w = per_axis[axis][1][i[axis], k].astype(dtype)
                        weight = w if weight is None else weight * w
                term = data(*src) if weight is None else data(*src) * weight
                total = term if total is None else total + term
            if extrapolate:
                outside = None
                for axis in resized:
                    flag = per_axis[axis][2][i[axis]]
                    outside = flag if outside is None else tirx.Or(outside, flag)
                total = tirx.Select(outside, tirx.const(attrs["extrapolation_value"], dtype), total)
            return total

        return te.compute(out_shape, element, name="resize")

    return bb.emit_te(compute, x, *consts)
