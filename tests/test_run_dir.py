"""Run directories that cannot be corrupted (issue 16): one process per run directory (two real
processes), seeds that use all 64 bits, a resume that validates everything it reads, metrics
files with a damaged line, a folder stopped before its first checkpoint, a checkpoint from
elsewhere in a run directory, and the test set checked before training.

Before: two `fnn train` on one --out both exited 0 with metrics [1,2,3,1,2,3]; --seed 2**32 gave
--seed 0's parameters; an edited config.json (lr -1, another batch_size, val_fraction, limit,
wrong types) was trusted on --resume; a half-written metrics line broke every resume with a JSON
error naming no file; a folder stopped before its first checkpoint could be neither resumed nor
restarted; a foreign last.safetensors restarted at epoch 0 over best.safetensors; a wrong or
empty test set failed only after all training, and no results.json was written."""

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import fnn.train.run
from fnn import nn, train
from fnn.cli import main
from fnn.train import ConfigError, DataError, RunDirError, RunLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--hidden", "8", "--limit", "200", "--batch-size", "32", "--no-progress"]


def env():
    e = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("XLA_FLAGS", None)
    return e


def fnn_train(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "fnn", "train", *args],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def epochs_of(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["epoch"] for line in f]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch run of a tiny MLP on 200 digits (copied by each test that changes
    it)."""
    out = str(tmp_path_factory.mktemp("runs") / "done")
    assert main(["train", "--out", out, "--epochs", "2", *TINY]) == 0
    return out


@pytest.fixture
def run_dir(finished, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(finished, out)
    return out


def snapshot(run_dir):
    return {
        n: open(os.path.join(run_dir, n), "rb").read()
        for n in sorted(os.listdir(run_dir))
        if n != ".lock"
    }


# ---- 1. one process per run directory: two real processes -------------------------------------
def test_two_runs_started_together_on_one_folder(tmp_path):
    """Both used to exit 0, metrics.jsonl read [1,2,3,1,2,3], one printed the other's accuracy.
    Now the check-and-create is atomic under the lock: exactly one runs, the other is refused
    (the folder is in use, or already holds a run, depending on who got there first)."""
    out = str(tmp_path / "run")
    procs = [fnn_train("--out", out, "--epochs", "3", *TINY) for _ in range(2)]
    done = [(p, *p.communicate(timeout=300)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in done)
    assert codes == [0, 1], [e[-2000:] for _, _, e in done]
    ((winner, out_text, _),) = [d for d in done if d[0].returncode == 0]
    ((loser, _, err),) = [d for d in done if d[0].returncode == 1]
    assert err.startswith("fnn train: error: ") and "Traceback" not in err
    assert (f"in use by process {winner.pid}" in err) or ("already holds a run" in err), err
    assert epochs_of(out) == [1, 2, 3]
    results = json.load(open(os.path.join(out, "results.json")))
    assert f"test accuracy {results['test_acc']:.4f}" in out_text


def test_a_second_process_is_refused_while_a_run_holds_the_folder(run_dir):
    """Two --resume on one folder both used to succeed. While one resumed run trains, a second
    --resume and a new run on the same --out are refused at once, naming the process; the first
    run is not disturbed (stopped by Ctrl-C, it saves and resumes as usual)."""
    first = fnn_train("--resume", run_dir, "--epochs", "100000", "--chunk-seconds", "0")
    for line in first.stdout:  # the lock is held from before this line until the run ends
        if line.startswith("resuming"):
            break
    second = [fnn_train("--resume", run_dir), fnn_train("--out", run_dir, *TINY)]
    for p in second:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 1, err[-2000:]
        assert f"run directory {run_dir} is in use by process {first.pid}" in err, err
    assert first.poll() is None  # still training
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 3 and f"--resume {run_dir}" in err, err[-2000:]  # saved
    epochs = epochs_of(run_dir)
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= 2
    assert json.load(open(os.path.join(run_dir, "config.json")))["epochs"] == 100000


STALE = r"""
import os, sys, time
from fnn.train.lock import RunLock
RunLock(sys.argv[1]).acquire()
child = os.fork()
if child == 0:  # inherits the locked folder; outlives the process that took the lock
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # not the parent's pipes: the test reads them to their end
        os.dup2(null, fd)
    time.sleep(120)
    os._exit(0)
