"""One step of the stock SGD / Adam / AdamW over stacked rows whose learning rates and weight decays differ.

A swept learning rate or weight decay gives each member its own scalar. The stock step multiplies
by a scalar with a fused multiply-add (``param.add_(grad, alpha=-lr)``), so multiplying by a
per-row tensor first and adding then would round twice and differ (in about 10% of the elements,
measured). These functions redo the stock single-tensor steps (``torch.optim.sgd._single_tensor_sgd``,
``torch.optim.adam._single_tensor_adam``, non-capturable, without amsgrad) with per-row tensors
in the ops that keep the same arithmetic: ``addcmul(p, g, t)`` is ``add(p, g, alpha=t)`` bitwise
(one fused rounding), ``mul`` by a float32 row equals ``mul`` by the scalar, and ``addcdiv(p,
t * e, d)`` equals ``addcdiv(p, e, d, value=t)``. A member whose weight decay is 0 skips it, as
the stock step does (``torch.where``: adding ``0 * p`` could turn ``-0.0`` into ``0.0``).
``tests/test_sweep_vectorized_speed.py`` checks every member bitwise against its own optimizer.

Example::

    >>> import torch
    >>> p, g = torch.ones(2, 3), torch.ones(2, 3)
    >>> sgd_rows([p], [g], [{}], {"momentum": 0.0, "dampening": 0.0, "nesterov": False, "maximize": False},
    ...          [0.1, 0.5], [0.0, 0.0])
    >>> p[:, 0].tolist()
    [0.8999999761581421, 0.5]
"""

from __future__ import annotations

from typing import Any

import torch


def rows(values: list[float], like: torch.Tensor) -> torch.Tensor:
    """``values`` (one per member) as a float32 ``(M, 1, ..., 1)`` tensor that broadcasts over ``like``'s rows."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).reshape(-1, *([1] * (like.dim() - 1)))


@torch.no_grad()
def sgd_rows(params: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict[str, Any]],
             group: dict[str, Any], lrs: list[float], decays: list[float]) -> None:
    """``SGD.step`` over stacked ``params`` with the per-member ``lrs`` / ``decays`` (states: the optimizer's)."""
    momentum, dampening, nesterov = group["momentum"], group["dampening"], group["nesterov"]
    for param, grad, state in zip(params, grads, states, strict=True):
        grad = grad if not group["maximize"] else -grad
        grad = _decayed(grad, param, decays)
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.detach().clone()
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            grad = grad.add(buf, alpha=momentum) if nesterov else buf
        param.addcmul_(grad, rows([-lr for lr in lrs], param))


@torch.no_grad()
def adam_rows(params: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict[str, Any]],
              group: dict[str, Any], lrs: list[float], decays: list[float]) -> None:
    """``Adam.step`` / ``AdamW.step`` over stacked ``params`` with the per-member ``lrs`` / ``decays``."""
    beta1, beta2 = group["betas"]
    for param, grad, state in zip(params, grads, states, strict=True):
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.get_default_dtype())
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        grad = grad if not group["maximize"] else -grad
        state["step"] += 1
        if group["decoupled_weight_decay"]:
            param.mul_(rows([1 - lr * wd for lr, wd in zip(lrs, decays, strict=True)], param))
        else:
            grad = _decayed(grad, param, decays)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = state["step"].item()
        bias_correction1, bias_correction2 = 1 - beta1**step, 1 - beta2**step
        denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(group["eps"])
        param.addcdiv_(exp_avg * rows([-lr / bias_correction1 for lr in lrs], param), denom)


def _decayed(grad: torch.Tensor, param: torch.Tensor, decays: list[float]) -> torch.Tensor:
    """``grad.add(param, alpha=weight_decay)`` per row; rows whose weight decay is 0 keep ``grad`` as it is."""
    if not any(decays):
        return grad
    decayed = torch.addcmul(grad, param, rows(decays, param))
    return decayed if all(decays) else torch.where(rows(decays, param) != 0, decayed, grad)
