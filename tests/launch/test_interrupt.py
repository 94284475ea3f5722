"""Stopping `python flows/mnist.py` the way it really happens: Ctrl-C to the terminal's whole process group, SIGTERM
to the flow process, an impatient second Ctrl-C, the run's Prefect server killed. Each ends within seconds with
one line that says what happened, the last checkpoint intact, and no run folder; the rerun resumes."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from mnist_core.config import RunParams
from mnist_core.training.checkpoint import load_checkpoint
from tests.support import PROJECT_ROOT, running
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

EPOCHS = 6
ARGS = ["--epochs", str(EPOCHS), "--hidden-sizes", "32", "--batch-size", "128", "--seed", "0"]
STOP_WITHIN_S = 10.0


def _params(output: Path) -> RunParams:
    return RunParams(epochs=EPOCHS, hidden_sizes=[32], batch_size=128, seed=0, output_dir=output)


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory, prefect_home_with_database) -> Path:
    """One PREFECT_HOME for the module, with its database already set up (as after a user's first run): each run's
    own server starts on an existing database."""
    return prefect_home_with_database(tmp_path_factory.mktemp("prefect-home"))


def as_a_terminal_starts_it() -> None:
    """Ctrl-C's default action, as a shell gives a foreground command: the test runner's worker processes (xdist)
    ignore SIGINT, and a child would inherit that and never see the Ctrl-C the tests send."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class FlowProcess:
    """`python flows/mnist.py` in a process group of its own, as a terminal runs a foreground command."""

    def __init__(self, data_dir: Path, mirror: Path, output: Path, home: Path, log: Path) -> None:
        self.output, self.log_path = output, log
        self.checkpoint = output / ".checkpoints" / _params(output).checkpoint_name() / "checkpoint.pt"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_HOME=str(home), PYTHONUNBUFFERED="1")
        command = [sys.executable, str(PROJECT_ROOT / "flows" / "mnist.py"), "--data-dir", str(data_dir),
                   "--mirror", str(mirror), "--output-dir", str(output), *ARGS]  # fmt: skip
        self.command, self.env = command, env
        with open(log, "wb") as stream:
            self.process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=stream,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=as_a_terminal_starts_it)  # fmt: skip

    def wait_for_checkpoint(self, timeout_s: float = 180) -> None:
        def written() -> bool:
            assert self.process.poll() is None, f"the flow exited ({self.process.returncode}):\n{self.output_text()}"
            return self.checkpoint.is_file()

        wait_until(written, timeout_s, lambda: f"no checkpoint after {timeout_s} s:\n{self.output_text()}", 0.05)

    def signal_and_time(self, *signals: tuple[signal.Signals, bool]) -> tuple[int, float]:
        """Send each (signal, to the whole group?); the exit status and the seconds since the first."""
        pid = self.process.pid
        return self.stop_and_time(*[lambda s=s: (os.killpg if s[1] else os.kill)(pid, s[0]) for s in signals])

    def stop_and_time(self, *actions: Callable[[], None]) -> tuple[int, float]:
        """Do each action in turn; the exit status and the seconds since the first."""
        started = time.monotonic()
        for action in actions:
            action()
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            pytest.fail(f"still running 60 s after being stopped:\n{self.output_text()}")
        return code, time.monotonic() - started

    def output_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout_s: float = 60) -> None:
        wait_until(
            lambda: text in self.output_text(),
            timeout_s,
            lambda: f"no {text!r} after {timeout_s} s:\n{self.output_text()[-3000:]}",
            every_s=0.02,
        )

    def server_url(self) -> str:
        line = next(line for line in self.output_text().splitlines() if "Prefect server of this run:" in line)
        return line.split("run: ")[1].split()[0]

    def server_pid(self) -> int:
        """The run's server: the child of the flow process that runs `prefect server start`."""
        for child in psutil.Process(self.process.pid).children():
            with contextlib.suppress(psutil.Error):
                if {"server", "start"} <= set(child.cmdline()):
                    return child.pid
        pytest.fail("no server process under the flow process")

    def assert_stopped_cleanly(self, code: int, expected_code: int, seconds: float, message: str) -> int:
        """The exit, the time, the message and what is on disk; returns the epoch the checkpoint holds."""
        output = self.output_text()
        assert code == expected_code, output[-3000:]
        assert seconds < STOP_WITHIN_S, f"took {seconds:.1f} s to stop"
        last_line = output.strip().splitlines()[-1]
        assert last_line.startswith("mnist: ") and message in last_line, last_line
        assert "rerun the same command to resume" in last_line
        assert "Traceback" not in output and "Retry" not in output, output[-3000:]
        epoch = load_checkpoint(self.checkpoint, _params(self.output))["epoch"]
        assert 1 <= epoch < EPOCHS, "the stop did not land mid-training"
        assert not [p for p in self.output.iterdir() if not p.name.startswith(".")], "a stopped run left a run folder"
        # An exit at once (a second signal, a dead server) may leave a checkpoint's temp file beside it: never a
        # half-written file anywhere else.
        assert all(part.parent == self.checkpoint.parent for part in self.output.rglob("*.part"))
        return epoch

    def assert_server_gone(self, url: str) -> None:
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/api/health", timeout=2)


@pytest.fixture
def flow(tmp_path: Path, mnist_data_dir: Path, mnist_mirror: Path, prefect_home: Path) -> Iterator[FlowProcess]:
    """A run started and past its first checkpoint, mid-training; killed (its group) if a test leaves it running."""
    running = FlowProcess(mnist_data_dir, mnist_mirror, tmp_path / "runs", prefect_home, tmp_path / "flow.log")
    try:
        running.wait_for_checkpoint()
        yield running
    finally:
        if running.process.poll() is None:
            os.killpg(running.process.pid, signal.SIGKILL)
            running.process.wait()


