"""The ``memotvm`` command line.

Every command prints one line ``memotvm: error: ...`` and exits with status 2 when the
model, inputs or configuration are wrong; it never shows a traceback for those.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import zipfile

import numpy as np

from .errors import ConfigError, InputError, MemoTVMError


def _load_npz(path: str, what: str) -> dict:
    """The named arrays of an .npz archive (np.savez), with one-line errors for what is
    not one: a missing file, a directory, an empty or corrupt file, a single .npy array,
    an array whose header claims more memory than there is."""
    if not os.path.exists(path):
        raise InputError(f"{what} file {path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{what} file {path}: is a directory, not an .npz archive")
    try:
        data = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise InputError(f"{what} file {path}: not a readable .npz archive ({err or 'empty'})") from err
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise InputError(f"{what} file {path}: a single array (.npy); expected an .npz archive "
                         "of named arrays (np.savez(path, name=array, ...))")
    arrays = {}
    with data:
        for name in data.files:
            try:
                arrays[name] = data[name]
            except MemoryError:
                raise InputError(f"{what} file {path}: array '{name}' claims more memory than "
                                 "this machine has (a corrupt or hostile header)") from None
            except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
                raise InputError(f"{what} file {path}: array '{name}' cannot be read ({err})") from err
    return arrays


def _check_output_path(path) -> None:
    """Fail before the work, not after it, where an output cannot be written."""
    if not path or path == "-":
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"cannot write {path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise InputError(f"cannot write {path}: it is a directory")
    if not os.access(folder, os.W_OK):
        raise InputError(f"cannot write {path}: folder {folder} is not writable")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_atomically(path: str, write) -> None:
    """Write exactly ``path``: ``write(file)`` fills a temporary file in the same folder,
    which then replaces ``path`` (a symbolic link there is replaced, not written
    through; a reader never sees half a file)."""
    _check_output_path(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".memotvm-", suffix=".tmp")
    except OSError as err:
        raise InputError(f"cannot write {path}: {err.strerror}") from err
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would create it (mkstemp: 0600)
        os.replace(tmp, path)
    except OSError as err:
        raise InputError(f"cannot write {path}: {err.strerror}") from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_labels(path: str):
    """One labels array, or (a data set of sequences, see memotvm.sequences) a list."""
    from .sequences import group_sequences

    if os.path.isdir(path):
        from .sequences import load_sequences

        return [_labels_file(one, path) for one in load_sequences(path, _load_npz, "labels")]
    arrays = _load_npz(path, "labels")
    grouped = group_sequences(arrays) if all("/" in k for k in arrays) else arrays
    if isinstance(grouped, list):
        return [_labels_file(one, path) for one in grouped]
    return _labels_file(arrays, path)


def _labels_file(arrays, path):
    from .sequences import labels_of

    try:
        return labels_of(arrays)
    except InputError:
        raise InputError(f"labels file {path}: expected one array or one named 'labels' "
                         "(per sequence)") from None


def _write_json(data, dest: str) -> None:
    """The commands' one JSON convention: ``--json FILE`` writes FILE (and says so),
    ``--json -`` or a bare ``--json`` prints the JSON alone on standard output."""
    text = json.dumps(data, indent=2, sort_keys=True)
    if dest == "-":
        print(text)
        return
    _write_atomically(dest, lambda f: f.write((text + "\n").encode()))
    print(f"wrote {dest}")


def _precision_list(text) -> list:
    """--precision of calibrate and bench: comma-separated precisions."""
    from .precision import PrecisionConfig

    names = [p.strip() for p in (text or "fp32").split(",") if p.strip()]
    for name in names:
        PrecisionConfig(name)
    return names


def _human(args) -> bool:
    """Whether to print the human-readable report (not when JSON goes to stdout)."""
    return getattr(args, "json", None) != "-"


def _config_file(path) -> tuple:
    """(memo configuration, precision or None) of a --config file; a calibrated file
    that chose a precision may say that memoization does not pay (None)."""
    from .api import with_file_precision
    from .passes import MemoConfig

    memo, precision = with_file_precision(path, None)
    return (MemoConfig.load(memo) if isinstance(memo, str) else memo), precision


def _memo_from_args(args):
    from .passes import MemoConfig

    if getattr(args, "config", None):
        config = _config_file(args.config)[0]
        if args.threshold is not None:
            raise ConfigError("give either --config or --threshold, not both")
        return config
    if args.threshold is None:
        return None
    return MemoConfig(threshold=_float(args.threshold, "--threshold"), predictor=args.predictor)


def _precision_from_args(args):
    """--precision (a name or a JSON file), else the --config file's precision, else None."""
    from .precision import PrecisionConfig

    if getattr(args, "precision", None):
        return PrecisionConfig.coerce(args.precision)
    if getattr(args, "config", None):
        return _config_file(args.config)[1]
    return None


