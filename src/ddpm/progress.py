"""Progress bars for long work: lively in a terminal, quiet in a log file."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(*, count_bytes: bool = False, **kwargs) -> tqdm:
    """A tqdm bar refreshing 10 times a second in a terminal, but writing one line every 30 s when stderr
    is a file or a pipe (a log of a long run would otherwise fill with carriage-return updates).

    With ``count_bytes`` the bar counts bytes and shows them in KiB, MiB, ...; other keywords go to tqdm.
    """
    if count_bytes:
        kwargs.update(unit="B", unit_scale=True, unit_divisor=1024)
    kwargs.setdefault("mininterval", 0.1 if sys.stderr.isatty() else 30)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(**kwargs)
