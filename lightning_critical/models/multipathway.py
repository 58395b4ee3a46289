"""MultiPathwayLinearNet: parallel deep (linear) pathways whose outputs are summed."""

from __future__ import annotations

import numbers
import string
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn

from lightning_critical._checks import check_choice, check_float, check_int
from lightning_critical._namespace import pl
from lightning_critical.protocols import TaskBasis, find_task_basis

INITS: tuple[str, ...] = ("aligned", "gaussian")
INIT_NOISE_DRAWS: tuple[str, ...] = ("per_unit", "per_mode")
NONLINEARITIES: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


def _pathway_names(pathways: int | Sequence[str]) -> list[str]:
    if isinstance(pathways, numbers.Integral) and not isinstance(pathways, bool):  # a count: one letter each
        return list(string.ascii_lowercase[: check_int("pathways", pathways, high=26)])
    names: list[Any] = list(pathways) if isinstance(pathways, Iterable) else []  # True, 2.0: refused below
    if not names or len(set(names)) != len(names) or not all(isinstance(n, str) and n.isidentifier() for n in names):
        raise ValueError(f"pathways={pathways!r} must be a count or distinct identifier names like ['a', 'b'].")
    return names


class _Hyperparameters(Protocol):
    """What ``self.hparams`` holds (an ``AttributeDict``, read by attribute): the constructor's arguments.

    Read through ``_hp`` rather than copied into attributes, so that changes to ``hparams``
    (a learning-rate finder, a user) still reach ``configure_optimizers`` as before.
    """

    in_features: int
    out_features: int
    depth: int
    width: int
    lr: float
    momentum: float
    init_scale: float
    init_noise: float
    independent_noise: bool
    init_noise_draw: str
    nonlinearity: str | None
    seed: int


