"""The autouse fixture in conftest.py puts process-wide settings back after every test.

The first two tests run in file order: one changes everything, the next finds it all back.
"""

from __future__ import annotations

import logging
import os
import warnings

import torch
from conftest import GlobalState

NAMES = ("CUBLAS_WORKSPACE_CONFIG", "MASTER_PORT", "PL_SEED_WORKERS", "PL_HYGIENE_PROBE")
SEEN: dict = {}


def _settings() -> dict:
    return {
        "environ": {k: os.environ.get(k) for k in NAMES},
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "threads": torch.get_num_threads(),
        "level": logging.getLogger("pytorch_lightning").level,
        "filters": list(warnings.filters),
        "cwd": os.getcwd(),
    }


def _change_everything(tmp_path) -> None:
    torch.use_deterministic_algorithms(not torch.are_deterministic_algorithms_enabled())
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    os.environ["MASTER_PORT"] = "12910"
    os.environ["PL_SEED_WORKERS"] = "1"
    os.environ["PL_HYGIENE_PROBE"] = "set by a test"
    logging.getLogger("pytorch_lightning").setLevel(logging.getLogger("pytorch_lightning").level + 7)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    torch.set_num_threads(torch.get_num_threads() + 1)
    os.chdir(tmp_path)


def test_a_test_changes_the_global_state(tmp_path):
    SEEN.update(_settings())
    _change_everything(tmp_path)
    assert _settings() != SEEN


def test_the_next_test_finds_it_restored():
    assert SEEN, "runs after test_a_test_changes_the_global_state (file order)"
    assert _settings() == SEEN


def test_restore_puts_back_what_the_snapshot_saw(tmp_path):
    # Without relying on pytest's own per-test warnings restore: restore() alone does it.
    before = _settings()
    state = GlobalState()
    _change_everything(tmp_path)
    from lightning_critical.cli import _quiet_lightning

    _quiet_lightning()
    state.restore()
    assert _settings() == before
