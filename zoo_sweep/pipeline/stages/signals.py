"""SIGTERM and SIGHUP stop a launch as Ctrl-C does: the jobs in flight are marked 'interrupted' and run again
on the next launch."""

from __future__ import annotations

import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # what SLURM, `timeout`, container runtimes and a closed terminal send
_replaced: dict[int, object] = {}  # signal -> the handler ours replaced, while stop_on_signals is active
# the stop signal received: Ray turns a KeyboardInterrupt raised inside its calls into a new one, so the
# exception cannot carry it
_received: list[int] = []


def _on_stop_signal(signum, _frame):
    # once stopping, further SIGTERM / SIGHUP are ignored: a second one (a runtime that repeats it before its
    # SIGKILL) would cut short the marking of the jobs in flight as interrupted
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    _received.append(signum)
    raise KeyboardInterrupt(signal.Signals(signum).name)  # Ctrl-C's way out, everywhere


def _install_stop_handlers() -> None:
    for sig in STOP_SIGNALS:
        current = signal.getsignal(sig)
        if current is not _on_stop_signal:
            _replaced[sig] = current
        # set again even where Python names ours already: Ray's core worker installs a native handler beneath
        signal.signal(sig, _on_stop_signal)


def reinstall() -> None:
    """Ours again after joining Ray (``ray.init`` puts its own handlers in place), while stop_on_signals is
    active; otherwise nothing."""
    if _replaced:
        _install_stop_handlers()


def stop_signal() -> int:
    """The signal that stopped the launch: SIGTERM or SIGHUP if one came, else SIGINT (Ctrl-C)."""
    return _received[0] if _received else signal.SIGINT


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread while the block runs, as Ctrl-C does, so
    a launch stops the same way for all three (``stop_signal`` tells which came). ``ray.init`` puts Ray's
    own SIGTERM handlers in place (with them the driver aborts, printing a native stack dump, and leaves its
    jobs 'running'), so the launch puts this one back after joining Ray (``reinstall``). The handlers
    found are restored at the end. Off the main thread (where Python allows no handlers): nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    _install_stop_handlers()
    try:
        yield
    finally:
        for sig, handler in _replaced.items():
            signal.signal(sig, handler)
        _replaced.clear()
