"""Compiled models as files: a shared library any TVM runtime loads, and one JSON file
beside it that says how to call it (docs/deploy.md).

``model.export("model.so")`` writes ``model.so`` (the Relax VM executable: the kernels'
machine code and the graph's, compiled too; every run-time check in it is native, see
:mod:`memotvm.passes.native_checks`) and ``model.so.json`` (:data:`FORMAT`).
``memotvm.load("model.so")`` returns a model with ``run``, ``last_stats`` and
``session()``, as ``compile`` does.  A device that has only the TVM runtime and numpy
runs the library with the JSON file's help (``examples/run_artifact.py``).
"""

from __future__ import annotations

import json
import os

from .errors import ConfigError, ModelLoadError

FORMAT = "memotvm-artifact"
VERSION = 1


def metadata(model) -> dict:
    """The JSON a runner needs: the function's arguments and results, in order."""
    from . import __version__
    from .kernels.memo_table import TABLE_DTYPE, table_size

    import tvm

    def entry(name, types):
        dims, dtype = types.get(name, (None, "unknown"))
        return {"name": name, "dtype": dtype, "shape": dims}

    memo = model.memo
    precision = getattr(model, "precision", None)
    loops = []
    for loop in model.loops:
        item = {"name": loop.name, "op": loop.op, "directions": loop.num_directions,
                "gates": list(loop.gates), "loop": json.loads(loop.to_json())}
        if precision is not None and precision.reduced:  # per direction (docs/precision.md)
            item["precision"] = list(precision.for_loop(loop))
        if memo is not None:
            plan = memo.plan_for(loop)
            item["predictor"] = plan.predictor
            item["thresholds"] = list(plan.thresholds)
            item["memo_table"] = {"shape": [loop.num_directions, "batch",
                                            table_size(loop, plan.predictor)],
                                  "dtype": TABLE_DTYPE}
        loops.append(item)
    arguments = [entry(n, model.input_types) for n in model.input_names]
    if model.tunable:
        arguments += [{"name": f"thresholds of {lp['name']}", "dtype": "float64",
                       "shape": [lp["directions"]], "default": lp["thresholds"]} for lp in loops]
    if memo is not None:
        arguments += [{"name": f"memo table of {lp['name']}", "dtype": lp["memo_table"]["dtype"],
                       "shape": lp["memo_table"]["shape"],
                       "empty": "zeros of shape [directions, 1, size]"} for lp in loops]
    results = [entry(n, model.output_types) for n in model.output_names]
    for lp in loops:
        results.append({"name": f"counts of {lp['name']}", "dtype": "int64",
                        "shape": [lp["directions"], "batch", len(lp["gates"]), 2],
                        "meaning": "per direction, batch element and gate: computed, reused"})
        results.append({"name": f"status of {lp['name']}", "dtype": "int32",
                        "shape": [lp["directions"], "batch"],
                        "meaning": "1 where the element's sequence_lens was out of range"})
    if memo is not None:
        results += [{"name": f"memo table of {lp['name']}", "dtype": lp["memo_table"]["dtype"],
                     "shape": lp["memo_table"]["shape"]} for lp in loops]
    return {
        "format": FORMAT, "version": VERSION, "memotvm": __version__, "tvm": tvm.__version__,
        "target": str(model.target_spec) if getattr(model, "target_spec", None) else model.target,
        "function": "main",
        "inputs": [entry(n, model.input_types) for n in model.input_names],
        "outputs": [entry(n, model.output_types) for n in model.output_names],
        "arguments": arguments, "results": results,
        "memo": memo.to_dict() if memo is not None else None,
        "precision": precision.to_dict() if precision is not None and precision.reduced else None,
        "tunable": bool(model.tunable), "loops": loops,
        "index_ranges": model.index_ranges,
        "recurrent_state": model.recurrent_state, "implied_sizes": model.implied_sizes,
        # compile(..., threads=N); null: the runner's default (memotvm: every CPU).
        "threads": model.threads,
    }


