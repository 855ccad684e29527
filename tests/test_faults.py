"""What machines and users do to a run: missing or unreadable files, a full or read-only disk, a second
process on the same run, a killed lock holder. Each ends in one clear line and exit code 2, with nothing
half-written and nothing lost."""

import errno
import os
import pathlib
import resource
import signal
import subprocess
import time

import pytest

from autocomp.cli import main
from autocomp.store import RunStore
from autocomp.testing.processes import MNIST_SPACE, cli, journal
from autocomp.testing.tiny import write_fake_mnist


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    write_fake_mnist(root / "data" / "mnist", n_train=200, n_test=50)
    (root / "space.yaml").write_text(MNIST_SPACE)
    return root


def search(root, name, trials=4, *extra, runs=None):
    return ["search", str(root / "space.yaml"), "--data-dir", str(root / "data"), "--trials", str(trials),
            "--runs-dir", str(runs or root / "runs"), "--name", name, "--quiet", *extra]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("autocomp: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("space, message", [
    ("nowhere.yaml", "No such file or directory"),
    (".", "Is a directory"),
])
def test_unreadable_space_files_exit_2(root, space, message, capsys):
    args = search(root, "x")
    args[1] = str(root / space)
    assert main(args) == 2
    assert message in one_line_error(capsys)


def test_a_space_file_without_read_permission_exits_2(root, capsys, monkeypatch):
    real = pathlib.Path.read_text

    def denied(self, *args, **kwargs):  # root reads anything: the denial is simulated where it would surface
        if self.name == "space.yaml":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", denied)
    assert main(search(root, "denied")) == 2
    assert "space.yaml" in one_line_error(capsys)
    assert not (root / "runs" / "denied").exists()


def test_resume_and_report_of_a_missing_run_exit_2(root, capsys):
    for command in (["resume", str(root / "runs" / "gone")], ["report", str(root / "runs" / "gone")],
                    ["finalize", str(root / "runs" / "gone")]):
        assert main(command) == 2
        one_line_error(capsys)


def test_a_read_only_runs_dir_exits_2_and_writes_nothing(root, capsys, monkeypatch):
    runs = root / "readonly"
    real = pathlib.Path.mkdir

    def read_only(self, *args, **kwargs):
        if runs in (self, *self.parents):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    assert main(search(root, "ro", runs=runs)) == 2
    assert "Read-only file system" in one_line_error(capsys)
    assert not runs.exists()


@pytest.mark.parametrize("limit", [0, 4096, 300_000])
def test_a_full_disk_exits_2_and_leaves_no_run_directory(root, tmp_path, limit):
    """RLIMIT_FSIZE makes the kernel refuse to grow any file past `limit` bytes (EFBIG), as a full disk
    would: at 0 not even a temporary file, at 300 kB the 1 MB baseline checkpoint is the first casualty."""
    def full_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(cli(*search(root, "full", runs=tmp_path / "runs")), preexec_fn=full_disk,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("autocomp: error: ") and "Traceback" not in done.stderr
    assert not (tmp_path / "runs" / "full").exists()


class _FillsUp:
    """A journal file on a disk that fills up: part of the next line gets through, then ENOSPC."""

    def __init__(self, f):
        self.f = f

    def seek(self, *args):
        return self.f.seek(*args)

    def write(self, data):
        self.f.write(data[:20])
        self.f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self):
        self.f.close()


def test_disk_full_mid_run_keeps_every_journaled_trial_and_resumes(root, capsys, monkeypatch):
    real_append = RunStore.append

    def fills_up(self, record):
        if record["id"] == 3:
            self._journal = _FillsUp(self._journal or open(self.path / "trials.jsonl", "ab"))  # noqa: SIM115
        return real_append(self, record)

    monkeypatch.setattr(RunStore, "append", fills_up)
    assert main(search(root, "midrun", 8)) == 2
    err = one_line_error(capsys)
    assert "No space left on device" in err and "autocomp resume" in err
    run = root / "runs" / "midrun"
    raw = (run / "trials.jsonl").read_bytes()
    assert raw.endswith(b"\n") and [r["id"] for r in journal(run)] == [0, 1, 2]  # no torn line
    monkeypatch.setattr(RunStore, "append", real_append)
    assert main(["resume", str(run), "--quiet"]) == 0
    assert [r["id"] for r in journal(run)] == list(range(8))


def test_a_second_process_is_refused_and_a_killed_holder_leaves_no_stale_lock(root, tmp_path):
    runs = tmp_path / "runs"
    first = subprocess.Popen(cli(*search(root, "shared", 400, runs=runs)), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    run = runs / "shared"
    deadline = time.time() + 120
    while not journal(run) and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    assert journal(run), "the first run never started"
    for command in (search(root, "shared", 400, runs=runs), ["resume", str(run), "--quiet"]):
        second = subprocess.run(cli(*command), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert "in use by another autocomp process" in second.stderr or "already holds a run" in second.stderr
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert (run / ".lock").exists()  # the file stays; the kernel dropped the flock with its holder
    done = subprocess.run(cli("resume", str(run), "--trials", str(len(journal(run)) + 2), "--quiet"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


class _RunsCode:
    """A pickle that would run a command when unpickled (what a hostile weights file looks like)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _space_with_weights(root, weights, name):
    space = root / f"{name}.yaml"
    space.write_text(MNIST_SPACE.replace("model: {name: lenet300}", f"model: {{name: lenet300, weights: {weights}}}"))
    return space


def test_a_weights_file_that_would_run_code_is_refused(root, tmp_path, capsys):
    import torch

    marker = tmp_path / "ran"
    torch.save({"fc1.weight": _RunsCode(marker)}, tmp_path / "evil.pt")
    space = _space_with_weights(root, tmp_path / "evil.pt", "evil")
    for command in ("check", "search"):
        args = search(root, "evil")
        args[0], args[1] = command, str(space)
        if command == "check":
            args = args[:4]
        assert main(args) == 2
        assert "--trust-model-code" in one_line_error(capsys)
    assert not marker.exists() and not (root / "runs" / "evil").exists()


def test_a_pickled_module_needs_trust_model_code_and_the_run_keeps_a_weights_only_copy(root, tmp_path, capsys):
    import torch

    from autocomp.session import load_run_model
    from autocomp.zoo import build_model

    torch.manual_seed(3)
    module = build_model("lenet300")
    torch.save(module, tmp_path / "whole.pt")  # the module object itself, not its state_dict
    space = _space_with_weights(root, tmp_path / "whole.pt", "whole")
    args = search(root, "whole", 3)
    args[1] = str(space)
    assert main(args) == 2 and "--trust-model-code" in one_line_error(capsys)
    assert main([*args, "--trust-model-code"]) == 0
    run = root / "runs" / "whole"
    saved = torch.load(run / "baseline.pt", weights_only=True)  # a plain state_dict
    assert all(torch.equal(saved[k], v) for k, v in module.state_dict().items())
    assert all(torch.equal(p, q) for p, q in zip(load_run_model(run).parameters(), module.parameters()))
    assert main(["resume", str(run), "--trials", "4", "--quiet"]) == 0  # no flag: the run's copy is read
    assert len(journal(run)) == 4
