"""Where the bundled experiments train: the user's accelerator, with Lightning's default kept."""

from __future__ import annotations

from typing import Any

from lightning_critical._namespace import pl


def accelerator_kwargs(accelerator: str | pl.accelerators.Accelerator) -> dict[str, Any]:
    """The ``pl.Trainer`` keyword for ``accelerator``: none for ``"auto"``, Lightning's own default.

    Passing ``accelerator="auto"`` explicitly would override ``PL_TRAINER_ACCELERATOR`` (in
    Lightning, explicit arguments beat the environment), so ``"auto"`` is left out and the
    environment, else the best available device, decides. Anything else goes through as given
    and Lightning validates it.

    Example::

        >>> accelerator_kwargs("auto"), accelerator_kwargs("gpu")
        ({}, {'accelerator': 'gpu'})
    """
    return {} if isinstance(accelerator, str) and accelerator == "auto" else {"accelerator": accelerator}
