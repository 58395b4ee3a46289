"""The matrix-completion critical period: ensemble == sequential runs, and the paper's effects."""

from __future__ import annotations

import logging
import os
from typing import Any

import pandas as pd
import pytest
import torch

import lightning_critical as lc
from lightning_critical._namespace import pl
from lightning_critical.data import MatrixCompletionDataModule
from lightning_critical.experiments.matrix_completion import (
    build_switch_ensemble,
    matrix_completion_parameter_sweep,
    matrix_completion_sweep,
)
from lightning_critical.models import DeepMatrixFactorization
from lightning_critical.models.factorization_ensemble import FactorizationEnsemble
from lightning_critical.schedule import largest_common_divisor

logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
QUIET: dict[str, Any] = dict(
    logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
)


# A reduced version of the paper's setting (n=100, m=2000, rank 10 -> 5, lr 0.2, 130k epochs)
# that keeps its effects: 20% of the entries observed, pre-training rank above the target's.
REDUCED: dict[str, Any] = dict(size=50, n_observed=500, pretrain_rank=5, target_rank=3, lr=0.5, seed=0)
SWITCHES = [0, 1000, 4000, 8000, 16000]


@pytest.fixture(scope="module")
def figure() -> pd.DataFrame:
    return matrix_completion_parameter_sweep(
        "depth", [1, 2, 3], switch_epochs=SWITCHES, continue_epochs=12000, **REDUCED
    )


def test_depth_one_has_no_critical_period(figure):
    d1 = figure[figure.depth == 1]
    assert d1.test_loss.max() - d1.test_loss.min() < 0.005
    assert (d1.train_loss < 1e-4).all()  # it did fit the target's observations


def test_depth_three_is_permanently_hurt_by_a_late_switch(figure):
    d3 = figure[figure.depth == 3].set_index("switch_epoch").test_loss
    assert d3[0] < 0.01 and d3[1000] < 0.01
    assert d3[8000] > 0.5 and d3[16000] > 0.5
    assert (figure[figure.depth == 3].train_loss < 1e-3).all()  # fits the observations, generalizes badly


def test_depth_two_is_in_between(figure):
    loss = figure.set_index(["depth", "switch_epoch"]).test_loss
    harm = {d: loss[d, 16000] - loss[d, 0] for d in (1, 2, 3)}
    assert harm[1] < 0.005 < harm[2] < harm[3]
    assert loss[2, 0] < loss[1, 0] and loss[2, 16000] < loss[3, 16000]
    assert list(figure.columns[:3]) == ["depth", "switch_epoch", "test_loss"]
    assert len(figure) == 15 and set(figure.switch_epoch) == set(SWITCHES)


def test_ensemble_equals_sequential_trainer_runs():
    """Each member == one Trainer run of DeepMatrixFactorization with its own TaskSwitch."""
    size, depth, cont, switches = 12, 3, 40, [0, 20, 40]
    kw: dict[str, Any] = dict(size=size, n_observed=60, pretrain_rank=4, target_rank=2, init_scale=0.1, lr=5.0, seed=0)
    ens, dm, callbacks = build_switch_ensemble(depth, switches, cont, sgd_steps_per_epoch=20, dtype=torch.float64, **kw)
    pl.Trainer(max_epochs=ens.max_epochs, callbacks=list(callbacks), **QUIET).fit(ens, datamodule=dm)
    maps = ens.end_to_end_maps()
    for k, switch in enumerate(switches):
        dm_k = MatrixCompletionDataModule(size=size, n_observed=60, tasks={"pretrain": 4, "target": 2}, seed=0)
        model = DeepMatrixFactorization(size=size, depth=depth, init_scale=0.1, lr=5.0, seed=0).double()
        dm_k._truth = {name: dm_k.ground_truth(name).double() for name in dm_k.tasks}  # float64 targets
        pl.Trainer(max_epochs=switch + cont, callbacks=[lc.TaskSwitch({switch: "target"})], **QUIET).fit(
            model, datamodule=dm_k
        )
        sequential = model.end_to_end().detach()
        assert sequential.abs().max() > 1.0  # it learned something
        torch.testing.assert_close(maps[f"member{k}"], sequential, rtol=1e-9, atol=1e-9)
    # the members share the trunk: 3 members, only the two early switchers needed a fork
    assert len(ens._branch_weights) == 3


