"""Ctrl-C and SIGTERM during training: a flag checked between steps, and the error that ends a
run stopped by one.

The loop (train.py) polls SignalGuard.stopping() between steps and between evaluation batches,
saves last.h5, and raises Interrupted, whose exit code (128 + signal) the CLI passes on.
"""

from __future__ import annotations

import signal
import sys

from .errors import SparseLMError


class Interrupted(SparseLMError):
    """Training stopped by a signal after saving last.h5."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class SignalGuard:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so a step is never half-applied.

    A second signal raises KeyboardInterrupt at once (a save in progress is abandoned by
    checkpoint.py, which leaves the previous file in place). When that lands inside a finaliser
    or weakref callback, Python cannot raise it and would print it with a traceback ("Exception
    ignored in ..."); the guard silences that report, and the run stops at the next step
    boundary on the first signal's flag instead.
    """

    def __init__(self):
        self.signum = 0
        self._old = {}
        self._old_hook = None

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the signals alone
                pass
        if self._old:
            self._old_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        return self

    def _unraisable(self, info):
        if self.signum and issubclass(info.exc_type, KeyboardInterrupt):
            return  # our second-signal interrupt, swallowed by a finaliser
        self._old_hook(info)

    def _handle(self, signum, frame):
        if self.signum:  # second Ctrl-C: stop right away
            raise KeyboardInterrupt
        self.signum = signum

    def stopping(self) -> bool:
        return bool(self.signum)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        if self._old_hook is not None:
            sys.unraisablehook = self._old_hook

    def interrupted(self, where: str) -> Interrupted:
        """The error that ends a run stopped by the first signal; `where` says what was saved."""
        return Interrupted(f"interrupted ({signal.Signals(self.signum).name}) {where}", self.signum)
