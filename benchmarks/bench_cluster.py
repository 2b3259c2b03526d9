"""Calibration on Ray workers: wall time against the number of workers.

    python benchmarks/bench_cluster.py [--model digits_bigru] [--workers 1,2,4]
        [--repeat-data 16] [--rounds 2] [--json bench_cluster.json] [--plot cluster.png]

Calibrates a bundled zoo model (its calibration split repeated ``--repeat-data`` times
along the batch, standing in for a larger data set) in this process, then on a local Ray
instance with each number of workers, ``--rounds`` times each, alternating.  A run's
time is the ``calibrate`` call with Ray already started: the workers' start and compiles,
and the search.  The start and compiles are also timed on their own (workers started,
every variant compiled, workers stopped), so the search's share is the difference.
Every cluster result is checked to equal the single-process one.  Needs
``pip install 'memotvm[cluster]'``.
"""

import argparse
import json
import os
import statistics
import time

import numpy as np

from memotvm.bench import format_machine
from memotvm.calibrate import calibrate
from memotvm.cluster import Cluster, ClusterRunner
from memotvm.evaluation import Variant
from memotvm.frontend import load_model
from memotvm.timing import machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "memotvm", "models")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits_bigru")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--repeat-data", type=int, default=16)
    parser.add_argument("--predictors", default="bnn,delta")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpus-per-worker", type=int, default=1)
    parser.add_argument("--json", default="bench_cluster.json")
    parser.add_argument("--plot", default="", help="PNG of the scaling figure")
    args = parser.parse_args()

    with open(os.path.join(MODELS, "zoo.json")) as f:
        metric = json.load(f)[args.model]["metric"]
    path = os.path.join(MODELS, f"{args.model}.onnx")
    inputs = dict(np.load(os.path.join(MODELS, f"{args.model}_calib_inputs.npz")))
    labels = np.load(os.path.join(MODELS, f"{args.model}_calib_labels.npz"))
    labels = labels[labels.files[0]]
    # The zoo's inputs are [steps, batch, ...] (tokens [seq, batch]); labels [batch, ...]
    # or [seq, batch].
    inputs = {n: np.concatenate([a] * args.repeat_data, axis=1) for n, a in inputs.items()}
    labels = np.concatenate([labels] * args.repeat_data, axis=1 if labels.ndim == 2 and
                            metric == "bpc" else 0)
    kw = dict(predictors=[p for p in args.predictors.split(",") if p], progress=False)
    workers = [int(w) for w in args.workers.split(",")]

    def one(count):
        t0 = time.perf_counter()
        if count is None:
            result = calibrate(path, inputs, labels, metric, **kw)
        else:
            result = calibrate(path, inputs, labels, metric, cluster=clusters[count], **kw)
        return time.perf_counter() - t0, result

    def start_only(cluster):
        t0 = time.perf_counter()
        runner = ClusterRunner(cluster, load_model(path),
                               variants=[Variant.tunable(p) for p in kw["predictors"]], keep=[0])
        runner.close()
        return time.perf_counter() - t0

    clusters = {}
    starts = {w: [] for w in workers}
    samples = {w: [] for w in [None, *workers]}
    reference = None
    for r in range(args.rounds):
        for count in [None, *workers]:
            if count is not None:
                clusters[count] = Cluster("local", count, cpus_per_worker=args.cpus_per_worker).connect()
                starts[count].append(start_only(clusters[count]))
            seconds, result = one(count)
            if count is not None:
                clusters.pop(count).close()
            if reference is None:
                reference = result.to_json()
            assert result.to_json() == reference, f"{count} workers gave another result"
            samples[count].append(seconds)
            print(f"round {r + 1}: {'one process' if count is None else f'{count} worker(s)'}: "
                  f"{seconds:.1f} s", flush=True)
    base = statistics.median(samples[None])
    rows = [{"workers": w, "median_s": statistics.median(s), "samples_s": s,
             "start_and_compile_s": statistics.median(starts[w]) if w else None,
             "speedup_vs_one_process": base / statistics.median(s)} for w, s in samples.items()]
    report = {"model": args.model, "repeat_data": args.repeat_data, "metric": metric,
              "cpus_per_worker": args.cpus_per_worker,
              "predictors": kw["predictors"], "evaluations": json.loads(reference)["calibration"]
              ["evaluations"], "rows": rows, "machine": machine()}
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(format_machine(report["machine"]))
    for row in rows:
        label = "one process" if row["workers"] is None else f"{row['workers']} worker(s)"
        start = row["start_and_compile_s"]
        print(f"{label:<14} {row['median_s']:7.1f} s  {row['speedup_vs_one_process']:.2f}x"
              + (f"  (start and compile {start:.1f} s, search {row['median_s'] - start:.1f} s)"
                 if start else ""))
    if args.plot:
        plot(rows, args.plot, report)


def plot(rows, path, report):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cluster = [r for r in rows if r["workers"] is not None]
    base = next(r for r in rows if r["workers"] is None)["median_s"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot([r["workers"] for r in cluster], [r["median_s"] for r in cluster], "o-",
            label="Ray workers: calibrate call")
    ax.plot([r["workers"] for r in cluster],
            [r["median_s"] - r["start_and_compile_s"] for r in cluster], "s--",
            label="of which the search (less workers' start and compile)")
    ax.axhline(base, color="grey", linestyle=":", label="one process, no Ray")
    ax.set(xlabel="workers (one CPU each)", ylabel="calibration wall time (s)",
           xticks=[r["workers"] for r in cluster],
           title=f"{report['model']} x{report['repeat_data']}, {report['evaluations']} evaluations, "
                 f"{report['machine'].get('cpus', '?')} cores")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
