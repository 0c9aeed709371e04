"""How the tools end: every way a run stops is one or more lines on stderr, each
starting with the tool's name, and an exit status that says which way it was.

    0    done
    1    the service or the store failed, or refused what it was asked
    2    bad input, found before anything is sent: a flag, a setting, a corpus row
    130  interrupted (Ctrl-C); what was stored stays stored

argparse's own usage errors are exit 2 too, so 2 always means "fix the input".
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["BAD_INPUT", "EXIT_STATUSES", "FAILED", "INTERRUPTED", "InputError", "run_tool"]

FAILED, BAD_INPUT, INTERRUPTED = 1, 2, 130
EXIT_STATUSES = (
    "exit status: 0 done, 1 the service or the store failed, 2 bad input (a flag, a "
    "setting, a corpus row; found before anything is sent), 130 interrupted (Ctrl-C)"
)


class InputError(ValueError):
    """Input a tool refuses as it is: one line per thing wrong, each saying where."""

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def run_tool(prog: str, body: Callable[[], int], *, on_interrupt: str = "") -> int:
    """``body``'s exit status, or the status of the error that stopped it, said in one
    line per problem: the tools' users see messages, never tracebacks."""
    try:
        return body()
    except KeyboardInterrupt:
        _say(prog, f"interrupted{on_interrupt}")
        return INTERRUPTED
    except InputError as exc:
        for line in exc.lines:
            _say(prog, line)
        return BAD_INPUT
    except (OSError, ValueError, RuntimeError) as exc:
        _say(prog, str(exc))
        return FAILED


def _say(prog: str, line: str) -> None:
    print(f"{prog}: {line}", file=sys.stderr)
