"""A recurrent layer as a program for the E-PUR-like machine, and what running it costs.

``lower(loop, plan, hw)`` turns one recurrent kernel (plain or memoized) into an
:class:`EpurProgram`: what runs once per call and what runs at every time step, each
instruction naming the unit that executes it and how much work it does.  ``cost``
walks that program over the trace of a run (which neurons each step computed, from the
functional simulator) and returns cycles, energy by component and bytes moved.

The timing model, in short (every number comes from :class:`HardwareConfig`):

* chains (batch elements and directions) run one after another, steps in order;
* a step's computed neurons are spread over the CUs; a neuron occupies a DPU for
  ceil(length / dpu_width) cycles; a predictor's own multiply-adds use the DPUs too;
* the BNN unit evaluates every neuron (one 64-bit word per cycle per CU) pipelined with
  the DPUs, so a step takes max(DPU, BNN) cycles, then the MFU's cell update, then a
  fixed step latency;
* a layer whose weights fit the weight buffer loads them from DRAM once per call, else
  it streams the rows it computes from DRAM at every step (at ``dram_bandwidth``, which
  then bounds the step); a reused neuron's weights are not read at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ...kernels import MemoPlan
from ...kernels.memo_table import resumable
from ...frontend.recurrent import RecurrentLoop
from ...predictors import BnnPredictor, get_predictor, words
from .hardware import HardwareConfig

# Element operations of the MFU per hidden unit and step (activations, cell update):
# LSTM 3 sigmoids + 2 tanh + 5 products/sums, GRU 2 sigmoids + tanh + 5, RNN 1 + 1.
MFU_OPS_PER_UNIT = {"LSTM": 10, "GRU": 8, "RNN": 2}
ENERGY_COMPONENTS = ("dot_products", "bnn", "mfu", "onchip_memory", "memo_buffer", "dram", "static")


@dataclass(frozen=True)
class Instr:
    unit: str  # dma, dpu, bnn, memo, mfu
    op: str
    rows: str  # which neurons: "all", "computed", "reused" or "-"
    length: int  # elements (or 64-bit words) per row
    note: str = ""

    def format(self) -> str:
        return f"{self.unit:>4}  {self.op:<14} rows={self.rows:<9} len={self.length:<6} {self.note}"


@dataclass(frozen=True)
class WeightFormat:
    """What one weight costs on the machine: bytes held and moved, multiply-adds per
    cycle of a CU's DPU, and pJ per multiply-add (at the modelled node)."""

    bytes: float
    dpu_width: float
    mac_pj: float
    # One more MFU operation per computed neuron: its dot product times the row's scale.
    scaled_rows: bool = False


def weight_format(hw: HardwareConfig, weights: str) -> WeightFormat:
    """The format of weights stored as ``weights`` (a kernel's dtype: float32 means the
    machine's native format, ``compute.element_bytes``, as does float64; bf16-act's
    "bfloat16_pairs" is bf16: its rounded activations are assumed to cost nothing more
    on a machine whose native format is 16 bits)."""
    if weights not in ("bfloat16", "bfloat16_pairs", "int8"):
        return WeightFormat(hw["compute.element_bytes"], hw["compute.dpu_width"],
                            hw.energy_pj("energy.mac"))
    name = {"bfloat16": "bf16", "bfloat16_pairs": "bf16", "int8": "int8"}[weights]
    return WeightFormat(hw[f"precision.{name}_weight_bytes"], hw[f"precision.{name}_dpu_width"],
                        hw.energy_pj(f"precision.{name}_mac"), scaled_rows=weights == "int8")


@dataclass
class EpurProgram:
    """One recurrent layer lowered for the accelerator (``weights``: the dtype its
    weights are stored in, :mod:`memotvm.precision`)."""

    loop: RecurrentLoop
    plan: MemoPlan | None
    hw: HardwareConfig
    prologue: list = field(default_factory=list)
    step: list = field(default_factory=list)
    weights_fit: bool = True
    weights: str = "float32"

    @property
    def weight_format(self) -> WeightFormat:
        return weight_format(self.hw, self.weights)

    def format(self) -> str:
        lines = [f"; {self.loop.op} '{self.loop.name}' D={self.loop.input_size} "
                 f"H={self.loop.hidden_size} {self.loop.direction}, "
                 + (f"{self.weights} weights, " if self.weights in ("bfloat16", "bfloat16_pairs", "int8")
                    else "")
                 + (f"memo {self.plan.predictor} thresholds {self.plan.thresholds}" if self.plan
                    else "unmodified")]
        lines.append("per call:")
        lines += ["  " + i.format() for i in self.prologue]
        lines.append("per step of each chain (direction, batch element):")
        lines += ["  " + i.format() for i in self.step]
        return "\n".join(lines)


