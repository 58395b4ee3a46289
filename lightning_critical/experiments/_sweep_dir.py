"""Where a bundled experiment's sweep lives: the caller's directory, or a temporary one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def sweep_dir(out: str | os.PathLike | None) -> Iterator[str]:
    """``out`` (kept: the sweep's results and logs stay there), or a temporary directory removed on exit.

    Example::

        >>> with sweep_dir("outputs/x") as out:
        ...     out
        'outputs/x'
    """
    if out is not None:
        yield os.fspath(out)
        return
    with tempfile.TemporaryDirectory() as directory:
        yield directory
