"""Reading an ONNX model from a path, bytes or a ModelProto, with errors a user can act on."""

from __future__ import annotations

import os
import warnings

import onnx
from onnx.external_data_helper import _get_all_tensors, uses_external_data
from google.protobuf.message import DecodeError

from ..errors import ModelLoadError


def load_model(model) -> onnx.ModelProto:
    """Return a checked ``onnx.ModelProto`` for ``model`` (path, bytes or ModelProto)."""
    source = "model"
    if isinstance(model, onnx.ModelProto):
        proto = model
    elif isinstance(model, (bytes, bytearray)):
        proto = _parse(bytes(model), "the given bytes")
    elif isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        if not os.path.exists(source):
            raise ModelLoadError(f"{source}: no such file")
        if os.path.isdir(source):
            raise ModelLoadError(f"{source}: is a directory, not an ONNX file")
        with open(source, "rb") as f:
            data = f.read()
        proto = _parse(data, source)
        # Weights stored beside the model (external data) load relative to its folder.
        try:
            onnx.load_external_data_for_model(proto, os.path.dirname(os.path.abspath(source)))
        except Exception as err:  # missing external-data file
            raise ModelLoadError(f"{source}: cannot load external data: {err}") from err
    else:
        raise ModelLoadError(
            f"expected a path, bytes or onnx.ModelProto, got {type(model).__name__}"
        )
    if not proto.HasField("graph") or proto.ir_version <= 0:
        raise ModelLoadError(f"{source}: not an ONNX model (no graph or IR version)")
    if proto.ir_version < 3:
        raise ModelLoadError(f"{source}: ONNX IR version {proto.ir_version} is too old (need >= 3)")
    _check_versions(proto, source)
    _check_external_data_loaded(proto, source)
    _check_references(proto.graph, source)
    _check_nodes(proto.graph, _default_opset(proto), source)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as err:
        # Like onnxruntime and TVM, accept models the strict checker dislikes (missing
        # output types are common) but say so.
        first = str(err).strip().splitlines()[0]
        warnings.warn(f"{source}: onnx.checker: {first}", stacklevel=3)
    return proto


def _default_opset(proto) -> int:
    return next((e.version for e in proto.opset_import if e.domain in ("", "ai.onnx")), 1)


def _check_versions(proto, source):
    """An IR version or opset newer than the installed onnx knows is a file written by
    a newer exporter (or a corrupt one): its meaning is unknown, so it is refused."""
    if proto.ir_version > onnx.IR_VERSION:
        raise ModelLoadError(f"{source}: ONNX IR version {proto.ir_version} is newer than the "
                             f"installed onnx package reads (up to {onnx.IR_VERSION})")
    newest = onnx.defs.onnx_opset_version()
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version > newest:
            raise ModelLoadError(f"{source}: opset {entry.version} of the default domain is "
                                 f"newer than the installed onnx package knows (up to {newest})")


def _check_nodes(graph, opset, source):
    """Structural errors the lenient checker lets through: a node attribute its operator
    does not define, more outputs than the operator has, a name produced twice, a graph
    output listed twice.  (Unknown operators are reported by the importer, which says
    whether memotvm could convert them.)"""
    produced = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        where = f"{source}: node '{node.name}' ({node.op_type})"
        if node.domain in ("", "ai.onnx"):
            try:
                schema = onnx.defs.get_schema(node.op_type, opset, "")
            except onnx.defs.SchemaError:
                schema = None
            if schema is not None:
                unknown = sorted({a.name for a in node.attribute} - set(schema.attributes))
                if unknown:
                    raise ModelLoadError(f"{where}: attribute(s) {', '.join(unknown)} are not "
                                         f"defined for {node.op_type} (opset {opset})")
                if not schema.outputs or schema.outputs[-1].option != schema.FormalParameterOption.Variadic:
                    if len(node.output) > len(schema.outputs):
                        raise ModelLoadError(f"{where}: has {len(node.output)} outputs; "
                                             f"{node.op_type} has at most {len(schema.outputs)}")
        for name in node.output:
            if name and name in produced:
                raise ModelLoadError(f"{where}: output '{name}' is already produced by an "
                                     "input, an initializer or an earlier node")
            produced.add(name)
    names = [o.name for o in graph.output]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ModelLoadError(f"{source}: graph output(s) {', '.join(twice)} listed more than once")


def _check_external_data_loaded(proto, source):
    """A ModelProto or bytes whose weights live in another file cannot find that file:
    only a path tells where the model was saved."""
    for tensor in _get_all_tensors(proto):
        if uses_external_data(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            raise ModelLoadError(
                f"{source}: tensor '{tensor.name}' is stored in the external file "
                f"'{location}', which was not loaded; pass the model's path (its external "
                "data is read from the same folder) or load it with "
                "onnx.load(path, load_external_data=True)"
            )


def _check_references(graph, source):
    """Every node input must be a graph input, an initializer or an earlier output."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    for node in graph.node:
        for name in node.input:
            if name not in known:
                raise ModelLoadError(
                    f"{source}: node '{node.name}' ({node.op_type}) reads '{name}', "
                    "which no input, initializer or earlier node provides"
                )
        known.update(node.output)
    for out in graph.output:
        if out.name not in known:
            raise ModelLoadError(f"{source}: graph output '{out.name}' is never produced")
    if not graph.output:
        raise ModelLoadError(f"{source}: the graph has no outputs")


def _parse(data: bytes, source: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeWarning, ValueError) as err:
        raise ModelLoadError(f"{source}: not an ONNX file (cannot parse: {err})") from err
    return proto