def lower(loop: RecurrentLoop, plan: MemoPlan | None, hw: HardwareConfig,
          weights: str = "float32") -> EpurProgram:
    D, H, N = loop.input_size, loop.hidden_size, loop.rows
    prog = EpurProgram(loop, plan, hw, weights=weights)
    weight_bytes = int(loop.num_directions * N * (D + H) * prog.weight_format.bytes)
    prog.weights_fit = weight_bytes <= hw["memory.weight_buffer"]
    predictor = get_predictor(plan.predictor) if plan else None
    oracle = plan is not None and predictor is None
    if prog.weights_fit:
        prog.prologue.append(Instr("dma", "LOAD_WEIGHTS", "all", D + H,
                                   f"{weight_bytes} bytes DRAM -> weight buffer"))
    if isinstance(predictor, BnnPredictor):
        prog.prologue.append(Instr("dma", "LOAD_SIGNS", "all", words(D) + words(H),
                                   "packed sign bits of W|R (packed at compile time)"))
    step = prog.step
    step.append(Instr("dma", "LOAD_X", "-", D, "x_t DRAM -> activation buffer"))
    if predictor is not None and predictor.scheme == "delta":
        step.append(Instr("mfu", "DELTA_CHECK", "-", D + H, "|v_k - sent_k| >= threshold, per component"))
        step.append(Instr("dpu", "DOT_COLUMNS", "all", 0,
                          "parts += column k (x) change, for sent components only"))
        step.append(Instr("mfu", "CELL", "-", MFU_OPS_PER_UNIT[loop.op] * H, "activations, c and h update"))
        step.append(Instr("dma", "STORE_H", "-", H, "h_t -> DRAM (Y)"))
        return prog
    if isinstance(predictor, BnnPredictor):
        step.append(Instr("bnn", "SIGN_PACK", "-", D + H, "sign bits of x_t | u_t"))
        step.append(Instr("bnn", "XNOR_POPCOUNT", "all", words(D) + words(H), "yb_j per neuron"))
    elif predictor is not None:
        step.append(Instr("dpu", "PREDICT", "all", predictor.extra_cost(loop),
                          f"{plan.predictor}: multiply-adds per step"))
    if plan is not None:
        step.append(Instr("memo", "MEMO_CHECK", "all", 1, "read q_m, relative-difference test"))
    dot_rows = "all" if plan is None or oracle else "computed"
    if predictor is not None and predictor.fresh_input:
        step.append(Instr("dpu", "DOT_INPUT", "all", D, "exact input part W_j . x_t"))
        step.append(Instr("dpu", "DOT_RECURRENT", dot_rows, H, "R_j . u_j"))
    else:
        step.append(Instr("dpu", "DOT", dot_rows, D + H, "[W_j | R_j] . [x_t ; u_j]"))
    if plan is not None:
        step.append(Instr("memo", "MEMO_UPDATE", "computed", 1, "store dot products and q"))
        step.append(Instr("memo", "MEMO_READ", "reused", 1, "cached dot products"))
    step.append(Instr("mfu", "CELL", "-", MFU_OPS_PER_UNIT[loop.op] * H, "activations, c and h update"))
    step.append(Instr("dma", "STORE_H", "-", H, "h_t -> DRAM (Y)"))
    return prog


@dataclass
class LayerCost:
    name: str
    cycles: float
    seconds: float
    energy_pj: dict  # component -> pJ
    dram_bytes: float
    onchip_bytes: float
    macs: float
    macs_unmodified: float

    @property
    def energy_total_pj(self) -> float:
        return sum(self.energy_pj.values())

    def to_dict(self) -> dict:
        return {"node": self.name, "cycles": self.cycles, "seconds": self.seconds,
                "energy_pj": dict(self.energy_pj), "energy_total_pj": self.energy_total_pj,
                "dram_bytes": self.dram_bytes, "onchip_bytes": self.onchip_bytes,
                "macs": self.macs, "macs_unmodified": self.macs_unmodified}


def cost(prog: EpurProgram, computed: np.ndarray, lengths: np.ndarray,
         resumed_chains: int = 0) -> LayerCost:
    """Cost of one run of ``prog``: ``computed`` is the simulator's trace (int [directions,
    batch, seq, gates]: neurons computed per step), ``lengths`` the valid steps per batch
    element, ``resumed_chains`` how many chains continued a memo table of an earlier
    call (a streaming session's).

    A memoized layer's memo tables are saved to DRAM at the end of every call and, in a
    session, restored from it at the start of the next (:func:`table_traffic`)."""
    layer = _cost(prog, computed, lengths)
    extra = table_traffic(prog, int(np.asarray(lengths).size), resumed_chains)
    if extra:
        layer.dram_bytes += extra
        cycles = extra / prog.hw["memory.dram_bandwidth"]
        layer.cycles += cycles
        seconds = cycles / (prog.hw["clock.frequency"] * 1e6)
        layer.seconds += seconds
        layer.energy_pj["dram"] += extra / 8 * prog.hw.energy_pj("energy.dram")
        layer.energy_pj["static"] += prog.hw["energy.static_power"] * seconds * 1e12
    return layer


