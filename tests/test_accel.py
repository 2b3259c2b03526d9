"""The accelerator target: same results as the CPU target, a cost report that responds to
memoization and to the hardware configuration, and backends anyone can add."""

import os
import runpy
import subprocess
import sys

import numpy as np
import pytest

import memotvm
from memotvm.errors import ConfigError
from memotvm.targets import HardwareConfig, get_backend, list_backends
from memotvm.targets.epur import lower
from memotvm.testing import make_inputs, make_recurrent_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "memotvm", "models", "torch_lstm_gru.onnx")


def fixture_inputs():
    return dict(np.load(os.path.join(ROOT, "memotvm", "models", "torch_lstm_gru_inputs.npz")))


# (lowrank and the oracle are the same scheme as bnn on the accelerator: slow suite)
@pytest.mark.parametrize("memo", [None, {"threshold": 0.3},
                                  pytest.param({"threshold": 0.3, "predictor": "lowrank:4"},
                                               marks=pytest.mark.slow),
                                  pytest.param({"threshold": 0.2, "predictor": "oracle"},
                                               marks=pytest.mark.slow),
                                  {"threshold": 0.1, "predictor": "delta"}])
def test_accel_matches_cpu_on_fixture(memo):
    feeds = fixture_inputs()
    cpu = memotvm.compile(FIXTURE, memo=memo)
    acc = memotvm.compile(FIXTURE, target="accel", memo=memo)
    for a, b in zip(cpu.run(feeds), acc.run(feeds)):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)
    if memo is not None:  # same decisions, counted the same way
        assert acc.last_stats.per_gate == cpu.last_stats.per_gate
    report = acc.last_cost
    assert [layer.name for layer in report.layers] == [loop.name for loop in acc.loops]
    assert report.cycles > 0 and report.energy_total_pj > 0
    assert set(report.energy_pj) == {"dot_products", "bnn", "mfu", "onchip_memory",
                                     "memo_buffer", "dram", "static"}


@pytest.mark.parametrize("op,direction", [("LSTM", "bidirectional"), ("GRU", "forward"),
                                          ("RNN", "reverse")])
def test_accel_layers_with_sequence_lens(op, direction):
    model = make_recurrent_model(op, 6, 8, direction=direction, sequence_lens=True, initial_h=True,
                                 peepholes=(op == "LSTM"), seed=3)
    feeds = make_inputs(model, 9, 3, smooth=True, seed=1)
    cpu = memotvm.compile(model, memo=0.3)
    acc = memotvm.compile(model, target="epur", memo=0.3)
    for a, b in zip(cpu.run(feeds), acc.run(feeds)):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)
    assert acc.last_stats.per_gate == cpu.last_stats.per_gate


def test_memoization_saves_cycles_and_energy_when_weights_dominate():
    model = make_recurrent_model("LSTM", 128, 128, weight_scale=1.0)
    feeds = make_inputs(model, 60, 1, smooth=True)
    plain = memotvm.compile(model, target="accel")
    memo = memotvm.compile(model, target="accel", memo=0.5)
    plain.run(feeds)
    memo.run(feeds)
    reuse = memo.last_stats.reuse
    assert reuse > 0.2
    speedup = plain.last_cost.cycles / memo.last_cost.cycles
    # The BNN unit runs beside the DPUs, so the speedup approaches the ideal 1 / (1 - r)
    # but cannot pass it.
    assert 1.0 < speedup <= 1 / (1 - reuse) + 1e-9
    assert memo.last_cost.energy_pj["dot_products"] < plain.last_cost.energy_pj["dot_products"]
    assert memo.last_cost.energy_pj["bnn"] > 0 == plain.last_cost.energy_pj["bnn"]


def test_hardware_configuration_changes_the_cost(tmp_path):
    model = make_recurrent_model("GRU", 32, 32)
    feeds = make_inputs(model, 20, 1, smooth=True)
    base = memotvm.compile(model, target="accel")
    base.run(feeds)
    wide = memotvm.compile(model, target="accel", hardware={"compute.dpu_width": 64})
    wide.run(feeds)
    assert wide.last_cost.cycles < base.last_cost.cycles
    path = tmp_path / "hw.toml"
    path.write_text('[clock.frequency]\nvalue = 1000\n')
    fast = memotvm.compile(model, target="accel", hardware=str(path))
    fast.run(feeds)
    assert fast.last_cost.seconds == pytest.approx(base.last_cost.seconds / 2)
    with pytest.raises(ConfigError, match="unknown hardware parameter"):
        HardwareConfig.load({"compute.dpu_widht": 8})
    with pytest.raises(ConfigError, match="positive"):
        HardwareConfig.load({"compute.dpu_width": -1})
    with pytest.raises(ConfigError, match="no option"):
        memotvm.compile(model, target="cpu", hardware={})


