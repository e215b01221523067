"""Watchdog: a rank that dies, fails, freezes or hangs ends every rank, naming it and its phase."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lhdist.train.watchdog import PeerView, Watchdog, find_problem

ROOT = Path(__file__).resolve().parents[2]


def view(seen: float, progress_seen: float | None = None, **state) -> PeerView:
    base = {"pid": os.getpid(), "host": "here", "status": "running", "phase": "forward", "step": 3}
    v = PeerView(state={**base, **state}, beat_seen=seen)
    v.progress_seen = seen if progress_seen is None else progress_seen
    return v


def test_watchdog_find_problem_rules():
    now, timeout = 100.0, 10.0

    def problem(views, **kw):
        return find_problem(views, 0, now, timeout, started=0.0, host="here", **kw)

    fresh = {0: view(99.0), 1: view(99.0)}
    assert problem(fresh) is None
    # A peer silent for longer than the timeout (frozen, or on a lost host).
    silent = {0: view(99.0), 1: view(85.0, phase="backward", step=12, host="far")}
    assert problem(silent).startswith("rank 1 stopped answering during backward of step 12")
    # A peer whose process on this host is gone is reported at once.
    gone = {0: view(99.0), 1: view(99.0, pid=2**22 + 7)}
    assert "is gone" in problem(gone)
    # A peer that failed, or aborted because of a third rank, is reported with its cause.
    failed = {0: view(99.0), 1: view(99.0, status="failed", error="ValueError: x")}
    assert problem(failed) == "rank 1 failed during forward of step 3: ValueError: x"
    aborted = {0: view(99.0), 1: view(99.0, status="aborted", cause="rank 2 stopped answering")}
    assert problem(aborted) == "rank 2 stopped answering"
    # Everyone beats but nobody moves: the rank furthest behind is named.
    hung = {
        0: view(99.0, progress_seen=80.0, phase="optimizer step"),
        1: view(99.0, progress_seen=85.0, phase="backward"),
        2: view(99.0, progress_seen=80.0, phase="optimizer step"),
    }
    assert problem(hung).startswith("rank 1 stopped making progress during backward of step 3")
    # A finished rank is no problem; one that never reported is, after the timeout.
    done = {0: view(99.0), 1: view(50.0, status="done")}
    assert problem(done) is None
    assert problem({0: view(99.0), 1: PeerView()}).startswith("rank 1 never sent a heartbeat")


def test_watchdog_stop_publishes_done_and_own_failure(tmp_path):
    store = DirStore(str(tmp_path / "store"))
    logs: list[str] = []
    dog = Watchdog(store, 0, 1, timeout_s=5, interval_s=0.2, log=logs.append).start()
    dog.set_phase("backward", 2)
    time.sleep(0.3)
    dog.stop()
    assert json.loads(store.get("lhdist_watchdog/rank0"))["status"] == "done"
    dog = Watchdog(store, 0, 1, timeout_s=5, interval_s=0.2, log=logs.append, exit=lambda c: None)
    dog.start().set_phase("forward", 7)
    # Its own error is published for the peers, not printed: the CLI prints it, once.
    assert dog.stop(ValueError("boom")) is None
    state = json.loads(store.get("lhdist_watchdog/rank0"))
    assert state["status"] == "failed" and state["error"] == "ValueError: boom"
    assert logs == []


class DirStore:
    """The part of a torch.distributed Store the watchdog uses, as one file per key (so the fake
    jobs below start in milliseconds, without importing torch)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def _file(self, key: str) -> Path:
        return self.path / key.replace("/", "_")

    def set(self, key: str, value: str) -> None:
        tmp = self._file(key).with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(value)
        os.replace(tmp, self._file(key))

    def get(self, key: str) -> bytes:
        return self._file(key).read_bytes()

    def check(self, keys: list[str]) -> bool:
        return all(self._file(k).exists() for k in keys)


