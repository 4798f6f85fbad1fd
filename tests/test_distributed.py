"""Several processes, one run, for real: processes joined by jax.distributed on this machine,
CPU collectives over gloo, started by `python -m fnn launch` or by hand with --coordinator.

- two processes x 4 host CPU devices train 20 steps of an MLP on digits, data parallel and
  with sharded parameters, both gradients (fit), and their parameters equal those of one
  process with 8 devices within 1e-6 relative (float32 sums in another order; printed);
- `train --shard params` in two processes, its process 0 killed inside the write of its second
  last.safetensors: the first stays intact, and `--resume` by two new processes ends with the
  bits of an uninterrupted two-process run (tensors of last, metrics, results); the same run
  resumed by one process of 8 devices, and a one-process run resumed by two processes, end
  within 1e-6 of it;
- the launcher: a Ctrl-C stops both processes at the same step (process 0 saves it) and two
  new processes resume there; one process killed mid-epoch stops the other within a bounded
  time, the launcher's status is non-zero and names the process, and no process is left;
- joining: a process that never comes, the SLURM environment read as JAX reads it (and its
  coordinator not answering), a run directory locked by another run: each a one-line error
  from every process, within the timeout;
- bad options of train and launch, refused naming them.

One JAX persistent compilation cache (a temporary folder) serves every process, so a program
is compiled once per topology.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from fnn.cli import main
from fnn.train import RunLock, read_checkpoint
from fnn.train.distributed import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [
    "--limit",
    "360",
    "--batch-size",
    "32",
    "--hidden",
    "256",
    "--schedule",
    "constant",
    "--no-progress",
    "--shard",
    "params",
]  # 10 steps an epoch; the 64x256 weight split

DRIVER = textwrap.dedent(r"""
    import dataclasses, json, os, signal, sys, time
    t0 = time.perf_counter()
    from fnn.train import distributed
    distributed.initialize()  # from the launcher's environment; one process: nothing
    import jax, numpy as np
    from fnn import nn, train
    from fnn.cli import main
    from fnn.train.parallel import data_parallel, gather

    base, mode, cli = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    assert jax.device_count() == 8, jax.devices()
    run = lambda *a: main(["train", *a, *cli])

    if mode in ("two", "one"):  # 20 steps of fit, 4 ways, saved by process 0
        data = train.load_dataset("digits", limit=360)
        data = dataclasses.replace(data, x_val=data.x_val[:0], y_val=data.y_val[:0])
        for shard in ("none", "params"):
            for grad in ("custom", "builtin"):
                devices = data_parallel(8, shard=shard, min_shard_size=256)
                ts, hist = train.fit(nn.mlp((32,)), train.make_optimizer("adam", 3e-3), data,
                                     epochs=2, batch_size=32, grad=grad, seed=1,
                                     devices=devices)
                assert ts.step == 20
                if shard == "params" and jax.process_count() > 1:  # split across both
                    assert not jax.tree_util.tree_leaves(ts.params)[1].is_fully_addressable
                flat = {"/".join(map(str, p)): np.asarray(v) for p, v in
                        jax.tree_util.tree_leaves_with_path(gather(ts.params))}
                print(f"{time.perf_counter() - t0:.1f} s: fit {shard} {grad}", flush=True)
                if jax.process_index() == 0:
                    np.savez(os.path.join(base, f"fit-{mode}-{shard}-{grad}.npz"), **flat,
                             losses=np.array([r["train_loss"] for r in hist]))
    if mode == "two":
        assert run("--out", os.path.join(base, "straight"), "--epochs", "2") == 0
        print(f"{time.perf_counter() - t0:.1f} s: train", flush=True)
        if jax.process_index() == 0:  # killed inside the write of the 2nd last.safetensors
            import fnn.train.checkpoint as checkpoint
            real, calls = checkpoint.write_file, []

            def write_file(path, chunks, **kw):
                calls.append(path)
                if calls.count("last.safetensors") == 2 and path == "last.safetensors":
                    def cut(chunks):  # the header is written, then SIGKILL
                        for i, chunk in enumerate(chunks):
                            if i == 1:
                                os.kill(os.getpid(), signal.SIGKILL)
                            yield chunk
                    chunks = cut(chunks)
                return real(path, chunks, **kw)

            checkpoint.write_file = write_file
        run("--out", os.path.join(base, "killed"), "--epochs", "2")
        raise SystemExit("not killed")
    if mode == "one":
        assert run("--out", os.path.join(base, "one"), "--epochs", "1", "--devices", "8") == 0
    if mode == "resume":
        resume = ["--no-progress", "--shard", "params"]  # not part of the config
        assert main(["train", "--resume", os.path.join(base, "killed"), *resume]) == 0
        assert main(["train", "--resume", os.path.join(base, "one"), "--epochs", "2",
                     *resume]) == 0
    print(f"driver {mode} done in process {jax.process_index()}")
