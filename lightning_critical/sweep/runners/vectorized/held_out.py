"""The test stage of a finished member: what ``trainer.test(model)`` after ``fit`` gives its run (``test=True``).

The default runner calls ``trainer.test(model, datamodule=...)`` after a run's fit; Lightning
then calls the datamodule's ``prepare_data`` and ``setup("test")`` and the module's
``setup("test")``, and runs ``test_step`` over the test loader in evaluation mode with the
final weights. A member does the same when it leaves the stack: under its own random states,
its own module's ``test_step`` (its parameters alias its row; its own attributes), no ``vmap``, so its
test values equal the run's bitwise, for convolutions too. A module that overrides a test hook
the loop does not call is refused before training (:data:`TEST_HOOKS`).

Example::

    >>> import torch

from lightning_critical._namespace import pl
    >>> class Net(pl.LightningModule):
    ...     def test_step(self, batch, batch_idx):
    ...         pass
    ...     def on_test_epoch_end(self) -> None:
    ...         pass
    >>> try:
    ...     check_test(Net())
    ... except VectorizedRefused as err:
    ...     print(err.construct[:60])
    test=True with Net, which overrides the test hooks ['on_test
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import torch

from lightning_critical._namespace import pl
from lightning_critical.sweep.runners.vectorized.checks import VectorizedRefused
from lightning_critical.sweep.runners.vectorized.members import Member, TrainerView
from lightning_critical.sweep.runners.vectorized.stack import Stack
from lightning_critical.sweep.runners.vectorized.tensors import Tensors, batch_size_of

TEST_HOOKS: tuple[str, ...] = (
    "on_test_start", "on_test_end", "on_test_epoch_start", "on_test_epoch_end", "on_test_batch_start",
    "on_test_batch_end", "on_test_model_eval", "on_test_model_train", "test_dataloader_end",
)
"""Module hooks of Lightning's test loop that a member's test stage does not call (refused when overridden)."""


def check_test(model: Any) -> None:
    """Refuse, before training, a module whose test stage the vectorized runner cannot replay."""
    name = type(model).__name__
    if type(model).test_step is pl.LightningModule.test_step:
        raise VectorizedRefused(f"test=True with {name}, which has no test_step")
    base = pl.LightningModule
    hooks = [h for h in TEST_HOOKS if hasattr(base, h) and getattr(type(model), h) is not getattr(base, h)]
    if hooks:
        raise VectorizedRefused(f"test=True with {name}, which overrides the test hooks {hooks} (the vectorized "
                                "test stage calls only test_step)")


def held_out_steps(stack: Stack, member: Member) -> Iterator[tuple[Tensors, int]]:
    """The member's logged values of each test batch (shape ``(1,)``) and the batch size Lightning infers."""
    loader = _test_loader(member)
    feed = member.feed(loader)
    takes_index = len(inspect.signature(member.model.test_step).parameters) >= 2
    for batch_idx in range(len(loader)):
        batch = member.transfer(feed.next(), stack.device)  # the datamodule's transfer hooks, as Lightning
        yield _own_test_step(stack, member.model, batch, batch_idx, takes_index), batch_size_of(batch)


def _own_test_step(stack: Stack, model: Any, batch: Any, batch_idx: int, takes_index: bool) -> Tensors:
    """``test_step`` of the member's own module (its parameters and buffers alias its rows; its own attributes,
    e.g. set in ``setup("test")``), in evaluation mode without gradients, its ``self.log`` collected."""
    own = {name: vars(model)[name] for name in ("log", "log_dict") if name in vars(model)}
    model.log, model.log_dict, model._trainer = stack.logs.log, stack.logs.log_dict, stack.view
    model.eval()
    stack.logs.start("test")
    try:
        with torch.no_grad():
            model.test_step(batch, batch_idx) if takes_index else model.test_step(batch)
        return {name: value.reshape(1) for name, value in stack.logs.take().items()}
    finally:
        model.train()
        model._trainer = None
        for name in ("log", "log_dict"):
            vars(model).pop(name, None)
        vars(model).update(own)


def _test_loader(member: Member) -> Any:
    """Lightning's ``trainer.test`` set-up (prepare_data, setup("test") of the datamodule, then the module)."""
    datamodule, model = member.datamodule, member.model
    before = [(name, p.data_ptr()) for name, p in model.named_parameters()]
    with member.drawing():
        if datamodule is not None:
            datamodule.prepare_data()
            datamodule.setup("test")
        model._trainer = TrainerView(datamodule=datamodule)
        try:
            model.setup("test")
        finally:
            model._trainer = None
        loader = (datamodule if datamodule is not None else model).test_dataloader()
    if [(name, p.data_ptr()) for name, p in model.named_parameters()] != before:
        raise RuntimeError(f"{type(model).__name__}.setup('test') replaced the module's parameters after training; "
                           "the vectorized runner tests the trained rows: use the default runner (runner=None)")
    return loader