def test_ctrl_c_to_the_process_group_stops_the_run_and_the_rerun_resumes(
    flow: FlowProcess, mnist_data_dir: Path, mnist_mirror: Path, prefect_home: Path, tmp_path: Path
) -> None:
    """Ctrl-C mid-training; then the same command again, which resumes and completes, and a Ctrl-C once it has
    completed (after the summary is printed, while the run's server is being stopped): the run stands (exit 0)."""
    url = flow.server_url()
    code, seconds = flow.signal_and_time((signal.SIGINT, True))
    epoch = flow.assert_stopped_cleanly(code, 130, seconds, "interrupted (Ctrl-C)")
    assert "Finished in state Crashed" in flow.output_text(), "the run's end was not recorded"
    flow.assert_server_gone(url)
    print(f"\nCtrl-C after epoch {epoch}: exit 130 after {seconds:.1f} s")

    # The rerun: the same command, environment and output folder.
    rerun = FlowProcess(mnist_data_dir, mnist_mirror, flow.output, prefect_home, tmp_path / "rerun.log")
    assert rerun.command == flow.command
    try:
        code, _ = rerun.stop_and_time(
            lambda: rerun.wait_for_output("Champion: ", timeout_s=300),
            lambda: os.killpg(rerun.process.pid, signal.SIGINT),
        )
    finally:
        if rerun.process.poll() is None:
            os.killpg(rerun.process.pid, signal.SIGKILL)
            rerun.process.wait()
    output = rerun.output_text()
    assert code == 0, output[-3000:]
    assert "Traceback" not in output and "rerun" not in output
    if "SIGINT: the run had completed" not in output:  # the signal came after the clean-up: nothing to cut short
        assert rerun.process.returncode == 0
    [run_dir] = [p for p in flow.output.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert (run_dir / "model_card.json").is_file() and (flow.output / "registry.db").is_file()
    assert f'"resumed_from_epoch": {epoch}' in (run_dir / "model_card.json").read_text()


def test_sigterm_to_the_flow_process_stops_the_run(flow: FlowProcess) -> None:
    url = flow.server_url()
    code, seconds = flow.signal_and_time((signal.SIGTERM, False))
    flow.assert_stopped_cleanly(code, 143, seconds, "terminated (SIGTERM)")
    assert "Finished in state Crashed" in flow.output_text(), "the run's end was not recorded"
    flow.assert_server_gone(url)
    print(f"\nSIGTERM: exit 143 after {seconds:.1f} s")


def test_a_second_ctrl_c_stops_at_once(flow: FlowProcess) -> None:
    """The impatient user: Ctrl-C, and again while the first is being handled (the run is recorded as crashed,
    then its server is stopped): the second exits at once."""
    url = flow.server_url()
    code, seconds = flow.stop_and_time(
        lambda: os.killpg(flow.process.pid, signal.SIGINT),
        lambda: flow.wait_for_output("Finished in state Crashed"),
        lambda: os.killpg(flow.process.pid, signal.SIGINT),
    )
    flow.assert_stopped_cleanly(code, 130, seconds, "SIGINT again: stopping now")
    time.sleep(1)  # the server was sent SIGTERM on the way out; it takes a moment
    flow.assert_server_gone(url)
    print(f"\ntwo Ctrl-C: exit 130 after {seconds:.1f} s")


def test_the_run_stops_when_its_server_dies(flow: FlowProcess) -> None:
    server = flow.server_pid()
    code, seconds = flow.stop_and_time(lambda: os.killpg(server, signal.SIGKILL))
    epoch = flow.assert_stopped_cleanly(code, 1, seconds, f"the Prefect server of this run (PID {server}) exited")
    print(f"\nserver killed after epoch {epoch}: exit 1 after {seconds:.1f} s")


def test_a_killed_run_takes_its_server_with_it(flow: FlowProcess) -> None:
    """SIGKILL leaves the run no time to stop its server: the server does (its lifeline pipe from the run reads
    end-of-file, launch/lifeline.py). Nothing is left running, and the checkpoint is intact."""
    url, server = flow.server_url(), flow.server_pid()
    code, _ = flow.stop_and_time(lambda: os.killpg(flow.process.pid, signal.SIGKILL))
    assert code == -signal.SIGKILL
    wait_until(lambda: not running(server), 20, "the run's server outlived the killed run", every_s=0.2)
    flow.assert_server_gone(url)
    assert 1 <= load_checkpoint(flow.checkpoint, _params(flow.output))["epoch"] < EPOCHS


@pytest.mark.parametrize("after_s", [0.3, 1.5])
def test_ctrl_c_while_the_command_is_still_importing_exits_quietly(
    after_s: float, tmp_path: Path, mnist_data_dir: Path, mnist_mirror: Path, prefect_home: Path
) -> None:
    """Found by a new user: a Ctrl-C in the seconds the imports take (torch, Prefect) printed a KeyboardInterrupt
    traceback. Now one line, status 130, and no run started."""
    started = FlowProcess(mnist_data_dir, mnist_mirror, tmp_path / "runs", prefect_home, tmp_path / "flow.log")
    time.sleep(after_s)
    assert started.process.poll() is None, started.output_text()
    code, _ = started.signal_and_time((signal.SIGINT, True))
    output = started.output_text()
    assert code == 130 and "Traceback" not in output, output
    assert output.strip().splitlines()[-1].startswith("mnist: interrupted (Ctrl-C)"), output
    runs = tmp_path / "runs"  # preflight may have made the output folder (empty), nothing more
    assert not runs.exists() or not any(runs.iterdir()), f"work started: {list(runs.iterdir())}"
