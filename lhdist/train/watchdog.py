"""Heartbeat watchdog: a rank that dies, fails or hangs makes every rank exit, naming it and its
phase ("rank 3 stopped answering during backward of step 12").

Every rank runs a thread that, every `interval_s`, publishes its heartbeat (a counter, its phase
and step, a progress counter, pid and host) under its own key of the job's rendezvous store
(torchrun's TCPStore, or the FileStore of a `file://` rendezvous), then reads the others' keys
and exits the process (`os._exit(1)`, after logging the reason) when:
  * a rank reported that it failed (an exception), or aborted because of another rank;
  * a rank's process is gone (same host: its pid no longer exists);
  * a rank's heartbeat has not changed for `timeout_s` (process frozen, host lost);
  * no rank has changed phase for `timeout_s` (a hang): it names the rank furthest behind.
The main thread only records phase changes (`set_phase`) and wakes the thread, which publishes
them at once (so a death is reported in the phase it happened in); the loop does no store I/O.
When a collective raises (gloo reports a dead peer as an error), `stop(error)` names the peer
behind it before the exception goes on, and publishes the cause so the other ranks name it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Phases in the order a step runs them; a hang is blamed on the rank furthest behind.
PHASES = ("setup", "data", "forward", "backward", "optimizer step", "checkpoint", "done")
PREFIX = "lhdist_watchdog"
MIN_PUBLISH_GAP_S = 0.05


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


@dataclass
class PeerView:
    """What this rank has seen of another rank: its last heartbeat and, on the local monotonic
    clock (so clock skew between hosts does not matter), when its counters last changed."""

    state: dict[str, Any] | None = None
    beat_seen: float = 0.0
    progress_seen: float = 0.0

    def update(self, state: dict[str, Any], now: float) -> None:
        old = self.state
        if old is None or old.get("beat") != state.get("beat"):
            self.beat_seen = now
        if old is None or old.get("progress") != state.get("progress"):
            self.progress_seen = now
        self.state = state


def where(state: dict[str, Any]) -> str:
    """'backward of step 12' (or just the phase before the first step)."""
    step = state.get("step", 0)
    return f"{state.get('phase', '?')} of step {step}" if step else str(state.get("phase", "?"))


def find_problem(
    views: dict[int, PeerView],
    me: int,
    now: float,
    timeout_s: float,
    started: float,
    host: str,
    stale_s: float | None = None,
) -> str | None:
    """The reason to stop the job, from rank `me`'s views of every rank (itself included), or
    None. `stale_s` (default `timeout_s`) is how long a peer's silent heartbeat is tolerated."""
    stale_s = timeout_s if stale_s is None else stale_s
    running = {r: v for r, v in views.items() if v.state and v.state.get("status") == "running"}
    for r, v in sorted(views.items()):
        s = v.state
        if s and s.get("status") == "aborted":
            return str(s.get("cause"))
        if s and s.get("status") == "failed":
            return f"rank {r} failed during {where(s)}: {s.get('error')}"
    for r, v in sorted(running.items()):
        s = v.state
        if r == me:
            continue
        if s["host"] == host and not pid_alive(s["pid"]):
            return (
                f"rank {r} stopped answering during {where(s)} (process {s['pid']} on {host} is "
                f"gone)"
            )
        if now - v.beat_seen > stale_s:
            return (
                f"rank {r} stopped answering during {where(s)} (no heartbeat for "
                f"{now - v.beat_seen:.0f} s, process {s['pid']} on {s['host']})"
            )
    missing = [r for r, v in sorted(views.items()) if v.state is None]
    if missing and now - started > stale_s:
        return f"rank {missing[0]} never sent a heartbeat ({now - started:.0f} s since start)"
    if running and all(now - v.progress_seen > timeout_s for v in running.values()):
        r, v = min(
            running.items(),
            key=lambda item: (
                item[1].state.get("step", 0),
                PHASES.index(item[1].state["phase"]) if item[1].state["phase"] in PHASES else 0,
                item[0],
            ),
        )
        quiet = min(now - v.progress_seen for v in running.values())
        return (
            f"rank {r} stopped making progress during {where(v.state)} (no rank has moved on for "
            f"{quiet:.0f} s; rank {r} is furthest behind)"
        )
    return None


