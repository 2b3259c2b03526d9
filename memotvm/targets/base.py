"""The backend interface: what a target must provide to run memotvm's IR."""

from __future__ import annotations

import abc


class Backend(abc.ABC):
    """A place compiled models run.

    ``name`` is what users pass as ``target=``.  ``build`` turns an imported (and maybe
    memoized) Relax module into a :class:`memotvm.runtime.CompiledModel`.
    """

    name: str = ""
    description: str = ""

    @abc.abstractmethod
    def build(self, imported, mod, memo=None):
        """Compile ``mod`` (the imported module, after any memoization pass)."""