def _described(memo, precision) -> str:
    parts = ["memoized: " + memo.thresholds_text()] if memo is not None else []
    if precision is not None and precision.reduced:
        parts.append("weights " + precision.text())
    return "; ".join(parts) or "unmodified"


def _float(text, flag):
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{flag} must be a number, got '{text}'") from None


def _parse_fixed(items) -> dict:
    """``--fix NAME=VALUE`` (repeatable): VALUE a number or comma-separated numbers."""
    fixed = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--fix takes NAME=VALUE, got '{item}'")
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            raise ConfigError(f"--fix {name}: '{text}' is not a number or a comma-separated "
                              "list of numbers") from None
        array = np.array(values if "," in text else values[0])
        fixed[name.strip()] = array.astype(np.int64) if np.all(array == np.round(array)) else array
    return fixed


def _parse_shapes(items) -> dict:
    """``--shape NAME=D1,D2,...`` (repeatable)."""
    shapes = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        try:
            dims = [int(d) for d in text.split(",")]
        except ValueError:
            dims = None
        if not sep or not name.strip() or not dims:
            raise ConfigError(f"--shape takes NAME=D1,D2,... (whole numbers), got '{item}'")
        shapes[name.strip()] = dims
    return shapes


def _model(args):
    """The model to compile: the file, with the inputs of ``--fix`` bound to their
    values and those of ``--shape`` declared with static shapes (for memotvm and
    onnxruntime alike)."""
    fixed = _parse_fixed(getattr(args, "fix", None))
    shapes = _parse_shapes(getattr(args, "shape", None))
    if not fixed and not shapes:
        return args.model
    if getattr(args, "_bound_model", None) is None:
        from .frontend import load_model
        from .frontend.folding import bind_inputs, with_input_shapes
        from .frontend.importer import checked_shape_overrides

        proto = load_model(args.model)
        proto = with_input_shapes(proto, checked_shape_overrides(proto.graph, shapes))
        args._bound_model = bind_inputs(proto, fixed)
    return args._bound_model


def _inputs(args, path=None, what="inputs"):
    """The --inputs arrays (or ``path``'s), less those that --fix binds: one dict, or a
    list of them for a data set of sequences (a folder of .npz files, or one .npz of
    <sequence>/<input> arrays; memotvm.sequences)."""
    from .sequences import load_sequences

    fixed = _parse_fixed(getattr(args, "fix", None))
    loaded = load_sequences(path or args.inputs, _load_npz, what)

    def unfixed(one):
        return {k: v for k, v in one.items() if k not in fixed}

    return [unfixed(one) for one in loaded] if isinstance(loaded, list) else unfixed(loaded)


def _pairs(items, flag) -> dict:
    pairs = {}
    for item in items or ():
        left, sep, right = item.partition("=")
        if not sep or not left.strip() or not right.strip():
            raise ConfigError(f"{flag} takes A=B, got '{item}'")
        pairs[left.strip()] = right.strip()
    return pairs


