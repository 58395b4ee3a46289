"""``lightning-critical sweep --config``: a YAML config read into Study / Execution / Output by jsonargparse.

Tiny models, serial backend: the CLI and the same study in Python give one table; classes from
the current directory; one-line errors for bad configs; ``TaskWindow``, ``runner`` and ``errors``.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import textwrap

import pandas as pd
import pytest

import lightning_critical as lc
from lightning_critical.cli import main
from lightning_critical.sweep.config import CallbackFactory, read_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "examples", "configs")
QUIET = "output: {tensorboard: false, plot: false}\n"

DIGITS = """
study:
  model: {class_path: lightning_critical.models.SmallCNN, init_args: {channels: [4, 8]}}
  datamodule: {class_path: lightning_critical.data.DigitsDataModule, init_args: {subset: 64, batch_size: 32}}
  deficit: {class_path: lightning_critical.InputDeficit, init_args: {transform: noise}}
  windows: {removal: [1]}
  metrics: [val_loss, val_acc]
  trainer: {max_epochs: 2, accelerator: cpu}
execution: {backend: serial, progress: false}
""" + QUIET

USER_MODULE = '''
import torch
from torch.utils.data import DataLoader, TensorDataset
from lightning_critical._namespace import pl


class Net(pl.LightningModule):
    """A linear regression that brings its own dataloaders (no datamodule)."""

    def __init__(self, width: int = 4, lr: float = 0.05, seed: int = 0, fail: bool = False) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.layer = torch.nn.Linear(width, 1)
        self.lr, self.fail = lr, fail
        self.x = torch.randn(32, width, generator=torch.Generator().manual_seed(0))
        self.y = self.x.sum(1, keepdim=True)

    def training_step(self, batch, batch_idx):
        if self.fail:
            raise RuntimeError("this model cannot train")
        loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=8)
'''


def _write(path, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture
def user_cwd(tmp_path, monkeypatch):
    """A working directory holding ``mymodels.py``, not on ``sys.path`` (as for the console script)."""
    (tmp_path / "mymodels.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "mymodels", raising=False)
    yield tmp_path
    sys.modules.pop("mymodels", None)


def test_the_config_and_the_same_study_in_python_give_one_table(tmp_path, capsys):
    config = _write(tmp_path / "digits.yaml", DIGITS)
    assert main(["sweep", "--config", config, "--out", str(tmp_path / "cli")]) == 0
    assert "2 runs (0 failed)" in capsys.readouterr().out
    study = lc.sweep.Study(
        model=functools.partial(lc.models.SmallCNN, channels=[4, 8]),
        datamodule=functools.partial(lc.data.DigitsDataModule, subset=64, batch_size=32),
        deficit=functools.partial(lc.InputDeficit, transform="noise"), windows=lc.sweep.removal([1]),
        metrics=["val_loss", "val_acc"], trainer={"max_epochs": 2, "accelerator": "cpu"})
    python = lc.sweep.run_study(study, lc.sweep.Execution(backend="serial", progress=False),
                                lc.sweep.Output(out=str(tmp_path / "python"), tensorboard=False, plot=False))
    cli = pd.read_csv(tmp_path / "cli" / "results.csv")
    columns = ["label", "seed", "deficit_seed", "val_loss", "val_acc"]
    pd.testing.assert_frame_equal(cli[columns], python[columns].reset_index(drop=True), check_dtype=False)
    identities = [json.loads((tmp_path / d / "sweep.json").read_text()) for d in ("cli", "python")]
    for role in ("model", "datamodule", "deficit"):  # the same factories, so the same identity
        assert identities[0]["description"][role] == identities[1]["description"][role], role


def test_read_config_builds_plain_factories_and_keeps_the_dataclass_defaults(tmp_path):
    config = _write(tmp_path / "digits.yaml", DIGITS)
    monitor = "{class_path: lightning_critical.FisherMonitor, init_args: {every_n_epochs: 2}}"
    study, execution, output = read_config(["--config", config, "--backend", "process", "--study.seeds", "[3, 4]",
                                            "--study.callbacks", f"[{monitor}]"])
    callbacks = study.callbacks
    assert isinstance(callbacks, CallbackFactory)
    assert callbacks.specs == [(lc.FisherMonitor, {"every_n_epochs": 2})]
    assert [type(c) for c in callbacks()] == [lc.FisherMonitor]  # fresh callbacks for each run
    model, deficit = study.model, study.deficit
    assert isinstance(model, functools.partial) and isinstance(deficit, functools.partial)
    assert (model.func, model.args, model.keywords) == (lc.models.SmallCNN, (), {"channels": [4, 8]})  # no default
    assert (deficit.func, deficit.keywords) == (lc.InputDeficit, {"transform": "noise"})  # so the run's seed reaches it
    assert [e.label() for e in study.windows] == ["baseline", "w0-1"] and list(study.seeds) == [3, 4]
    assert execution.backend == "process" and execution.errors == lc.sweep.Execution.errors
    assert output.out == lc.sweep.Output.out and output.plot is False


def test_a_model_from_the_current_directory_without_datamodule(user_cwd, capsys):
    config = _write(user_cwd / "own.yaml", """
        study:
          model: {class_path: mymodels.Net, init_args: {width: 3}}
          deficit: {class_path: lightning_critical.PathwayDeficit, init_args: {pathways: layer, mode: freeze}}
          windows: [[0, 1]]
          metrics: [train_loss]
          trainer: {max_epochs: 2, accelerator: cpu, log_every_n_steps: 1}
        execution: {backend: serial, progress: false}
        """ + QUIET)
    assert main(["sweep", "--config", config]) == 0
    table = pd.read_csv(user_cwd / "outputs" / "own" / "results.csv")  # out defaults to the config's name
    frozen, baseline = table.set_index("label").train_loss[["w0-1_seed0", "baseline_seed0"]]
    assert frozen > baseline  # the frozen first epoch left the loss higher


OWN = ("model: mymodels.Net, deficit: {class_path: lightning_critical.PathwayDeficit, init_args: {pathways: layer}}, "
       "windows: [[0, 1]], metrics: [train_loss], trainer: {max_epochs: 1}")


@pytest.mark.parametrize(("yaml", "expected"), [
    ("study: {window: [0, 1]}", "study.window is not a key of study; valid keys: ['model', 'datamodule'"),
    ("studies: {model: x}", "studies is not a section of the config; valid sections: ['execution', 'output', 'study']"),
    ("study: {model: mymodels.Net, seeds: abc}", "study.seeds=abc is not valid: expected Sequence"),
    ("study: {model: {class_path: mymodels.NoNet}}",
     "study.model.class_path='mymodels.NoNet' cannot be imported (module 'mymodels' has no attribute 'NoNet'); "
     "valid: classes of mymodels: ["),
    ("study: {model: {class_path: nowhere.Net}}", "study.model.class_path='nowhere.Net' cannot be imported"),
    ("study: {model: {class_path: mymodels.Net, init_args: {widht: 3}}}",
     "study.model.init_args.widht is not an argument of mymodels.Net; its arguments: ['width', 'lr', 'seed', 'fail']"),
    ("study: {model: mymodels.Net, deficit: {class_path: lightning_critical.InputDeficit, "
     "init_args: {transform: blur, window: [0, 2]}}}",
     "study.deficit.init_args.window is not an argument of lightning_critical.InputDeficit (the sweep gives"),
    ("study: {model: mymodels.Net, windows: {removl: [1]}}", "give one key of ['removal', 'sliding', 'explicit']"),
    ("study: {trainer: {max_epochs: 1}}", "study.model is required"),
    ("execution: {threads_per_run: two}", "execution.threads_per_run=two is not valid: expected int"),
    ("execution: {runner: {class_path: mymodels.Net}}", "execution.runner is not valid"),
    ("study: [unclosed", "while parsing a flow sequence; in the config, line 1, column 8"),
    (f"study: {{{OWN}}}\nexecution: {{backend: serail}}",
     "execution: backend='serail' is not valid; choose one of ('serial', 'process', 'ray')"),
    (f"study: {{{OWN}}}\noutput: {{plot: val_acc}}", "plot='val_acc' is not valid; choose one of ('train_loss',)"),
    # a bad init_args value is found when the session builds the deficit, still before anything trains
    ("study: {" + OWN.replace("PathwayDeficit, init_args: {pathways: layer}",
                              "InputDeficit, init_args: {transform: blurr}") + "}",
     "transform='blurr' is not valid; choose one of ('blur', 'downsample'"),
    ("study: {" + OWN.replace("max_epochs: 1", "max_epochs: 1, nonsense: 1") + "}",
     "unknown pl.Trainer arguments ['nonsense']"),
], ids=["unknown-key", "unknown-section", "wrong-type", "missing-class", "missing-module", "unknown-argument",
        "deficit-window", "bad-grid", "missing-model", "wrong-int", "not-a-runner", "yaml-syntax",
        "bad-backend", "plot-not-a-metric", "bad-init-value", "trainer-unknown-key"])
def test_a_bad_config_is_one_line_with_exit_code_2(user_cwd, capsys, yaml, expected):
    config = _write(user_cwd / "bad.yaml", yaml + "\n")
    assert main(["sweep", "--config", config]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("lightning-critical sweep: error: ") and expected in err, err
    assert not (user_cwd / "outputs").exists()  # refused before anything was written


TASKS = """
study:
  model:
    class_path: lightning_critical.models.DeepMatrixFactorization
    init_args: {size: 8, depth: 2, lr: 0.5, init_scale: 0.1}
  datamodule:
    class_path: lightning_critical.data.MatrixCompletionDataModule
    init_args: {size: 8, n_observed: 30, tasks: {target: {rank: 1}, pretrain: {rank: 3}}}
  deficit: {class_path: lightning_critical.sweep.TaskWindow, init_args: {during: pretrain, after: target}}
  windows: {removal: {ends: [0, 30], epochs_after: 40}}
  metrics: [test_loss]
