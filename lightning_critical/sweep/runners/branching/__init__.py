"""Branching: how the Lightning runner starts a run from another run's checkpoint, exactly or not at all.

Modules: ``checkpoint`` (the :class:`~.checkpoint.Branching` callback every run carries),
``state`` (what a branched run inherits: :class:`~.state.Lineage`), ``compare`` (fingerprints
of what a run configures for itself), ``digest`` (what no checkpoint holds, compared),
``rngs`` (generator objects found and carried), ``length`` (reads of the run's length).

Design decisions that make a branched run bitwise equal to the same run trained from scratch
(on CPU), or refuse it (:class:`~lightning_critical.sweep.runners.base.BranchRefused`: the
run's record says ``status="refused"`` with the reason, and the scheduler trains the run from
scratch):

* **Where branch checkpoints are taken.** :class:`Branching` is a Lightning ``Checkpoint``
  callback (so Lightning runs it after every other callback and after the LightningModule's
  ``on_train_epoch_end``, like ``ModelCheckpoint``) and saves with ``trainer.save_checkpoint``
  in ``on_train_epoch_end`` of the epoch before the branch, after that epoch's validation.
  Lightning resumes such a checkpoint at the start of the next epoch (model, optimizers,
  schedulers, loop counters, every callback's ``state_dict``). A run about to stop
  (``trainer.should_stop``, e.g. a user ``EarlyStopping``) writes none: its children start
  from an earlier branch or from scratch. Files are written to a temporary name and renamed,
  so a checkpoint that exists is complete.
* **Global random states.** ``Branching.state_dict`` stores the torch (CPU and CUDA), numpy
  and Python states as tensors and plain values; ``load_state_dict`` restores them while
  Lightning restores the checkpoint, before the next epoch's data iterator is created.
  Hooks that run once per ``fit`` (``on_fit_start``, ``on_train_start``) must not draw from
  any generator for the equality to hold (a draw from a carried generator there is refused).
* **Everything else the parent carries across the branch point**
  (:mod:`~lightning_critical.sweep.runners.branching.state`): generator objects of the model,
  datamodule, callbacks, deficits and train / val loaders (restored before their first draw),
  plain attributes the parent changed during the prefix, the files a ``ModelCheckpoint``
  tracks. Refused: state it cannot carry (a callback without ``state_dict`` whose tensors
  changed, persistent loader workers, a rebuilt loader holding a generator, ``ReduceLROnPlateau``).
* **Branch compatibility.** Each run fingerprints what it configures for itself (trainer
  limits, attributes of model, datamodule and callbacks before any restore, optimizers and
  schedulers as ``configure_optimizers`` built them, loader settings); a child whose
  fingerprint differs from its parent's (a schedule built from ``max_epochs``) is refused
  before its first step.
* **Whatever is not carried is compared** (:mod:`~lightning_critical.sweep.runners.branching.digest`):
  the parent digests what no checkpoint holds (non-persistent buffers, tensor attributes of
  any size, ``hparams`` entries, plain attributes including private names, of the model and its
  submodules, the datamodule and user callbacks) at the branch point; the child digests the same
  after restoring and after its module's ``on_train_start`` (before any epoch hook and step), and
  is refused naming the entries that differ (``model._epochs_done``, ``model.mask (tensor)``).
* **Runs of different lengths**: the sweep's ``Trainer`` notes reads of ``max_epochs`` /
  ``estimated_stepping_batches`` by user code (:mod:`~lightning_critical.sweep.runners.branching.length`);
  a child of another length than a parent whose prefix read them, or whose parent changed its
  own ``fit_loop.max_epochs``, is refused. A child that fails while resuming its checkpoint
  (before its first step: e.g. a module pruned during the prefix) is refused, not failed.
"""
