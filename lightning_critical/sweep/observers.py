"""What reacts to a sweep's progress: the dispatcher calls every observer's ``on_*`` hooks, in order.

The dispatcher (:mod:`lightning_critical.sweep.dispatcher`) decides what runs when; observers
only react, one concept each, and each can be tested alone with fakes:

* :class:`StoreWriter` appends every row to ``<out>/results.jsonl`` the moment it is final;
* :class:`CheckpointCollector` deletes a branch checkpoint once every run that starts from it finished;
* :class:`LogStitcher` copies a parent's logs from before the branch step into a branched run's
  log directory once both finished (:func:`~lightning_critical.sweep.logs.copy_prefix`);
* :class:`Progress` shows a bar over the runs.

The hooks (:class:`Observer` does nothing in each, so a subclass overrides only what it needs):

* ``on_start(nodes)``: the runs of this call, as planned;
* ``on_retarget(old, new)``: a run starts from elsewhere than planned (``new`` replaces ``old``);
* ``on_run_end(node, record)``: a run ended (ok or failed; a refused branch is not an end), before
  the audit decides whether its row is final;
* ``on_row(record)``: a row is final (stored once, or again with its audit's verdict);
* ``on_requeue(node)``: a run already counted will train and be stored again;
* ``on_close()``: the dispatch is over (normally or not).

Example (an observer that counts rows)::

    >>> class Count(Observer):
    ...     rows = 0
    ...     def on_row(self, record):
    ...         self.rows += 1
    >>> counter = Count()
    >>> counter.on_row({"run_id": "a", "status": "ok"}); counter.on_close()
    >>> counter.rows
    1
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lightning_critical.sweep.logs import copy_prefix
from lightning_critical.sweep.plan import Node
from lightning_critical.sweep.store import Store


class Observer:
    """An observer of the dispatcher that ignores every event (subclasses override the hooks they need)."""

    def on_start(self, nodes: Sequence[Node]) -> None:
        """The runs of this call, as planned."""

    def on_retarget(self, old: Node, new: Node) -> None:
        """``new`` replaces ``old``: the run starts from another checkpoint, or from scratch."""

    def on_run_end(self, node: Node, record: Mapping[str, Any]) -> None:
        """``node`` ended (``record``: its row, not necessarily final: the audit may hold it)."""

    def on_row(self, record: Mapping[str, Any]) -> None:
        """``record`` is a final row."""

    def on_requeue(self, node: Node) -> None:
        """``node`` was counted already and will train and be stored again."""

    def on_close(self) -> None:
        """The dispatch is over."""


class StoreWriter(Observer):
    """Appends every final row to the store (``<out>/results.jsonl``), durable before the next event."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def on_row(self, record: Mapping[str, Any]) -> None:
        self.store.append(dict(record))


class CheckpointCollector(Observer):
    """Deletes a branch checkpoint once every run of this call that starts from it finished ok.

    Args:
        store: where the checkpoints are (``remove_checkpoint(key)``).
        keep: keep every checkpoint (``keep_checkpoints=True``).

    Example::

        >>> class Disk:
        ...     removed = []
        ...     def remove_checkpoint(self, key):
        ...         self.removed.append(key)
        >>> disk = Disk()
        >>> collector = CheckpointCollector(disk)
        >>> b, c = Node("b", 4, 2, "a", "k"), Node("c", 4, 2, "a", "k")
        >>> collector.on_start([Node("a", 4), b, c])
        >>> collector.on_run_end(b, {"status": "ok"}); disk.removed
        []
        >>> collector.on_run_end(c, {"status": "ok"}); disk.removed
        ['k']
    """

    def __init__(self, store: Any, keep: bool = False) -> None:
        self.store = store
        self.keep = keep
        self.consumers: dict[str, set[str]] = {}

    def on_start(self, nodes: Sequence[Node]) -> None:
        for node in nodes:
            if node.resume_key is not None:
                self.consumers.setdefault(node.resume_key, set()).add(node.run_id)

    def on_retarget(self, old: Node, new: Node) -> None:
        if old.resume_key is not None:
            self.consumers.get(old.resume_key, set()).discard(old.run_id)
        if new.resume_key is not None:
            self.consumers.setdefault(new.resume_key, set()).add(new.run_id)

    def on_run_end(self, node: Node, record: Mapping[str, Any]) -> None:
        if record.get("status") != "ok" or node.resume_key is None:
            return
        users = self.consumers.get(node.resume_key, set())
        users.discard(node.run_id)
        if not users and not self.keep:
            self.store.remove_checkpoint(node.resume_key)


