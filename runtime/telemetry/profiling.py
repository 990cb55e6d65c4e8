"""Continuous profiling with pyroscope (pyroscope-io, a native py-spy agent).

Design:
- Off unless ``[profiling] pyroscope_url`` is set. The agent is a
  process-global native thread that samples every Python thread's stack and
  uploads a profile every ``upload_interval`` seconds; there can be one per
  process (a second ``pyroscope.configure`` answers "agent already
  running"), so :func:`start_profiling` refuses a second start.
- Tags are process-wide: ``[profiling] tags`` plus ``node`` (the node id).
  Never tag per actor or per channel: ``pyroscope.tag_wrapper`` tags the OS
  thread, and every trio task shares the one thread, so a tag set by one
  actor would be stamped on the samples of all the others.
- Profiling must never take the node down: a URL that is not http(s), a
  missing or broken native library, or an agent that will not start is a
  WARNING and :func:`start_profiling` returns None. The agent itself checks
  nothing (it accepts ``"not a url"`` and drops every upload silently), so
  the URL is checked here.
- pyroscope-io 1.4.0 pushes to ``POST /push.v1.PusherService/Push`` (gzip
  protobuf; the application name is the ``service_name`` label, the tags
  are labels beside it), not the old ``/ingest?name=app{tags}``. It has no
  ``auth_token`` option: the token goes out as ``Authorization: Bearer``;
  credentials in the URL (``https://user:pass@host``) become basic auth.
- Stopping flushes the last profile and can block for as long as the
  server takes to answer (measured: 28 s against a server that never
  replies). :meth:`ProfilingHandle.aclose` bounds that wait and leaves the
  agent's flush to a daemon thread; the agent releases the GIL meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final

import httpx
import trio

from runtime.config.model import ProfilingConfig

__all__ = [
    "DEFAULT_STOP_GRACE",
    "DEFAULT_UPLOAD_INTERVAL",
    "ProfilingHandle",
    "start_profiling",
]

log = logging.getLogger("switchboard.telemetry")

DEFAULT_UPLOAD_INTERVAL: Final = 10  # seconds; pyroscope's own default (it takes whole seconds)
DEFAULT_STOP_GRACE: Final = 5.0  # seconds aclose() waits for the agent's last upload
NODE_TAG: Final = "node"

# The one running agent in this process, if any.
_running: ProfilingHandle | None = None


class ProfilingHandle:
    """The running pyroscope agent; stop it once, when the node stops.

    Attributes:
        application_name: the name profiles are filed under.
        server: the server URL, without credentials.
        tags: the process-wide tags sent with every profile.
        upload_interval: seconds between uploads.
    """

    def __init__(
        self,
        *,
        agent: Any,
        application_name: str,
        server: str,
        tags: Mapping[str, str],
        upload_interval: int,
    ) -> None:
        self._agent = agent
        self._stopped = False
        self.application_name: Final = application_name
        self.server: Final = server
        self.tags: Final = dict(tags)
        self.upload_interval: Final = upload_interval

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` or :meth:`aclose` has run."""
        return self._stopped

    def _claim_stop(self) -> bool:
        global _running
        if self._stopped:
            return False
        self._stopped = True
        if _running is self:
            _running = None
        return True

    def _shutdown(self) -> None:
        try:
            stopped = self._agent.shutdown()
        except Exception as exc:
            log.warning("pyroscope agent did not shut down cleanly: %s", exc)
            return
        if not stopped:
            log.warning("pyroscope agent reported a failed shutdown; it may still be running")

    def stop(self) -> None:
        """Stop sampling and upload what was collected since the last upload.

        Idempotent. Blocks until the last upload ends, which takes as long
        as the server does; in a trio program prefer :meth:`aclose`.
        """
        if self._claim_stop():
            self._shutdown()

    async def aclose(self, *, grace: float = DEFAULT_STOP_GRACE) -> None:
        """Stop the agent from a trio task, waiting at most ``grace`` seconds.

        The shutdown runs in a worker thread; if the server is slow to take
        the last profile, the wait is abandoned (the daemon thread finishes
        on its own or dies with the process). Idempotent.

        Args:
            grace: the longest wait, in seconds.
        """
        if not self._claim_stop():
            return
        with trio.move_on_after(grace) as scope:
            await trio.to_thread.run_sync(self._shutdown, abandon_on_cancel=True)
        if scope.cancelled_caught:
            log.warning(
                "pyroscope agent still flushing its last profile to %s after %.1f s; "
                "no longer waiting for it",
                self.server,
                grace,
            )

    def __enter__(self) -> ProfilingHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        tags = ",".join(f"{key}={value}" for key, value in self.tags.items())
        return f"<ProfilingHandle {self.application_name}{{{tags}}} -> {self.server} [{state}]>"


