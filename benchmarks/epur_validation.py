"""Feed the accelerator's cost model the paper's networks at the paper's reuse, and set its
speedup and energy saving beside the paper's (docs/accelerator.md holds the output).

    python benchmarks/epur_validation.py [--hw FILE] [--reuse 0.242]

No model is run: each layer is lowered to its E-PUR program and costed over a trace in
which every step after the first computes (1 - reuse) of every gate's neurons, which is
what a measured run at that reuse looks like to the timing model.
"""

from __future__ import annotations

import argparse

import numpy as np

from memotvm.kernels import MemoPlan
from memotvm.frontend.recurrent import parse_recurrent_node
from memotvm.targets.epur import HardwareConfig, lower
from memotvm.targets.epur.program import cost

# The networks of the memoization paper's evaluation as far as they can be stated here.
# The papers are not readable beyond their abstracts, so the sizes are ASSUMPTIONS from the
# networks' own publications (EESEN: Miao et al. 2015; DeepSpeech2: Amodei et al. 2016;
# MNMT: Luong et al. 2015; IMDB: a typical sentiment LSTM).
# name: (op, layers, direction, input size of layer 1, hidden size, steps)
NETWORKS = {
    "IMDB sentiment": ("LSTM", 1, "forward", 128, 128, 100),
    "EESEN speech": ("LSTM", 5, "bidirectional", 120, 320, 300),
    "DeepSpeech2 speech": ("GRU", 5, "bidirectional", 800, 800, 300),
    "MNMT translation": ("LSTM", 4, "forward", 1024, 1024, 50),
}
PAPER = {"reuse": 0.242, "speedup": 1.35, "energy_saving": 0.185}


def layer_costs(op, layers, direction, d_in, hidden, steps, reuse, hw):
    nd = 2 if direction == "bidirectional" else 1
    out = []
    for i in range(layers):
        d = d_in if i == 0 else hidden * nd
        gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
        loop = parse_recurrent_node(op, f"{op.lower()}{i}", {"hidden_size": hidden, "direction": direction},
                                    set(), [nd, gates * hidden, d], [nd, gates * hidden, hidden], "float32")
        lengths = np.array([steps])
        full = np.full((nd, 1, steps, gates), hidden, np.int32)
        memo = np.full_like(full, int(round(hidden * (1 - reuse))))
        memo[:, :, 0] = hidden  # the first step always computes
        plain = cost(lower(loop, None, hw), full, lengths)
        bnn = cost(lower(loop, MemoPlan("bnn", (0.0,) * nd), hw), memo, lengths)
        out.append((loop, plain, bnn))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hw", help="hardware TOML (default: the documented epur.toml)")
    parser.add_argument("--reuse", type=float, default=PAPER["reuse"])
    args = parser.parse_args()
    hw = HardwareConfig.load(args.hw)
    print("| network | layers | weights (MB) | on chip | speedup | energy saved | "
          "paper speedup | paper energy saved |")
    print("|---|---|---|---|---|---|---|---|")
    speedups, savings = [], []
    for name, (op, layers, direction, d_in, hidden, steps) in NETWORKS.items():
        costs = layer_costs(op, layers, direction, d_in, hidden, steps, args.reuse, hw)
        plain = sum(c[1].cycles for c in costs)
        memo = sum(c[2].cycles for c in costs)
        e_plain = sum(c[1].energy_total_pj for c in costs)
        e_memo = sum(c[2].energy_total_pj for c in costs)
        mb = sum(c[0].num_directions * c[0].rows * (c[0].input_size + c[0].hidden_size) for c in costs) \
            * hw["compute.element_bytes"] / 1e6
        fits = sum(1 for c in costs if lower(c[0], None, hw).weights_fit)
        speedups.append(plain / memo)
        savings.append(1 - e_memo / e_plain)
        print(f"| {name} ({op} {direction} H={hidden}, T={steps}) | {layers} | {mb:.1f} | "
              f"{fits}/{layers} layers | {plain / memo:.2f}x | {1 - e_memo / e_plain:.1%} | | |")
    print(f"| **average** (reuse {args.reuse:.1%}) | | | | **{np.mean(speedups):.2f}x** | "
          f"**{np.mean(savings):.1%}** | **{PAPER['speedup']:.2f}x** | **{PAPER['energy_saving']:.1%}** |")


if __name__ == "__main__":
    main()
