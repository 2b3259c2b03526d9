"""The tutorial example keeps working (it needs torch, which the test extras do not
install: `pip install torch==2.13.0`)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_pytorch_tutorial_runs_end_to_end(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    subprocess.run([sys.executable, os.path.join(ROOT, "examples", "pytorch_tutorial.py"),
                    str(tmp_path)], check=True, cwd=tmp_path, timeout=1800)
    config = json.loads((tmp_path / "memo.json").read_text())
    assert config["calibration"]["confirmed_on_holdout"]
    assert config["calibration"]["chosen"]["holdout"]["computations_avoided"] > 0
    assert (tmp_path / "sweep.png").stat().st_size > 1000

