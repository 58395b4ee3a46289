"""Every public callback has a readable repr showing its key settings."""

from __future__ import annotations

import pytest
import torch

import lightning_critical as lc
from lightning_critical.deficits.base import WindowedDeficit


def shift(batch):
    return batch


@pytest.mark.parametrize(
    "callback, expected",
    [
        (lc.PathwayDeficit("a", window=(0, 10), mode="silence"),
         "PathwayDeficit(pathways='a', window=[0, 10) epochs, mode='silence')"),
        (lc.PathwayDeficit(["a", "b*"], window=(5, 50, "step"), mode="noise", noise_std=0.5, seed=2, name="n"),
         "PathwayDeficit(pathways=['a', 'b*'], window=[5, 50) steps, mode='noise', noise_std=0.5, seed=2, name='n')"),
        (lc.ModeDeficit("a", modes=[1, 2], window=(0, None)),
         "ModeDeficit(pathway='a', modes=[1, 2], window=[0, end) epochs)"),
        (lc.ModeDeficit("a", modes=0, window=(0, 3), task_basis=(torch.eye(3), torch.ones(3), torch.eye(3))),
         "ModeDeficit(pathway='a', modes=[0], window=[0, 3) epochs, task_basis=given (rank 3))"),
        (lc.InputDeficit("blur", window=(0, 40), factor=4),
         "InputDeficit(transform='blur', window=[0, 40) epochs, factor=4)"),
        (lc.InputDeficit("noise", window=(0, 4), input_key=1, noise_std=0.1),
         "InputDeficit(transform='noise', window=[0, 4) epochs, noise_std=0.1, input_key=1)"),
        (lc.InputDeficit(shift, window=(0, 4)), "InputDeficit(transform=shift, window=[0, 4) epochs)"),
        (lc.TaskSwitch({3: "target"}), "TaskSwitch(schedule={3: 'target'}, unit='epoch')"),
        (lc.TaskSwitch({0: "a", 100: "b"}, unit="step", initial="a"),
         "TaskSwitch(schedule={0: 'a', 100: 'b'}, unit='step', initial='a')"),
        (lc.FisherMonitor(), "FisherMonitor(every_n_epochs=1, num_batches=2, labels='sample', "
                             "history_file='fisher_history.csv')"),
        (lc.FisherMonitor(inputs=shift, targets="enc*", labels="expected", history_file=None),
         "FisherMonitor(every_n_epochs=1, num_batches=2, labels='expected', targets=['enc*'], inputs=shift, "
         "history_file=None)"),
        (lc.SpectralMonitor(targets="maps", every_n_steps=10, metrics=("singular_values",)),
         "SpectralMonitor(targets='maps', every_n_steps=10, metrics=('singular_values',), "
         "history_file='spectral_history.csv')"),
        (lc.SpectralMonitor(targets=["a.*"], exclude="a.bias", top_k=3, metrics=("spectral_norm",)),
         "SpectralMonitor(targets=['a.*'], every_n_steps=LogSpaced(per_octave=2), metrics=('spectral_norm',), "
         "exclude=['a.bias'], top_k=3, history_file='spectral_history.csv')"),
        (lc.BatchSpec(input_key="x"), "BatchSpec(input_key='x', target_key=None, inputs=None)"),
        (lc.BatchSpec(inputs=shift, target_key=2), "BatchSpec(input_key=None, target_key=2, inputs=shift)"),
    ],
)
def test_repr(callback, expected):
    assert repr(callback) == expected


def test_a_user_deficit_gets_its_window_and_can_add_settings():
    class HalfGain(WindowedDeficit):
        def __init__(self, gain, window):
            super().__init__(window)
            self.gain = gain

    assert repr(HalfGain(0.5, (0, 3))) == "HalfGain(window=[0, 3) epochs)"

    class Shown(HalfGain):
        def repr_settings(self):
            return {"gain": repr(self.gain), **super().repr_settings()}

    assert repr(Shown(0.5, (0, 3))) == "Shown(gain=0.5, window=[0, 3) epochs)"