print(child, flush=True)
os._exit(0)
"""


def test_a_stale_lock_is_reported_with_how_to_clear_it(tmp_path):
    """A lock still held although the process that took it is gone (here: a child it forked
    keeps the folder open) is reported as stale, with the command that finds who holds it. A
    lock file left by a dead process but no longer held is simply taken over."""
    out = str(tmp_path / "run")
    r = subprocess.run(
        [sys.executable, "-c", STALE, out], env=env(), capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    child = int(r.stdout.split()[0])
    try:
        with pytest.raises(
            RunDirError,
            match=r"(?s)is locked, but its recorded owner \(process "
            r"\d+ .*is no longer running: the lock is stale.*"
            r"fuser -v .*run` lists the processes",
        ):
            RunLock(out).acquire()
    finally:
        os.kill(child, signal.SIGKILL)  # (not our child: init reaps it)
    for _ in range(100):  # the kernel drops the lock when the last holder dies
        try:
            with RunLock(out):
                holder = json.load(open(os.path.join(out, ".lock")))
            break
        except RunDirError:
            time.sleep(0.05)
    else:
        pytest.fail("the lock was not released when its last holder died")
    assert holder["pid"] == os.getpid()


def test_a_folder_a_failed_new_run_created_is_removed(tmp_path, monkeypatch):
    """A new run that fails before writing anything (here: Ctrl-C while the data loads) leaves
    no folder behind, so the same --out works next time."""
    out = str(tmp_path / "run")

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fnn.train.run, "load_dataset", interrupted)
    assert main(["train", "--out", out, "--epochs", "1", *TINY]) == 130
    assert not os.path.exists(out)


# ---- 2. seeds ---------------------------------------------------------------------------------
def test_seeds_use_both_key_words():
    """--seed 4294967296 used to give --seed 0's parameters (high bits dropped); seeds >= 2**63
    crashed with OverflowError."""
    model, opt = nn.mlp((8,)), train.make_optimizer()
    w = {
        s: np.asarray(train.init_train_state(model, opt, (8, 8, 1), s).params["1_dense"]["w"])
        for s in (0, 2**32, 2**63, 2**64 - 1)
    }
    assert not np.array_equal(w[0], w[2**32])
    assert len({a.tobytes() for a in w.values()}) == 4
    np.testing.assert_array_equal(train.make_key(7), jax.random.PRNGKey(7))  # as before < 2**32
    assert train.make_key(2**32).tolist() == [1, 0]
    for bad in (2**64, -1):
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64-1\]"):
            train.make_key(bad)
        with pytest.raises(ConfigError, match=r"seed must be an integer between 0 and 2\*\*64-1"):
            train.TrainConfig(seed=bad)
    with pytest.raises(TypeError, match="seed must be an integer"):
        train.make_key(1.5)


# ---- 3. a resume validates what it reads -------------------------------------------------------
EDITS = [  # config.json edited after the run started: (change, what the error says)
    ({"lr": -1}, r"config.json: lr must be a finite number >= 0, got -1"),
    ({"epochs": "3"}, r"config.json: epochs must be an integer >= 1, got '3' \(str\)"),
    ({"hidden": "8"}, r"config.json: hidden must be a list of positive integers"),
    ({"speed": 1}, r"config.json: unknown option 'speed'"),
    ({"batch_size": 64}, r"batch_size is 64 in .*config.json but 32 in .*last.safetensors"),
    ({"val_fraction": 0.2}, r"val_fraction is 0.2 in .*config.json but 0.1 in"),
    ({"limit": 300}, r"limit is 300 in .*config.json but 200 in"),
    ({"epochs": 5}, r"epochs is 5 in .*config.json but 2 in .*; choose with --epochs"),
]


@pytest.mark.parametrize(
    "change, pattern",
    EDITS,
    ids=[next(iter(c)) + "=" + repr(v) for c, _ in EDITS for v in c.values()],
)
def test_resume_refuses_an_edited_config(run_dir, change, pattern, capsys):
    path = os.path.join(run_dir, "config.json")
    config = json.load(open(path))
    json.dump({**config, **change}, open(path, "w"))
    before = snapshot(run_dir)
    assert main(["train", "--resume", run_dir, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fnn train: error: ") and "Traceback" not in err
    assert re.search(pattern, err), err
    assert snapshot(run_dir) == before  # nothing written


def test_resume_may_change_only_the_keys_it_names(run_dir, capsys):
    assert main(["train", "--resume", run_dir, "--lr", "0.1"]) == 2  # bad usage
    assert "cannot change --lr (only --epochs, --data-dir and --remat)" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="cannot change --batch-size"):
        train.train_run(None, run_dir, resume=True, overrides={"batch_size": 64})
    assert main(["train", "--resume", run_dir, "--epochs", "3", "--no-progress"]) == 0
    assert epochs_of(run_dir) == [1, 2, 3]
    assert json.load(open(os.path.join(run_dir, "config.json")))["epochs"] == 3


def test_resume_on_other_data_is_refused(tmp_path, capsys):
    """--data-dir may change (the files moved), the data may not: the checkpoint records the
    sizes it was trained on."""
    from test_data import write_mnist

    write_mnist(tmp_path / "a", n_train=40)
    write_mnist(tmp_path / "b", n_train=48)
    out = str(tmp_path / "run")
    args = ["--dataset", "mnist", "--hidden", "4", "--batch-size", "8", "--no-progress"]
    assert (
        main(["train", "--out", out, "--data-dir", str(tmp_path / "a"), "--epochs", "1", *args])
        == 0
    )
    assert (
        main(
            [
                "train",
                "--resume",
                out,
                "--data-dir",
                str(tmp_path / "b"),
                "--epochs",
                "2",
                "--no-progress",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "was trained on other data than this run loads (train 36 then, 43 now" in err, err
    assert epochs_of(out) == [1]


def test_a_checkpoint_from_elsewhere_is_not_resumed(run_dir, capsys):
    """A last.safetensors without fnn's metadata used to restart at epoch 0 and overwrite
    best.safetensors."""
    import safetensors.numpy

    tensors, _ = train.read_checkpoint(os.path.join(run_dir, "last.safetensors"))
    safetensors.numpy.save_file(
        {k: v for k, v in tensors.items() if k.startswith("params/")},
        os.path.join(run_dir, "last.safetensors"),
    )
    before = snapshot(run_dir)
    assert main(["train", "--resume", run_dir, "--no-progress"]) == 1
    assert "not an fnn training checkpoint" in capsys.readouterr().err
    assert snapshot(run_dir) == before


def test_a_damaged_last_metrics_line_is_dropped_and_said(run_dir, capsys):
    """A full disk used to leave half a line that made every --resume fail with a JSON error
    naming no file."""
    metrics = os.path.join(run_dir, "metrics.jsonl")
    with open(metrics, "a") as f:
        f.write('{"epoch": 3, "step": 1')
    assert main(["train", "--resume", run_dir, "--epochs", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"note: {metrics}: its last line (line 3, 22 bytes) is damaged" in out
    assert "it was dropped" in out and epochs_of(run_dir) == [1, 2, 3]
    lines = open(metrics).read().splitlines()
    lines[1] = lines[1][:30]  # a damaged line before the last: an error naming file and line
    open(metrics, "w").write("\n".join(lines) + "\n")
    assert main(["train", "--resume", run_dir, "--epochs", "4", "--no-progress"]) == 1
    assert f"{metrics}: line 2 of 3 is not a JSON record" in capsys.readouterr().err


def test_metrics_lines_are_appended_whole(tmp_path, monkeypatch):
    """A write cut short (a full disk) is undone: the file never ends in half a line."""
    from fnn.train import jsonl

    path = str(tmp_path / "metrics.jsonl")
    jsonl.append(path, [{"epoch": 1}])
    real_write = os.write
    monkeypatch.setattr(jsonl.os, "write", lambda fd, data: real_write(fd, data[:5]))
    with pytest.raises(OSError, match="short write, 5 of 13 bytes"):
        jsonl.append(path, [{"epoch": 2}])
    monkeypatch.undo()
    assert open(path).read() == '{"epoch": 1}\n'
    assert jsonl.read(path) == ([{"epoch": 1}], None)


def test_a_folder_stopped_before_its_first_checkpoint(tmp_path, capsys):
    """It used to be refused both ways ("has no last.safetensors ... start again" and "already
    holds a run ... --resume"). A new run on it says to use --resume, which starts it from the
    beginning with its config."""
    out = tmp_path / "run"
    out.mkdir()
    config = train.TrainConfig(hidden=(8,), limit=200, epochs=1)
    (out / "config.json").write_text(json.dumps(config.to_dict()))
    (out / "metrics.jsonl").write_text("")
    assert main(["train", "--out", str(out), *TINY]) == 1
    assert (
        f"stopped before its first checkpoint: start it from the beginning with its own "
        f"config by `--resume {out}`" in capsys.readouterr().err
    )
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert "has no checkpoint yet" in capsys.readouterr().out
    assert epochs_of(str(out)) == [1] and (out / "results.json").is_file()


# ---- 7. the data is checked against the model before training ---------------------------------
def test_a_wrong_test_set_fails_before_the_first_step():
    """The test set used to be checked only after all training."""
    d = train.load_dataset("digits", limit=100)
    steps = []
    wrong = dataclasses.replace(d, x_test=d.x_test[:, :6, :6])
    with pytest.raises(
        DataError,
        match=r"x_test examples have shape \(6, 6, 1\) but x_train "
        r"examples \(8, 8, 1\)",
    ):
        train.fit(
            nn.mlp((8,)),
            train.make_optimizer(),
            wrong,
            epochs=1,
            batch_size=16,
            callback=lambda ts, r: steps.append(ts.step),
        )
    labels = dataclasses.replace(d, y_test=np.full(len(d.y_test), 10, np.int32))
    with pytest.raises(DataError, match=r"y_test: labels must lie in \[0, 10\)"):
        train.fit(
            nn.mlp((8,)),
            train.make_optimizer(),
            labels,
            epochs=1,
            batch_size=16,
            callback=lambda ts, r: steps.append(ts.step),
        )
    assert steps == []


def test_an_empty_test_set_fails_before_the_run_directory_is_made(tmp_path, monkeypatch, capsys):
    real = fnn.train.run.load_dataset

    def no_test_set(*a, **k):
        d = real(*a, **k)
        return dataclasses.replace(d, x_test=d.x_test[:0], y_test=d.y_test[:0])

    monkeypatch.setattr(fnn.train.run, "load_dataset", no_test_set)
    out = str(tmp_path / "run")
    assert main(["train", "--out", out, "--epochs", "1", *TINY]) == 1
    assert "the test set of digits is empty" in capsys.readouterr().err
    assert not os.path.exists(out)
