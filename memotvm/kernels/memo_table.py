"""The memo table as data: what a streaming session keeps between the calls of a
memoized kernel (docs/spec.md, "Streaming sessions").

Every memoized kernel reads a table at the start of a call and writes it at the end, one
float64 tensor ``[directions, batch, size]``: per chain (direction, batch element) the
fields of :func:`table_fields` one after another, then a flag, 1 where the table holds
a chain's values (it has computed a step).  Float64 holds every field exactly (float32
parts, int32 or float predictor values).  A call whose table is for another batch size,
or whose flag is 0, starts that chain empty; a reverse direction always starts empty (a
chunk's reverse pass does not continue the previous chunk's), so its table is never
resumed.

The kernels (:class:`~memotvm.kernels.builder.KernelBuilder`), the numpy reference and
the accelerator's simulator all read and write this layout.
"""

from __future__ import annotations

TABLE_DTYPE = "float64"


def table_fields(loop, predictor_spec: str) -> list:
    """(name, length) of the fields of one chain's table, in order.

    Memoizing predictors and the oracle keep each neuron's input part ``a``, recurrent
    part ``b`` and predictor value ``q``; delta execution keeps the parts and the last
    transmitted copies of x, h and (GRU with linear_before_reset = 0) r (.) h."""
    from ..predictors import get_predictor

    G, D, H = loop.rows, loop.input_size, loop.hidden_size
    predictor = get_predictor(predictor_spec)
    if predictor is not None and predictor.scheme == "delta":
        return [("a", G), ("b", G), ("sent_x", D), ("sent_h", H), ("sent_rh", H)]
    return [("a", G), ("b", G), ("q", G)]


def table_size(loop, predictor_spec: str) -> int:
    """Values per chain: the fields, then the flag."""
    return sum(n for _, n in table_fields(loop, predictor_spec)) + 1


def field_offsets(loop, predictor_spec: str) -> dict:
    """name -> (offset, length) in a chain's table."""
    offsets, at = {}, 0
    for name, n in table_fields(loop, predictor_spec):
        offsets[name] = (at, n)
        at += n
    return offsets


def resumable(loop, d: int) -> bool:
    """Whether direction d continues its table from call to call (forward only)."""
    return not loop.is_reverse(d)
