"""Critical-period sweeps: window grids, run identities and the prefix-sharing plan.

    >>> import lightning_critical as lc
    >>> [e.label() for e in lc.sweep.sliding([0, 10, 20], length=10)]
    ['baseline', 'w0-10', 'w10-20', 'w20-30']
"""

from lightning_critical.sweep.grids import GridEntry, WindowGrid, removal, sliding, windows
from lightning_critical.sweep.plan import Plan, make_plan
from lightning_critical.sweep.spec import RunSpec, SweepSpec

__all__ = ["GridEntry", "Plan", "RunSpec", "SweepSpec", "WindowGrid", "make_plan", "removal", "sliding", "windows"]