class LogStitcher(Observer):
    """Gives a branched run its whole history: its parent's logs before the branch step, once both ended.

    Args:
        store: the sweep's store (the log directory of a parent from an earlier call is in its
            checkpoint's info).
        log_dirs: every run's log directory (``None``: no logs).
        copy: ``copy(parent_dir, child_dir, before_step)``, by default
            :func:`~lightning_critical.sweep.logs.copy_prefix`.
    """

    def __init__(self, store: Any, log_dirs: Mapping[str, str | None],
                 copy: Callable[[str | None, str | None, int], None] = copy_prefix) -> None:
        self.store = store
        self.log_dirs = log_dirs
        self.copy = copy
        self.ids: set[str] = set()  # runs of this call: a branched child waits for such a parent
        self.ended: set[str] = set()
        self.waiting: dict[str, tuple[Node, Mapping[str, Any]]] = {}  # child run id -> (child, its record)

    def on_start(self, nodes: Sequence[Node]) -> None:
        self.ids.update(n.run_id for n in nodes)

    def on_requeue(self, node: Node) -> None:
        self.ids.add(node.run_id)

    def on_run_end(self, node: Node, record: Mapping[str, Any]) -> None:
        if not _branched(node):
            self.waiting.pop(node.run_id, None)  # it trained again from scratch: nothing to copy in any more
        elif node.parent in self.ids and node.parent not in self.ended:
            self.waiting[node.run_id] = (node, record)
            return
        self._stitch(node, record)

    def on_row(self, record: Mapping[str, Any]) -> None:
        if not record.get("branch_epoch"):  # e.g. an audit adopted the from-scratch twin's logs
            self.waiting.pop(str(record.get("run_id")), None)

    def _stitch(self, node: Node, record: Mapping[str, Any]) -> None:
        if _branched(node) and record.get("log_dir"):
            source = self.log_dirs.get(node.parent or "") if node.parent in self.ids else None
            if source is None and node.resume_key is not None:
                source = self.store.checkpoint_info(node.resume_key).get("log_dir")
            try:
                self.copy(source, record["log_dir"], int(record.get("branch_step") or 0))
            except Exception as err:
                print(f"lightning-critical: could not copy the branch prefix logs into {record['log_dir']}: {err}",
                      file=sys.stderr)
        self.ended.add(node.run_id)
        for child_id in [c for c, (child, _) in self.waiting.items() if child.parent == node.run_id]:
            self._stitch(*self.waiting.pop(child_id))


def _branched(node: Node) -> bool:
    return node.parent is not None and node.branch_epoch > 0


class Progress(Observer):
    """A progress bar over the runs (``show=None``: when stderr is a terminal), with the count of failed rows.

    ``make_bar(total)`` builds the bar (default: ``tqdm``); it needs ``total``, ``update``,
    ``set_postfix_str`` and ``close``.
    """

    def __init__(self, show: bool | None = None, make_bar: Callable[[int], Any] | None = None) -> None:
        self.show = sys.stderr.isatty() if show is None else bool(show)
        self.make_bar = make_bar or _tqdm
        self.bar: Any = None
        self.status: dict[str, str] = {}

    def on_start(self, nodes: Sequence[Node]) -> None:
        if self.show and nodes:
            self.bar = self.make_bar(len(nodes))

    def on_requeue(self, node: Node) -> None:
        if self.bar is not None:
            self.bar.total += 1

    def on_row(self, record: Mapping[str, Any]) -> None:
        self.status[str(record.get("run_id"))] = str(record.get("status"))
        if self.bar is not None:
            failed = sum(1 for s in self.status.values() if s != "ok")
            self.bar.set_postfix_str(f"failed={failed}" if failed else "", refresh=False)
            self.bar.update(1)

    def on_close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _tqdm(total: int) -> Any:
    from tqdm.auto import tqdm  # type: ignore[import-untyped]  # no stubs installed; the bar is only used as Any

    return tqdm(total=total, desc="sweep", unit="run", dynamic_ncols=True)


def standard_observers(store: Store, log_dirs: Mapping[str, str | None], *, progress: bool | None,
                       keep_checkpoints: bool) -> list[Observer]:
    """The observers of every sweep, in the order they react: store, logs, checkpoints, progress.

    Example::

        >>> import tempfile
        >>> [type(o).__name__ for o in standard_observers(Store(tempfile.mkdtemp()), {}, progress=False,
        ...                                                 keep_checkpoints=False)]
        ['StoreWriter', 'LogStitcher', 'CheckpointCollector', 'Progress']
    """
    # the stitcher reads a finished parent's checkpoint info before the collector deletes that checkpoint
    return [StoreWriter(store), LogStitcher(store, log_dirs), CheckpointCollector(store, keep_checkpoints),
            Progress(progress)]