def test_every_default_names_its_source():
    hw = HardwareConfig.load()
    assert hw.params and all(p.source for p in hw.params.values())
    assert any(p.assumed for p in hw.params.values())
    assert any("Horowitz" in p.source for p in hw.params.values())


def test_program_lists_the_memoized_steps():
    from memotvm.kernels import MemoPlan
    from memotvm.frontend.recurrent import parse_recurrent_node

    loop = parse_recurrent_node("LSTM", "l", {"hidden_size": 64}, set(), [1, 256, 32], [1, 256, 64], "float32")
    plain = lower(loop, None, HardwareConfig.load()).format()
    memo = lower(loop, MemoPlan("bnn", (0.2,)), HardwareConfig.load()).format()
    assert "XNOR_POPCOUNT" not in plain
    assert any(" DOT " in line and "rows=all" in line for line in plain.splitlines())
    assert "XNOR_POPCOUNT" in memo and "MEMO_CHECK" in memo
    assert any(" DOT " in line and "rows=computed" in line for line in memo.splitlines())


def test_registry_names_and_aliases():
    assert {"cpu", "epur", "accel"} <= set(list_backends())
    assert get_backend("accel") is get_backend("epur")
    with pytest.raises(ConfigError, match="unknown target"):
        get_backend("tpu")


@pytest.mark.slow
def test_custom_backend_example_registers_and_runs():
    env = runpy.run_path(os.path.join(ROOT, "examples", "custom_backend.py"))
    feeds = fixture_inputs()
    report = memotvm.validate(FIXTURE, feeds, memo=0.2, target="mcu")
    plain_cost, memo_cost = report.costs
    assert memo_cost.cycles < plain_cost.cycles
    assert report.to_dict()["modelled_cost"]["speedup"] > 1
    assert env["McuBackend"].name == "mcu"


def test_cli_bench_and_validate_on_accel():
    out = subprocess.run([sys.executable, "-m", "memotvm", "bench", "gru:32", "--steps", "10",
                          "--target", "accel", "--thresholds", "0.3"],
                         capture_output=True, text=True, check=True).stdout
    assert "modelled" in out and "memo@0.3" in out
    out = subprocess.run([sys.executable, "-m", "memotvm", "validate", FIXTURE, "--inputs",
                          os.path.join(ROOT, "memotvm", "models", "torch_lstm_gru_inputs.npz"),
                          "--threshold", "0.3", "--target", "accel"],
                         capture_output=True, text=True, check=True).stdout
    assert "vs unmodified: speedup" in out


def test_partitioned_kernel_arguments_follow_the_node_when_inputs_repeat():
    # torch.onnx.export feeds one zero tensor as both initial_h and initial_c; the
    # partitioner merges repeated arguments, the offload must restore the kernel's order.
    path = os.path.join(ROOT, "memotvm", "models", "co2_lstm.onnx")
    x = dict(np.load(os.path.join(ROOT, "memotvm", "models", "co2_lstm_inputs.npz")))["x"][:, :5]
    cpu = memotvm.compile(path, memo=0.1)
    acc = memotvm.compile(path, target="accel", memo=0.1)
    np.testing.assert_allclose(acc.run({"x": x})[0], cpu.run({"x": x})[0], rtol=0, atol=1e-5)
    assert acc.last_stats.per_gate == cpu.last_stats.per_gate


@pytest.mark.parametrize("op,kwargs", [
    ("LSTM", dict(layout=1, direction="bidirectional", sequence_lens=True, initial_h=True,
                  initial_c=True, peepholes=True, attrs={"clip": 2.0, "input_forget": 1})),
    ("GRU", dict(dtype="float64", direction="reverse", attrs={"linear_before_reset": 1})),
    ("RNN", dict(direction="bidirectional", attrs={
        "activations": ["HardSigmoid", "HardSigmoid"], "activation_alpha": [0.3, 0.3],
        "activation_beta": [0.4, 0.4]})),
    ("GRU", dict(dtype="float16", sequence_lens=True)),
])
def test_accel_matches_cpu_in_spec_corners(op, kwargs):
    model = make_recurrent_model(op, 5, 9, **kwargs)
    feeds = make_inputs(model, 7, 3, smooth=True,
                        lengths=[7, 0, 3] if kwargs.get("sequence_lens") else None)
    for memo in (0.3, {"threshold": 0.05, "predictor": "delta"}):
        cpu = memotvm.compile(model, memo=memo)
        acc = memotvm.compile(model, target="accel", memo=memo)
        for a, b in zip(cpu.run(feeds), acc.run(feeds)):
            np.testing.assert_allclose(b.astype(np.float64), a.astype(np.float64), rtol=0, atol=1e-5)
        assert acc.last_stats.per_gate == cpu.last_stats.per_gate