def _stream_spec(args):
    """The StreamSpec of --stream, --chunk, --state and --time-axis (None without --stream)."""
    from .streaming import StreamSpec

    if not getattr(args, "stream", False):
        for flag in ("state", "time_axis"):
            if getattr(args, flag, None):
                raise ConfigError(f"--{flag.replace('_', '-')} needs --stream")
        return None
    axes = {}
    for name, text in _pairs(args.time_axis, "--time-axis").items():
        try:
            axes[name] = int(text)
        except ValueError:
            raise ConfigError(f"--time-axis {name}: '{text}' is not an axis number") from None
    state = _pairs(args.state, "--state") if args.state else None
    return StreamSpec(chunk=args.chunk, state=state, time_axes=axes)


def _remote(args):
    """{"rpc": ...} or {"tracker": ..., "key": ...} of --rpc / --tracker --key, or None."""
    rpc, tracker, key = (getattr(args, n, None) for n in ("rpc", "tracker", "key"))
    if rpc and tracker:
        raise ConfigError("give --rpc or --tracker, not both")
    if key and not tracker:
        raise ConfigError("--key goes with --tracker")
    if rpc:
        return {"rpc": rpc}
    if tracker:
        if not key:
            raise ConfigError("--tracker needs --key (the kind of device to ask for)")
        return {"tracker": tracker, "key": key}
    return None


def _target_options(args) -> dict:
    """Compile options from the command line (``--hw`` for the accelerator,
    ``--threads``)."""
    hw, threads = getattr(args, "hw", None), getattr(args, "threads", None)
    return {**({"hardware": hw} if hw else {}), **({"threads": threads} if threads is not None else {})}


def _cluster_options(args) -> dict:
    """``cluster=`` and ``workers=`` from --cluster and --workers (docs/cluster.md)."""
    if args.cluster is None:
        if args.workers is not None or args.cpus_per_worker is not None:
            raise ConfigError("--workers and --cpus-per-worker need --cluster ADDRESS (or "
                              "--cluster local)")
        return {}
    if args.cpus_per_worker is None:
        return {"cluster": args.cluster, "workers": args.workers}
    from .cluster import Cluster

    return {"cluster": Cluster(args.cluster, args.workers, cpus_per_worker=args.cpus_per_worker)}


def cmd_compile(args):
    from . import compile as compile_model

    memo = _memo_from_args(args)
    if args.tunable and memo is None:
        raise ConfigError("--tunable needs --threshold T or --config FILE")
    precision = _precision_from_args(args)
    model = compile_model(_model(args), target=args.target, memo=memo, tunable=args.tunable,
                          precision=precision, **_target_options(args))
    meta = model.export(args.out, cc=args.cc)
    described = _described(memo, precision)
    print(f"wrote {args.out} and {meta} ({described}; inputs: "
          f"{', '.join(model.input_names)}; outputs: {', '.join(model.output_names)})")


def cmd_run(args):
    from . import compile as compile_model

    inputs = _inputs(args)
    model = compile_model(_model(args), target=args.target, memo=_memo_from_args(args),
                          precision=_precision_from_args(args), **_target_options(args))
    outputs = model.run(inputs)
    _write_atomically(args.out, lambda f: np.savez(f, **dict(zip(model.output_names, outputs))))
    summary = ", ".join(f"{n} {o.shape}" for n, o in zip(model.output_names, outputs))
    print(f"wrote {args.out}: {summary}")
    if model.memo is not None:
        print(f"reuse: {model.last_stats.reuse:.1%}")
    if getattr(model, "last_cost", None) is not None:
        print(model.last_cost.format())


def cmd_validate(args):
    from .validate import validate

    inputs = _inputs(args)
    labels = _load_labels(args.labels) if args.labels else None
    memo = _memo_from_args(args)
    precision = _precision_from_args(args)
    if memo is None and (precision is None or not precision.reduced):
        raise ConfigError("validate needs --threshold T, --config FILE or --precision bf16|bf16-act|int8")
    if labels is not None and not args.metric:
        raise ConfigError("--labels needs --metric")
    report = validate(_model(args), inputs, memo, labels=labels, metric=args.metric,
                      output=args.output, target=args.target, stream=_stream_spec(args),
                      remote=_remote(args), precision=precision, **_cluster_options(args),
                      **_target_options(args))
    if _human(args):
        print(report.format())
    if args.json:
        _write_json(report.to_dict(), args.json)