@dataclass
class Watchdog:
    """The heartbeat thread of one rank; `start()`, `set_phase()` from the loop, `stop()`."""

    store: Any
    """A torch.distributed Store shared by the job (keys get the prefix 'lhdist_watchdog')."""
    rank: int
    world_size: int
    timeout_s: float
    interval_s: float = 0.0
    """Heartbeat period; 0: timeout_s / 10, between 0.2 and 5 s."""
    log: Callable[[str], None] | None = None
    exit: Callable[[int], None] = os._exit
    _state: dict[str, Any] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _wake: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _views: dict[int, PeerView] = field(default_factory=dict, init=False)
    _started: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if not self.interval_s:
            self.interval_s = min(5.0, max(0.2, self.timeout_s / 10))
        self.host = socket.gethostname()
        self._state = {
            "rank": self.rank,
            "pid": os.getpid(),
            "host": self.host,
            "beat": 0,
            "progress": 0,
            "phase": "setup",
            "step": 0,
            "status": "running",
        }
        self._views = {r: PeerView() for r in range(self.world_size)}

    # --- main thread ------------------------------------------------------------------------

    def start(self) -> Watchdog:
        self._started = time.monotonic()
        self._publish()
        self._thread = threading.Thread(target=self._run, name="lhdist-watchdog", daemon=True)
        self._thread.start()
        return self

    def set_phase(self, phase: str, step: int) -> None:
        """Record what this rank does now (published with the next heartbeat)."""
        with self._lock:
            self._state.update(phase=phase, step=step, progress=self._state["progress"] + 1)
        self._wake.set()

    def stop(self, error: BaseException | None = None) -> str | None:
        """End the heartbeat: 'done', or after an exception the cause (a peer's death when the
        exception came from it, else this rank's own error) for the other ranks to report.

        Returns the peer's failure behind `error` (for the caller to report instead of the
        collective's error), or None when the error is this rank's own."""
        if self._thread is None:
            return None
        self._stop.set()
        self._wake.set()
        self._thread.join()
        self._thread = None
        if error is None:
            self._state["status"] = "done"
            with contextlib.suppress(Exception):  # the store's host may have finished first
                self._publish()
            return None
        # A communication error (gloo raises RuntimeError, sockets OSError) may be a peer's
        # death seen first here: give its heartbeat two periods to go quiet. Other errors are
        # this rank's own (a ValueError is raised alike on every rank): no wait.
        comm_error = isinstance(error, (RuntimeError, OSError))
        grace = min(self.timeout_s, 2 * self.interval_s + 1) if comm_error else 0.0
        cause = self._peer_cause(grace_s=grace) if comm_error else None
        if cause is not None:
            self._state.update(status="aborted", cause=cause)
        else:
            text = " ".join(f"{type(error).__name__}: {error}".split())[:500]
            self._state.update(status="failed", error=text)
        with contextlib.suppress(Exception):  # tell the others, if the store still can
            self._publish()
        # Tearing down a broken process group can block; do not let it outlive the timeout.
        timer = threading.Timer(self.timeout_s, self.exit, args=(1,))
        timer.daemon = True
        timer.start()
        return cause

    # --- heartbeat thread -------------------------------------------------------------------

    def _run(self) -> None:
        next_check = time.monotonic() + self.interval_s
        store_failing_since = None
        while not self._stop.is_set():
            self._wake.wait(max(0.0, next_check - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            problem = None
            try:
                self._publish()
                # Until every peer has been seen once, look each beat: a peer that dies in the
                # first period (taking the store with it) is then still known by pid and host.
                if time.monotonic() >= next_check or not self._all_seen():
                    next_check = time.monotonic() + self.interval_s
                    problem = self._check()
                store_failing_since = None
            except Exception as e:  # still failing after 3 periods: the store's host is gone
                now = time.monotonic()
                store_failing_since = store_failing_since or now
                if now - store_failing_since >= 3 * self.interval_s:
                    problem = (
                        f"the job's rendezvous store stopped answering ({type(e).__name__}: "
                        f"{e}); the launcher or rank 0 that hosts it is gone"
                    )
            if problem is not None and not self._stop.is_set():
                self._report(problem)
                self._state.update(status="aborted", cause=problem)
                with contextlib.suppress(Exception):  # tell the others, if the store still can
                    self._publish()
                self.exit(1)
                return
            self._stop.wait(MIN_PUBLISH_GAP_S)  # fast steps: at most ~20 heartbeats a second

    def _all_seen(self) -> bool:
        return all(view.state is not None for view in self._views.values())

    def _key(self, rank: int) -> str:
        return f"{PREFIX}/rank{rank}"

    def _publish(self) -> None:
        with self._lock:
            self._state["beat"] += 1
            self._state["time"] = time.time()
            payload = json.dumps(self._state)
        self.store.set(self._key(self.rank), payload)

    def _read(self) -> None:
        now = time.monotonic()
        for r, view in self._views.items():
            if r == self.rank:
                with self._lock:
                    view.update(dict(self._state), now)
            elif self.store.check([self._key(r)]):
                view.update(json.loads(self.store.get(self._key(r))), now)

    def _check(self, stale_s: float | None = None) -> str | None:
        self._read()
        now = time.monotonic()
        return find_problem(
            self._views, self.rank, now, self.timeout_s, self._started, self.host, stale_s
        )

    def _peer_cause(self, grace_s: float) -> str | None:
        """A peer's failure behind this rank's exception, looked for during `grace_s` (a remote
        peer's death shows as a heartbeat silent for two periods)."""
        deadline = time.monotonic() + grace_s
        while True:
            try:
                problem = self._check(stale_s=2 * self.interval_s)
            except Exception as e:  # the store is gone with its host (rank 0 or the launcher)
                return self._dead_local_peer() or (
                    f"lost contact with the job: its rendezvous store stopped answering "
                    f"({type(e).__name__}), so the rank or launcher hosting it is gone"
                )
            if problem is not None and not problem.startswith(f"rank {self.rank} "):
                return problem
            if time.monotonic() >= deadline:
                return None
            time.sleep(self.interval_s / 2)

    def _dead_local_peer(self) -> str | None:
        """A peer of this host whose process is gone, from the last heartbeats seen (all there
        is to go on once the store died with it)."""
        for r, view in sorted(self._views.items()):
            s = view.state
            if r != self.rank and s and s.get("host") == self.host and not pid_alive(s["pid"]):
                return (
                    f"rank {r} stopped answering during {where(s)} (process {s['pid']} on "
                    f"{self.host} is gone, and the job's store with it)"
                )
        return None

    def _report(self, message: str) -> None:
        text = f"[lhdist watchdog] rank {self.rank}: {message}"
        (self.log or (lambda m: print(m, file=sys.stderr, flush=True)))(text)


# --- the process's watchdog -----------------------------------------------------------------------

_active: Watchdog | None = None


def start_watchdog(timeout_s: float, interval_s: float = 0.0) -> Watchdog | None:
    """Start this rank's watchdog on the default process group's store (a no-op returning None
    for one rank). `set_phase` and `stop_watchdog` then act on it."""
    global _active
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    store = dist.distributed_c10d._get_default_store()
    _active = Watchdog(store, dist.get_rank(), dist.get_world_size(), timeout_s, interval_s)
    return _active.start()


def set_phase(phase: str, step: int) -> None:
    """Tell the running watchdog (if any) what this rank does now."""
    if _active is not None:
        _active.set_phase(phase, step)


def stop_watchdog(error: BaseException | None = None) -> str | None:
    """Stop the running watchdog (if any); see `Watchdog.stop`."""
    global _active
    cause = None
    if _active is not None:
        cause = _active.stop(error)
        _active = None
    return cause
