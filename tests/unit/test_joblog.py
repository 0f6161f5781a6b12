"""A job's log file: lines appended attempt by attempt, epoch lines as a researcher reads them, and a log that
cannot be written never failing the job."""

from __future__ import annotations

from zoo_sweep.paths import Paths
from zoo_sweep.pipeline.joblog import JobLog, append, epoch_line, job_log_path


def test_attempts_append_to_one_file_per_job(tmp_path):
    paths = Paths(tmp_path)
    first, second = JobLog(), JobLog()
    first("started on a:cpu")
    second("started on b:cuda")
    append(paths, "t1", first.lines)
    append(paths, "t1", ["attempt failed, to be retried:", "RuntimeError: boom"])
    path = append(paths, "t1", second.lines)
    assert path == job_log_path(paths, "t1") == tmp_path / "logs" / "jobs" / "t1.log"
    lines = path.read_text().splitlines()
    assert [ln.split("  ", 1)[-1] for ln in lines] == ["started on a:cpu", "attempt failed, to be retried:",
                                                       "RuntimeError: boom", "started on b:cuda"]
    assert lines[0][:4].isdigit() and lines[0][4] == "-"  # time-stamped by the worker


def test_epoch_line_says_loss_accuracy_change_and_time():
    row = {"epoch": 2, "train_loss": 0.41234, "student_acc": 97.1, "delta": -0.3, "teacher_share": 12.34}
    assert epoch_line(row, 5, 7.25) == ("epoch 2/5: train loss 0.4123, student accuracy 97.10 % (delta -0.30), "
                                        "teacher share 12.3 %, 7.2 s")
    assert "teacher share n/a" in epoch_line({**row, "teacher_share": float("nan")}, 5, 1.0)


def test_a_log_that_cannot_be_written_is_none_not_an_error(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "jobs").write_text("a file where the folder would be")
    assert append(Paths(tmp_path), "t1", ["x"]) is None