def cmd_sweep(args):
    from .sweep import format_table, plot, sweep

    inputs = _inputs(args)
    labels = _load_labels(args.labels) if args.labels else None
    if labels is not None and not args.metric:
        raise ConfigError("--labels needs --metric")
    thresholds = [_float(t, "--thresholds") for t in args.thresholds.split(",") if t.strip()]
    if not thresholds:
        raise ConfigError("--thresholds needs at least one value")
    predictors = [p.strip() for p in args.predictors.split(",") if p.strip()]
    rows = sweep(_model(args), inputs, thresholds, predictors, labels=labels, metric=args.metric,
                 output=args.output, target=args.target, progress=not args.quiet,
                 stream=_stream_spec(args), **_cluster_options(args), **_target_options(args))
    if _human(args):
        print(format_table(rows))
    calibrated = None
    if args.calibrated:
        calibrated = _calibrated_point(args, inputs, labels)
    if args.plot:
        plot(rows, args.plot, title=args.title or _model_title(args.model), calibrated=calibrated)
        if _human(args):
            print(f"wrote {args.plot}")
    if args.json:
        _write_json(rows, args.json)


def _calibrated_point(args, inputs, labels) -> dict:
    """The configuration of ``--calibrated FILE`` run on the sweep's inputs: its loss
    (metric loss with labels, else mean relative error of the first output) and
    computations avoided, for the plot."""
    from .passes import MemoConfig
    from .validate import validate

    config = MemoConfig.load(args.calibrated)
    report = validate(_model(args), inputs, config, labels=labels, metric=args.metric,
                      output=args.output, target=args.target, stream=_stream_spec(args),
                      **_target_options(args))
    if report.metric:
        loss = report.metric["loss"]
    else:
        loss = next(iter(report.outputs.values()))["mean_rel"]
    return {"loss": loss, "computations_avoided": report.stats.computations_avoided,
            "predictor": config.predictor}


def cmd_calibrate(args):
    from .calibrate import DEFAULT_GRID, calibrate, parse_loss

    inputs = _inputs(args)
    labels = _load_labels(args.labels) if args.labels else None
    holdout = (_inputs(args, args.holdout_inputs, "held-out inputs") if args.holdout_inputs else None)
    holdout_labels = _load_labels(args.holdout_labels) if args.holdout_labels else None
    grid = ([_float(t, "--grid") for t in args.grid.split(",") if t.strip()] if args.grid
            else DEFAULT_GRID)
    predictors = [p.strip() for p in args.predictors.split(",") if p.strip()]
    if not predictors:
        raise ConfigError("--predictors needs at least one predictor")
    result = calibrate(_model(args), inputs, labels, args.metric, holdout, holdout_labels,
                       max_loss=parse_loss(args.max_loss), predictors=predictors, grid=grid,
                       precisions=_precision_list(args.precision),
                       margin=_float(args.margin, "--margin"), output=args.output,
                       target=args.target, progress=not args.quiet, stream=_stream_spec(args),
                       objective=args.objective, **_cluster_options(args), **_target_options(args))
    _write_atomically(args.out, lambda f: f.write(result.to_json().encode()))
    if _human(args):
        print(result.format())
        print(f"wrote {args.out}" + (" (use it with --config)" if result.memoized or result.reduced
                                     else " (it records that no configuration was chosen)"))
    if args.json:
        _write_json(result.to_dict(), args.json)


def cmd_inspect(args):
    from .frontend import from_onnx
    from .explain import describe

    imported = from_onnx(_model(args))
    memo = _memo_from_args(args)
    print(describe(imported, memo, node=args.node, asm=args.asm))