def test_task_switch_drives_each_member():
    ens, dm, callbacks = build_switch_ensemble(2, [0, 30, 60], 30, size=10, n_observed=40, pretrain_rank=3,
                                               target_rank=1, sgd_steps_per_epoch=10)
    assert largest_common_divisor([0, 30, 60, 30]) == 30 and ens.sgd_steps_per_epoch == 10
    pl.Trainer(max_epochs=ens.max_epochs, callbacks=list(callbacks), **QUIET).fit(ens, datamodule=dm)
    hist = ens.history()
    tasks = hist[hist.metric == "task"]  # the long format: the task is recorded as its index in task_names
    for member, switch in enumerate([0, 30, 60]):
        rows = tasks[(tasks.target == f"member{member}") & (tasks.step > 0)]
        # the record at step s describes the chunk that ended there: steps [s - 10, s)
        expected = ["target" if s - 10 >= switch else "pretrain" for s in rows.step]
        assert [ens.task_names[int(v)] for v in rows.value] == expected
        assert rows.step.max() == switch + 30
    assert [m.task for m in ens.members] == ["target"] * 3


def test_fewer_examples_deficit_and_parameter_sweeps():
    small: dict[str, Any] = dict(size=20, n_observed=120, target_rank=2, lr=0.5, continue_epochs=2000)
    df = matrix_completion_parameter_sweep("pretrain_observed", [40, 120], depth=2, switch_epochs=[0, 2000], **small)
    assert sorted(df.pretrain_observed.unique()) == [40, 120] and len(df) == 4
    loss = df.set_index(["pretrain_observed", "switch_epoch"]).test_loss
    # pre-training on a third of the observations hurts the deep net more the longer it lasts
    assert loss[40, 2000] > loss[40, 0] + 0.05
    df = matrix_completion_parameter_sweep("init_scale", [1e-3, 1e-2], depth=1, switch_epochs=[0], **small)
    assert sorted(df.init_scale) == [1e-3, 1e-2]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(depth=0), r"depth=0 must be an integer >= 1"),
        (dict(switch_epochs=[]), r"switch_epochs is empty"),
        (dict(switch_epochs=[5, 5]), r"duplicates"),
        (dict(switch_epochs=[-1]), r"switch epoch=-1"),
        (dict(pretrain_rank=11), r"pretrain_rank=11 must be an integer \[1, 10\]"),
        (dict(init="he"), r"init='he' is not valid"),
        (dict(sgd_steps_per_epoch=7), r"sgd_steps_per_epoch=7 must divide"),
        (dict(sgd_steps_per_epoch=0), r"sgd_steps_per_epoch=0 must be an integer >= 1"),
        (dict(sgd_steps_per_epoch=-10), r"sgd_steps_per_epoch=-10 must be an integer >= 1"),
        (dict(sgd_steps_per_epoch=2.5), r"sgd_steps_per_epoch=2.5 must be an integer >= 1"),
    ],
)
def test_sweep_validation(kwargs, message):
    base = dict(depth=1, switch_epochs=[0, 10], continue_epochs=10, size=10, n_observed=30)
    with pytest.raises(ValueError, match=message):
        matrix_completion_sweep(**{**base, **kwargs})


def test_parameter_sweep_validation():
    with pytest.raises(ValueError, match=r"parameter='rank' is not valid; choose one of"):
        matrix_completion_parameter_sweep("rank", [1])
    with pytest.raises(ValueError, match="member_steps"):
        dm = MatrixCompletionDataModule(size=5, n_observed=10, tasks={"a": 1, "b": 1})
        FactorizationEnsemble(DeepMatrixFactorization(size=5, depth=1), dm, [15], sgd_steps_per_epoch=10)


def test_reproduce_figure_writes_csv_and_pngs(tmp_path):
    from lightning_critical.experiments.matrix_completion import reproduce_figure

    paths = reproduce_figure(str(tmp_path), depths=[1, 2], switch_epochs=[0, 200], continue_epochs=200,
                             trajectories=[200], verbose=False, size=10, n_observed=40, pretrain_rank=3,
                             target_rank=1, lr=2.0)
    table = pd.read_csv(paths["csv"])
    assert len(table) == 4 and {"depth", "switch_epoch", "test_loss"} <= set(table.columns)
    traj = pd.read_csv(paths["trajectories_csv"])
    assert traj.step.max() == 400 and (traj.depth == 2).all()
    for key in ("png", "trajectories_png"):
        assert open(paths[key], "rb").read(4) == b"\x89PNG"


def test_figure_command_rejects_bad_arguments(capsys):
    from lightning_critical.cli import main

    with pytest.raises(SystemExit) as err:
        main(["matrix-completion", "--depths", "0", "--out-dir", "unused"])
    assert err.value.code == 2 and "depth=0" in capsys.readouterr().err


