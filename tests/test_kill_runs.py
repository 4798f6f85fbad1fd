"""Fault injection (issue 24): a real training process killed (SIGKILL) at random moments and
inside its writes, many times; every folder it leaves must then resume to the very bits of an
uninterrupted run, or be refused with fnn's one-line error.

One driver process imports fnn (and JAX, without starting its backend) once and forks each
training from it, so a run costs its compilation, not the imports; JAX's persistent
compilation cache (a temporary folder) makes every compilation after the first a read.

- the reference: `fnn train` of a tiny MLP on 200 digits, 2 epochs; it also counts the
  events of its writes (each os.write and os.replace fnn.train.files makes);
- killed runs: the same command, killed by SIGKILL inside write event N, one N drawn at
  random among the events of each file the run writes (.lock, config.json, metrics.jsonl,
  last and best, curves.png, results.json; an os.write is cut after half its bytes, an
  os.replace killed before or after it happens), and at random times by the driver;
- the finisher: one process that resumes each folder (`--resume`, or a new run where the kill
  came before config.json) and records its exit status and error.

Each finished folder is compared with the reference: every tensor of last.safetensors and
best.safetensors, the epochs and losses of metrics.jsonl, the test results."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from fnn.train import read_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMED_KILLS = 2
WRITTEN = {
    ".lock",
    "config.json",
    "metrics.jsonl",
    "last.safetensors",
    "best.safetensors",
    "curves.png",
    "results.json",
}  # every file the run writes: one kill inside each

DRIVER = textwrap.dedent(r"""
    import json, os, random, re, signal, sys, time
    import jax
    from fnn.cli import main

    base, timed_kills = sys.argv[1], int(sys.argv[2])
    jax.config.update("jax_compilation_cache_dir", os.path.join(base, "xla-cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    ARGS = ["--hidden", "8", "--limit", "200", "--batch-size", "32", "--epochs", "2",
            "--no-progress", "--chunk-seconds", "0"]
    rng = random.Random(24)

    def fork(work, log):
        pid = os.fork()
        if pid:
            return pid
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, 1)
        os.dup2(out, 2)
        try:
            code = work()
        except BaseException as e:  # reported, not raised past the fork
            print(f"driver: {type(e).__name__}: {e}", file=sys.stderr)
            code = 99
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def wait(pid):
        return os.waitpid(pid, 0)[1]

    def counting(kill_at=None):
        # label each write event of fnn.train.files (os.write, os.replace) with the file it
        # writes; SIGKILL this process inside event kill_at
        import fnn.train.files as files
        real_open, real_write, real_replace = os.open, os.write, os.replace
        labels, target = [], [None]

        def opening(name, flags, *a, **k):
            if flags & (os.O_WRONLY | os.O_RDWR):
                target[0] = re.sub(r"^\.(.+)\.[0-9a-f]{16}\.tmp$", r"\1", os.path.basename(name))
            return real_open(name, flags, *a, **k)

        def event():
            labels.append(target[0])
            return len(labels) == kill_at

        def write(fd, data):
            if event():
                real_write(fd, memoryview(data)[:len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            return real_write(fd, data)

        def replace(*a, **k):
            if event():
                if kill_at % 2:
                    real_replace(*a, **k)
                os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(*a, **k)

        files.os = type("os", (), {"__getattr__": lambda self, n: getattr(os, n),
                                   "open": staticmethod(opening), "write": staticmethod(write),
                                   "replace": staticmethod(replace)})()
        return labels

    ref = os.path.join(base, "reference")

    def reference():
        labels = counting()
        code = main(["train", "--out", ref, *ARGS])
        with open(os.path.join(base, "events.json"), "w") as f:
            json.dump(labels, f)
        return code

    t0 = time.perf_counter()
    assert wait(fork(reference, ref + ".log")) == 0, open(ref + ".log").read()
    ref_s = time.perf_counter() - t0
    labels = json.load(open(os.path.join(base, "events.json")))
    events = len(labels)
    trials = []
    for i, name in enumerate(sorted(set(labels))):  # inside a write of each file, at random
        n = rng.choice([k for k, label in enumerate(labels, 1) if label == name])
        trials.append({"folder": os.path.join(base, f"write{i}"), "at": n,
                       "kill": f"write event {n} of {events} (in {name})"})
    for i in range(timed_kills):
        trials.append({"folder": os.path.join(base, f"timed{i}"), "after_s":
                       round(rng.uniform(0.05, 1.2 * ref_s), 3)})
    for t in trials:
        if "at" in t:
            def killed(t=t):
                counting(kill_at=t["at"])
                return main(["train", "--out", t["folder"], *ARGS])
            t["status"] = wait(fork(killed, t["folder"] + ".killed.log"))
        else:
            pid = fork(lambda t=t: main(["train", "--out", t["folder"], *ARGS]),
                       t["folder"] + ".killed.log")
            time.sleep(t["after_s"])
            os.kill(pid, signal.SIGKILL)
            t["status"] = wait(pid)
        t["left"] = sorted(os.listdir(t["folder"])) if os.path.isdir(t["folder"]) else None

    def finish():
        for t in trials:
            log = t["folder"] + ".finish.log"
            out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.close(out)
            if os.path.exists(os.path.join(t["folder"], "config.json")):
                t["finish"] = ["--resume"]
                code = main(["train", "--resume", t["folder"], "--no-progress"])
            else:
                t["finish"] = ["--out"]
                code = main(["train", "--out", t["folder"], *ARGS])
            sys.stdout.flush()
            sys.stderr.flush()
            t["code"] = code
            t["log"] = open(log).read()[-3000:]
        with open(os.path.join(base, "trials.json"), "w") as f:
            json.dump(trials, f)
        return 0

    t1 = time.perf_counter()
    assert wait(fork(finish, os.path.join(base, "finish.log"))) == 0, \
        open(os.path.join(base, "finish.log")).read()
    trials = json.load(open(os.path.join(base, "trials.json")))
    print(json.dumps({"events": events, "reference_s": ref_s, "trials": trials,
                      "kills_s": t1 - t0 - ref_s, "finish_s": time.perf_counter() - t1}))
""")


def metrics(folder):
    keep = ("epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr")
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [{k: r[k] for k in keep if k in r} for r in map(json.loads, f)]


def results(folder):
    with open(os.path.join(folder, "results.json")) as f:
        return json.load(f)


def same_checkpoint(a, b):
    (ta, ma), (tb, mb) = read_checkpoint(a), read_checkpoint(b)
    assert sorted(ta) == sorted(tb)
    for k in ta:
        np.testing.assert_array_equal(ta[k], tb[k], err_msg=f"{b}: {k}")
    for k in ("epoch", "step", "config", "data", "val_acc", "val_loss"):
        assert ma.get(k) == mb.get(k), (b, k)


def test_runs_killed_anywhere_resume_to_the_same_bits(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("XLA_FLAGS", None)
    r = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp_path), str(TIMED_KILLS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["events"] >= 20  # lock, config, metrics, 2 epochs of last/best/metrics, ...
    ref = str(tmp_path / "reference")
    killed = 0
    for t in report["trials"]:
        where = f"{t.get('kill') or 'killed after %s s' % t['after_s']}: {t['log']}"
        killed += t["status"] == 9  # SIGKILL (a timed kill may come after the run ended)
        assert t["code"] == 0, where
        assert "Traceback" not in t["log"], where
        assert metrics(t["folder"]) == metrics(ref), where
        for name in ("last.safetensors", "best.safetensors"):
            same_checkpoint(os.path.join(ref, name), os.path.join(t["folder"], name))
        got, want = results(t["folder"]), results(ref)
        assert {k: got[k] for k in want} == want, where
    kills = [t["kill"] for t in report["trials"] if "kill" in t]
    assert {k.split("(in ")[1][:-1] for k in kills} == WRITTEN, kills
    assert killed >= len(kills)  # every write-event kill really killed its run