def table_traffic(prog: EpurProgram, batch: int, resumed_chains: int) -> float:
    """DRAM bytes that keep a memoized layer's memo tables between calls.

    Assumption: the memo buffer serves one call at a time (other streams and layers use
    it between a session's calls), so each call writes its chains' tables to DRAM at its
    end, and a call that continues a session reads them back first; a table entry per
    neuron is ``memory.memo_buffer_entry`` bytes (parts and predictor value), delta
    execution's transmitted copies ``compute.element_bytes`` per component.  The
    transfers are not overlapped with compute."""
    if prog.plan is None:
        return 0.0
    hw, loop = prog.hw, prog.loop
    predictor = get_predictor(prog.plan.predictor)
    per_chain = loop.rows * hw["memory.memo_buffer_entry"]
    if predictor is not None and predictor.scheme == "delta":
        per_chain = (2 * loop.rows + loop.input_size + 2 * loop.hidden_size) * hw["compute.element_bytes"]
    chains = sum(resumable(loop, d) for d in range(loop.num_directions)) * batch
    return float(per_chain * (chains + resumed_chains))


def _cost(prog: EpurProgram, computed: np.ndarray, lengths: np.ndarray) -> LayerCost:
    hw, loop = prog.hw, prog.loop
    D, H, N = loop.input_size, loop.hidden_size, loop.rows
    fmt = prog.weight_format
    units, width = hw["compute.units"], fmt.dpu_width
    eb, wb = hw["compute.element_bytes"], fmt.bytes
    nd = loop.num_directions
    steps_total = float(nd * np.sum(lengths))  # valid (chain, step) pairs
    # Computed neurons of each valid step, flattened over chains.
    valid = np.arange(computed.shape[2])[None, :] < np.asarray(lengths)[:, None]  # [batch, seq]
    per_step = computed.sum(axis=3)[:, valid]  # [directions, valid steps]
    per_step = per_step.reshape(-1).astype(np.float64)
    ops = {i.op: i for i in prog.step}
    if "DOT_COLUMNS" in ops:
        return _delta_cost(prog, per_step, steps_total)
    if prog.plan is None or (prog.plan is not None and get_predictor(prog.plan.predictor) is None):
        per_step = np.full_like(per_step, N)  # unmodified and oracle compute every neuron

    dpu = np.zeros_like(per_step)
    macs = 0.0
    if "DOT" in ops:
        dpu += np.ceil(per_step / units) * math.ceil((D + H) / width)
        macs += per_step.sum() * (D + H)
    else:
        dpu += math.ceil(N / units) * math.ceil(D / width) + np.ceil(per_step / units) * math.ceil(H / width)
        macs += steps_total * N * D + per_step.sum() * H
    predict_macs = ops["PREDICT"].length if "PREDICT" in ops else 0
    dpu += math.ceil(predict_macs / (units * width))
    bnn_words = ops["XNOR_POPCOUNT"].length * N if "XNOR_POPCOUNT" in ops else 0
    bnn = math.ceil(bnn_words / (units * hw["compute.bnn_words_per_cycle"])) if bnn_words else 0
    mfu_ops = ops["CELL"].length + (N if "MEMO_CHECK" in ops else 0)
    mfu = math.ceil(mfu_ops / (units * hw["compute.mfu_lanes"]))
    # int8: each computed neuron's two dot products (W's, R's) times their rows' scales.
    scale_ops = 2 * per_step if fmt.scaled_rows else np.zeros_like(per_step)
    mfu = mfu + np.ceil(scale_ops / (units * hw["compute.mfu_lanes"]))
    compute_cycles = np.maximum(dpu, bnn) + mfu + hw["compute.step_latency"]

    # Memory traffic.
    io_bytes = steps_total * (D + H) * eb
    weight_bytes_step = per_step * (D + H) * wb if "DOT" in ops else \
        (N * D + per_step * H) * wb
    dram, sram_weight_reads, step_cycles, load_cycles = _weight_traffic(
        prog, weight_bytes_step, io_bytes, compute_cycles)
    if "LOAD_SIGNS" in {i.op for i in prog.prologue}:
        dram += nd * bnn_words * 8
    sram_weight_reads += steps_total * (predict_macs * eb + bnn_words * 8)
    activation_bytes = steps_total * ((D + H) * eb * units + H * eb)  # broadcast to CUs, write h
    memo_accesses = 0.0
    if "MEMO_CHECK" in ops:
        memo_accesses = steps_total * N + per_step.sum() + (steps_total * N - per_step.sum())
    cycles = float(step_cycles.sum() + load_cycles)
    seconds = cycles / (hw["clock.frequency"] * 1e6)
    words64 = 8.0
    energy = {
        "dot_products": macs * fmt.mac_pj + steps_total * predict_macs * hw.energy_pj("energy.mac"),
        "bnn": steps_total * bnn_words * hw.energy_pj("energy.bnn_word"),
        "mfu": (steps_total * mfu_ops + scale_ops.sum()) * hw.energy_pj("energy.mfu_op"),
        "onchip_memory": sram_weight_reads / words64 * hw.energy_pj("energy.weight_sram_read")
        + activation_bytes / words64 * hw.energy_pj("energy.small_sram_access"),
        "memo_buffer": memo_accesses * math.ceil(hw["memory.memo_buffer_entry"] / words64)
        * hw.energy_pj("energy.small_sram_access"),
        "dram": dram / words64 * hw.energy_pj("energy.dram"),
        "static": hw["energy.static_power"] * seconds * 1e12,
    }
    return LayerCost(loop.name, cycles, seconds, energy, float(dram),
                     float(sram_weight_reads + activation_bytes), float(macs),
                     steps_total * N * (D + H))


