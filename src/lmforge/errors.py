"""The one exception type for mistakes a user can fix.

The CLI prints a `LmforgeError` as a single line (no traceback) and exits with status 2;
anything else is a bug in lmforge and keeps its traceback.
"""


class LmforgeError(Exception):
    """A user-fixable problem: the message names the file, line or field, and the fix."""


class RunInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped a training run after a finished step, whose checkpoint was written."""

    def __init__(self, step: int, folder):
        super().__init__(f"interrupted after step {step}")
        self.step = step
        self.folder = folder
