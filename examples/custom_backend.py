"""Register a third backend: an in-order microcontroller with its own cost model.

    python examples/custom_backend.py [MODEL.onnx INPUTS.npz]

The backend runs the model with the CPU code (so outputs and reuse decisions are the
CPU target's) and prices every call as a single-issue microcontroller would: each
multiply-add of a computed neuron costs ``cycles_per_mac``, each BNN word
``cycles_per_word``.  A backend is a subclass of ``memotvm.targets.Backend`` with a
``name`` and a ``build``; ``register_backend`` makes it a ``target=`` of every API and CLI
command (see docs/backends.md).
"""

import os
import sys
from dataclasses import dataclass

import numpy as np

import memotvm
from memotvm.predictors import BnnPredictor, get_predictor
from memotvm.runtime import CompiledModel
from memotvm.targets import Backend, CpuBackend, register_backend


@dataclass
class McuCost:
    cycles: float
    seconds: float
    energy_total_pj: float

    def to_dict(self):
        return dict(vars(self))

    def format(self, baseline=None):
        text = f"mcu: {self.cycles:,.0f} cycles, {self.seconds * 1e3:.2f} ms"
        if baseline is not None:
            text += f", {baseline.cycles / self.cycles:.2f}x faster than unmodified"
        return text


class McuModel(CompiledModel):
    def run(self, inputs, check_finite=True, memo=None):
        outputs = super().run(inputs, check_finite, memo)
        cycles = 0.0
        for loop in self.loops:
            plan = self.memo.plan_for(loop) if self.memo else None
            predictor = get_predictor(plan.predictor) if plan else None
            count = self.last_stats.per_node[loop.name]
            cycles += count.computed * (loop.input_size + loop.hidden_size) * self.cycles_per_mac
            if isinstance(predictor, BnnPredictor):  # XOR + popcount per word, every neuron
                cycles += count.total * predictor.extra_cost(loop) / loop.rows * self.cycles_per_word
        self.last_cost = McuCost(cycles, cycles / self.clock_hz, cycles * self.pj_per_cycle)
        return outputs


class McuBackend(Backend):
    name = "mcu"
    description = "in-order microcontroller cost model over the CPU code"

    def build(self, imported, mod, memo=None, clock_hz=80e6, cycles_per_mac=1.0,
              cycles_per_word=2.0, pj_per_cycle=20.0):
        model = CpuBackend().build(imported, mod, memo=memo, model_class=McuModel)
        model.target, model.last_cost, model.clock_hz = self.name, None, clock_hz
        model.cycles_per_mac, model.cycles_per_word = cycles_per_mac, cycles_per_word
        model.pj_per_cycle = pj_per_cycle
        return model


register_backend(McuBackend(), override=True)


def main(model, inputs_path):
    feeds = dict(np.load(inputs_path))
    report = memotvm.validate(model, feeds, memo=0.2, target="mcu", cycles_per_mac=1.5)
    print(report.format())


if __name__ == "__main__":
    here = os.path.join(os.path.dirname(memotvm.__file__), "models")
    args = sys.argv[1:] or [os.path.join(here, "torch_lstm_gru.onnx"),
                            os.path.join(here, "torch_lstm_gru_inputs.npz")]
    main(*args)