def _weight_traffic(prog: EpurProgram, weight_bytes_step, io_bytes, step_cycles):
    """Where the weights a run reads come from: (DRAM bytes, weight-buffer bytes read,
    cycles per step, cycles of the one-off load).  A layer that fits the weight buffer
    loads it once per call; a larger one streams what each step reads from DRAM, which
    then bounds the step."""
    hw, loop = prog.hw, prog.loop
    all_weights = loop.num_directions * loop.rows * (loop.input_size + loop.hidden_size) \
        * prog.weight_format.bytes
    bandwidth = hw["memory.dram_bandwidth"]
    if prog.weights_fit:
        return (all_weights + io_bytes, float(weight_bytes_step.sum()), step_cycles,
                all_weights / bandwidth)
    return (float(weight_bytes_step.sum()) + io_bytes, 0.0,
            np.maximum(step_cycles, weight_bytes_step / bandwidth), 0.0)


def _delta_cost(prog: EpurProgram, macs_per_step: np.ndarray, steps_total: float) -> LayerCost:
    """Delta execution: the trace counts multiply-adds; a sent column is an update of
    all N parts, spread over the CUs' DPUs; every component is compared on the MFU."""
    hw, loop = prog.hw, prog.loop
    D, H, N = loop.input_size, loop.hidden_size, loop.rows
    fmt = prog.weight_format
    units, width, eb = hw["compute.units"], fmt.dpu_width, hw["compute.element_bytes"]
    mfu_ops = MFU_OPS_PER_UNIT[loop.op] * H + (D + H)
    dpu = np.ceil(macs_per_step / (units * width))
    step_cycles = dpu + math.ceil(mfu_ops / (units * hw["compute.mfu_lanes"])) + hw["compute.step_latency"]
    weight_bytes = macs_per_step * fmt.bytes
    io_bytes = steps_total * (D + H) * eb
    dram, sram_weights, step_cycles, load_cycles = _weight_traffic(
        prog, weight_bytes, io_bytes, step_cycles)
    cycles = float(step_cycles.sum() + load_cycles)
    seconds = cycles / (hw["clock.frequency"] * 1e6)
    # Sent copies (read and written per component) and the parts (read-modify-write per
    # update) live in small buffers.
    small_bytes = steps_total * ((D + H) * eb * 2 + H * eb) + macs_per_step.sum() * eb * 2
    macs = float(macs_per_step.sum())
    energy = {
        "dot_products": macs * fmt.mac_pj,
        "bnn": 0.0,
        "mfu": steps_total * mfu_ops * hw.energy_pj("energy.mfu_op"),
        "onchip_memory": sram_weights / 8 * hw.energy_pj("energy.weight_sram_read")
        + small_bytes / 8 * hw.energy_pj("energy.small_sram_access"),
        "memo_buffer": 0.0,
        "dram": dram / 8 * hw.energy_pj("energy.dram"),
        "static": hw["energy.static_power"] * seconds * 1e12,
    }
    return LayerCost(loop.name, cycles, seconds, energy, float(dram),
                     float(sram_weights + small_bytes), macs, steps_total * N * (D + H))