execution: {backend: serial, progress: false}
""" + QUIET


def _pretrain_until(window):
    return lc.TaskSwitch({window.start: "pretrain", window.end: "target"})


def test_a_task_switch_from_yaml_is_the_python_task_switch(tmp_path):
    config = _write(tmp_path / "tasks.yaml", TASKS)
    assert main(["sweep", "--config", config, "--out", str(tmp_path / "cli")]) == 0
    cli = pd.read_csv(tmp_path / "cli" / "results.csv").set_index("label")
    study, execution, output = read_config(["--config", config, "--out", str(tmp_path / "python")])
    python = lc.sweep.run_study(lc.sweep.Study(**{**vars(study), "deficit": _pretrain_until}), execution, output)
    python = python.set_index("label")
    assert cli.test_loss.to_dict() == python.test_loss.to_dict()
    assert cli.test_loss["w0-30_seed0"] > cli.test_loss["baseline_seed0_40ep"]  # pre-training on rank 3 costs


def test_the_runner_is_chosen_in_the_config(tmp_path):
    config = _write(tmp_path / "tasks.yaml", TASKS)
    ensemble = ["--execution.runner", "lightning_critical.sweep.FactorizationEnsembleRunner",
                "--execution.runner.initial_task", "target"]
    assert main(["sweep", "--config", config, "--out", str(tmp_path / "ensemble"), *ensemble]) == 0
    identity = json.loads((tmp_path / "ensemble" / "sweep.json").read_text())
    assert "FactorizationEnsembleRunner" in json.dumps(identity["description"]["runner"])
    table = pd.read_csv(tmp_path / "ensemble" / "results.csv")
    assert (table.status == "ok").all() and table.test_loss.notna().all()


@pytest.mark.parametrize("name", ["lightning", "vectorized", "auto"])
def test_a_runner_is_named_by_its_string_in_the_config(tmp_path, name):
    config = _write(tmp_path / "tasks.yaml", TASKS)
    _, execution, _ = read_config(["--config", config, "--execution.runner", name], str(tmp_path / "out"))
    assert execution.runner == name


def test_errors_record_or_raise(user_cwd, capsys):
    config = _write(user_cwd / "fails.yaml", """
        study:
          model: {class_path: mymodels.Net, init_args: {fail: true}}
          deficit: {class_path: lightning_critical.PathwayDeficit, init_args: {pathways: layer}}
          windows: [[0, 1]]
          metrics: [train_loss]
          trainer: {max_epochs: 1, accelerator: cpu}
        execution: {backend: serial, progress: false, preflight: false}
        """ + QUIET)
    assert main(["sweep", "--config", config, "--out", "recorded"]) == 1  # errors: record (the default)
    assert set(pd.read_csv(user_cwd / "recorded" / "results.csv").status) == {"failed"}
    with pytest.raises(Exception, match="this model cannot train"):
        main(["sweep", "--config", config, "--out", "raised", "--execution.errors", "raise"])


def test_fit_with_a_model_that_brings_its_own_dataloaders(user_cwd):
    config = _write(user_cwd / "fit.yaml", """
        trainer: {max_epochs: 1, accelerator: cpu, enable_progress_bar: false, logger: false}
        model: {class_path: mymodels.Net, init_args: {width: 3}}
        """)
    assert main(["fit", "--config", config, "--trainer.default_root_dir", str(user_cwd / "fit")]) == 0
    checkpoints = sorted(p.name for p in (user_cwd / "fit").rglob("*.ckpt"))
    assert checkpoints == ["epoch=0-step=4.ckpt"]  # 32 examples in batches of 8, without a datamodule


def test_the_bundled_sweep_configs_read(tmp_path):
    for name in ("digits_blur_sweep.yaml", "multipathway_sweep.yaml", "matrix_completion_switch_sweep.yaml"):
        study, execution, output = read_config(["--config", os.path.join(CONFIGS, name)])
        assert callable(study.model) and study.deficit is not None and len(study.windows) > 1, name
        assert isinstance(output.out, str) and output.out.startswith("outputs/"), name
    study, _, output = read_config(["--config", os.path.join(CONFIGS, "multipathway_sweep.yaml")])
    assert study.metrics == [lc.sweep.metrics.mode_strength_share] and output.plot == "share/b/0"


def test_digits_blur_sweep_config_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "digits"
    config = os.path.join(CONFIGS, "digits_blur_sweep.yaml")
    args = ["sweep", "--config", config, "--out", str(out), "--backend", "serial", "--study.seeds", "[0]",
            "--study.windows", "{removal: {ends: [0, 1], epochs_after: 1}}",
            "--study.datamodule.init_args.subset", "64", "--study.model.init_args.channels", "[4, 8]"]
    assert main(args) == 0
    table = pd.read_csv(out / "results.csv")
    assert sorted(zip(table.window_end.fillna(0), table.epochs, strict=True)) == [(0, 1), (1, 2)]
    assert (table.status == "ok").all() and (out / "summary.csv").exists()
    assert os.path.getsize(out / "critical_period.png") > 10_000
    assert "tensorboard --logdir" in capsys.readouterr().out