def fake_rank(rank: int, world: int, store_path: str, scenario: str, timeout_s: float) -> None:
    """A rank of a fake job: steps through phases until `scenario` makes one rank misbehave
    at step 3 (the others then wait 'in a collective' forever)."""
    store = DirStore(store_path)
    store.set(f"arrived{rank}", "1")  # start together, as ranks leaving init_process_group do
    while not store.check([f"arrived{r}" for r in range(world)]):
        time.sleep(0.01)
    dog = Watchdog(store, rank, world, timeout_s, interval_s=0.2).start()
    try:
        for step in range(1, 1000):
            Path(store_path + f".step{rank}").write_text(str(step))
            for phase in ("data", "forward", "backward", "optimizer step"):
                dog.set_phase(phase, step)
                if step == 3 and phase == ("backward" if rank == 1 else "optimizer step"):
                    if rank == 1 and scenario == "error":
                        raise ValueError("boom")
                    time.sleep(3600)  # hung (rank 1), or waiting for rank 1 (the others)
                time.sleep(0.02)
    except BaseException as error:
        dog.stop(error)
        raise


def start_fake_job(tmp_path, scenario: str, world: int = 3, timeout_s: float = 2.0):
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.train.test_watchdog import fake_rank; fake_rank(int(sys.argv[1]), {world}, {str(tmp_path / 'store')!r}, {scenario!r}, {timeout_s})"  # noqa: E501
    return [
        subprocess.Popen([sys.executable, "-c", code, str(rank)], stderr=subprocess.PIPE, text=True)
        for rank in range(world)
    ]


def finish(procs, within_s: float) -> list[str]:
    deadline = time.monotonic() + within_s
    errs = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"a rank still ran {within_s} s later") from None
        assert p.returncode != 0, err
        errs.append(err)
    return errs


def test_watchdog_ends_every_rank_naming_the_culprit(tmp_path):
    # Three fake 2-rank jobs at once: rank 1 hangs (its heartbeat goes on), raises, or freezes
    # (SIGSTOP: heartbeat and all stop while the pid stays, as on a lost host).
    timeout_s, jobs = 2.0, {}
    for scenario in ("hang", "error", "freeze"):
        (tmp_path / scenario).mkdir()
        kind = "error" if scenario == "error" else "hang"
        jobs[scenario] = start_fake_job(tmp_path / scenario, kind, 2, timeout_s)
    step_file, deadline = tmp_path / "freeze" / "store.step1", time.monotonic() + 30
    while not (step_file.exists() and step_file.read_text() == "2"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    jobs["freeze"][1].send_signal(signal.SIGSTOP)
    expected = {
        "hang": "rank 1 stopped making progress during backward of step 3",
        "error": "rank 1 failed during backward of step 3: ValueError: boom",
        "freeze": "rank 1 stopped answering during",
    }
    for scenario, procs in jobs.items():
        (err,) = finish(procs[:1], within_s=30)
        procs[1].kill()
        procs[1].communicate()
        assert f"[lhdist watchdog] rank 0: {expected[scenario]}" in err, (scenario, err[-2000:])


def test_watchdog_sigkilled_rank_ends_a_gloo_training_job(tmp_path):
    from tests.train.test_resume import launch
    from tests.train.test_training import FAST

    timeout_s = 20
    run_dir = tmp_path / "run"
    args = [*FAST, "--train.steps=1000", "--train.engine=torch",
            f"--parallel.timeout_s={timeout_s}", f"--train.run_dir={run_dir}"]  # fmt: skip
    procs = launch(2, args)
    metrics, deadline = run_dir / "metrics.jsonl", time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count('"loss"') >= 3):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    (err,) = finish([procs[0]], within_s=timeout_s + 30)
    err = err.decode()
    procs[1].communicate()
    assert time.monotonic() - killed_at < timeout_s + 30
    # One line on the survivor, naming the dead rank and its phase; no gloo traceback.
    (line,) = err.strip().splitlines()
    assert "rank 1 stopped answering during " in line and " of step " in line, err[-3000:]
    assert procs[0].returncode == 1


def test_watchdog_exits_when_the_store_stays_unreachable(tmp_path):
    class BrokenStore(DirStore):
        broken = False

        def set(self, key, value):
            if self.broken:
                raise ConnectionResetError("store host gone")
            super().set(key, value)

    store, logs, exits = BrokenStore(str(tmp_path / "s")), [], []
    dog = Watchdog(store, 0, 1, timeout_s=5, interval_s=0.1, log=logs.append, exit=exits.append)
    dog.start()
    store.broken = True
    deadline = time.monotonic() + 10
    while not exits and time.monotonic() < deadline:
        time.sleep(0.05)
    assert exits == [1] and "rendezvous store stopped answering" in logs[0], logs
