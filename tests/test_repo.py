"""The repository stands on its own: nothing tracked points outside it."""

import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tracked_files():
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [f for f in out.splitlines() if not f.endswith((".onnx", ".npz", ".png"))]


def test_no_tracked_file_points_outside_the_repository():
    shared = "../" + "shared"  # (spelled so that this file does not match itself)
    outside = []
    for name in tracked_files():
        with open(os.path.join(ROOT, name), errors="replace") as f:
            if shared in f.read():
                outside.append(name)
    assert outside == [], f"these files point to {shared}, which a clone does not have"


def test_the_spec_is_in_the_repository():
    with open(os.path.join(ROOT, "docs", "spec.md")) as f:
        spec = f.read()
    for section in ("memo table", "bnn", "lowrank", "exactinput", "oracle", "Delta execution",
                    "What is counted"):
        assert section in spec
