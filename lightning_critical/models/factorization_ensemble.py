"""Many deep factorizations trained at once: the fast path of the matrix-completion sweeps.

Members start from the same initialization and each follows its own task schedule, driven
by ordinary :class:`~lightning_critical.TaskSwitch` callbacks (one per member, whose
``target`` is ``ensemble.members[k]``). Members that have seen the same tasks at the same
times have identical weights, so they share one *branch*; a member forks its own copy of the
weights only when its task changes. Every Lightning step runs ``sgd_steps_per_epoch`` full-batch
SGD steps of all live branches as batched ``(B, n, n)`` matrix products with hand-written
gradients, which amortizes Lightning's per-step overhead over many tiny updates.

Records go into a :class:`~lightning_critical.history.History`, in the monitors' long
format ``(step, epoch, target, metric, index, value)``: ``step`` counts the SGD steps done,
``target`` is the member (``"member<k>"``), ``metric`` is ``test_loss``, ``train_loss``, ``task``
(the index in ``task_names`` of the task of the chunk that ended at that step) or
``singular_values`` (``index`` ``i``: the ``i``-th largest singular value of the member's ``W``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor
from torchmetrics.functional import mean_squared_error

from lightning_critical._checks import check_choice, check_float_dtype, check_int
from lightning_critical._namespace import pl
from lightning_critical.history import History, Record
from lightning_critical.models.matrix_factorization import DeepMatrixFactorization


class EnsembleMember:
    """One member's task pointer: implements the ``TaskSwitchable`` protocol for ``TaskSwitch``."""

    def __init__(self, ensemble: FactorizationEnsemble, index: int) -> None:
        self._ensemble, self.index = ensemble, index
        self.name = f"member{index}"

    @property
    def tasks(self) -> tuple[str, ...]:
        return self._ensemble.task_names

    @property
    def task(self) -> str:
        return self._ensemble._branch_task[self._ensemble._member_branch[self.index]]

    def set_task(self, name: str) -> None:
        self._ensemble._set_member_task(self.index, name)

    def __repr__(self) -> str:
        return f"EnsembleMember({self.index}, task={self.task!r})"


def sgd_steps(factors: list[Tensor], target: Tensor, weight: Tensor, lr: float, n_steps: int) -> None:
    """``n_steps`` full-batch SGD steps, in place, on batched factors ``[(B, out, in), ...]``.

    The loss of branch ``b`` is ``0.5 * sum_ij weight[b]_ij (W_ij - W*_ij)^2`` with
    ``W = W_N ... W_1``; ``weight`` is the observation mask divided by the number of observed
    entries and ``target = weight * W*``, so ``dL/dW = weight * W - target``. The factor
    gradients are ``(W_N ... W_{i+1})^T dL/dW (W_{i-1} ... W_1)^T``, all taken at the old
    weights (as ``torch.optim.SGD`` does), with ``3 (N - 1)`` batched products per step.
    """
    depth = len(factors)
    for _ in range(n_steps):
        prefix = [factors[0]]
        for f in factors[1:]:
            prefix.append(torch.bmm(f, prefix[-1]))
        back = torch.addcmul(-target, weight, prefix[-1])  # dL/dW
        for i in range(depth - 1, 0, -1):
            below = torch.bmm(factors[i].transpose(1, 2), back)  # before W_i changes
            factors[i].baddbmm_(back, prefix[i - 1].transpose(1, 2), alpha=-lr)
            back = below
        factors[0].add_(back, alpha=-lr)


