"""Running a model's variants on named splits of data: what calibrate, sweep and validate
ask for, answered in this process (:class:`LocalRunner`) or on a Ray cluster
(:class:`memotvm.cluster.ClusterRunner`, the same interface).

A *variant* is one compiled form of the model: unmodified, memoized with run-time
thresholds for one predictor (``tunable``), or memoized with one fixed configuration.
A *job* runs a variant on a split (with the thresholds of a tunable variant) and gives
an :class:`Outcome`: the outputs, the reuse counts and, on a target with a cost model,
the modelled cost.  Both runners return outcomes in the order of the jobs, so the
callers' decisions do not depend on where or in which order the jobs ran.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .passes import MemoConfig
from .precision import PrecisionConfig
from .streaming import run_inputs, split_all


@dataclass(frozen=True)
class Variant:
    """``kind`` is "unmodified", "tunable" (``predictor`` set) or "fixed" (``config``: the
    configuration's JSON); ``precision``: the JSON of a
    :class:`~memotvm.precision.PrecisionConfig` the weights are stored at (None: fp32)."""

    kind: str
    predictor: str | None = None
    config: str | None = None
    precision: str | None = None

    @classmethod
    def tunable(cls, predictor: str, precision=None) -> "Variant":
        return cls("tunable", predictor=predictor, precision=_precision_key(precision))

    @classmethod
    def fixed(cls, config: MemoConfig, precision=None) -> "Variant":
        return cls("fixed", config=json.dumps(config.to_dict(), sort_keys=True),
                   precision=_precision_key(precision))

    @classmethod
    def unmodified(cls, precision=None) -> "Variant":
        return cls("unmodified", precision=_precision_key(precision))

    def compile(self, proto, target, options):
        from .api import compile as compile_model

        if self.precision is not None:
            options = {**options, "precision": PrecisionConfig.from_dict(json.loads(self.precision))}
        if self.kind == "unmodified":
            return compile_model(proto, target=target, **options)
        if self.kind == "tunable":
            return compile_model(proto, target=target, memo=MemoConfig(predictor=self.predictor),
                                 tunable=True, **options)
        return compile_model(proto, target=target, memo=MemoConfig.from_dict(json.loads(self.config)),
                             **options)


def _precision_key(precision) -> str | None:
    """A precision configuration as a variant's key: None where it keeps every weight at
    fp32 (so that such variants are the plain ones, compiled once)."""
    if precision is None:
        return None
    precision = PrecisionConfig.coerce(precision)
    return json.dumps(precision.to_dict(), sort_keys=True) if precision.reduced else None


UNMODIFIED = Variant("unmodified")


@dataclass(frozen=True)
class Job:
    """Run ``variant`` on the split named ``split``; ``memo``: the run-time thresholds of a
    tunable variant."""

    split: str
    variant: Variant = UNMODIFIED
    memo: MemoConfig | None = None


@dataclass
class Outcome:
    outputs: list  # the model's outputs in graph order (None for those not kept)
    stats: object  # ReuseStats of the run
    cost: object | None = None  # the modelled cost, on a target with a cost model


class LocalRunner:
    """Jobs run one after another in this process; each variant compiled once."""

    def __init__(self, proto, target="cpu", options=None):
        self.proto, self.target, self.options = proto, target, dict(options or {})
        self._models: dict = {}
        self._splits: dict = {}

    def model(self, variant: Variant = UNMODIFIED):
        if variant not in self._models:
            self._models[variant] = variant.compile(self.proto, self.target, self.options)
        return self._models[variant]

    @property
    def output_names(self) -> list:
        return self.model().output_names

    def add_split(self, key: str, inputs, stream=None) -> None:
        """``inputs``: one set of input arrays or a list of them (a data set of
        sequences); ``stream``: a StreamSpec to run them as a recorded stream."""
        self._splits[key] = (inputs, stream, split_all(self.model(), inputs, stream))

    def split_data(self, key: str) -> tuple:
        """(inputs, stream) of the split."""
        return self._splits[key][:2]

    def run_split(self, key: str, model, memo=None):
        """(outputs, stats) of ``model`` on the split (for timing runs)."""
        inputs, stream, calls = self._splits[key]
        return run_inputs(model, inputs, stream, memo=memo, calls=calls)

    def run(self, jobs: list, reduce=None) -> list:
        """An Outcome per job, in order; with ``reduce``, ``reduce(i, outcome)`` of each
        instead, called as job i finishes (so that a long list of jobs does not hold
        every job's outputs)."""
        results = []
        for i, job in enumerate(jobs):
            model = self.model(job.variant)
            outputs, stats = self.run_split(job.split, model, job.memo)
            outcome = Outcome(list(outputs), stats, getattr(model, "last_cost", None))
            results.append(outcome if reduce is None else reduce(i, outcome))
        return results

    def close(self) -> None:
        self._models.clear()


def make_runner(proto, target="cpu", options=None, cluster=None, workers=None, variants=(),
                keep=None):
    """A LocalRunner, or with ``cluster`` (a Ray address, "local" or a
    :class:`memotvm.cluster.Cluster`) a ClusterRunner of ``workers`` workers that have
    compiled ``variants`` (and the unmodified model); ``keep``: the output indices the
    workers send back (None: all)."""
    if cluster is None:
        if workers is not None:
            from .errors import ConfigError

            raise ConfigError("workers are for a cluster: give cluster= (a Ray address or 'local')")
        return LocalRunner(proto, target, options)
    from .cluster import ClusterRunner

    return ClusterRunner(cluster, proto, target, options, variants=variants, keep=keep,
                         workers=workers)
