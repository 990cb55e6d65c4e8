"""Errors raised by supervisors.

Every error here derives from :class:`SupervisorError`; the child-administration
errors mirror OTP's ``{error, ...}`` returns one to one::

    SupervisorError
    ├── ChildAdminError            a start/terminate/restart/delete request was refused
    │   ├── AlreadyStarted         start_child: a child with this id is running
    │   ├── AlreadyPresent         start_child: the id exists, its child is not running
    │   ├── ChildRunning           restart_child/delete_child: the child is running
    │   ├── ChildRestarting        restart_child/delete_child: a restart is pending
    │   └── ChildNotFound          no child with this id
    ├── StartChildFailed           a child's start failed (the cause is chained)
    └── SupervisorExited           a supervisor you held a handle to has terminated,
                                   e.g. after reaching its maximum restart intensity
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AlreadyPresent",
    "AlreadyStarted",
    "ChildAdminError",
    "ChildNotFound",
    "ChildRestarting",
    "ChildRunning",
    "ReachedMaxRestartIntensity",
    "StartChildFailed",
    "SupervisorError",
    "SupervisorExited",
]


class SupervisorError(Exception):
    """Base class of every error raised by the ``supervisors`` package."""


class ChildAdminError(SupervisorError):
    """A child administration request was refused.

    Attributes:
        child_id: the child the request named.
    """

    def __init__(self, message: str, *, child_id: str) -> None:
        super().__init__(message)
        self.child_id = child_id


class AlreadyStarted(ChildAdminError):
    """``start_child``: a child with this id is already running.

    Attributes:
        ref: the running child's ref (OTP's ``{already_started, Pid}``).
    """

    def __init__(self, message: str, *, child_id: str, ref: Any) -> None:
        super().__init__(message, child_id=child_id)
        self.ref = ref


class AlreadyPresent(ChildAdminError):
    """``start_child``: the id is taken by a child that is not running."""


class ChildRunning(ChildAdminError):
    """``restart_child`` / ``delete_child``: the child is running."""


class ChildRestarting(ChildAdminError):
    """``restart_child`` / ``delete_child``: a restart of the child is pending."""


class ChildNotFound(ChildAdminError):
    """No child with this id."""


class StartChildFailed(SupervisorError):
    """A child could not be started; the child's error is chained.

    Attributes:
        child_id: the child that failed.
    """

    def __init__(self, message: str, *, child_id: str) -> None:
        super().__init__(message)
        self.child_id = child_id


class ReachedMaxRestartIntensity(SupervisorError):
    """Why a supervisor gave up: more restarts than its intensity in one period.

    Carried as the error of the supervisor's ``shutdown`` exit (OTP's
    ``reached_max_restart_intensity`` report); raised to callers wrapped in
    :class:`SupervisorExited`.
    """


class SupervisorExited(SupervisorError):
    """The supervisor behind a handle terminated (its exit is chained/attached).

    Attributes:
        exit: the supervisor's exit reason.
    """

    def __init__(self, message: str, *, exit: Any) -> None:
        super().__init__(message)
        self.exit = exit
