"""The command line as users expect it (issue 28): --version, `train --help` by topic, the exit
statuses (one table: --help, docs/training.md, what main returns), colour and progress bars only on a
terminal, rows printed as they are measured, and Ctrl-C stopping gradcheck and bench within a
second with the rows done so far.

The real processes (`python -m fnn ...`) are started where a real signal or a real pipe is the
point; everything else runs in this process."""

import dataclasses
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import pytest

import fnn
from fnn.cli import main
from fnn.cli._exit import EPILOG, INTERRUPTED, SAVED, TERMINATED
from fnn.cli.train import GROUPS
from fnn.train.config import TrainConfig, option_flag

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env(**extra):
    e = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("NO_COLOR", None)
    return e


def fnn_process(*argv, **extra):
    return subprocess.Popen(
        [sys.executable, "-m", "fnn", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(**extra),
    )


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self):
        return True


# ---- --version ------------------------------------------------------------------------------
def test_version_names_fnn_jax_jaxlib_and_the_backend():
    from importlib.metadata import version

    commands = [[sys.executable, "-m", "fnn", "--version"]]
    if shutil.which("fnn"):  # the installed script: the same entry point
        commands.append([shutil.which("fnn"), "--version"])
    for command in commands:
        r = subprocess.run(command, capture_output=True, text=True, env=env(), timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.startswith(f"fnn {fnn.__version__} ("), r.stdout
        assert f"jax {jax.__version__}, jaxlib {version('jaxlib')}" in r.stdout, r.stdout
        assert f"default backend: {jax.default_backend()} (" in r.stdout, r.stdout


# ---- train --help by topic --------------------------------------------------------------------
def _sections(text: str) -> dict:
    """title -> the text under it, for argparse's 'title:' lines."""
    parts = re.split(r"^([a-z][a-z ]*):$", text, flags=re.M)
    return {title: body for title, body in zip(parts[1::2], parts[2::2])}


def test_train_help_is_grouped_by_topic(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    sections = _sections(out)
    assert list(sections) == ["options", *GROUPS, "exit status"], list(sections)
    # each TrainConfig field is an option, listed under the topic its declaration names
    for field in dataclasses.fields(TrainConfig):
        group = field.metadata["group"]
        assert group in GROUPS, (field.name, group)
        assert re.search(rf"^  {option_flag(field.name)}\b", sections[group], re.M), field.name
    # nothing of train's own is left in the catch-all: only --help and the shared --no-tune
    flags = re.findall(r"^  (-[-\w]+)", sections["options"], re.M)
    assert flags == ["-h", "--no-tune"], flags
    assert all(re.search(r"^  --", sections[g], re.M) for g in GROUPS)  # no topic is empty
    assert out.startswith("usage: python -m fnn train [options]\n")


# ---- exit statuses ----------------------------------------------------------------------------
def test_the_exit_statuses_are_one_table_in_help_and_the_docs(capsys):
    page = open(os.path.join(ROOT, "docs", "training.md")).read()
    assert EPILOG in page  # the training page shows the table --help prints, as it is
    for argv in ([], ["gradcheck"], ["bench"], ["train"]):
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        assert EPILOG in capsys.readouterr().out, argv


def test_exit_statuses(monkeypatch, capsys):
    """2: bad usage (argparse's, and options a command refuses from the options alone);
    3 / 143 / 130: train stopped by Ctrl-C with its checkpoint saved / by SIGTERM / by Ctrl-C
    with nothing saved. (1, a failed check: tests/test_gradcheck.py; 0: everywhere.)"""
    assert main([]) == 2
    with pytest.raises(SystemExit) as e:
        main(["gradcheck", "--format", "yaml"])
    assert e.value.code == 2
    assert main(["train", "--resume-from", "best"]) == 2
    assert main(["train", "--resume", "somewhere", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "fnn train: error: --resume-from needs --resume RUN_DIR" in err
    assert "fnn train: error: --overwrite replaces the files of a new run" in err
    assert main(["launch", "--nproc", "2", "--", "nocommand"]) == 1  # named `launch`, not argv
    assert "fnn launch: error: the command after -- must be" in capsys.readouterr().err

    import fnn.cli.train as cli_train
    from fnn.train.interrupt import TrainingInterrupted
    from fnn.train.state import TrainState

    state = TrainState(None, None, None, None, 1, 10)

    def stopped_by(signum):
        def train_run(*a, **k):
            if signum is None:
                raise KeyboardInterrupt  # before fit: nothing saved
            raise TrainingInterrupted("stopped", state, 0.01, signum)

        return train_run

    for signum, status in (
        (signal.SIGINT, SAVED),
        (signal.SIGTERM, TERMINATED),
        (None, INTERRUPTED),
    ):
        monkeypatch.setattr(cli_train, "train_run", stopped_by(signum))
        assert main(["train", "--epochs", "1", "--out", "nowhere"]) == status, signum
    assert (SAVED, TERMINATED, INTERRUPTED) == (3, 143, 130)
    assert capsys.readouterr().err.count("continue with: python -m fnn train --resume") == 3


# ---- colour and progress bars only on a terminal ------------------------------------------------
@pytest.mark.parametrize(
    "stdout_tty, stderr_tty, no_color",
    [(False, False, None), (True, True, None), (True, False, "1")],
)
def test_colour_and_bars_only_on_a_terminal(stdout_tty, stderr_tty, no_color, monkeypatch):
    out = Terminal() if stdout_tty else io.StringIO()
    err = Terminal() if stderr_tty else io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setenv("TERM", "xterm")
    if no_color:
        monkeypatch.setenv("NO_COLOR", no_color)
    else:
        monkeypatch.delenv("NO_COLOR", raising=False)
    assert main(["gradcheck", "--gate", "relu,tanh"]) == 0
    out, err = out.getvalue(), err.getvalue()
    assert re.search(r"^relu .*ok", out, re.M) and re.search(r"^tanh .*ok", out, re.M), out
    assert ("\x1b[32mok\x1b[0m" in out) == (stdout_tty and not no_color), out
    assert "\r" not in out  # the bar never goes to stdout
    assert ("\r" in err and "gradcheck" in err) == stderr_tty, err  # tqdm's bar, on stderr
    if not stderr_tty:
        assert "\x1b" not in err and "\x1b" not in out.replace("\x1b[32mok\x1b[0m", "")


# ---- rows as they come; Ctrl-C within a second ------------------------------------------------
def _interrupt(p, first_line_starts: str):
    """Read p's stdout up to the first line starting with `first_line_starts` (a measured row):
    p must still be running then (the row came before the end). Send SIGINT; return
    (seconds to exit, the lines read before, the rest of stdout, stderr)."""
    before = []
    for line in p.stdout:
        before.append(line)
        if line.startswith(first_line_starts):
            break
    assert p.poll() is None, "the first row came only when the command ended"
    t0 = time.perf_counter()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    return time.perf_counter() - t0, before, out, err


def test_gradcheck_prints_each_row_as_it_is_checked_and_stops_on_ctrl_c():
    gates = [
        "relu",
        "tanh",
        "lstm_sequence",
        "gru_sequence",
        "conv2d",
        "max_pool2d",
        "attention",
        "layer_norm",
    ]
    p = fnn_process("gradcheck", "--gate", ",".join(gates))
    waited, before, out, err = _interrupt(p, "relu ")
    print(f"gradcheck exited {waited:.2f} s after SIGINT: {err.strip()[-300:]}")
    assert p.returncode == INTERRUPTED, err[-2000:]
    assert waited < 1.0, waited
    rows = [
        line.split()[0]
        for line in before[2:] + out.splitlines()
        if line.split() and line.split()[0] in gates
    ]
    assert rows == gates[: len(rows)] and len(rows) < len(gates), (rows, out)
    assert f"interrupted by SIGINT after {len(rows)} of {len(gates)} checks" in err, err
    assert f"{len(rows)} gates, {len(rows)} ok" in out and "Traceback" not in err


def test_bench_prints_each_row_as_it_is_measured_and_stops_on_ctrl_c():
    cases = "gemm,relu,conv2d,max_pool2d,batch_norm,layer_norm,attention,lstm_sequence,mlp"
    p = fnn_process("bench", "--quick", "--no-torch", "--only", cases)
    waited, before, out, err = _interrupt(p, "matmul ")
    print(f"bench exited {waited:.2f} s after SIGINT: {err.strip()[-300:]}")
    assert p.returncode == INTERRUPTED, err[-2000:]
    assert waited < 1.0, waited
    assert re.search(r"interrupted by SIGINT after \d+ of \d+ steps", err), err
    # the tables of the rows measured so far: at least the gemm's
    assert "Reference: matmul 256x256x256 float32" in out and "Traceback" not in err, out


# ---- sample: in pieces, the same bytes ----------------------------------------------------------
def test_sample_runs_in_pieces_with_the_same_bytes(tmp_path, capsys):
    from fnn.train.sample import Sampling, sample_run

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.py").write_text(
        "".join(f"def f{i}(x):\n    return x * {i % 7}\n" for i in range(150))
    )
    out = str(tmp_path / "run")
    assert (
        main(
            [
                "train",
                "--model",
                "gru",
                "--data-dir",
                str(corpus),
                "--context",
                "16",
                "--hidden",
                "8",
                "--epochs",
                "1",
                "--no-progress",
                "--out",
                out,
            ]
        )
        == 0
    )
    whole = sample_run(out, "def ", length=120, seed=5)
    sampling = Sampling(out, "def ", length=120, seed=5, seconds=0.0)  # a byte a piece
    pieces = [sampling.step() for _ in range(3)]
    # 16 bytes until a piece that did not compile has been timed, then ~0 s worth: 1
    assert [len(p) for p in pieces] == [16, 16, 1]
    while sampling.done < sampling.length:
        pieces.append(sampling.step(7))
    assert b"".join(pieces) == sampling.text == whole and len(whole) == 120
    capsys.readouterr()
    assert main(["sample", out, "--prompt", "def ", "--length", "120", "--seed", "5"]) == 0
    captured = capsys.readouterr()
    assert captured.out.encode() == b"def " + whole + b"\n"  # the text alone on stdout
    assert re.search(r"^sample 16/120 bytes \d+\.\d s$", captured.err, re.M), captured.err
    assert re.search(r"^sample 120/120 bytes", captured.err, re.M) and "\r" not in captured.err


# ---- train: the compile on a terminal -----------------------------------------------------------
def test_train_shows_the_compile_on_a_terminal(monkeypatch):
    """While XLA compiles the epoch's program (seconds for a large model), a terminal shows a
    line counting them (fnn.train.hooks.ProgressBar.on_compiling, fed by interruptible's
    ticks); elsewhere the first epoch's line says the compile time."""
    import fnn.train.loop as loop
    from fnn import nn
    from fnn.train import fit, load_dataset, make_optimizer
    from fnn.train.hooks import Hook
    from fnn.train.interrupt import StopRequest, interruptible

    ticks = []
    with StopRequest() as stop:
        assert interruptible(lambda: time.sleep(0.3) or 7, stop, tick=ticks.append) == (True, 7)
    assert len(ticks) >= 3 and ticks == sorted(ticks) and ticks[-1] < 0.4

    def slow(fn, stop, tick=None, **kw):  # a compile that takes a while
        for s in (0.05, 0.1):
            tick(s)
        return interruptible(fn, stop, tick=tick, **kw)

    class Seen(Hook):
        progress, calls = True, []

        def on_compiling(self, seconds):
            self.calls.append(seconds)

    monkeypatch.setattr(loop, "interruptible", slow)
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    data = load_dataset("digits", limit=200)
    fit(
        nn.mlp((8,)),
        make_optimizer("adam", 1e-2),
        data,
        epochs=1,
        batch_size=50,
        progress=True,
        hooks=[Seen()],
    )
    assert Seen.calls[:2] == [0.05, 0.1]
    assert "\rcompiling the epoch's program (XLA): 0.1 s" in err.getvalue()
    assert "epoch 1/1" in err.getvalue()
