"""Many deep factorizations trained at once: the fast path of the matrix-completion sweeps.

Members start from the same initialization and each follows its own task schedule, driven
by ordinary :class:`~lightning_critical.TaskSwitch` callbacks (one per member, whose
``target`` is ``ensemble.members[k]``). Members that have seen the same tasks at the same
times have identical weights, so they share one *branch*; a member forks its own copy of the
weights only when its task changes. Every Lightning step runs ``steps_per_epoch`` full-batch
SGD steps of all live branches as batched ``(B, n, n)`` matrix products with hand-written
gradients, which amortizes Lightning's per-step overhead over many tiny updates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor
from torchmetrics.functional import mean_squared_error

from lightning_critical._checks import check_int
from lightning_critical._namespace import pl
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
        return self._ensemble._slot_task[self._ensemble._member_slot[self.index]]

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
        steps_per_epoch: SGD steps per Lightning epoch; every member's length and every
            ``TaskSwitch`` time (given in epochs) is counted in these chunks.
        initial_task: the task every member starts on (default: the datamodule's active task).
        top_k: number of singular values of each member's ``W`` recorded per epoch.
        dtype: ``torch.float32`` (default) or ``torch.float64``.

    Checkpoints: ``on_save_checkpoint`` stores the branches' weights, the member-to-branch map,
    the finished members and the history, so ``trainer.fit(..., ckpt_path=...)`` on an ensemble
    built with the same arguments resumes exactly where the checkpoint was taken.

    Raises:
        ValueError: for bad sizes, a member length that is not a multiple of
            ``steps_per_epoch`` or an unknown task.

    Example::

        >>> import lightning_critical as lc
        >>> from lightning_critical._namespace import pl
        >>> from lightning_critical.data import MatrixCompletionDataModule
        >>> dm = MatrixCompletionDataModule(size=10, n_observed=40, tasks={"pretrain": 3, "target": 1})
        >>> model = DeepMatrixFactorization(size=10, depth=2, seed=0)
        >>> ens = FactorizationEnsemble(model, dm, member_steps=[40, 60], steps_per_epoch=20)
        >>> switches = [lc.TaskSwitch({0: "target"}, target=ens.members[0]),
        ...             lc.TaskSwitch({1: "target"}, target=ens.members[1])]
        >>> pl.Trainer(max_epochs=ens.max_epochs, callbacks=switches, logger=False,
        ...            enable_checkpointing=False, enable_progress_bar=False,
        ...            enable_model_summary=False).fit(ens, datamodule=dm)
        >>> list(ens.results()["sgd_steps"])
        [40, 60]
    """

    _anchor: Tensor  # a buffer (registered in __init__): declared for the type checker

    def __init__(
        self,
        model: DeepMatrixFactorization,
        datamodule: Any,
        member_steps: Sequence[int],
        steps_per_epoch: int = 1,
        initial_task: str | None = None,
        top_k: int = 10,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        check_int("steps_per_epoch", steps_per_epoch)
        steps = [int(s) for s in member_steps]
        if not steps or any(s < 1 or s % steps_per_epoch for s in steps):
            raise ValueError(
                f"member_steps={list(member_steps)!r} must be positive multiples of steps_per_epoch={steps_per_epoch}."
            )
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype={dtype!r} is not valid; choose torch.float32 or torch.float64.")
        self.task_names: tuple[str, ...] = tuple(datamodule.tasks)
        initial = datamodule.task if initial_task is None else initial_task
        if initial not in self.task_names:
            raise ValueError(f"initial_task={initial!r} is unknown; valid tasks: {list(self.task_names)}.")
        self.depth, self.lr, self.size = model.depth, float(model.lr), model.size
        self.steps_per_epoch, self.member_steps, self.top_k, self.dtype_ = steps_per_epoch, steps, top_k, dtype
        self.max_epochs = max(steps) // steps_per_epoch

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
        self._slot_weights: list[list[Tensor]] = [init]
        self._slot_task: list[str] = [initial]
        self._member_slot = [0] * len(steps)
        self.members = [EnsembleMember(self, k) for k in range(len(steps))]
        self.sgd_step = 0
        self._final: dict[int, dict[str, Any]] = {}
        self._history: list[dict[str, Any]] = []
        self.register_buffer("_anchor", torch.zeros((), dtype=dtype))  # follows the module's device

    # -- branches ------------------------------------------------------------------------
    def _live(self, k: int) -> bool:
        return self.sgd_step < self.member_steps[k]

    def _set_member_task(self, k: int, name: str) -> None:
        if name not in self.task_names:
            raise ValueError(f"unknown task {name!r}; valid tasks: {list(self.task_names)}.")
        slot = self._member_slot[k]
        if self._slot_task[slot] == name:
            return
        sharers = [j for j, s in enumerate(self._member_slot) if s == slot and j != k and self._live(j)]
        if sharers:  # fork: the other members keep training the old branch
            self._slot_weights.append([w.clone() for w in self._slot_weights[slot]])
            self._slot_task.append(name)
            self._member_slot[k] = len(self._slot_weights) - 1
        else:
            self._slot_task[slot] = name

    def member_factors(self, k: int) -> list[Tensor]:
        """Member ``k``'s current factors (its final ones once it has stopped)."""
        if k in self._final:
            return self._final[k]["factors"]
        return self._slot_weights[self._member_slot[k]]

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
        self._slot_weights = [[w.to(device) for w in ws] for ws in self._slot_weights]
        self._final = {k: {"factors": [w.to(device) for w in v["factors"]]} for k, v in self._final.items()}

    def on_train_start(self) -> None:
        if self.sgd_step == 0 and not self._history:
            self._record(range(len(self.members)))

    def training_step(self, batch: Any, batch_idx: int) -> None:
        live = [k for k in range(len(self.members)) if self._live(k)]
        slots = sorted({self._member_slot[k] for k in live})
        if slots:
            with torch.no_grad():
                factors = [torch.stack([self._slot_weights[s][i] for s in slots]) for i in range(self.depth)]
                tasks = [self._slot_task[s] for s in slots]
                weight = torch.stack([self._weight[t] for t in tasks])
                target = torch.stack([self._target[t] for t in tasks])
                sgd_steps(factors, target, weight, self.lr, self.steps_per_epoch)
                for j, s in enumerate(slots):
                    self._slot_weights[s] = [f[j] for f in factors]
        self.sgd_step += self.steps_per_epoch
        test = self._record(live)
        if test is not None and self._trainer is not None and self.trainer.loggers:
            for j, k in enumerate(live):
                self.log(f"test_loss/member{k}", test[j], on_step=False, on_epoch=True)
        for k in live:
            if not self._live(k):
                self._final[k] = {"factors": [w.clone() for w in self._slot_weights[self._member_slot[k]]]}
        return None

    @torch.no_grad()
    def _record(self, members: Sequence[int]) -> Tensor | None:
        members = list(members)
        if not members:
            return None
        maps = self.end_to_end_maps()
        w = torch.stack([maps[f"member{k}"] for k in members])
        tasks = [self._slot_task[self._member_slot[k]] for k in members]
        truth = torch.stack([self._truth[t] for t in tasks])
        weight = torch.stack([self._weight[t] for t in tasks])
        target = torch.stack([self._target[t] for t in tasks])
        e = len(members)
        test = mean_squared_error(w.reshape(e, -1).T, truth.reshape(e, -1).T, num_outputs=e).reshape(e)
        # 0.5 * mean over observed entries, written with the weights (1/m on observed entries)
        train = 0.5 * ((w * weight - target) * (w - truth)).sum(dim=(1, 2))
        svals = torch.linalg.svdvals(w)[:, : self.top_k].cpu()
        for j, k in enumerate(members):
            self._history.append(
                {"sgd_step": self.sgd_step, "member": k, "task": tasks[j], "test_loss": float(test[j]),
                 "train_loss": float(train[j]), "singular_values": svals[j].tolist()}
            )
        return test

    # -- checkpointing ---------------------------------------------------------------------
    # The weights live in plain attributes (not parameters), so Lightning's state_dict holds
    # none of them; these hooks carry everything an exact resume needs.
    _CHECKPOINT_KEY = "factorization_ensemble"

    def _signature(self) -> dict[str, Any]:
        return {"task_names": list(self.task_names), "member_steps": list(self.member_steps),
                "steps_per_epoch": self.steps_per_epoch, "depth": self.depth, "size": self.size}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[self._CHECKPOINT_KEY] = {
            "signature": self._signature(),
            "sgd_step": self.sgd_step,
            "slot_weights": [[w.detach().cpu().clone() for w in ws] for ws in self._slot_weights],
            "slot_task": list(self._slot_task),
            "member_slot": list(self._member_slot),
            "final": {k: [w.detach().cpu().clone() for w in v["factors"]] for k, v in self._final.items()},
            "history": [dict(rec, singular_values=list(rec["singular_values"])) for rec in self._history],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(self._CHECKPOINT_KEY)
        if state is None:
            raise ValueError(
                "this checkpoint holds no FactorizationEnsemble state (saved by another version or model); "
                "it cannot be resumed, rerun the sweep."
            )
        if state["signature"] != self._signature():
            raise ValueError(
                f"checkpoint of a different ensemble: {state['signature']} != {self._signature()}; "
                "build the ensemble with the checkpoint's settings or rerun the sweep."
            )
        device, dtype = self._anchor.device, self.dtype_
        self.sgd_step = int(state["sgd_step"])
        self._slot_weights = [[w.to(device=device, dtype=dtype) for w in ws] for ws in state["slot_weights"]]
        self._slot_task = list(state["slot_task"])
        self._member_slot = list(state["member_slot"])
        self._final = {
            int(k): {"factors": [w.to(device=device, dtype=dtype) for w in ws]} for k, ws in state["final"].items()
        }
        self._history = [dict(rec) for rec in state["history"]]

    def configure_optimizers(self) -> list:
        # Updates are written by hand in ``sgd_steps``; an empty list (unlike ``None``) tells
        # Lightning so without its "no optimizer" warning.
        return []

    # -- results -------------------------------------------------------------------------
    def history(self) -> pd.DataFrame:
        """One row per member and record: ``sgd_step, member, task, test_loss, train_loss``,
        and ``sv_0 ... sv_{k-1}`` (singular values of the member's ``W``)."""
        rows = []
        for rec in self._history:
            row = {key: rec[key] for key in ("sgd_step", "member", "task", "test_loss", "train_loss")}
            row.update({f"sv_{i}": v for i, v in enumerate(rec["singular_values"])})
            rows.append(row)
        return pd.DataFrame(rows)

    def results(self) -> pd.DataFrame:
        """The last record of every member: ``member, sgd_steps, task, test_loss, train_loss``."""
        hist = self.history()
        if hist.empty:
            return hist
        last = hist.sort_values("sgd_step").groupby("member").tail(1).sort_values("member")
        return last.rename(columns={"sgd_step": "sgd_steps"}).reset_index(drop=True)


def chunk_size(times: Sequence[int], cap: int = 1000) -> int:
    """The largest divisor of ``gcd(times)`` that is ``<= cap`` (SGD steps per Lightning epoch)."""
    g = 0
    for t in times:
        g = math.gcd(g, int(t))
    if g == 0:
        return 1
    return max(d for d in range(1, min(g, cap) + 1) if g % d == 0)
