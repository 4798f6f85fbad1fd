"""`python -m fnn train` end to end on small data in a temporary directory: the run directory,
resume after an interruption, MNIST/CIFAR-10 files, and errors without tracebacks."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fnn.train.run
from fnn.cli import main
from fnn.train import read_checkpoint

from test_data import write_cifar, write_mnist

TINY = ["--hidden", "16", "--lr", "0.01", "--batch-size", "64", "--no-progress", "--limit", "600"]


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_train_writes_the_run_directory(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--epochs", "2", "--out", out, *TINY]) == 0
    printed = capsys.readouterr().out
    assert "trainable parameters" in printed and "epoch 2/2" in printed
    assert "val loss" in printed and "test accuracy" in printed
    for name in (
        "config.json",
        "metrics.jsonl",
        "last.safetensors",
        "best.safetensors",
        "curves.png",
        "results.json",
    ):
        assert os.path.isfile(os.path.join(out, name)), name
    with open(os.path.join(out, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["grad"] == "custom" and config["model"] == "mlp" and config["hidden"] == [16]
    metrics = read_metrics(out)
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics[1]["val_acc"] > 0.3
    results = json.load(open(os.path.join(out, "results.json")))
    assert 0.3 < results["test_acc"] <= 1 and results["best_epoch"] in (1, 2)
    # the same run directory cannot be started twice
    assert main(["train", "--epochs", "2", "--out", out, *TINY]) == 1
    assert "already holds a run" in capsys.readouterr().err


def test_only_process_zero_writes(tmp_path, monkeypatch, capsys):
    """Multi-host: processes other than 0 train the same run but write and print nothing."""
    import jax

    out0, out1 = str(tmp_path / "p0"), str(tmp_path / "p1")
    assert main(["train", "--epochs", "2", "--out", out0, "--diagnostics", *TINY]) == 0
    capsys.readouterr()
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    assert main(["train", "--epochs", "2", "--out", out1, "--diagnostics", *TINY]) == 0
    assert not os.path.exists(out1)
    assert capsys.readouterr().out == ""
    # resumed on process 1 from process 0's directory: trains, writes nothing there
    before = {n: os.path.getmtime(os.path.join(out0, n)) for n in os.listdir(out0)}
    assert main(["train", "--resume", out0, "--epochs", "3", "--no-progress"]) == 0
    assert {n: os.path.getmtime(os.path.join(out0, n)) for n in os.listdir(out0)} == before
    results = fnn.train.run.train_run(fnn.train.run.read_config(out0), out1, progress=False)
    assert set(results) == {"epoch", "step", "test_loss", "test_acc"} and results["epoch"] == 2
    assert not os.path.exists(out1)


def test_resume_after_interrupt_matches_uninterrupted(tmp_path, monkeypatch, capsys):
    args = ["--epochs", "3", "--dropout", "0.1", "--schedule", "cosine", *TINY]
    straight = str(tmp_path / "straight")
    assert main(["train", "--out", straight, *args]) == 0

    real_save = fnn.train.run.save_train_state

    def interrupt_after_epoch_2(path, ts, *a, **k):
        real_save(path, ts, *a, **k)
        if path.endswith("last.safetensors") and ts.epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(fnn.train.run, "save_train_state", interrupt_after_epoch_2)
    stopped = str(tmp_path / "stopped")
    # a Ctrl-C outside fit's epochs (here: while saving) stops at once: 130, the last
    # checkpoint as it was (fit's own stop saves where it stopped: 3, tests/test_interrupts.py)
    assert main(["train", "--out", stopped, *args]) == 130
    assert f"--resume {stopped}" in capsys.readouterr().err
    monkeypatch.undo()
    # stopped between last.safetensors and metrics.jsonl: the record of epoch 2 is in `last`
    assert [m["epoch"] for m in read_metrics(stopped)] == [1]

    assert main(["train", "--resume", stopped, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "resuming" in printed and "lacked epoch 2 (the run stopped while saving it)" in printed
    assert [m["epoch"] for m in read_metrics(stopped)] == [1, 2, 3]
    a, meta_a = read_checkpoint(os.path.join(straight, "last.safetensors"))
    b, meta_b = read_checkpoint(os.path.join(stopped, "last.safetensors"))
    assert sorted(a) == sorted(b) and meta_a["step"] == meta_b["step"]
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # a finished run resumes to no more epochs; --resume keeps the config
    assert main(["train", "--resume", stopped, "--model", "cnn"]) == 2  # bad usage
    assert "cannot change --model" in capsys.readouterr().err


def test_mnist_cnn_and_cifar10_resnet_from_files(tmp_path, capsys):
    mnist = tmp_path / "mnist"
    write_mnist(mnist, n_train=48, n_test=16, size=8)
    assert (
        main(
            [
                "train",
                "--dataset",
                "mnist",
                "--data-dir",
                str(mnist),
                "--model",
                "cnn",
                "--channels",
                "2",
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--no-progress",
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    cifar = tmp_path / "cifar"
    write_cifar(cifar, n_per_file=8)
    assert (
        main(
            [
                "train",
                "--dataset",
                "cifar10",
                "--data-dir",
                str(cifar),
                "--model",
                "resnet",
                "--channels",
                "2,4",
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--grad",
                "builtin",
                "--no-progress",
                "--out",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "input (8, 8, 1)" in printed and "input (32, 32, 3)" in printed


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and "Traceback" not in err
    assert main(["train", "--resume", str(tmp_path / "none")]) == 1
    assert "not a run directory" in capsys.readouterr().err
    assert (
        main(["train", "--batch-size", "5000", "--out", str(tmp_path / "big"), "--no-progress"])
        == 1
    )
    assert "batch size 5000" in capsys.readouterr().err
    for bad in (
        ["train", "--epochs", "0"],
        ["train", "--hidden", "a,b"],
        ["train", "--model", "vgg"],
        ["train", "--optimizer", "lbfgs"],
    ):
        with pytest.raises(SystemExit) as e:
            main(bad)
        assert e.value.code == 2
    assert main([]) == 2


def test_python_dash_m_fnn(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run(
        [sys.executable, "-m", "fnn", "train", "--dataset", "cifar10", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 1
    assert "data_batch_1.bin" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "fnn", "train", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0 and "--resume RUN_DIR" in r.stdout and "--grad" in r.stdout
