"""The backend interface: what a target must provide to run memotvm's IR."""

from __future__ import annotations

import abc


class Backend(abc.ABC):
    """A place compiled models run.

    ``name`` (or one of ``aliases``) is what users pass as ``target=``.  ``build`` turns
    an imported (and maybe memoized) Relax module into a
    :class:`memotvm.runtime.CompiledModel`; keyword options of ``memotvm.compile`` beyond
    its own reach ``build`` unchanged.  A backend whose model reports a cost of each
    call sets ``last_cost`` on it (an object with ``cycles``, ``seconds``,
    ``energy_total_pj``, ``to_dict()`` and ``format(baseline)``).
    """

    name: str = ""
    aliases: tuple = ()
    description: str = ""

    @abc.abstractmethod
    def build(self, imported, mod, memo=None, **options):
        """Compile ``mod`` (the imported module, after any memoization pass).

        ``imported`` is the importer's result (input names and types, output names, the
        :class:`RecurrentLoop` of every recurrent node); ``memo`` the MemoConfig or None.
        """
