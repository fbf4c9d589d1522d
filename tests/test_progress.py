"""Progress of the long phases (progress.py): a live line on a terminal, plain lines in logs, none under -q.

The runs as users see them go through pytester. pytester's output is not a terminal, so the
live display is asked for with ``--cnn-progress=live`` (what ``auto`` picks on a terminal), and
its carriage returns are read from the raw stdout file pytester writes (its ``outlines`` split
them into lines).
"""

from __future__ import annotations

import pytest

from conftest import FAST
from pytest_cnnbench import progress

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def run(project: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, str]:
    result = project.runpytest_subprocess(*FAST, "--cnn-threads=1", *args)
    raw = (project.path / "stdout").read_bytes().decode("utf-8", "replace")
    return result, raw


def progress_lines(text: str) -> list[str]:
    return [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip().startswith("cnnbench tiny-")]


def test_live_line_on_a_terminal_shows_the_phases_in_place_and_completes(tiny_project):
    result, raw = run(tiny_project, "--cnn-backend=eager,ort", "--cnn-progress=live")
    result.assert_outcomes(passed=2)
    # Rewritten in place: each phase replaces the line with \r rather than adding one.
    assert "\rcnnbench tiny-eager-bs1: building model tiny" in raw
    assert "\rcnnbench tiny-eager-bs1: eager fp32 reference 0/256 images" in raw
    assert "\rcnnbench tiny-ort-bs1: export to ONNX" in raw
    assert "\rcnnbench tiny-ort-bs1: ONNX Runtime session (CPUExecutionProvider)" in raw
    # Completed when the cell ends, before pytest's own letter for it; one line per cell stays.
    completed = [line for line in progress_lines(raw) if " done in " in line]
    assert [line.split(":")[0] for line in completed] == ["cnnbench tiny-eager-bs1", "cnnbench tiny-ort-bs1"]
    # Shown while the cell runs, not held back in pytest's captured output until it ends.
    assert "Captured stdout" not in raw


def test_plain_lines_when_the_output_is_not_a_terminal(tiny_project):
    result, raw = run(tiny_project, "--cnn-backend=eager")  # auto: pytester's output is a file
    result.assert_outcomes(passed=1)
    lines = progress_lines(raw)
    assert any(line.startswith("cnnbench tiny-eager-bs1: building model tiny") for line in lines), lines
    assert any(line.startswith("cnnbench tiny-eager-bs1: eager fp32 reference") for line in lines), lines
    assert "\rcnnbench" not in raw  # nothing rewritten in place in a log file
    assert not any(" done in " in line for line in lines)


@pytest.mark.parametrize("args", [["-q"], ["--cnn-progress=off"]], ids=["quiet", "off"])
def test_no_progress_under_quiet_or_off(tiny_project, args):
    result, raw = run(tiny_project, "--cnn-backend=eager", *args)
    result.assert_outcomes(passed=1)
    assert progress_lines(raw) == []
    assert "cnnbench tiny-" not in raw


def test_bad_progress_value_is_a_usage_error(tiny_project):
    result = tiny_project.runpytest_subprocess("--cnn-progress=loud")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--cnn-progress: unknown 'loud'; valid: auto, live, plain, off*"])


# -- the module itself, with a recording reporter ------------------------------------------------
class RecordingReporter:
    """What progress.py uses of pytest's terminal reporter, recording what is written."""

    def __init__(self) -> None:
        self.out = ""
        self.currentfspath = None
        self._tw = self

    fullwidth = 200

    @property
    def width_of_current_line(self) -> int:
        return len(self.out.rsplit("\n", 1)[-1])

    def ensure_newline(self) -> None:
        pass

    def write(self, text: str) -> None:
        self.out += text

    def rewrite(self, line: str, erase: bool = False) -> None:
        self.out += "\r" + line

    def write_line(self, line: str) -> None:
        self.out += line + "\n"

    def flush(self) -> None:
        pass


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A clock the test advances, and progress's state restored afterwards: this pytest process
    runs the plugin too, and its own display must survive these tests."""
    monkeypatch.setattr(progress, "_display", None)
    monkeypatch.setattr(progress, "_cell", None)
    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    return now


def test_nothing_is_shown_until_a_display_is_installed(clock):
    progress.start_cell("x")
    progress.update("phase", 1, 2)
    progress.end_cell()
    assert not progress.active() and progress.write_line("message") is False


def test_plain_lines_are_rate_limited_per_phase(clock):
    reporter = RecordingReporter()
    progress.install(progress.PlainDisplay(reporter, interval=10.0))
    progress.start_cell("cell")
    progress.update("accuracy", 0, 1000, "images")
    for done in range(1, 100):  # an update per batch, every 0.5 s: 49.5 s in all
        clock[0] += 0.5
        progress.update(done=done, total=1000, detail="images")
    progress.update("timing")
    lines = reporter.out.splitlines()
    # The phase's start, one line per 10 s while it runs (4 more), and the next phase's start.
    assert len(lines) == 6, lines
    assert lines[0] == "cnnbench cell: accuracy 0/1000 images (0 s)"
    assert lines[1] == "cnnbench cell: accuracy 20/1000 images (10 s)"
    assert lines[-1].startswith("cnnbench cell: timing")


def test_live_line_redraws_at_most_five_times_a_second_and_log_lines_go_above_it(clock):
    reporter = RecordingReporter()
    progress.install(progress.LiveDisplay(reporter))
    progress.start_cell("cell")
    progress.update("training", 0, 100)
    for done in range(1, 101):  # 100 updates in 1 s
        clock[0] += 0.01
        progress.update(done=done, total=100)
    assert 5 <= reporter.out.count("\r") <= 7
    progress.write_line("cnnbench: a log line")
    # The live line is blanked, the log line written in its place, and the live line drawn again below it.
    assert reporter.out.endswith("\r\rcnnbench: a log line\n\rcnnbench cell: training 100/100 (1 s)")
    clock[0] += 1.0
    progress.update("timing")
    clock[0] += 0.5
    progress.end_cell()
    assert reporter.out.endswith("\rcnnbench cell: done in 2.5 s, longest: training 2.0 s, timing 0.5 s")


def test_lenet_training_reports_epoch_batch_and_running_loss(clock):
    torch = pytest.importorskip("torch")
    import importlib

    lenet = importlib.import_module("pytest_cnnbench.models.lenet")  # the package exports a function of that name

    reporter = RecordingReporter()
    progress.install(progress.PlainDisplay(reporter, interval=0.0))  # every update a line
    progress.start_cell("lenet")
    images, labels = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    lenet.train(lenet.initial_model(10, 0), images, labels, lenet.Recipe(epochs=2, batch_size=16), log=lambda _: None)
    lines = reporter.out.splitlines()
    assert lines[0] == "cnnbench lenet: training LeNet 0/4 batches of epoch 1/2 (0 s)"
    assert lines[4].startswith("cnnbench lenet: training LeNet 4/4 batches of epoch 1/2, running loss ")
    assert lines[-1].startswith("cnnbench lenet: training LeNet 4/4 batches of epoch 2/2, running loss ")
