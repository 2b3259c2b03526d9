"""The fuzzing campaign (tests/fuzz/fuzzer.py): a fast sample in the default run, a few
hundred cases in the slow suite; `python scripts/fuzz.py --cases N --seed S` runs longer
ones.  A case fails on a mismatch with onnxruntime, a foreign exception (a CLI
traceback), a crash or a hang."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from fuzzer import run_campaign  # noqa: E402


def _check(result):
    assert result["failures"] == [], "\n".join(
        f"case {i} ({kind}): {outcome}: {detail}" for i, kind, outcome, detail in result["failures"])


def test_fuzz_sample():
    result = run_campaign(seed=20261205, cases=5, timeout=300)
    _check(result)
    assert sum(result["counts"].values()) == 5


@pytest.mark.slow
def test_fuzz_campaign():
    result = run_campaign(seed=1, cases=300, timeout=300)
    _check(result)