""")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("xla-cache")
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for name in ("JAX_COORDINATOR_ADDRESS", "FNN_NUM_PROCESSES", "FNN_PROCESS_ID"):
        env.pop(name, None)
    return env


def start(args, env, **extra):
    """A process of `python -m fnn ARGS` (or a script), its output piped."""
    argv = [sys.executable, *(["-m", "fnn"] if not args[0].endswith(".py") else []), *args]
    return subprocess.Popen(
        argv,
        env=dict(env, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def finish(p, timeout=300):
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def one_process(env, devices):
    return dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def launch(n, k, command, env, *options):
    return start(
        ["launch", "--nproc", str(n), "--devices-per-process", str(k), *options, "--", *command],
        env,
    )


def tensors(path):
    return read_checkpoint(str(path))[0]


def metrics(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [(r["epoch"], r["train_loss"], r["val_loss"]) for r in map(json.loads, f)]


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))


def test_two_processes_train_as_one_and_resume(tmp_path, env):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    cli = json.dumps(CLI)
    t0 = time.perf_counter()
    two = launch(2, 4, [str(driver), str(tmp_path), "two", cli], env, "--grace", "1")
    one = start([str(driver), str(tmp_path), "one", cli], one_process(env, 8))
    code, out, err = finish(two)
    assert "driver two done" not in out
    assert code == 128 + signal.SIGKILL, err[-3000:]
    assert re.search(
        r"fnn launch: process 0 \(pid \d+\) was killed by SIGKILL; stopping the "
        r"others",
        err,
    ), err[-3000:]
    code, out1, err1 = finish(one)
    assert code == 0, err1[-3000:]
    print(f"launch of 2 x 4 and 1 x 8 processes: {time.perf_counter() - t0:.1f} s")

    # fit: 2 processes x 4 devices = 1 process x 8, 20 steps, within float32's sum order
    for shard in ("none", "params"):
        for grad in ("custom", "builtin"):
            a = np.load(tmp_path / f"fit-two-{shard}-{grad}.npz")
            b = np.load(tmp_path / f"fit-one-{shard}-{grad}.npz")
            assert sorted(a.files) == sorted(b.files)
            worst = max(rel(a[k], b[k]) for k in a.files)
            print(
                f"2 x 4 vs 1 x 8 devices, shard={shard}, grad={grad}, 20 steps: "
                f"max relative difference {worst:.1e} (params and losses)"
            )
            assert worst <= 1e-6, (shard, grad, worst)
    # process 0 killed inside the write of epoch 2's checkpoint: epoch 1's is intact
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    assert (
        tensors(killed / "last.safetensors").keys() == tensors(straight / "last.safetensors").keys()
    )
    assert [m[0] for m in metrics(killed)] == [1]
    assert any(n.endswith(".tmp") for n in os.listdir(killed))  # the cut write's leftover
    shutil.copytree(killed, tmp_path / "killed-one")

    # both processes again (--resume), and one process of 8 devices on a copy
    t0 = time.perf_counter()
    again = launch(2, 4, [str(driver), str(tmp_path), "resume", cli], env)
    alone = start(
        [
            "train",
            "--resume",
            str(tmp_path / "killed-one"),
            "--devices",
            "8",
            "--shard",
            "params",
            "--no-progress",
        ],
        one_process(env, 8),
    )
    code, out, err = finish(again)
    assert code == 0, err[-3000:]
    assert "[0] resuming" in out and "after epoch 1" in out, out[-3000:]
    assert "[1] driver resume done in process 1" in out
    code, out1, err1 = finish(alone)
    assert code == 0, err1[-3000:]
    print(f"resumed by 2 x 4 and by 1 x 8: {time.perf_counter() - t0:.1f} s")

    want = tensors(straight / "last.safetensors")
    got = tensors(killed / "last.safetensors")
    assert all(np.array_equal(want[k], got[k]) for k in want), "resume is not bit-identical"
    assert metrics(killed) == metrics(straight)
    results = [json.loads((r / "results.json").read_text()) for r in (straight, killed)]
    assert results[0]["test_loss"] == results[1]["test_loss"]
    for other in ("killed-one", "one"):  # 2 -> 1 process, and 1 -> 2 processes
        got = tensors(tmp_path / other / "last.safetensors")
        worst = max(rel(want[k], got[k]) for k in want if want[k].dtype.kind == "f")
        print(
            f"{other}: resumed with another process count, max relative difference from "
            f"the two-process run {worst:.1e}"
        )
        assert worst <= 1e-6 and [m[0] for m in metrics(tmp_path / other)] == [1, 2]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is not left: it is reaped or gone
        return f.read().split(")")[-1].split()[0] != "Z"


def _pids(p):
    """{process: pid} from the launcher's first line (read from its stderr)."""
    for line in p.stderr:
        if line.startswith("fnn launch: 2 processes"):
            return {int(i): int(pid) for i, pid in re.findall(r"process (\d) pid (\d+)", line)}
    raise AssertionError("the launcher did not name its processes")