def cmd_bench(args):
    from .bench import (bench_model, format_machine, format_modelled_rows, format_rows, memo_memory,
                        parse_size)
    from .frontend import from_onnx
    from .testing import make_inputs, make_recurrent_model

    size = parse_size(args.model) if not os.path.exists(args.model) else None
    if size is not None:
        op, D, H = size
        model = make_recurrent_model(op, D, H, weight_scale=1.0, direction=args.direction)
        inputs = make_inputs(model, args.steps, args.batch, smooth=True)
        label = f"{op} D={D} H={H} T={args.steps} batch={args.batch} {args.direction}"
    else:
        if not args.inputs:
            raise InputError(f"{args.model}: give --inputs for a model file "
                             "(or a size such as lstm:512 for a generated layer)")
        model = _model(args)
        inputs = _inputs(args)
        if isinstance(inputs, list):
            raise InputError(f"{args.inputs}: bench times one set of inputs, not a data set of "
                             "sequences")
        label = args.model
    thresholds = [_float(t, "--thresholds") for t in args.thresholds.split(",") if t.strip()]
    config, config_precision = _config_file(args.config) if args.config else (None, None)
    variants = dict(config=config, config_precision=config_precision,
                    precisions=_precision_list(args.precision))
    remote = _remote(args)
    if remote is not None:
        from .bench import bench_remote

        result = bench_remote(model, inputs, remote, thresholds=thresholds, predictor=args.predictor,
                              rounds=args.rounds, target=args.target, **variants,
                              **_target_options(args))
        if _human(args):
            where = remote.get("rpc") or f"{remote['key']} from the tracker at {remote['tracker']}"
            print(f"{label} on {where} (TVM time_evaluator; outputs and counts checked against "
                  "this machine's)")
            print(format_rows(result["rows"]))
        if args.json:
            _write_json({"model": label, **result}, args.json)
        return
    stream = _stream_spec(args)
    if stream is not None:
        from .bench import bench_stream, format_stream_rows

        result = bench_stream(model, inputs, stream, thresholds=thresholds, predictor=args.predictor,
                              rounds=args.rounds, ort_threads=args.ort_threads, target=args.target,
                              openvino=args.openvino, **variants, **_target_options(args))
        if _human(args):
            pairs = ", ".join(f"{i} <- {o}" for i, o in result["state"].items()) or "none"
            print(f"{label}: {result['calls']} calls of {result['chunk']} step(s), state {pairs}")
            print(format_stream_rows(result["rows"]))
            print(format_machine(result))
        if args.json:
            _write_json({"model": label, **result}, args.json)
        return
    result = bench_model(model, inputs, thresholds=thresholds, predictor=args.predictor,
                         rounds=args.rounds, ort_threads=args.ort_threads, target=args.target,
                         openvino=args.openvino, **variants, **_target_options(args))
    loops = from_onnx(model).loops
    memory = memo_memory(loops, batch=args.batch if size else 1, predictor=args.predictor)
    if _human(args):
        print(label + (f" on target {args.target} (modelled)" if result.get("modelled") else ""))
        if result.get("modelled"):
            print(format_modelled_rows(result["rows"]))
        else:
            print(format_rows(result["rows"]))
            print(format_machine(result))
        for node, mem in memory.items():
            print(f"  {node}: predictor data {mem['predictor_data'] / 1024:.1f} KiB, memo table "
                  f"{mem['memo_table'] / 1024:.1f} KiB per call, weights {mem['weights'] / 1024:.1f} KiB; "
                  f"predictor {mem['predictor_ops_per_step']} ops per step per element "
                  f"({mem['predictor_ops_per_step'] / mem['layer_macs_per_step']:.1%} of the layer's "
                  "multiply-adds)")
    if args.json:
        _write_json({"model": label, **result, "memory_bytes": memory}, args.json)


def cmd_demo(args):
    from .demo import run_demo

    from .demo import zoo

    if args.model not in zoo():
        raise ConfigError(f"no bundled model '{args.model}' (bundled: {', '.join(sorted(zoo()))})")
    run_demo(args.model, plot_path=args.plot, recalibrate=args.recalibrate)


