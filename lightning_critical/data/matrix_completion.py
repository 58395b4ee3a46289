"""Matrix-completion tasks (Arora et al. 2019) that ``TaskSwitch`` can switch between."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any, TypeAlias

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_critical._checks import check_choice, check_int
from lightning_critical._namespace import pl

TaskSpec: TypeAlias = int | Mapping[str, Any]
DEFAULT_TASKS: dict[str, TaskSpec] = {"pretrain": {"rank": 10}, "target": {"rank": 5}}


def low_rank_ground_truth(size: int, rank: int, rng: np.random.Generator) -> np.ndarray:
    """``U V^T / sqrt(rank)`` with Gaussian ``U, V`` (size x rank), rescaled to ``||W||_F = size``.

    The rescaling gives entries of RMS 1, so test losses of different ranks compare.
    """
    u = rng.standard_normal((size, rank))
    v = rng.standard_normal((size, rank))
    w = u @ v.T / np.sqrt(rank)
    return w * (size / np.linalg.norm(w))


class _EntryIndices(Dataset):
    """Indices of observed entries. Task content is attached in the main process, never here."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class MatrixCompletionDataModule(pl.LightningDataModule):
    """Named matrix-completion tasks observed at shared positions; implements ``TaskSwitchable``.

    Each task is either a ground truth of a given rank (``W* = U V^T / sqrt(r)``, Gaussian
    ``U, V``, rescaled so ``||W*||_F = size``), observed at the *same* ``n_observed``
    positions as every other rank task, or a subset (the first ``n_observed`` positions) of
    another task's observations: the "fewer examples" deficit. Positions are drawn without
    replacement after all ground truths, from ``numpy.random.default_rng(seed)``.

    Batches: workers yield indices of observed entries; ``on_after_batch_transfer`` (main
    process) turns them into ``{"rows", "cols", "values", "ground_truth"}`` of the *active*
    task, keeping only the entries that task observes. So a ``set_task`` call affects the very
    next step with any ``num_workers`` (see :mod:`lightning_critical.deficits.task_switch`). The default
    ``batch_size=None`` is one full batch per epoch (an epoch is one SGD step, as in the paper).

    Args:
        size: the matrices are ``size x size``.
        n_observed: number of observed positions shared by the rank tasks.
        tasks: ``{name: spec}`` in order; the first is active initially. ``spec`` is a rank
            (``int``), ``{"rank": r}`` or ``{"subset_of": other_name, "n_observed": k}``.
            Default: ``{"pretrain": {"rank": 10}, "target": {"rank": 5}}``.
        seed: seed of the ground truths and positions.
        batch_size: entries per batch; ``None`` for the full batch.
        num_workers: dataloader workers.

    Raises:
        ValueError: for a bad size, count, rank, subset or unknown task name.

    Example::

        >>> dm = MatrixCompletionDataModule(size=20, n_observed=100,
        ...     tasks={"pretrain": 4, "target": 2, "few": {"subset_of": "target", "n_observed": 30}})
        >>> dm.tasks, dm.task
        (('pretrain', 'target', 'few'), 'pretrain')
        >>> dm.set_task("few"); len(dm.observations()[2])
        30
        >>> U, S, V = dm.task_basis(); tuple(U.shape), tuple(S.shape)
        ((20, 2), (2,))
    """

    def __init__(
        self,
        size: int = 100,
        n_observed: int = 2000,
        tasks: Mapping[str, TaskSpec] | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        size = check_int("size", size)
        n_observed = check_int("n_observed", n_observed, high=size * size)  # positions of a size x size matrix
        check_int("batch_size", batch_size, allow_none=True)  # None: full batch
        check_int("num_workers", num_workers, 0)
        specs = dict(DEFAULT_TASKS if tasks is None else tasks)
        if not specs:
            raise ValueError("tasks={} is empty; give at least one {name: rank}.")
        self.size, self.n_observed, self.seed = size, n_observed, seed
        self.batch_size, self.num_workers = batch_size, num_workers
        self.task_specs = {name: self._parse_spec(name, spec, specs) for name, spec in specs.items()}
        for name in self.task_specs:  # every subset_of chain must end at a rank task
            chain, seen = [name], {name}
            while "subset_of" in self.task_specs[chain[-1]]:
                parent = self.task_specs[chain[-1]]["subset_of"]
                if parent in seen:
                    raise ValueError(
                        f"task {name!r}: circular subset_of chain {' -> '.join(chain + [parent])}; "
                        "a subset_of chain must end at a task with a rank."
                    )
                chain.append(parent)
                seen.add(parent)

        rng = np.random.default_rng(seed)
        truths: dict[str, np.ndarray] = {}
        for name, spec in self.task_specs.items():
            if "rank" in spec:
                truths[name] = low_rank_ground_truth(size, spec["rank"], rng)
        flat = rng.choice(size * size, size=n_observed, replace=False)
        self._rows = torch.as_tensor(flat // size, dtype=torch.long)
        self._cols = torch.as_tensor(flat % size, dtype=torch.long)

        self._truth: dict[str, Tensor] = {}
        self._observed: dict[str, Tensor] = {}  # boolean mask over the shared positions
        for name in self.task_specs:
            root, count = name, n_observed
            while "subset_of" in self.task_specs[root]:
                count = min(count, self.task_specs[root]["n_observed"])
                root = self.task_specs[root]["subset_of"]
            self._truth[name] = torch.as_tensor(truths[root], dtype=torch.float32)
            mask = torch.zeros(n_observed, dtype=torch.bool)
            mask[:count] = True
            self._observed[name] = mask
        self._task = next(iter(self.task_specs))
        self._device_cache: dict[tuple[str, str], tuple[Tensor, ...]] = {}
        self._basis_cache: dict[str, tuple[Tensor, Tensor, Tensor]] = {}

    def _parse_spec(self, name: str, spec: TaskSpec, specs: Mapping[str, TaskSpec]) -> dict[str, Any]:
        if not isinstance(name, str) or not name:
            raise ValueError(f"task name {name!r} must be a non-empty string.")
        if isinstance(spec, numbers.Integral) and not isinstance(spec, bool):
            spec = {"rank": spec}
        if not isinstance(spec, Mapping):
            raise ValueError(f"task {name!r}: spec {spec!r} must be a rank or a mapping with 'rank' or 'subset_of'.")
        spec = dict(spec)
        if "rank" in spec:
            if set(spec) != {"rank"}:
                raise ValueError(f"task {name!r}: spec {spec!r} has keys besides 'rank'; give {{'rank': r}} alone.")
            spec["rank"] = check_int(f"task {name!r}: rank", spec["rank"], high=self.size)
        elif "subset_of" in spec:
            parent = spec.get("subset_of")
            if parent not in specs or parent == name:
                raise ValueError(f"task {name!r}: subset_of={parent!r} is not another task; tasks: {list(specs)}.")
            spec["n_observed"] = check_int(f"task {name!r}: n_observed", spec.get("n_observed"), high=self.n_observed)
        else:
            raise ValueError(f"task {name!r}: spec {spec!r} needs 'rank' or 'subset_of' + 'n_observed'.")
        return spec

    # -- TaskSwitchable protocol --------------------------------------------------------------
    @property
    def tasks(self) -> tuple[str, ...]:
        """Task names, in the order given."""
        return tuple(self.task_specs)

    @property
    def task(self) -> str:
        """The active task."""
        return self._task

    def set_task(self, name: str) -> None:
        """Make ``name`` the task of the next batch (takes effect in ``on_after_batch_transfer``)."""
        self._task = check_choice("task", name, self.tasks)

    # -- task data (public: the ensemble and users read tasks through these) --------------
    def _name(self, name: str | None) -> str:
        return self._task if name is None else check_choice("task", name, self.tasks)

    def ground_truth(self, name: str | None = None) -> Tensor:
        """The ``size x size`` ground truth of ``name`` (default: the active task)."""
        return self._truth[self._name(name)]

    def observations(self, name: str | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(rows, cols, values)`` of the entries task ``name`` observes (default: active)."""
        name = self._name(name)
        keep = self._observed[name]
        rows, cols = self._rows[keep], self._cols[keep]
        return rows, cols, self._truth[name][rows, cols]

    def rank(self, name: str | None = None) -> int:
        """Rank of the ground truth of ``name`` (a subset task has its parent's)."""
        name = self._name(name)
        while "subset_of" in self.task_specs[name]:
            name = self.task_specs[name]["subset_of"]
        return int(self.task_specs[name]["rank"])

    def task_basis(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(U, S, V)`` of the active ground truth, truncated to its rank (``U``: size x r).

        Computed once per task (the ground truths are fixed at construction) and cached;
        each call returns fresh copies, so callers may modify them.
        """
        name = self._task
        if name not in self._basis_cache:
            u, s, vh = torch.linalg.svd(self.ground_truth(name).double())
            r = self.rank(name)
            self._basis_cache[name] = (u[:, :r].float(), s[:r].float(), vh[:r].T.float())
        return tuple(t.clone() for t in self._basis_cache[name])  # type: ignore[return-value]

    # -- Lightning ------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        n = self.n_observed
        return DataLoader(
            _EntryIndices(n),
            batch_size=self.batch_size or n,
            shuffle=self.batch_size is not None,
            num_workers=self.num_workers,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> dict[str, Tensor]:
        """Turn entry indices into the active task's ``rows, cols, values, ground_truth``."""
        index = batch
        key = (self._task, str(index.device))
        if key not in self._device_cache:
            t = self._task
            self._device_cache[key] = tuple(
                x.to(index.device) for x in (self._rows, self._cols, self._truth[t], self._observed[t])
            )
        rows, cols, truth, observed = self._device_cache[key]
        index = index[observed[index]]
        r, c = rows[index], cols[index]
        return {"rows": r, "cols": c, "values": truth[r, c], "ground_truth": truth}

    def state_dict(self) -> dict[str, Any]:
        return {"task": self._task}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._task = state_dict.get("task", self._task)
