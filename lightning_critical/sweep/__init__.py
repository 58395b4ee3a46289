"""Critical-period sweeps on any model: window grids, shared prefixes, resumable results, any backend.

    >>> import lightning_critical as lc
    >>> [e.label() for e in lc.sweep.sliding([0, 10, 20], length=10)]
    ['baseline', 'w0-10', 'w10-20', 'w20-30']

``lc.sweep.run(model_factory, datamodule_factory, deficit=..., windows=lc.sweep.removal([...]),
metrics="val_acc", trainer={"max_epochs": ...}, seeds=[0, 1, 2])`` trains every run and returns
one tidy row per run; :func:`summarize` adds means, standard errors and drops versus the
baseline; ``lc.plots.plot_critical_period_curve`` draws the curve. See :func:`run`.

Layout (see docs/design.md, "Sweeps"):

* the pure core, no Lightning and no callbacks: ``grids`` (windows), ``spec`` (run and sweep
  identities), ``params`` (swept values), ``identity`` / ``changes`` / ``source`` /
  ``references`` (the user code a sweep runs, and what changed), ``plan`` (the prefix tree),
  ``store`` (the resumable directory; ``records``: its lines as strict JSON; ``lock``: one live
  sweep per directory), ``table`` (the tidy table; its summary over seeds is
  :mod:`lightning_critical.curve`);
* the options: ``study`` (``Study`` / ``Execution`` / ``Output``), ``config`` /
  ``config_errors`` (the CLI's YAML read into them), ``task_window`` (``TaskWindow``);
* one sweep: ``session`` (``run_study``: claim the store, plan, dispatch, table, figure),
  ``engine`` (``run``, its convenience form), ``preflight``, ``resume``;
* dispatching: ``dispatcher`` (ready -> submit -> collect -> retry) and ``readiness``,
  ``observers`` (store writer, checkpoint collector, log stitcher, progress), ``audit``
  (the exactness audit), ``units`` (a job: a runner and its tasks), ``backends`` (serial,
  process, Executor, Ray; ``backends.workers``: worker start-up, the ``__main__`` guard);
* training: ``build`` (a run's objects), ``runners`` (the :class:`Runner` contract and the one
  run envelope; ``runners.lightning``: one Lightning fit per run, with ``runners.branching``:
  what a branched run inherits and the check that it may, exact or refused;
  ``runners.ensemble``: the factorization ensemble), ``failures`` (a failed run's exception
  brought back as itself), ``metrics`` (ready-made final metrics), ``logs`` (branch prefixes in
  every run's logs).
"""

from lightning_critical.curve import summarize
from lightning_critical.sweep import metrics
from lightning_critical.sweep.engine import load, run
from lightning_critical.sweep.failures import FailedRunsWarning, RunFailed
from lightning_critical.sweep.grids import CleanEpochsWarning, GridEntry, WindowGrid, removal, sliding, windows
from lightning_critical.sweep.lock import SweepLockedError
from lightning_critical.sweep.plan import Plan, make_plan
from lightning_critical.sweep.runners import BranchRefused, FactorizationEnsembleRunner, LightningRunner, Runner
from lightning_critical.sweep.session import run_study
from lightning_critical.sweep.spec import RunSpec, SweepSpec
from lightning_critical.sweep.store import SweepDirectoryError
from lightning_critical.sweep.study import Execution, Output, Study
from lightning_critical.sweep.task_window import TaskWindow

__all__ = [
    "BranchRefused",
    "CleanEpochsWarning",
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
    "TaskWindow",
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