METRICS = ["accuracy", "bpc", "mse", "nmse", "f1", "decisions", "fidelity"]
METRIC_HELP = (
    "what the loss (and --max-loss) means: accuracy, f1 -- relative drop against the "
    "unmodified model; bpc, mse -- relative rise; nmse -- rise of the mean squared error in "
    "units of the unmodified output's variance; decisions -- share of frames whose "
    "decision (output >= 0.5) flips, labels optional; fidelity -- RMS difference from the "
    "unmodified output over its standard deviation, no labels. Labels: class ids "
    "(accuracy, bpc), targets of the output's shape (mse, nmse), 0/1 per frame (f1, "
    "decisions)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memotvm",
        description="Compile ONNX recurrent networks with TVM and neuron-level fuzzy memoization.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log what memotvm and TVM do (TVM's own warnings included)")
    sub = parser.add_subparsers(dest="command", required=True)

    def json_arg(p, what):
        p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                       help=f"write {what} as JSON to FILE; '-' or no FILE: print only the "
                       "JSON on standard output (docs/cli.md)")

    def target_args(p):
        p.add_argument("--target", default="cpu",
                       help="backend: cpu (default), epur or accel (the modelled accelerator), "
                       "or an LLVM target: 'llvm -mcpu=haswell', 'llvm -mtriple=aarch64-linux-gnu "
                       "-mattr=+neon' (compile only; docs/deploy.md)")
        p.add_argument("--hw", help="hardware configuration TOML for the accelerator "
                       "(default: memotvm/targets/epur/epur.toml)")
        p.add_argument("--threads", type=int, metavar="N",
                       help="threads each call uses (default: TVM_NUM_THREADS if set, else "
                       "every CPU the process may run on); kept in an exported artifact")

    def fix_arg(p):
        p.add_argument("--fix", action="append", metavar="NAME=VALUE",
                       help="bind input NAME to VALUE (a number or comma-separated numbers) at "
                       "compile time, e.g. --fix sr=16000: what follows from it is computed "
                       "once, an If on it keeps only its branch (repeatable)")
        p.add_argument("--shape", action="append", metavar="NAME=D1,D2,...",
                       help="declare input NAME with this static shape, e.g. --shape "
                       "input=1,576 for a stream of fixed chunks: fewer run-time shape "
                       "computations and allocations per call (repeatable)")

    def model_args(p, memo=True, precision=True):
        p.add_argument("model", help="ONNX model file")
        target_args(p)
        fix_arg(p)
        if memo:
            p.add_argument("--threshold", help="memoize every recurrent layer with this threshold")
            p.add_argument("--predictor", default="bnn", help="bnn (default) or oracle")
            p.add_argument("--config", help="JSON memo configuration (per-node thresholds; from "
                           "calibrate, with the precision it chose)")
        if memo and precision:
            p.add_argument("--precision", help="store the recurrent layers' weights at fp32 "
                           "(default), bf16 or int8 (per-row scales), or bf16-act (bf16, and the "
                           "activations they multiply rounded too), or as a JSON file says "
                           "(per node and direction); a --config file's precision applies "
                           "unless this is given (docs/precision.md)")

    p = sub.add_parser("compile", help="compile a model into a library the TVM runtime loads "
                       "(and its .json description; docs/deploy.md)")
    model_args(p)
    p.add_argument("-o", "--out", required=True, help="library to write (e.g. model.so)")
    p.add_argument("--tunable", action="store_true",
                   help="thresholds as run-time inputs (defaults: the configuration's)")
    p.add_argument("--cc", help="compiler that links the library (default: the host's; for "
                   "another architecture, <triple>-gcc)")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("run", help="run a model on inputs from an .npz file")
    model_args(p)
    p.add_argument("--inputs", required=True, help=".npz with one array per model input")
    p.add_argument("--out", required=True, help=".npz to write, one array per output")
    p.set_defaults(func=cmd_run)

    def stream_args(p):
        p.add_argument("--stream", action="store_true",
                       help="run the inputs as a stream, one chunk per call in a session that "
                       "carries the memo tables and the model's state (docs/streaming.md)")
        p.add_argument("--chunk", type=int, default=1, help="steps per call with --stream (default 1)")
        p.add_argument("--state", action="append", metavar="IN=OUT",
                       help="with --stream: the output OUT feeds state input IN at the next call "
                       "(repeatable; default: pairs found by name)")
        p.add_argument("--time-axis", action="append", metavar="NAME=AXIS",
                       help="with --stream: the time axis of input NAME, where its declared "
                       "shape does not name one (repeatable)")

    def cluster_args(p):
        p.add_argument("--cluster", metavar="ADDRESS",
                       help="run on a Ray cluster: its address (HOST:PORT, ray://HOST:PORT or "
                       "auto), or 'local' to start Ray on this machine; needs "
                       "pip install 'memotvm[cluster]' (docs/cluster.md)")
        p.add_argument("--workers", type=int, metavar="N",
                       help="with --cluster: how many workers (default: as many as the "
                       "cluster's CPUs allow)")
        p.add_argument("--cpus-per-worker", type=int, metavar="N",
                       help="with --cluster: CPUs each worker takes and threads its calls use "
                       "(default 1; a node's core count runs one worker per node)")

    def rpc_args(p, what):
        p.add_argument("--rpc", metavar="HOST:PORT", help=f"{what} on the device that runs TVM's "
                       "RPC server there (python -m tvm.exec.rpc_server; docs/deploy.md)")
        p.add_argument("--tracker", metavar="HOST:PORT", help="ask TVM's RPC tracker there for a device")
        p.add_argument("--key", help="with --tracker: the kind of device to ask for")

    p = sub.add_parser("validate", help="compare the memoized model with the unmodified one")
    model_args(p)
    stream_args(p)
    rpc_args(p, "run the memoized model")
    cluster_args(p)
    p.add_argument("--inputs", required=True)
    p.add_argument("--labels", help=".npz with the labels (one array, or one named 'labels')")
    p.add_argument("--metric", choices=METRICS, help=METRIC_HELP)
    p.add_argument("--output", help="output the metric applies to (default: the first)")
    json_arg(p, "the report")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("sweep", help="reuse and loss over a range of thresholds")
    model_args(p, memo=False)
    p.add_argument("--inputs", required=True)
    p.add_argument("--labels")
    p.add_argument("--metric", choices=METRICS, help=METRIC_HELP)
    p.add_argument("--output")
    p.add_argument("--thresholds", default="0,0.1,0.2,0.3,0.4,0.5")
    p.add_argument("--predictors", default="bnn,oracle", help="comma-separated: bnn, lowrank:R, oracle")
    stream_args(p)
    cluster_args(p)
    p.add_argument("--plot", default="sweep.png", help="PNG to write ('' for none)")
    p.add_argument("--title", help="the plot's title (default: the model's file name and "
                   "its recurrent layers)")
    p.add_argument("--calibrated", metavar="CFG",
                   help="a configuration (from calibrate) to mark on the trade-off plot, "
                   "run on the same inputs")
    json_arg(p, "the rows")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("calibrate", help="per-node thresholds for the most reuse within a loss bound")
    p.add_argument("model", help="ONNX model file")
    target_args(p)
    fix_arg(p)
    p.add_argument("--inputs", required=True, help=".npz calibration inputs")
    p.add_argument("--labels", help=".npz calibration labels (not for decisions, fidelity)")
    p.add_argument("--metric", required=True, choices=METRICS, help=METRIC_HELP)
    p.add_argument("--max-loss", default="1%", help="bound on the metric's loss (see --metric): "
                   "1%% or 0.01")
    p.add_argument("--holdout-inputs", help=".npz held-out inputs (default: half of --inputs)")
    p.add_argument("--holdout-labels", help=".npz held-out labels")
    stream_args(p)
    cluster_args(p)
    p.add_argument("--predictors", default="bnn", help="comma-separated predictors to search over")
    p.add_argument("--precision", metavar="LIST", default="fp32",
                   help="precisions the recurrent weights may be stored at, searched together "
                        "with the thresholds: e.g. fp32,bf16,bf16-act,int8 (default fp32: thresholds "
                        "only; docs/precision.md)")
    p.add_argument("--objective", default="computations", choices=["computations", "time", "energy"],
                   help="what the chosen configuration is best at, within the loss bound: "
                        "computations (the most multiply-adds avoided), time (the fastest, "
                        "timed on the target or, on the accelerator, modelled; the unmodified "
                        "model is a candidate, so the result is never slower than it), energy "
                        "(the accelerator's cost model)")
    p.add_argument("--grid", help="comma-separated thresholds to search (default: 0 to 1)")
    p.add_argument("--margin", default="0.25",
                   help="search within max-loss * (1 - margin) on the calibration split")
    p.add_argument("--output", help="output the metric applies to (default: the first)")
    p.add_argument("--out", default="memo_config.json", help="configuration file to write")
    json_arg(p, "the calibration result (the --out file's content)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("inspect", help="show a recurrent kernel before and after the pass")
    model_args(p, precision=False)
    p.add_argument("--node", help="recurrent node to show (default: the first)")
    p.add_argument("--asm", action="store_true", help="also print the generated assembly")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("bench", help="time onnxruntime, memotvm and memotvm memoized")
    p.add_argument("model", help="ONNX file, or a layer size: lstm:512, gru:256:512, rnn:128")
    target_args(p)
    fix_arg(p)
    p.add_argument("--inputs", help=".npz inputs (model files)")
    p.add_argument("--steps", type=int, default=100, help="sequence length (sizes)")
    p.add_argument("--batch", type=int, default=1, help="batch size (sizes)")
    p.add_argument("--direction", default="forward", choices=["forward", "reverse", "bidirectional"])
    p.add_argument("--thresholds", default="0.1,0.3,0.5")
    p.add_argument("--predictor", default="bnn")
    p.add_argument("--config", help="also time this JSON memo configuration (e.g. from calibrate, "
                   "with the precision it chose)")
    p.add_argument("--precision", metavar="LIST", help="also time the unmodified model with its "
                   "recurrent weights at each of these precisions: bf16, bf16-act, int8 (comma-separated)")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--ort-threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--openvino", action="store_true",
                   help="also time OpenVINO, at its default precision and at f32 (pip install "
                        "'memotvm[openvino]')")
    stream_args(p)
    rpc_args(p, "time the models")
    json_arg(p, "the results")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="calibrate, validate, time and cost a bundled zoo model")
    p.add_argument("--model", default="digits_bigru",
                   help="bundled model: digits_bigru (default), pydoc_charlstm, co2_lstm")
    p.add_argument("--recalibrate", action="store_true",
                   help="calibrate again instead of loading the committed configuration")
    p.add_argument("--plot", default="memotvm_demo.png", help="PNG to write ('' for none)")
    p.set_defaults(func=cmd_demo)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def _model_title(path: str) -> str:
    """A plot title that says what the model is: its file name and recurrent layers."""
    try:
        from .frontend import from_onnx
        from .sweep import layers_text

        loops = from_onnx(path).loops
    except MemoTVMError:
        return os.path.basename(path)
    layers = layers_text(loops)
    return f"{os.path.basename(path)} ({layers})" if layers else os.path.basename(path)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    outputs = [getattr(args, name, None) for name in ("out", "json", "plot")]
    logging.basicConfig(format="memotvm: %(name)s: %(message)s",
                        level=logging.DEBUG if args.verbose else logging.WARNING)
    if not args.verbose:
        logging.getLogger("memotvm.tvm").setLevel(logging.WARNING)
    try:
        for path in outputs:
            _check_output_path(path)
        args.func(args)
    except MemoTVMError as err:
        print(f"memotvm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("memotvm: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
