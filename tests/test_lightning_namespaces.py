"""The package under both Lightning namespaces: `lightning.pytorch` and `pytorch_lightning`.

The rest of the suite runs against whichever namespace the package is bound to
(`LIGHTNING_CRITICAL_NAMESPACE`, see `make test-lightning`); these tests cross the two.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import read_tensorboard
from torch import nn

import lightning_critical as lc
from lightning_critical import _namespace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OTHER = {"lightning.pytorch": "pytorch_lightning", "pytorch_lightning": "lightning.pytorch"}[_namespace.NAME]


def _python(code: str, env: dict[str, str] | None = None, cwd: str = ROOT) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != _namespace.ENV}
    full_env["PYTHONPATH"] = os.pathsep.join([ROOT, cwd, full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=300)


@pytest.mark.parametrize("user", ["lightning", "pytorch_lightning"])
def test_package_imports_only_the_users_namespace(user):
    # `import lightning as L` users should not pay for a second copy of Lightning (+74 MB, +1 s).
    result = _python(f"""
        import json, sys
        import {user}
        import lightning_critical as lc
        names = [lc.PathwayDeficit, lc.InputDeficit, lc.SpectralMonitor, lc.FisherMonitor, lc.TaskSwitch,
                 lc.models.MultiPathwayLinearNet, lc.data.HierarchicalDataModule, lc.sweep.run, lc.experiments]
        from lightning_critical import _namespace
        print(json.dumps({{"bound": _namespace.NAME, "old": "pytorch_lightning" in sys.modules,
                          "new": "lightning" in sys.modules,
                          "base": [c for c in lc.PathwayDeficit.__mro__ if c.__name__ == "Callback"][0].__module__}}))
    """)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    if user == "lightning":
        assert seen == {"bound": "lightning.pytorch", "old": False, "new": True,
                        "base": "lightning.pytorch.callbacks.callback"}
    else:
        assert seen == {"bound": "pytorch_lightning", "old": True, "new": False,
                        "base": "pytorch_lightning.callbacks.callback"}


def test_bare_import_loads_no_lightning():
    result = _python("""
        import sys
        import lightning_critical
        print(sorted(m for m in ("lightning", "pytorch_lightning", "torch") if m in sys.modules))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_namespace_environment_variable_is_checked():
    result = _python("import lightning_critical as lc; lc.PathwayDeficit", env={_namespace.ENV: "lightnin"})
    assert result.returncode != 0
    assert "LIGHTNING_CRITICAL_NAMESPACE='lightnin'" in result.stderr
    assert "pytorch_lightning" in result.stderr and "lightning.pytorch" in result.stderr


def test_bundled_model_and_callbacks_train_under_the_forced_namespace(tmp_path):
    for name in ("lightning", "pytorch_lightning"):
        result = _python("""
            import lightning_critical as lc
            from lightning_critical._namespace import pl
            model = lc.models.MultiPathwayLinearNet(depth=2, lr=0.05, seed=0)
            trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False,
                                 enable_progress_bar=False, enable_model_summary=False,
                                 callbacks=[lc.PathwayDeficit("b", window=(0, 1))])
            trainer.fit(model, datamodule=lc.data.HierarchicalDataModule(seed=0))
            print(pl.__name__, trainer.global_step)
        """, env={_namespace.ENV: name})
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.split()[-2] == ("lightning.pytorch" if name == "lightning" else "pytorch_lightning")


