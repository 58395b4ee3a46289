"""Critical-period sweeps on any model: window grids, shared prefixes, resumable results, any backend.

    >>> import lightning_critical as lc
    >>> [e.label() for e in lc.sweep.sliding([0, 10, 20], length=10)]
    ['baseline', 'w0-10', 'w10-20', 'w20-30']

``lc.sweep.run(model_factory, datamodule_factory, deficit=..., windows=lc.sweep.removal([...]),
metrics="val_acc", trainer={"max_epochs": ...}, seeds=[0, 1, 2])`` trains every run and returns
one tidy row per run; :func:`summarize` adds means, standard errors and drops versus the
baseline; ``lc.plots.plot_critical_period_curve`` draws the curve. See :func:`run`.

Modules: ``grids`` (windows), ``spec`` (run and sweep identities), ``build`` (a run's objects),
``plan`` (the prefix tree),
``execute`` (one run in this process), ``branch_state`` / ``branch_compare`` / ``branch_rngs``
(what a branched run inherits and the check that it may: exact or refused), ``units`` (a unit
of work and how a worker runs it),
``backends`` (serial, process, Executor, Ray), ``scheduler`` (the DAG on a backend), ``runners``
(what trains the runs: the :class:`Runner` interface, one Lightning fit per run by default),
``ensemble_runner`` (all runs of a seed as one vectorized factorization ensemble), ``store``
(the resumable directory; ``records``: its lines as strict JSON; ``lock``: one live sweep per
directory), ``logs`` (branch prefixes in every run's logs), ``table`` (the tidy
table; its summary over seeds is :mod:`lightning_critical.curve`), ``study`` (the option groups
``Study`` / ``Execution`` / ``Output``), ``session`` (``run_study``: one sweep in steps), ``engine``
(``run``, their convenience form),
``config`` (YAML configs of the CLI), ``metrics`` (ready-made final metrics), ``workers`` (worker
start-up, the ``__main__`` guard, dying with the parent), ``failures`` (a failed run's exception
brought back as itself).
"""

from lightning_critical.curve import summarize
from lightning_critical.sweep import metrics
from lightning_critical.sweep.branch_state import BranchRefused
from lightning_critical.sweep.engine import load, run
from lightning_critical.sweep.ensemble_runner import FactorizationEnsembleRunner
from lightning_critical.sweep.failures import FailedRunsWarning, RunFailed
from lightning_critical.sweep.grids import GridEntry, WindowGrid, removal, sliding, windows
from lightning_critical.sweep.lock import SweepLockedError
from lightning_critical.sweep.plan import Plan, make_plan
from lightning_critical.sweep.runners import LightningRunner, Runner
from lightning_critical.sweep.session import run_study
from lightning_critical.sweep.spec import RunSpec, SweepSpec
from lightning_critical.sweep.store import SweepDirectoryError
from lightning_critical.sweep.study import Execution, Output, Study

__all__ = [
    "BranchRefused",
    "Execution",
    "Output",
    "Study",
    "run_study",
    "FactorizationEnsembleRunner",
    "FailedRunsWarning",
    "GridEntry",
    "LightningRunner",
    "Plan",
    "RunSpec",
    "RunFailed",
    "Runner",
    "SweepDirectoryError",
    "SweepLockedError",
    "SweepSpec",
    "WindowGrid",
    "load",
    "make_plan",
    "metrics",
    "removal",
    "run",
    "sliding",
    "summarize",
    "windows",
]
