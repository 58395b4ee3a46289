"""ScheduledIntervention: a user-written intervention on the base, in a real Trainer."""

from __future__ import annotations

from typing import Any, cast

import pytest
import torch
from conftest import TwoBranchNet, all_hooks, make_trainer

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.deficits.base import WindowedDeficit
from lightning_critical.deficits.intervention import ScheduledIntervention, check_text

CSVLogger = pl.loggers.CSVLogger


class Attenuate(ScheduledIntervention):
    """Scale the ``right`` branch's output by ``gain`` during optimizer steps ``[start, end)``."""

    def __init__(self, start: int, end: int, gain: float = 0.0) -> None:
        super().__init__()
        self.start, self.end, self.gain = start, end, gain
        self.attach_calls = 0

    def key_arguments(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end}

    def repr_settings(self) -> dict[str, str]:
        return {"steps": f"[{self.start}, {self.end})", "gain": str(self.gain)}

    def is_active(self, trainer: pl.Trainer) -> bool:
        return self.start <= trainer.global_step < self.end

    def attach(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Any]:
        self.attach_calls += 1
        right = cast(torch.nn.Module, pl_module.right)
        return [self.register_forward_hook([right], lambda mod, args, out: out * self.gain)]

    @property
    def indicator_key(self) -> str:
        return "deficit/attenuate"

    def hparams_for_tensorboard(self) -> dict[str, Any]:
        return {"deficit/attenuate/steps": f"[{self.start}, {self.end})"}


class Seen(pl.Callback):
    """Records, before each update, whether the intervention's hooks are on the model."""

    def __init__(self, intervention: Attenuate) -> None:
        self.intervention = intervention
        self.attached: dict[int, bool] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.attached[trainer.global_step - 1] = self.intervention.attached


def test_a_user_intervention_acts_inside_its_steps_only_and_logs_its_indicator(tmp_path):
    intervention = Attenuate(3, 6)
    seen = Seen(intervention)
    logger = CSVLogger(str(tmp_path), name="", version="")
    model = TwoBranchNet()
    right_before = [p.detach().clone() for p in model.right.parameters()]
    make_trainer(tmp_path, max_steps=9, callbacks=[intervention, seen], logger=logger, log_every_n_steps=1).fit(model)

    assert seen.attached == {s: 3 <= s < 6 for s in range(9)}
    assert intervention.attach_calls == 1 and not intervention.attached and all_hooks(model) == 0
    assert any(not torch.equal(a, b) for a, b in zip(right_before, model.right.parameters(), strict=True))
    metrics = (tmp_path / "metrics.csv").read_text().splitlines()
    column = metrics[0].split(",").index("deficit/attenuate")
    values = {int(row.split(",")[metrics[0].split(",").index("step")]): float(row.split(",")[column])
              for row in metrics[1:] if row.split(",")[column]}
    assert values[2] == 0.0 and values[3] == 1.0 and values[5] == 1.0 and values[6] == 0.0


def test_a_user_intervention_gets_a_state_key_and_repr_from_its_extension_points():
    assert Attenuate(3, 6).state_key == "Attenuate{'start': 3, 'end': 6}"
    assert Attenuate(3, 6).state_key != Attenuate(0, 6).state_key
    assert repr(Attenuate(3, 6, gain=0.5)) == "Attenuate(steps=[3, 6), gain=0.5)"
    assert Attenuate(3, 6).hparams_for_tensorboard() == {"deficit/attenuate/steps": "[3, 6)"}


def test_resuming_a_user_intervention_from_a_mid_window_checkpoint_matches_the_uninterrupted_run(tmp_path):
    whole = TwoBranchNet()  # 4 steps per epoch; the checkpoint after epoch 0 (step 4) is inside [3, 8)
    make_trainer(max_epochs=3, callbacks=[Attenuate(3, 8)]).fit(whole)

    first = TwoBranchNet()
    trainer = make_trainer(max_epochs=1, callbacks=[Attenuate(3, 8)])
    trainer.fit(first)
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    assert torch.load(ckpt, weights_only=False)["callbacks"] == {}  # nothing stored: recomputed from the step

    resumed, intervention = TwoBranchNet(), Attenuate(3, 8)
    seen = Seen(intervention)
    make_trainer(max_epochs=3, callbacks=[intervention, seen]).fit(resumed, ckpt_path=str(ckpt))
    assert seen.attached == {s: s < 8 for s in range(4, 12)}  # re-applied from the first resumed step
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_hooks_are_removed_when_training_fails_inside_the_window():
    model, intervention = TwoBranchNet(fail_at_step=4), Attenuate(2, 8)
    with pytest.raises(RuntimeError, match="boom"):
        make_trainer(max_steps=10, callbacks=[intervention]).fit(model)
    assert not intervention.attached and all_hooks(model) == 0
    x = torch.randn(2, 6)
    model.train()
    with torch.no_grad():  # with the hook still there the right branch would read 0
        assert not torch.equal(model(x), model.head(model.left(x)))


def test_deficits_and_task_switches_share_the_base():
    assert issubclass(WindowedDeficit, ScheduledIntervention) and issubclass(lc.TaskSwitch, ScheduledIntervention)
    for cls in (lc.PathwayDeficit, lc.ModeDeficit, lc.InputDeficit, lc.TaskSwitch):
        assert "state_key" not in cls.__dict__ and "detach" not in cls.__dict__, cls  # one implementation
    switch = lc.TaskSwitch({3: "target"})
    assert switch.indicator_key == "task/datamodule" and not switch.is_active(make_trainer())


def test_check_text_names_the_argument_and_what_it_is_for():
    assert check_text("name", None, "the scalar", allow_none=True) is None
    with pytest.raises(ValueError, match=r"name=3 is not valid: it must be None or a non-empty string \(the scalar\)"):
        check_text("name", 3, "the scalar", allow_none=True)
    with pytest.raises(ValueError, match=r"label=None is not valid: it must be a non-empty string"):
        check_text("label", None, "a label")


def test_an_intervention_without_an_indicator_logs_nothing(tmp_path):
    class Silent(ScheduledIntervention):
        def is_active(self, trainer: pl.Trainer) -> bool:
            return trainer.global_step < 2

    logger = CSVLogger(str(tmp_path), name="", version="")
    make_trainer(tmp_path, max_steps=4, callbacks=[Silent()], logger=logger, log_every_n_steps=1).fit(TwoBranchNet())
    assert not Silent().shows_indicator
    metrics = tmp_path / "metrics.csv"
    assert not metrics.exists() or "deficit" not in metrics.read_text()