def _until(p, prefix):
    for line in p.stdout:
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no line {prefix!r}")


def test_launcher_interrupted_then_one_process_dies(tmp_path, env):
    run = str(tmp_path / "run")
    args = ["--limit", "360", "--batch-size", "8", "--no-progress", "--shard", "params"]
    # Ctrl-C to the launcher: both processes stop at the same step, process 0 saves it
    p = launch(2, 2, ["train", *args, "--epochs", "200", "--out", run], env, "--grace", "2")
    _pids(p)
    _until(p, "[0] epoch   1/200")
    time.sleep(0.3)  # into epoch 2, most likely
    p.send_signal(signal.SIGINT)
    code, out, err = finish(p, timeout=120)
    assert code == 3, err[-3000:]  # as train's: stopped and saved where it was
    stops = re.findall(r"\[(\d)\] interrupted (at step \d+ of epoch \d+|after epoch \d+) ", err)
    assert len(stops) == 2 and stops[0][1] == stops[1][1], err[-3000:]
    assert (
        "stopped by SIGINT: process 0 exited with status 3, process 1 exited with status 3" in err
    )
    where = stops[0][1]
    epoch = int(where.split()[-1]) + where.startswith("after")  # the epoch it resumes in
    # resumed by two new processes; then process 1 is killed in the middle of an epoch
    p = launch(2, 2, ["train", "--resume", run, *args[-3:]], env, "--grace", "2")
    pids = _pids(p)
    resumed = _until(p, "[0] resuming")
    assert f" {where} " in resumed, resumed
    _until(p, f"[0] epoch {epoch:3d}/200")
    os.kill(pids[1], signal.SIGKILL)
    t0 = time.perf_counter()
    code, out, err = finish(p, timeout=120)
    waited = time.perf_counter() - t0
    print(f"launcher exited {waited:.1f} s after process 1 was killed (grace 2 s)")
    assert code == 128 + signal.SIGKILL, err[-3000:]
    assert f"process 1 (pid {pids[1]}) was killed by SIGKILL; stopping the others" in err
    assert "failed: process 1 was killed by SIGKILL (process 0 " in err
    assert waited < 30
    assert not any(_alive(pid) for pid in pids.values())


