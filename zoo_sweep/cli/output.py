"""What the command prints, with every secret masked: one masking (``urls.redact``) for every line, whoever wrote
it (our messages, a database driver's, Ray's), on stdout and stderr alike.

The secrets are those of the current command line and of the environment variables it reads: a password in
``--db`` / ``ZOO_SWEEP_DB``, in ``--address`` / ``RAY_ADDRESS`` / ``RAY_API_SERVER_ADDRESS``, in ``--tracking`` /
``MLFLOW_TRACKING_URI``, or in any other word of the command line (``--launch-args "--db ..."``). Each is
replaced wherever it appears, also as a fragment a driver quotes (``failed to resolve host 'ssw0rd@127.0.0.1'``),
and every user:password@ left is masked too.
"""

from __future__ import annotations

import os
import sys

from zoo_sweep.urls import passwords, redact

SECRET_ENV = ("ZOO_SWEEP_DB", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI")
_secrets: list[str] = []


def remember_secrets(args) -> None:
    """The secrets of this command line (``args``, its words) and of the environment, for every line printed
    from now on; set once per command (an in-process caller may run several)."""
    _secrets[:] = passwords(*map(str, args or ()), *(os.environ.get(k) for k in SECRET_ENV))


def masked(text: str) -> str:
    return redact(text, _secrets)


class MaskedStream:
    """``sys.stdout`` or ``sys.stderr`` as it is at each write (a test runner swaps them), masked. Rich writes a
    whole ``print`` in one call, so a secret is never split between two writes."""

    def __init__(self, name: str):
        self.name = name

    @property
    def _stream(self):
        return getattr(sys, self.name)

    def write(self, text: str) -> int:
        return self._stream.write(masked(text))

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._stream, "encoding", None) or "utf-8"


stdout, stderr = MaskedStream("stdout"), MaskedStream("stderr")
