"""Progress bars for long CLI work, for a person at a terminal only.

They go to stderr, so stdout stays the command's answer (scripts parse it), and
they are off when stderr is not a terminal: logs, tests and CI see no bar
characters, only the command's usual lines.
"""

from __future__ import annotations

import sys


def bar(total: int, description: str, unit: str = "rows"):
    """A tqdm bar over ``total`` units on stderr, disabled unless stderr is a TTY."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=description,
        unit=unit,
        unit_scale=True,
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        dynamic_ncols=True,
    )