def export(model, path: str, cc: str | None = None) -> str:
    """Write ``path`` (the library) and ``path + ".json"``; returns the JSON's path.

    A model compiled for another architecture (``target="llvm -mtriple=aarch64-linux-gnu
    ..."``) is linked with a cross compiler: ``cc``, by default ``<triple>-gcc``
    (Debian's ``gcc-aarch64-linux-gnu``; ``scripts/install_cross_toolchain.sh``)."""
    import shutil

    from .targets import parallel_build
    from .targets.cpu import runs_here

    executable = getattr(model, "executable", None)
    if executable is None or model.target != "cpu":
        raise ConfigError(f"target '{model.target}' has no exportable library (only 'cpu' "
                          "models run outside this process)")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigError(f"cannot write {path}: folder {folder} does not exist")
    options = {}
    target = getattr(model, "target_spec", None)
    if cc is not None or (target is not None and not runs_here(target)):
        from tvm.support import cc as tvm_cc

        triple = str(target.attrs.get("mtriple", "")) if target is not None else ""
        cc = cc or f"{triple}-gcc"
        if shutil.which(cc) is None:
            raise ConfigError(f"linking for {triple or 'this target'} needs the cross compiler "
                              f"{cc}, which is not installed (Debian: apt-get install "
                              "gcc-aarch64-linux-gnu libc6-dev-arm64-cross; "
                              "scripts/install_cross_toolchain.sh)")
        options["fcompile"] = tvm_cc.cross_compiler(cc)
    parallel_build.linkable(executable).export_library(path, **options)
    meta_path = path + ".json"
    with open(meta_path, "w", encoding="utf-8") as f:
        json.dump(metadata(model), f, indent=2)
        f.write("\n")
    return meta_path


class _Imported:
    """What CompiledModel takes from an import, rebuilt from an artifact's JSON."""

    def __init__(self, meta):
        from .frontend.recurrent import RecurrentLoop

        self.input_names = [i["name"] for i in meta["inputs"]]
        self.input_types = {i["name"]: (i["shape"], i["dtype"]) for i in meta["inputs"]}
        self.output_names = [o["name"] for o in meta["outputs"]]
        self.output_types = {o["name"]: (o["shape"], o["dtype"]) for o in meta["outputs"]}
        self.loops = [RecurrentLoop.from_json(json.dumps(lp["loop"])) for lp in meta["loops"]]
        self.index_ranges = dict(meta.get("index_ranges") or {})
        self.recurrent_state = meta.get("recurrent_state")
        self.implied_sizes = meta.get("implied_sizes")


def load(path: str):
    """A model exported by :func:`export` (``CompiledModel.export``)."""
    import tvm
    from tvm import relax

    from .log import captured_tvm_output
    from .passes import MemoConfig
    from .precision import PrecisionConfig
    from .runtime import CompiledModel
    from .targets.cpu import vm_caller

    path = os.fspath(path)
    meta_path = path + ".json"
    for p in (path, meta_path):
        if not os.path.exists(p):
            raise ModelLoadError(f"{p}: no such file (an artifact is the library and its .json)")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{meta_path}: not a memotvm artifact description ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelLoadError(f"{meta_path}: not a memotvm artifact description")
    if meta.get("version") != VERSION:
        raise ModelLoadError(f"{meta_path}: artifact format version {meta.get('version')}; this "
                             f"memotvm reads version {VERSION}")
    threads = meta.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise ModelLoadError(f"{meta_path}: threads must be null or a whole number >= 1, "
                             f"not {threads!r}")
    try:
        with captured_tvm_output("load"):  # TVM logs every function scope it loads
            library = tvm.runtime.load_module(path)
    except Exception as err:  # TVM raises its own types
        raise ModelLoadError(f"{path}: cannot load the library: {str(err).splitlines()[0]}") from err

    def make_session():
        return vm_caller(relax.VirtualMachine(library, tvm.cpu()))

    memo = MemoConfig.from_dict(meta["memo"]) if meta.get("memo") else None
    model = CompiledModel(_Imported(meta), make_session, target="cpu", memo=memo)
    model.tunable = bool(meta.get("tunable"))
    model.precision = PrecisionConfig.from_dict(meta["precision"]) if meta.get("precision") \
        else PrecisionConfig()
    model.threads = threads
    model.artifact = meta
    model.prepare()
    return model
