"""What both command-line programs do when their reader goes away.

``dnsmesh token list | head -1`` closes the pipe while the program is still
printing. The usual Unix behaviour is to stop quietly; Python instead raises
:class:`BrokenPipeError` at the next write (or at the final flush, as an
"Exception ignored" message). :func:`stdout_gone` is the one place that turns
that into a quiet exit: it points stdout at ``/dev/null`` so the interpreter's
final flush cannot fail again, and gives the exit code (1, as Python's own
documentation of SIGPIPE recommends for programs that ignore the signal).
"""

from __future__ import annotations

import contextlib
import os
import sys

EXIT_PIPE = 1
"""Exit code after the reader of stdout went away."""


def stdout_gone() -> int:
    """Silence stdout for the rest of the process after ``BrokenPipeError``.

    Returns:
        :data:`EXIT_PIPE`.
    """
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return EXIT_PIPE


def flush_stdout() -> int | None:
    """Flush stdout now, where a closed pipe can still be handled.

    Returns:
        ``None`` when the flush worked, else :func:`stdout_gone`'s exit code.
    """
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return stdout_gone()
    return None
