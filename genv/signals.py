"""The signal functions genv uses, without ``import signal``; and ``HELD``,
the signals genv holds back while it changes the state.

``signal`` wraps the C module ``_signal`` in enums, and ``import enum``
costs about 6 ms, half an interpreter start, on the path of ``genv run`` and
``genv lock``. genv uses the C module's functions and plain integers
directly; tests/test_interpreters.py checks on every interpreter CI finds
that ``_signal`` has them (``signal`` is the fallback).
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from signal import (SIG_BLOCK, SIG_DFL, SIG_IGN, SIG_SETMASK, SIG_UNBLOCK, SIGALRM, SIGCHLD, SIGCONT, SIGHUP,
                        SIGINT, SIGKILL, SIGPIPE, SIGQUIT, SIGSTOP, SIGTERM, SIGTSTP, SIGTTIN, SIGTTOU, SIGUSR1,
                        SIGUSR2, SIGWINCH, SIGXFSZ, default_int_handler, getsignal, pthread_sigmask, sigpending,
                        signal, sigwait, sigwaitinfo)
    from signal import pidfd_send_signal
else:
    try:  # Python >= 3.9 on Linux; used only with a pidfd (os.pidfd_open), which 3.8 lacks too
        from _signal import pidfd_send_signal  # noqa: F401 (re-exported)
    except ImportError:  # pragma: no cover - Python 3.8
        pass
    try:
        from _signal import (SIG_BLOCK, SIG_DFL, SIG_IGN, SIG_SETMASK, SIG_UNBLOCK, SIGALRM, SIGCHLD, SIGCONT,
                             SIGHUP, SIGINT, SIGKILL, SIGPIPE, SIGQUIT, SIGSTOP, SIGTERM, SIGTSTP, SIGTTIN, SIGTTOU,
                             SIGUSR1, SIGUSR2, SIGWINCH, SIGXFSZ, default_int_handler, getsignal, pthread_sigmask,
                             sigpending, signal, sigwait, sigwaitinfo)
    except ImportError:  # pragma: no cover - an interpreter without the C module's names
        from signal import (SIG_BLOCK, SIG_DFL, SIG_IGN, SIG_SETMASK, SIG_UNBLOCK, SIGALRM, SIGCHLD, SIGCONT,
                            SIGHUP, SIGINT, SIGKILL, SIGPIPE, SIGQUIT, SIGSTOP, SIGTERM, SIGTSTP, SIGTTIN, SIGTTOU,
                            SIGUSR1, SIGUSR2, SIGWINCH, SIGXFSZ, default_int_handler, getsignal, pthread_sigmask,
                            sigpending, signal, sigwait, sigwaitinfo)

HELD = frozenset((SIGINT, SIGTERM, SIGHUP))
"""Held back while the state changes (``genv.core.operations``,
``genv.core.waitline``, the SDK), so that an interrupt cannot leave the state
and what the caller prints or sets disagreeing."""

__all__ = ["SIG_BLOCK", "SIG_DFL", "SIG_IGN", "SIG_SETMASK", "SIG_UNBLOCK", "SIGALRM", "SIGCHLD", "SIGCONT", "SIGHUP",
           "SIGINT", "SIGKILL", "SIGPIPE", "SIGQUIT", "SIGSTOP", "SIGTERM", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGUSR1",
           "SIGUSR2", "SIGWINCH", "SIGXFSZ", "default_int_handler", "getsignal", "pthread_sigmask", "sigpending",
           "signal", "sigwait", "sigwaitinfo"]
# (pidfd_send_signal is left out of __all__: Python 3.8 does not have it; HELD is genv's own.)
