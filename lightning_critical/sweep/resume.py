"""What a sweep call says about the runs it did not train: how many, and from which stored sweep."""

from __future__ import annotations

import os
import sys
from typing import Any

from lightning_critical.sweep.store import Takeover


def report_reuse(out: str, identity: str, runs: int, to_train: int, takeover: Takeover | None) -> dict[str, Any]:
    """Print one line on stderr saying how many runs are already done and from where; return the table attrs.

    Example::

        >>> import contextlib, io
        >>> err = io.StringIO()
        >>> with contextlib.redirect_stderr(err):
        ...     attrs = report_reuse("outputs/x", "ab12", runs=8, to_train=2, takeover=None)
        >>> err.getvalue().strip()
        'lightning-critical: sweep outputs/x: 6 of 8 runs already done (results.jsonl, identity ab12), training 2'
        >>> attrs
        {'runs_done': 6, 'runs_to_train': 2, 'reused_from': None}
    """
    done = runs - to_train
    reused_from = None
    if takeover is None:
        source = f"results.jsonl, identity {identity}" if done else f"new runs, identity {identity}"
    else:
        aside = os.path.join(out, os.path.basename(os.path.dirname(takeover.set_aside)),
                             os.path.basename(takeover.set_aside))
        if takeover.resume == "reuse":
            reused_from = takeover.previous
            source = (f"{takeover.reused} reused from identity {takeover.previous} by resume='reuse', now identity "
                      f"{identity}; the old sweep is kept in {aside}")
        else:
            source = f"the results of identity {takeover.previous} were set aside in {aside}"
    print(f"lightning-critical: sweep {out}: {done} of {runs} runs already done ({source}), training {to_train}",
          file=sys.stderr)
    return {"runs_done": done, "runs_to_train": to_train, "reused_from": reused_from}