def test_worker_processes_give_the_same_table():
    kwargs: dict[str, Any] = dict(switch_epochs=[0, 200], continue_epochs=200, size=12, n_observed=60, pretrain_rank=3,
                  target_rank=1, lr=0.5)
    serial = matrix_completion_parameter_sweep("depth", [1, 2], **kwargs)
    parallel = matrix_completion_parameter_sweep("depth", [1, 2], processes=2, **kwargs)
    pd.testing.assert_frame_equal(serial.drop(columns="seconds"), parallel.drop(columns="seconds"))
    with pytest.raises(ValueError, match="processes"):
        matrix_completion_parameter_sweep("depth", [1], processes=0, **kwargs)


def _resume_setup():
    return build_switch_ensemble(2, [0, 20, 40], 40, size=8, n_observed=30, pretrain_rank=3, target_rank=1,
                                 init_scale=0.1, lr=2.0, sgd_steps_per_epoch=10, dtype=torch.float64)


def test_checkpoint_resume_equals_an_uninterrupted_run(tmp_path):
    full, dm, switches = _resume_setup()
    pl.Trainer(max_epochs=full.max_epochs, callbacks=switches, **QUIET).fit(full, datamodule=dm)

    # Interrupt at epoch 5 of 8: member 0 has finished (its final weights), members 1 and 2 have forked.
    first, dm, switches = _resume_setup()
    trainer = pl.Trainer(max_epochs=5, callbacks=switches, **QUIET)
    trainer.fit(first, datamodule=dm)
    path = str(tmp_path / "mid.ckpt")
    trainer.save_checkpoint(path)

    resumed, dm, switches = _resume_setup()  # fresh objects, as in a new process
    pl.Trainer(max_epochs=resumed.max_epochs, callbacks=switches, **QUIET).fit(resumed, datamodule=dm, ckpt_path=path)
    pd.testing.assert_frame_equal(resumed.history(), full.history())
    pd.testing.assert_frame_equal(resumed.results(), full.results())
    for k in range(3):
        for a, b in zip(resumed.member_factors(k), full.member_factors(k), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [m.task for m in resumed.members] == ["target"] * 3


def test_checkpoint_of_another_ensemble_is_refused(tmp_path):
    ens, dm, switches = _resume_setup()
    trainer = pl.Trainer(max_epochs=2, callbacks=switches, **QUIET)
    trainer.fit(ens, datamodule=dm)
    checkpoint: dict[str, Any] = {}
    ens.on_save_checkpoint(checkpoint)
    other, _, _ = build_switch_ensemble(2, [0, 30], 30, size=8, n_observed=30, pretrain_rank=3, target_rank=1,
                                        sgd_steps_per_epoch=10)
    with pytest.raises(ValueError, match="checkpoint of a different ensemble"):
        other.on_load_checkpoint(checkpoint)
    with pytest.raises(ValueError, match="cannot be resumed, rerun the sweep"):
        other.on_load_checkpoint({})


def test_ensemble_history_is_the_monitors_long_format():
    """Records go through the monitors' History: (step, epoch, target, metric, index, value), one target per member."""
    from lightning_critical.history import COLUMNS

    ens, dm, switches = build_switch_ensemble(2, [0, 20], 20, size=8, n_observed=30, pretrain_rank=3, target_rank=1,
                                              sgd_steps_per_epoch=10, dtype=torch.float64)
    pl.Trainer(max_epochs=ens.max_epochs, callbacks=list(switches), **QUIET).fit(ens, datamodule=dm)
    hist = ens.history()
    assert list(hist.columns) == list(COLUMNS)
    assert set(hist.target) == {"member0", "member1"}
    assert set(hist.metric) == {"test_loss", "train_loss", "task", "singular_values"}
    assert (hist[hist.metric != "singular_values"]["index"] == -1).all()
    # steps count SGD steps; epochs are the ensemble's Lightning epochs (10 SGD steps each)
    assert sorted(set(hist[hist.target == "member1"].step)) == [0, 10, 20, 30, 40]
    assert ((hist.step // 10 - 1).clip(lower=0) == hist.epoch).all()
    final = ens.results()
    assert list(final.columns) == list(COLUMNS) and final.target.unique().tolist() == ["member0", "member1"]
    assert final.groupby("target").step.first().tolist() == [20, 40]
    for k, w in enumerate(ens.end_to_end_maps().values()):
        values = final[(final.target == f"member{k}") & (final.metric == "singular_values")].value.to_numpy()
        torch.testing.assert_close(torch.tensor(values), torch.linalg.svdvals(w), rtol=0, atol=0)
    wide = ens.final_metrics()
    assert wide.member.tolist() == [0, 1] and wide.sgd_steps.tolist() == [20, 40]
    assert wide.task.tolist() == ["target", "target"]
    first = final[(final.metric == "singular_values") & (final["index"] == 0)]
    assert wide["singular_values/0"].tolist() == first.value.tolist()


def test_ensemble_fit_raises_no_optimizer_warning(recwarn):
    """configure_optimizers returns [] (not None): Lightning's "returned None" warning cannot occur."""
    ens, dm, switches = build_switch_ensemble(1, [0, 10], 10, size=6, n_observed=20, pretrain_rank=2, target_rank=1,
                                              sgd_steps_per_epoch=10)
    assert ens.configure_optimizers() == []
    pl.Trainer(max_epochs=ens.max_epochs, callbacks=list(switches), **QUIET).fit(ens, datamodule=dm)
    assert not [w for w in recwarn if "configure_optimizers" in str(w.message)]


def _history_fitted_by_hand(depth: int, switch: list[int], cont: int, k: int, **kw: Any) -> pd.DataFrame:
    """The history as ``matrix_completion_sweep(return_history=True)`` built it before it ran through the engine:
    the ensemble fitted in this process by its own Trainer."""
    ens, dm, switches = build_switch_ensemble(depth, switch, cont, sgd_steps_per_epoch=k, **kw)
    pl.Trainer(max_epochs=ens.max_epochs, callbacks=list[pl.Callback](switches), devices=1, accelerator="cpu",
               num_sanity_val_steps=0,
               **QUIET).fit(ens, datamodule=dm)
    hist = ens.history()
    members = hist["target"].str.removeprefix("member").astype(int)
    hist.insert(0, "switch_epoch", [switch[m] for m in members])
    hist.insert(0, "depth", depth)
    return hist.drop(columns=["target", "epoch"])


@pytest.mark.parametrize("switch", [[0, 40, 20], [40, 20]])  # the baseline a run of the history, or not
def test_history_through_the_engine_is_the_history_fitted_by_hand(switch):
    kw: dict[str, Any] = dict(size=8, n_observed=30, pretrain_rank=3, target_rank=1, lr=2.0, seed=3)
    results, hist = matrix_completion_sweep(2, switch, 40, sgd_steps_per_epoch=20, return_history=True,
                                            accelerator="cpu", **kw)
    pd.testing.assert_frame_equal(hist, _history_fitted_by_hand(2, switch, 40, 20, **kw), check_exact=True)
    assert list(results["switch_epoch"]) == switch
    finals = hist[(hist.metric == "test_loss")].groupby("switch_epoch")["value"].last()
    assert [finals[s] for s in switch] == list(results["test_loss"])  # the table's metric is the history's last


def test_history_files_and_tensorboard_logs_are_in_each_runs_directory(tmp_path):
    from lightning_critical.history import read_history
    from lightning_critical.sweep.runners.ensemble import HISTORY_FILE

    kw: dict[str, Any] = dict(size=6, n_observed=20, pretrain_rank=2, target_rank=1, lr=2.0)
    _, hist = matrix_completion_sweep(1, [0, 10], 10, return_history=True, out=tmp_path, tensorboard=True, **kw)
    table = lc.sweep.load(str(tmp_path))
    assert all(d.startswith(str(tmp_path / "tensorboard")) for d in table["log_dir"])
    for log_dir, switch in zip(table["log_dir"], [0, 10], strict=True):
        own = read_history(f"{log_dir}/{HISTORY_FILE}")
        assert set(own.target) == {"W"}
        assert own["value"].tolist() == hist[hist.switch_epoch == switch]["value"].tolist()
        assert any(name.startswith("events.out.tfevents") for name in os.listdir(log_dir))
    with pytest.raises(ValueError, match="tensorboard=True needs out="):
        matrix_completion_sweep(1, [0, 10], 10, tensorboard=True, **kw)


def test_a_logger_is_deprecated_and_gets_the_test_losses(tmp_path):
    kw: dict[str, Any] = dict(size=6, n_observed=20, pretrain_rank=2, target_rank=1, lr=2.0)
    logger = pl.loggers.CSVLogger(str(tmp_path), name="mc", version=0)
    with pytest.warns(DeprecationWarning, match=r"logger=\.\.\.\) is deprecated"):
        results = matrix_completion_sweep(1, [10, 0], 10, sgd_steps_per_epoch=5, logger=logger, **kw)
    logged = pd.read_csv(tmp_path / "mc" / "version_0" / "metrics.csv")
    assert logged["step"].tolist() == [0, 5, 10, 15, 20]
    last = logged.set_index("step")
    assert last.loc[20, "test_loss/member0"] == pytest.approx(results["test_loss"][0], rel=1e-6)
    assert last.loc[10, "test_loss/member1"] == pytest.approx(results["test_loss"][1], rel=1e-6)