def test_joining_fails_clearly_and_a_locked_folder_stops_every_process(tmp_path, env):
    port, dead, free = free_port(), free_port(), free_port()
    slurm = {
        "SLURM_JOB_ID": "7",
        "SLURM_STEP_NODELIST": "localhost",
        "SLURM_NTASKS": "2",
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": "0",
        "JAX_COORDINATOR_PORT": str(dead),
    }
    args = ["train", "--limit", "100", "--epochs", "1", "--no-progress", "--join-timeout", "3"]
    out = tmp_path / "run"
    lock = RunLock(str(out)).acquire()  # another run holds this folder
    try:
        t0 = time.perf_counter()
        alone = start(
            [
                *args,
                "--out",
                str(tmp_path / "a"),
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                "0",
            ],
            env,
        )
        from_slurm = start([*args, "--out", str(tmp_path / "b")], env, **slurm)
        locked = [
            start(
                [
                    "train",
                    "--limit",
                    "100",
                    "--epochs",
                    "1",
                    "--out",
                    str(out),
                    "--coordinator",
                    f"127.0.0.1:{free}",
                    "--num-processes",
                    "2",
                    "--process-id",
                    str(i),
                    "--join-timeout",
                    "60",
                ],
                one_process(env, 1),
            )
            for i in range(2)
        ]
        results = [finish(p, timeout=120) for p in (alone, from_slurm, *locked)]
        print(f"all four refused in {time.perf_counter() - t0:.1f} s")
    finally:
        lock.release()
    # a process that never comes: process 0 waits the timeout, then says so
    code, _, err = results[0]
    assert code == 1, err[-2000:]
    assert (
        f"fnn: error: could not join the run: process 0 started the coordinator at "
        f"127.0.0.1:{port}, but not every one of the 2 processes joined within 3 s"
    ) in err
    # SLURM's environment read as JAX reads it (count, id, host; the port JAX_COORDINATOR_PORT)
    code, _, err = results[1]
    assert code == 1, err[-2000:]
    assert (
        f"could not join the run: process 1 of 2 found no coordinator at localhost:{dead} "
        "within 3 s"
    ) in err, err[-2000:]
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")
    # the folder is locked by another run: process 0 says so, process 1 says process 0 failed
    (c0, _, e0), (c1, _, e1) = results[2:]
    assert c0 == 1 and f"is in use by process {os.getpid()}" in e0, e0[-2000:]
    assert c1 == 1, e1[-2000:]
    assert (
        "fnn train: error: process 0 of 2 failed opening the run directory: RunDirError: "
        f"run directory {out} is in use by process {os.getpid()}"
    ) in e1, e1[-2000:]


def test_bad_options(capsys, tmp_path, monkeypatch):
    for argv, said in [
        (
            ["train", "--coordinator", "nohost"],
            "argument --coordinator: coordinator must be HOST:PORT",
        ),
        (["train", "--coordinator", "h:70000"], "got 'h:70000'"),
        (
            ["train", "--process-id", "-1"],
            "argument --process-id: must be an integer >= 0, got '-1'",
        ),
        (
            ["train", "--join-timeout", "0"],
            "argument --join-timeout: must be a positive number of seconds, got '0'",
        ),
        (
            ["launch", "--nproc", "0", "--", "train"],
            "argument --nproc: must be a positive integer, got '0'",
        ),
    ]:
        with pytest.raises(SystemExit):
            main(argv)
        assert said in capsys.readouterr().err, argv
    for argv, said in [
        (
            ["train", "--process-id", "2", "--num-processes", "2", "--coordinator", "127.0.0.1:1"],
            "process id 2 is out of range for 2 processes (0 to 1",
        ),
        (
            ["train", "--coordinator", "127.0.0.1:1"],
            "--num-processes (FNN_NUM_PROCESSES), --process-id (FNN_PROCESS_ID) are not given",
        ),
        (
            ["launch", "--nproc", "2", "--", "fit"],
            "the command after -- must be an fnn command (train, ",
        ),
        (["launch", "--nproc", "2"], "give the command each process runs after --"),
    ]:
        assert main([*argv]) == 1, argv
        assert said in capsys.readouterr().err, argv
    monkeypatch.setenv("FNN_NUM_PROCESSES", "two")
    assert main(["train", "--coordinator", "127.0.0.1:1", "--process-id", "0"]) == 1
    assert (
        "the environment variable FNN_NUM_PROCESSES='two' must be an integer >= 1"
        in capsys.readouterr().err
    )