def test_callbacks_drop_into_a_script_written_against_the_other_namespace(tmp_path):
    # The report: with the other namespace's TensorBoardLogger every histogram and the
    # custom-scalars layout were dropped silently.
    other = importlib.import_module(OTHER)

    class Net(other.LightningModule):  # type: ignore[name-defined]  # chosen at run time
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 3, bias=False)
            self.b = nn.Linear(4, 3, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            g = torch.Generator().manual_seed(0)
            data = torch.utils.data.TensorDataset(torch.randn(32, 4, generator=g), torch.randn(32, 3, generator=g))
            return torch.utils.data.DataLoader(data, batch_size=8)

    model = Net()
    logger = other.loggers.TensorBoardLogger(str(tmp_path), name="run", version="")
    deficit = lc.PathwayDeficit("b", mode="freeze", window=(0, 2))
    monitor = lc.SpectralMonitor(every_n_steps=4)
    trainer = other.Trainer(max_epochs=3, logger=logger, callbacks=[deficit, monitor], enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model)
    events = read_tensorboard(logger.log_dir)
    tags = events.Tags()
    assert {"singular_values/a.weight", "singular_values/b.weight"} <= set(tags["histograms"])
    assert any(tag.endswith("custom_scalars__config__") for tag in tags["tensors"]), tags["tensors"]
    assert any(tag.startswith("deficit/") for tag in tags["scalars"])
    assert all(len(m._forward_pre_hooks) == 0 for m in model.modules())


# A user's module written against `lightning`, imported by the subprocess tests below.
USER_MODULE = textwrap.dedent("""
    import lightning as L
    import torch
    from torch import nn


    class Net(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = ((self.a(x) - y) ** 2).mean()
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            g = torch.Generator().manual_seed(0)
            data = torch.utils.data.TensorDataset(torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g))
            return torch.utils.data.DataLoader(data, batch_size=4)


    class Data(L.LightningDataModule):
        def train_dataloader(self):
            return Net().train_dataloader()


    def make(seed):
        return Net()
    """)


def test_cli_fit_accepts_a_module_of_the_lightning_package(tmp_path):
    # `lightning-critical fit` rejected an `L.LightningModule` ("does not correspond to a
    # subclass of LightningModule"): the package now binds to the namespace of the user's classes.
    (tmp_path / "user_net.py").write_text(USER_MODULE)
    result = _python("""
        import sys
        from lightning_critical.cli import main
        code = main(["fit", "--model", "user_net.Net", "--data", "user_net.Data", "--trainer.max_epochs", "1",
                     "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                     "--trainer.callbacks+=lightning_critical.SpectralMonitor",
                     "--trainer.callbacks.every_n_steps=1"])
        from lightning_critical import _namespace
        print("exit", code, _namespace.NAME, "pytorch_lightning" in sys.modules)
    """, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "exit 0 lightning.pytorch False"


def test_choose_rules():
    assert _namespace.choose(environ={}, loaded={"lightning"}) == "lightning.pytorch"
    assert _namespace.choose(environ={}, loaded={"pytorch_lightning"}) == "pytorch_lightning"
    assert _namespace.choose(environ={}, loaded={"lightning", "pytorch_lightning"}) == "pytorch_lightning"
    assert _namespace.choose(environ={_namespace.ENV: "pytorch-lightning"}, loaded={"lightning"}) == "pytorch_lightning"
    with pytest.raises(ValueError, match=rf"{_namespace.ENV}='pl' is not valid; choose one of \('lightning', "):
        _namespace.choose(environ={_namespace.ENV: "pl"}, loaded=set())


def test_namespace_of_and_instance_of():
    other = importlib.import_module(OTHER)
    logger = other.loggers.CSVLogger("unused")
    assert _namespace.namespace_of(logger) == OTHER
    assert _namespace.instance_of(logger, "loggers.CSVLogger")
    assert not _namespace.instance_of(logger, "loggers.TensorBoardLogger")
    assert _namespace.namespace_of(lc.SpectralMonitor()) == _namespace.NAME
    assert _namespace.namespace_of(object()) is None


# The suite's Lightning-facing files, run again with the package bound to the other namespace.
# (Tests that run the examples are left out: the examples are user scripts written against one.)
LIGHTNING_FACING = [
    "test_deficits.py", "test_monitor.py", "test_tasks.py", "test_history.py", "test_lightning_adapter.py",
    "test_input_deficit.py", "test_multipathway_model.py", "test_probe_leaves_training_alone.py",
    "test_fisher.py", "test_sweep_outputs.py", "test_tensorboard_views.py", "test_run_plots.py", "test_cadence.py",
]


def test_lightning_facing_suite_passes_under_the_other_namespace():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env[_namespace.ENV] = OTHER
    files = [os.path.join(ROOT, "tests", name) for name in LIGHTNING_FACING]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "not example",
                             *files], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    tail = result.stdout[-3000:]
    assert result.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail


def test_sweep_names_a_model_of_the_other_namespace(tmp_path):
    other = importlib.import_module(OTHER)

    def make_model(seed: int):
        return other.LightningModule()

    with pytest.raises(TypeError, match=f"bound to {_namespace.NAME}") as err:
        lc.sweep.run(make_model, None, deficit=lc.PathwayDeficit("x", window=(0, 1)), windows=[(0, 1)],
                     seeds=[0], metrics="loss", trainer={"max_epochs": 1}, out=str(tmp_path), backend="serial")
    assert _namespace.ENV in str(err.value)


def test_package_and_tests_import_lightning_only_through_the_binding():
    # A direct `import pytorch_lightning` would load a second Lightning for `lightning` users and
    # make the other-namespace pass above test the wrong classes.
    pattern = re.compile(r"^\s*(import|from)\s+(pytorch_lightning|lightning)(\.|\s|$)", re.M)
    allowed = {os.path.join("lightning_critical", "_namespace.py"),
               os.path.join("tests", "test_lightning_namespaces.py")}
    offenders = []
    for folder in ("lightning_critical", "tests"):
        for dirpath, _, names in os.walk(os.path.join(ROOT, folder)):
            for name in names:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, ROOT)
                if name.endswith(".py") and rel not in allowed and pattern.search(open(path).read()):
                    offenders.append(rel)
    assert offenders == []