def _parse_server(url: str) -> tuple[httpx.URL, str, str] | None:
    """The server URL without credentials, and the basic-auth user and password."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return None
    username, password = parsed.username, parsed.password
    return parsed.copy_with(username=None, password=None), username, password


def start_profiling(
    config: ProfilingConfig,
    *,
    node_id: str,
    upload_interval: int = DEFAULT_UPLOAD_INTERVAL,
) -> ProfilingHandle | None:
    """Start the pyroscope agent for this process, if a server is configured.

    Never raises for a problem of the configuration or of the agent: it is
    logged as a warning on ``switchboard.telemetry`` and profiling stays off.

    Args:
        config: the ``[profiling]`` table.
        node_id: added to the tags as ``node``.
        upload_interval: seconds between uploads (whole seconds, at least 1).

    Returns:
        The running agent's handle, or None if profiling is off or could
        not start.

    Raises:
        ValueError: ``upload_interval`` is not a whole number of seconds >= 1
            (a programming error, not a configuration one).
    """
    global _running
    if isinstance(upload_interval, bool) or not isinstance(upload_interval, int):
        raise ValueError(f"upload_interval must be whole seconds, got {upload_interval!r}")
    if upload_interval < 1:
        raise ValueError(f"upload_interval must be at least 1 second, got {upload_interval}")
    if not config.pyroscope_url:
        return None
    server = _parse_server(config.pyroscope_url)
    if server is None:
        log.warning(
            "profiling stays off: [profiling] pyroscope_url is not an http(s) URL with a host; "
            "set it to the pyroscope server, e.g. http://pyroscope:4040"
        )
        return None
    address, username, password = server
    if _running is not None:
        log.warning(
            "profiling: this process already runs a pyroscope agent (%r); "
            "stop it before starting another",
            _running,
        )
        return None
    tags = {str(key): str(value) for key, value in config.tags.items()}
    tags[NODE_TAG] = node_id
    headers = {"Authorization": f"Bearer {config.auth_token}"} if config.auth_token else {}
    try:
        import pyroscope  # type: ignore[import-untyped]  # no type information

        started = pyroscope.configure(
            application_name=config.application_name,
            server_address=str(address),
            basic_auth_username=username,
            basic_auth_password=password,
            sample_rate=config.sample_rate,
            # On-CPU samples of threads holding the GIL: an idle trio loop
            # (waiting in epoll) costs nothing and shows nothing.
            oncpu=True,
            gil_only=True,
            report_pid=False,
            tags=tags,
            http_headers=headers,
            upload_interval=upload_interval,
            # The native agent's own logging writes straight to stderr,
            # around our handler; keep it off.
            enable_logging=False,
        )
    except Exception as exc:  # ImportError, OSError from the native library, TypeError...
        log.warning(
            "profiling stays off: pyroscope could not start: %s: %s", type(exc).__name__, exc
        )
        return None
    if not started:
        log.warning(
            "profiling stays off: the pyroscope agent refused to start "
            "(is one already running in this process?)"
        )
        return None
    _running = ProfilingHandle(
        agent=pyroscope,
        application_name=config.application_name,
        server=str(address),
        tags=tags,
        upload_interval=upload_interval,
    )
    log.info("profiling: %r", _running)
    return _running
