"""The underscore names ``WindowedDeficit``'s extension points had before they became public.

Both names stay bound to the same function on every subclass (:func:`bind_renamed`, called
from ``WindowedDeficit.__init_subclass__``), so old subclasses that override ``_attach`` or
call ``super()._resolve(...)`` keep working, with a ``DeprecationWarning`` for user classes.
"""

from __future__ import annotations

import warnings

RENAMED: dict[str, str] = {
    "resolve": "_resolve",
    "attach": "_attach",
    "default_name": "_default_name",
    "detach": "_detach",
    "describe_target": "_describe_target",
}
"""Public extension point -> its old underscore name."""


def bind_renamed(cls: type) -> None:
    """Bind each public name of ``cls``'s own namespace to its old name, or the other way round (warning).

    Example::

        >>> class Old:
        ...     def _attach(self):
        ...         return "old"
        >>> Old.__module__ = "lightning_critical.example"  # the package's own classes do not warn
        >>> bind_renamed(Old)
        >>> Old().attach()
        'old'
    """
    own = cls.__dict__
    for public, old in RENAMED.items():
        if old in own and public not in own:
            if not cls.__module__.startswith("lightning_critical."):
                warnings.warn(
                    f"{cls.__qualname__}.{old} is deprecated: override {public} instead.",
                    DeprecationWarning,
                    stacklevel=3,
                )
            setattr(cls, public, own[old])
        elif public in own and old not in own:
            setattr(cls, old, own[public])


def bind_base(cls: type) -> None:
    """Give the base class the old names of its public extension points (outside its body, so
    type checkers and the API docs see only the public ones)."""
    for public, old in RENAMED.items():
        setattr(cls, old, getattr(cls, public))