class MultiPathwayLinearNet(pl.LightningModule):
    """``P`` parallel pathways of ``depth`` bias-free layers; the output is their sum.

    Implements the documented protocols: ``pathways`` (an ``nn.ModuleDict`` name -> pathway),
    ``end_to_end_maps()`` (each pathway's ``out x in`` map) and ``task_basis()``.
    Trained with full-batch plain SGD on ``0.5 * sum of squared errors`` (the paper's loss).

    ``init="aligned"`` (default) is the paper's balanced, task-aligned initialisation: with the
    task basis ``Y = U S V^T`` (from ``task_basis=`` or the datamodule's ``task_basis()`` at
    ``setup``), mode ``a`` of every pathway starts with strength ``K_a(0)``, split evenly across
    layers (``K^(1/D)`` per layer) through random orthonormal hidden bases. Gradient descent
    then follows :func:`lightning_critical.theory.pathway_dynamics` exactly (linear case).
    How the initial strengths are drawn (``init_noise_draw``):

    * ``"per_unit"`` (default, the official multipath code of Kleinman, Achille & Soatto): one
      value ``init_scale * (1 + init_noise * z)``, ``z ~ N(0, 1)``, per hidden unit (``width``
      of them, at least one per mode; the official scripts always draw 100, their width), in
      float32, sorted in decreasing order; mode ``a`` gets the ``a``-th largest. With
      ``width=100`` and a given ``seed`` these are the very values the official scripts draw
      after ``torch.manual_seed(seed)``. The modes start above ``init_scale`` (the top of
      ``width`` draws) and close together.
    * ``"per_mode"`` (this package's earlier draw): one float64 value per mode, sorted; the
      modes start around ``init_scale`` and further apart.

    The draw is shared by all pathways, as in the paper (``independent_noise=True``: one draw
    per pathway). Unlike the official code, the hidden layers carry only the task's modes (the
    other ``width - modes`` values are not placed on hidden directions the task never reaches);
    this keeps every layer balanced and changes neither the maps nor the linear dynamics.
    ``init="gaussian"``: i.i.d. ``N(0, init_scale^(2/D) / fan_in)`` entries.

    Args:
        in_features, out_features: task input / output sizes (default 8 items, 15 features).
        depth: layers per pathway. width: hidden width.
        pathways: number of pathways or their names (default ``("a", "b")``).
        lr: SGD learning rate. momentum: SGD momentum (0 = the paper's plain SGD).
        init, init_scale, init_noise, init_noise_draw, independent_noise: see above.
        nonlinearity: ``None``, ``"tanh"`` or ``"relu"`` between layers (not after the last).
        task_basis: ``(U, S, V)`` for the aligned init (else taken from the datamodule).
        seed: seed of the initialisation.

    Example::

        >>> import lightning_critical as lc
        >>> dm = lc.data.HierarchicalDataModule()
        >>> net = lc.models.MultiPathwayLinearNet(depth=2, width=16, task_basis=dm.task_basis())
        >>> {k: tuple(v.shape) for k, v in net.end_to_end_maps().items()}
        {'a': (15, 8), 'b': (15, 8)}
    """

    initialized: Tensor  # buffer: whether the weights hold an initialisation (saved in checkpoints)

    def __init__(
        self,
        in_features: int = 8,
        out_features: int = 15,
        depth: int = 4,
        width: int = 100,
        pathways: int | Sequence[str] = ("a", "b"),
        lr: float = 0.01,
        momentum: float = 0.0,
        init: str = "aligned",
        init_scale: float = 0.01,
        init_noise: float = 0.1,
        independent_noise: bool = False,
        init_noise_draw: str = "per_unit",
        nonlinearity: str | None = None,
        task_basis: TaskBasis | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_features", in_features), ("out_features", out_features), ("depth", depth), ("width", width)
        ):
            check_int(name, value)
        check_choice("init", init, INITS)
        check_choice("init_noise_draw", init_noise_draw, INIT_NOISE_DRAWS)
        if nonlinearity is not None:
            check_choice("nonlinearity", nonlinearity, tuple(NONLINEARITIES), extra=" or None")
        check_float("lr", lr, low=0, low_inclusive=False)
        check_float("init_scale", init_scale, low=0, low_inclusive=False)
        self.save_hyperparameters(ignore=["task_basis"])
        names = _pathway_names(pathways)
        self.pathways = nn.ModuleDict({n: self._make_pathway() for n in names})
        self._basis: TaskBasis | None = None
        self.register_buffer("initialized", torch.tensor(False), persistent=True)
        if init == "gaussian":
            self._gaussian_init()
        elif task_basis is not None:
            self.initialize_aligned(task_basis)

    @property
    def _hp(self) -> _Hyperparameters:
        return cast(_Hyperparameters, self.hparams)

    def _make_pathway(self) -> nn.Sequential:
        hp = self._hp
        sizes = [hp.in_features] + [hp.width] * (hp.depth - 1) + [hp.out_features]
        layers: list[nn.Module] = []
        for i in range(hp.depth):
            layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=False))
            if hp.nonlinearity is not None and i < hp.depth - 1:
                layers.append(NONLINEARITIES[hp.nonlinearity]())
        return nn.Sequential(*layers)

    def _linears(self, name: str) -> list[nn.Linear]:
        return [m for m in self.pathways[name].children() if isinstance(m, nn.Linear)]

    def _gaussian_init(self) -> None:
        gen = torch.Generator().manual_seed(self._hp.seed)
        per_layer = self._hp.init_scale ** (1.0 / self._hp.depth)
        with torch.no_grad():
            for name in self.pathways:
                for layer in self._linears(name):
                    std = per_layer / layer.in_features**0.5
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * std)
        self.initialized.fill_(True)

    def initialize_aligned(self, task_basis: TaskBasis) -> None:
        """Balanced, task-aligned initialisation from ``(U, S, V)`` (see the class docstring)."""
        u, s, v = (t.detach().double().cpu() for t in task_basis)
        hp = self._hp
        if u.shape[0] != hp.out_features or v.shape[0] != hp.in_features:
            raise ValueError(
                f"task basis with U {tuple(u.shape)} and V {tuple(v.shape)} does not fit the network "
                f"(out_features={hp.out_features}, in_features={hp.in_features})."
            )
        rank = u.shape[1]
        if hp.depth > 1 and hp.width < rank:
            raise ValueError(
                f"width={hp.width} is smaller than the task's {rank} modes; aligned init needs width >= {rank}."
            )
        gen = torch.Generator().manual_seed(hp.seed)
        k0 = self._initial_strengths(gen, len(self.pathways), rank)
        if torch.any(k0 <= 0):
            raise ValueError(
                f"init_noise={hp.init_noise} gave a non-positive initial strength; use a smaller init_noise."
            )
        with torch.no_grad():
            for p, name in enumerate(self.pathways):
                q = torch.diag(k0[p] ** (1.0 / hp.depth))
                left = v  # input-side basis of the current layer
                layers = self._linears(name)
                for i, layer in enumerate(layers):
                    if i == len(layers) - 1:
                        right = u
                    else:
                        right, _ = torch.linalg.qr(torch.randn((hp.width, rank), generator=gen, dtype=torch.float64))
                    layer.weight.copy_((right @ q @ left.T).to(layer.weight.dtype))
                    left = right
        self._basis = (u.float(), s.float(), v.float())
        self.initialized.fill_(True)

    def _initial_strengths(self, gen: torch.Generator, n_paths: int, rank: int) -> Tensor:
        """``K(0)`` of shape ``(n_paths, rank)`` in float64, in decreasing order along each row."""
        hp = self._hp
        draws = n_paths if hp.independent_noise else 1
        if hp.init_noise_draw == "per_unit":
            # The official script: float32 draws, one per hidden unit, in this order of operations.
            z = torch.randn((draws, max(hp.width, rank)), generator=gen)
            k0 = ((z * hp.init_noise + 1.0) * hp.init_scale).double()
        else:
            z = torch.randn((draws, rank), generator=gen, dtype=torch.float64)
            k0 = hp.init_scale * (1.0 + hp.init_noise * z)
        k0 = torch.sort(k0, dim=1, descending=True).values[:, :rank]
        return k0.expand(n_paths, rank)

    def setup(self, stage: str) -> None:
        if self.initialized.item():
            return
        # Read defensively: a module may be set up without a Trainer (the vectorized runner's members).
        basis = find_task_basis(getattr(getattr(self, "_trainer", None), "datamodule", None))
        if basis is None:
            raise ValueError(
                "init='aligned' needs the task basis: pass task_basis=(U, S, V) or use a datamodule with task_basis()."
            )
        self.initialize_aligned(basis)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._basis is not None:
            checkpoint["task_basis"] = tuple(t.cpu() for t in self._basis)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "task_basis" in checkpoint:
            self._basis = tuple(checkpoint["task_basis"])

    # -- protocols ------------------------------------------------------------------------
    def task_basis(self) -> TaskBasis | None:
        """The basis used for the aligned init (``None`` until known)."""
        return self._basis

    @torch.no_grad()
    def end_to_end_maps(self) -> dict[str, Tensor]:
        """Each pathway's ``out x in`` map in float32 (float64 for float64 weights).

        Linear pathways: ``W_D ... W_1``. Nonlinear ones: the pathway applied to the standard
        basis inputs, ``f(I)^T``. Layers are applied one by one, so hooks that deficits put
        on the pathway module itself do not alter the recorded map.
        """
        maps = {}
        for name, seq in self.pathways.items():
            weight = self._linears(name)[0].weight
            dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
            if self._hp.nonlinearity is None:
                out = weight.detach().to(dtype)
                for layer in self._linears(name)[1:]:
                    out = layer.weight.detach().to(dtype) @ out
            else:
                h = torch.eye(self._hp.in_features, device=weight.device, dtype=weight.dtype)
                for module in seq.children():
                    h = module(h)
                out = h.detach().to(dtype).T
            maps[name] = out
        return maps

    # -- training -------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        return sum(pathway(x) for pathway in self.pathways.values())

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = 0.5 * ((self(x) - y) ** 2).sum()
        # self.log costs more than a whole step of this model, and Lightning only writes step
        # metrics every log_every_n_steps, so skip the calls it would drop.
        # log_every_n_steps is set by Lightning's logger connector (undeclared); without a Trainer, log every step.
        every = getattr(getattr(self, "_trainer", None), "log_every_n_steps", 1)
        if (self.global_step + 1) % max(1, every) == 0:
            self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self._hp.lr, momentum=self._hp.momentum)
