"""Supervisors with Erlang/OTP semantics, plus restart backoff and tree snapshots.

Open a root with :func:`open_supervisor`; nest supervisors with
:func:`supervisor_spec`; administer children through :class:`SupervisorRef`.
"""

from .errors import (
    AlreadyPresent,
    AlreadyStarted,
    ChildAdminError,
    ChildNotFound,
    ChildRestarting,
    ChildRunning,
    ReachedMaxRestartIntensity,
    StartChildFailed,
    SupervisorError,
    SupervisorExited,
)
from .intensity import DEFAULT_INTENSITY, DEFAULT_PERIOD, add_restart
from .spec import (
    BRUTAL_KILL,
    DEFAULT_SHUTDOWN,
    INFINITY,
    ChildSpec,
    ChildType,
    Restart,
    RestartBackoff,
    Strategy,
)
from .supervisor import (
    ChildCounts,
    ChildInfo,
    ChildSnapshot,
    Supervisor,
    SupervisorRef,
    open_supervisor,
    supervisor_spec,
)

__all__ = [
    "BRUTAL_KILL",
    "DEFAULT_INTENSITY",
    "DEFAULT_PERIOD",
    "DEFAULT_SHUTDOWN",
    "INFINITY",
    "AlreadyPresent",
    "AlreadyStarted",
    "ChildAdminError",
    "ChildCounts",
    "ChildInfo",
    "ChildNotFound",
    "ChildRestarting",
    "ChildRunning",
    "ChildSnapshot",
    "ChildSpec",
    "ChildType",
    "ReachedMaxRestartIntensity",
    "Restart",
    "RestartBackoff",
    "StartChildFailed",
    "Strategy",
    "Supervisor",
    "SupervisorError",
    "SupervisorExited",
    "SupervisorRef",
    "add_restart",
    "open_supervisor",
    "supervisor_spec",
]