class FactorizationEnsemble(pl.LightningModule):
    """``n_members`` copies of a :class:`DeepMatrixFactorization`, each with its own task schedule.

    Args:
        model: supplies the shared initialization, depth and learning rate.
        datamodule: supplies the tasks through its public ``tasks``, ``observations(name)``
            and ``ground_truth(name)`` (e.g. :class:`~lightning_critical.data.MatrixCompletionDataModule`);
            its dataloader also paces training (one batch per epoch).
        member_steps: total SGD steps of each member (its length defines ``n_members``);
            a member stops, and its final weights are kept, after that many steps.
        sgd_steps_per_epoch: SGD steps per Lightning epoch (the datamodule serves one batch,
            so one Lightning step); every member's length and every ``TaskSwitch`` time
            (given in epochs) is counted in these chunks.
        initial_task: the task every member starts on (default: the datamodule's active task).
        top_k: number of singular values of each member's ``W`` recorded per epoch.
        dtype: ``torch.float32`` (default) or ``torch.float64``: the dtype of the factors
            (``factor_dtype``), whatever the module's own ``dtype`` says.

    Checkpoints: ``on_save_checkpoint`` stores the branches' weights, the member-to-branch map,
    the finished members and the history, so ``trainer.fit(..., ckpt_path=...)`` on an ensemble
    built with the same arguments resumes exactly where the checkpoint was taken.

    Raises:
        ValueError: for bad sizes, a member length that is not a multiple of
            ``sgd_steps_per_epoch`` or an unknown task.

    Example::

        >>> import lightning_critical as lc
        >>> from lightning_critical._namespace import pl
        >>> from lightning_critical.data import MatrixCompletionDataModule
        >>> dm = MatrixCompletionDataModule(size=10, n_observed=40, tasks={"pretrain": 3, "target": 1})
        >>> model = DeepMatrixFactorization(size=10, depth=2, seed=0)
        >>> ens = FactorizationEnsemble(model, dm, member_steps=[40, 60], sgd_steps_per_epoch=20)
        >>> switches = [lc.TaskSwitch({0: "target"}, target=ens.members[0]),
        ...             lc.TaskSwitch({1: "target"}, target=ens.members[1])]
        >>> pl.Trainer(max_epochs=ens.max_epochs, callbacks=switches, logger=False,
        ...            enable_checkpointing=False, enable_progress_bar=False,
        ...            enable_model_summary=False).fit(ens, datamodule=dm)
        >>> list(ens.final_metrics()["sgd_steps"])
        [40, 60]
        >>> ens.history().columns.tolist()
        ['step', 'epoch', 'target', 'metric', 'index', 'value']
    """

    _anchor: Tensor  # a buffer (registered in __init__): declared for the type checker

    def __init__(
        self,
        model: DeepMatrixFactorization,
        datamodule: Any,
        member_steps: Sequence[int],
        sgd_steps_per_epoch: int = 1,
        initial_task: str | None = None,
        top_k: int = 10,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        check_int("sgd_steps_per_epoch", sgd_steps_per_epoch)
        steps = [int(s) for s in member_steps]
        if not steps or any(s < 1 or s % sgd_steps_per_epoch for s in steps):
            raise ValueError(
                f"member_steps={list(member_steps)!r} must be positive multiples of "
                f"sgd_steps_per_epoch={sgd_steps_per_epoch}."
            )
        check_float_dtype("dtype", dtype)
        self.task_names: tuple[str, ...] = tuple(datamodule.tasks)
        initial = datamodule.task if initial_task is None else initial_task
        check_choice("initial_task", initial, self.task_names)
        self.depth, self.lr, self.size = model.depth, float(model.lr), model.size
        self.sgd_steps_per_epoch, self.member_steps, self.top_k = sgd_steps_per_epoch, steps, top_k
        self.factor_dtype = dtype
        self.max_epochs = max(steps) // sgd_steps_per_epoch

        n = self.size
        self._truth, self._weight, self._target = {}, {}, {}
        for name in self.task_names:
            rows, cols, values = datamodule.observations(name)
            weight = torch.zeros(n, n, dtype=dtype)
            weight[rows, cols] = 1.0 / len(values)
            target = torch.zeros(n, n, dtype=dtype)
            target[rows, cols] = values.to(dtype) / len(values)
            self._truth[name] = datamodule.ground_truth(name).to(dtype)
            self._weight[name], self._target[name] = weight, target

        init = [p.detach().to(dtype).clone() for p in model.factors]
        self._branch_weights: list[list[Tensor]] = [init]
        self._branch_task: list[str] = [initial]
        self._member_branch = [0] * len(steps)
        self.members = [EnsembleMember(self, k) for k in range(len(steps))]
        self.sgd_step = 0
        self._final: dict[int, dict[str, Any]] = {}
        self._history = History()
        self.register_buffer("_anchor", torch.zeros((), dtype=dtype))  # follows the module's device

    # -- branches ------------------------------------------------------------------------
    def _live(self, k: int) -> bool:
        return self.sgd_step < self.member_steps[k]

    def _set_member_task(self, k: int, name: str) -> None:
        check_choice("task", name, self.task_names)
        branch = self._member_branch[k]
        if self._branch_task[branch] == name:
            return
        sharers = [j for j, b in enumerate(self._member_branch) if b == branch and j != k and self._live(j)]
        if sharers:  # fork: the other members keep training the old branch
            self._branch_weights.append([w.clone() for w in self._branch_weights[branch]])
            self._branch_task.append(name)
            self._member_branch[k] = len(self._branch_weights) - 1
        else:
            self._branch_task[branch] = name

    def member_factors(self, k: int) -> list[Tensor]:
        """Member ``k``'s current factors (its final ones once it has stopped)."""
        if k in self._final:
            return self._final[k]["factors"]
        return self._branch_weights[self._member_branch[k]]

    def end_to_end_maps(self) -> dict[str, Tensor]:
        """Protocol: ``{"member<k>": W_k}`` for every member."""
        out = {}
        for k in range(len(self.members)):
            w = self.member_factors(k)[0]
            for f in self.member_factors(k)[1:]:
                w = f @ w
            out[f"member{k}"] = w
        return out

    # -- training ------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        device = self._anchor.device
        for d in (self._truth, self._weight, self._target):
            for name in d:
                d[name] = d[name].to(device)
        self._branch_weights = [[w.to(device) for w in ws] for ws in self._branch_weights]
        self._final = {k: {"factors": [w.to(device) for w in v["factors"]]} for k, v in self._final.items()}

    def on_train_start(self) -> None:
        if self.sgd_step == 0:  # a new run: its history starts empty, with the initial record
            self._history.start(None, from_step=0)
            self._record(range(len(self.members)))
        else:  # resumed (or fitted again): a record is taken *after* the update that reaches its step, so
            # the records up to this step are the checkpoint's own (a monitor's, taken before it, are not)
            self._history.start(None, from_step=self.sgd_step + 1)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        live = [k for k in range(len(self.members)) if self._live(k)]
        branches = sorted({self._member_branch[k] for k in live})
        if branches:
            with torch.no_grad():
                factors = [torch.stack([self._branch_weights[b][i] for b in branches]) for i in range(self.depth)]
                tasks = [self._branch_task[b] for b in branches]
                weight = torch.stack([self._weight[t] for t in tasks])
                target = torch.stack([self._target[t] for t in tasks])
                sgd_steps(factors, target, weight, self.lr, self.sgd_steps_per_epoch)
                for j, b in enumerate(branches):
                    self._branch_weights[b] = [f[j] for f in factors]
        self.sgd_step += self.sgd_steps_per_epoch
        test = self._record(live)
        if test is not None and self._trainer is not None and self.trainer.loggers:
            for j, k in enumerate(live):
                self.log(f"test_loss/member{k}", test[j], on_step=False, on_epoch=True)
        for k in live:
            if not self._live(k):
                self._final[k] = {"factors": [w.clone() for w in self._branch_weights[self._member_branch[k]]]}
        return None

    @torch.no_grad()
    def _record(self, members: Sequence[int]) -> Tensor | None:
        members = list(members)
        if not members:
            return None
        maps = self.end_to_end_maps()
        w = torch.stack([maps[f"member{k}"] for k in members])
        tasks = [self._branch_task[self._member_branch[k]] for k in members]
        truth = torch.stack([self._truth[t] for t in tasks])
        weight = torch.stack([self._weight[t] for t in tasks])
        target = torch.stack([self._target[t] for t in tasks])
        e = len(members)
        test = mean_squared_error(w.reshape(e, -1).T, truth.reshape(e, -1).T, num_outputs=e).reshape(e)
        # 0.5 * mean over observed entries, written with the weights (1/m on observed entries)
        train = 0.5 * ((w * weight - target) * (w - truth)).sum(dim=(1, 2))
        svals = torch.linalg.svdvals(w)[:, : self.top_k].cpu()
        step, epoch = self.sgd_step, self.current_epoch
        records: list[Record] = []
        for j, k in enumerate(members):
            target_name = f"member{k}"
            records += [(step, epoch, target_name, "test_loss", -1, float(test[j])),
                        (step, epoch, target_name, "train_loss", -1, float(train[j])),
                        (step, epoch, target_name, "task", -1, float(self.task_names.index(tasks[j])))]
            records += [(step, epoch, target_name, "singular_values", i, v) for i, v in enumerate(svals[j].tolist())]
        self._history.extend(records, write=False)
        return test

    # -- checkpointing ---------------------------------------------------------------------
    # The weights live in plain attributes (not parameters), so Lightning's state_dict holds
    # none of them; these hooks carry everything an exact resume needs.
    _CHECKPOINT_KEY = "factorization_ensemble"

    def _signature(self) -> dict[str, Any]:
        return {"task_names": list(self.task_names), "member_steps": list(self.member_steps),
                "sgd_steps_per_epoch": self.sgd_steps_per_epoch, "depth": self.depth, "size": self.size}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[self._CHECKPOINT_KEY] = {
            "signature": self._signature(),
            "sgd_step": self.sgd_step,
            "branch_weights": [[w.detach().cpu().clone() for w in ws] for ws in self._branch_weights],
            "branch_task": list(self._branch_task),
            "member_branch": list(self._member_branch),
            "final": {k: [w.detach().cpu().clone() for w in v["factors"]] for k, v in self._final.items()},
            "records": list(self._history.records),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(self._CHECKPOINT_KEY)
        if state is None or "records" not in state:
            raise ValueError(
                "this checkpoint holds no FactorizationEnsemble state (saved by another version or model); "
                "it cannot be resumed, rerun the sweep."
            )
        if state["signature"] != self._signature():
            raise ValueError(
                f"checkpoint of a different ensemble: {state['signature']} != {self._signature()}; "
                "build the ensemble with the checkpoint's settings or rerun the sweep."
            )
        device, dtype = self._anchor.device, self.factor_dtype
        self.sgd_step = int(state["sgd_step"])
        self._branch_weights = [[w.to(device=device, dtype=dtype) for w in ws] for ws in state["branch_weights"]]
        self._branch_task = list(state["branch_task"])
        self._member_branch = list(state["member_branch"])
        self._final = {
            int(k): {"factors": [w.to(device=device, dtype=dtype) for w in ws]} for k, ws in state["final"].items()
        }
        self._history.start(None, from_step=0)
        self._history.extend([tuple(rec) for rec in state["records"]], write=False)

    def configure_optimizers(self) -> list:
        # Updates are written by hand in ``sgd_steps``; an empty list (unlike ``None``) tells
        # Lightning so without its "no optimizer" warning.
        return []

    # -- results -------------------------------------------------------------------------
    def history(self) -> pd.DataFrame:
        """Every record, in the monitors' long format: ``step, epoch, target, metric, index, value``
        (see the module docstring; ``step`` counts SGD steps, ``target`` is ``"member<k>"``)."""
        return self._history.to_frame()

    def member_records(self, k: int) -> list[Record]:
        """Member ``k``'s records ``(step, epoch, target, metric, index, value)``, in the order taken.

        What the sweep's ensemble runner writes into each run's history file.
        """
        target = f"member{check_int('k', k, 0, len(self.members) - 1)}"
        return [r for r in self._history.records if r[2] == target]

    def results(self) -> pd.DataFrame:
        """The last record of every member (member order), in the long format of :meth:`history`."""
        hist = self.history()
        final = hist[hist["step"] == hist.groupby("target")["step"].transform("max")]
        order = final["target"].str.removeprefix("member").astype(int)
        return final.iloc[order.argsort(kind="stable")].reset_index(drop=True)

    def final_metrics(self) -> pd.DataFrame:
        """One row per member: ``member, sgd_steps, task, test_loss, train_loss, singular_values/<i>``.

        The wide view of :meth:`results` that sweeps read their metrics from (``task`` is its name).
        """
        rows = []
        for target, records in self.results().groupby("target", sort=False):
            row: dict[str, Any] = {"member": int(target.removeprefix("member")),
                                   "sgd_steps": int(records["step"].iloc[0])}
            for metric, index, value in zip(records["metric"], records["index"], records["value"], strict=True):
                if metric == "task":
                    row["task"] = self.task_names[int(value)]
                elif index < 0:
                    row[metric] = value
                else:
                    row[f"{metric}/{index}"] = value
            rows.append(row)
        return pd.DataFrame(rows)