def test_every_public_submodule_is_an_attribute_after_a_bare_import():
    result = _python("""
        import lightning_critical as lc
        print(lc.cadence.LogSpaced.__name__, lc.spectral.analyze.__name__, lc.spectral.esd.__name__,
              lc.BatchSpec.__name__)
        try:
            lc.no_such_thing
        except AttributeError as err:
            print(err)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["LogSpaced analyze lightning_critical.spectral.esd BatchSpec",
                                          "module 'lightning_critical' has no attribute 'no_such_thing'"]


def test_sweep_workers_in_fresh_interpreters_bind_like_the_driver(tmp_path):
    # Workers that do not re-import the user's script (Ray, submitit) imported the sweep package,
    # and so bound to the default namespace, before unpickling a `lightning` model: every run failed.
    (tmp_path / "user_net.py").write_text(USER_MODULE)
    result = _python("""
        import concurrent.futures as cf, os, pickle, subprocess, sys, tempfile
        import lightning
        import user_net
        import lightning_critical as lc

        class FreshInterpreters:
            def submit(self, fn, *args):
                folder = tempfile.mkdtemp()
                with open(os.path.join(folder, "in"), "wb") as fh:
                    pickle.dump(args, fh)
                code = (f"import pickle; from {fn.__module__} import {fn.__name__} as fn; "
                        f"r = fn(*pickle.load(open({folder + '/in'!r}, 'rb'))); "
                        f"pickle.dump(r, open({folder + '/out'!r}, 'wb'))")
                subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
                future = cf.Future()
                future.set_result(pickle.load(open(os.path.join(folder, "out"), "rb")))
                return future

            def shutdown(self, wait=True, cancel_futures=False):
                pass

        table = lc.sweep.run(user_net.make, None, deficit=lc.PathwayDeficit("a", window=(0, 1)), windows=[(0, 1)],
                             seeds=[0], metrics="loss", trainer={"max_epochs": 2}, out=tempfile.mkdtemp(),
                             backend=FreshInterpreters(), tensorboard=False, plot=False, progress=False)
        print(table["status"].tolist(), table["error"].dropna().tolist()[:1],
              os.environ.get("LIGHTNING_CRITICAL_NAMESPACE"))
    """, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "['ok', 'ok'] [] None"  # and the driver's environment is restored
