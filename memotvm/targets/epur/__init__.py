"""``epur``: an E-PUR-like RNN accelerator with a BNN unit and a memo buffer.

Recurrent layers are lowered to programs for the modelled machine and run in its
functional simulator; a cost model turns each run into cycles, time and energy.
"""

from .backend import AcceleratorModel, CostReport, EpurBackend, OffloadToEpur, partition
from .hardware import HardwareConfig
from .program import EpurProgram, lower

__all__ = ["AcceleratorModel", "CostReport", "EpurBackend", "EpurProgram", "HardwareConfig",
           "OffloadToEpur", "lower", "partition"]
