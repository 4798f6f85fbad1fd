"""Gradient health in a run directory: RUN_DIR/diagnostics.jsonl (one row per measured step,
see fnn.train.diagnostics), diagnostics.png (one panel per metric), and a summary line per
epoch for the log.
"""

from __future__ import annotations

import os

import numpy as np

from fnn.check.health import METRICS
from fnn.check.tolerances import tolerance
from fnn.train import jsonl
from fnn.train.files import RunDirError, write_file
from fnn.train.plot import png_bytes

FILE, PLOT = "diagnostics.jsonl", "diagnostics.png"
LABELS = {
    "grad_norm": "gradient norm",
    "update_ratio": "update / parameter norm",
    "custom_vs_builtin": "custom vs built-in gradient (rel. error)",
    "alignment": "angle to the true gradient (degrees)",
    "dead_relu": "dead ReLU units (fraction)",
    "saturated": "saturated sigmoid/tanh outputs (fraction)",
    "loss": "batch loss",
}


def read_rows(path: str, log=None, *, folder=None) -> list[dict]:
    """The rows of a diagnostics.jsonl ([] if there is none); a last line cut short by a crash
    is dropped and log(note) says so (a damaged line elsewhere: RunDirError naming it)."""
    rows, note = jsonl.read(path, folder=folder)
    if note and log is not None:
        log(f"note: {note}")
    shown = folder.join(FILE) if folder is not None else path
    return [check_row(row, i, shown) for i, row in enumerate(rows, 1)]


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_row(row: dict, i: int, path: str) -> dict:
    """`row` (record i of diagnostics.jsonl at `path`) if its fields have their types: step
    and epoch integers >= 0, loss a number, each metric a map of layer names to numbers;
    RunDirError naming the record and the field otherwise."""

    def bad(field, want):
        return RunDirError(
            f"{path}: record {i}: field {field!r} must be {want}, got "
            f"{str(row.get(field))[:60]}; fix or delete that line"
        )

    for field in ("step", "epoch"):
        v = row.get(field)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise bad(field, "an integer >= 0")
    if not _number(row.get("loss")):
        raise bad("loss", "a number")
    for metric in METRICS:
        v = row.get(metric, {})
        if not isinstance(v, dict) or not all(
            isinstance(k, str) and _number(x) for k, x in v.items()
        ):
            raise bad(metric, "a map of layer names to numbers")
    return row


def _epoch(row) -> int:
    e = row.get("epoch", 0)
    return e if isinstance(e, int) and not isinstance(e, bool) else 0


class HealthLog:
    """RUN_DIR/diagnostics.jsonl, kept in step with the checkpoint: rows of epochs past
    `upto_epoch` (which no checkpoint holds; a resumed run measures them again) are dropped.
    log(line) gets a summary line per epoch. folder: the run directory's
    fnn.train.files.Folder (every write goes through it)."""

    def __init__(self, run_dir: str, *, upto_epoch: int | None = None, log=None, folder=None):
        self.path, self.png = os.path.join(run_dir, FILE), os.path.join(run_dir, PLOT)
        self.folder = folder
        self.log = log or (lambda line: None)
        there = folder.exists(FILE) if folder is not None else os.path.lexists(self.path)
        if upto_epoch is not None and there:
            rows = read_rows(self.path, self.log, folder=folder)
            kept = [r for r in rows if _epoch(r) <= upto_epoch]
            if kept != rows:
                jsonl.write(self.path, kept, folder=folder)

    def write(self, new_rows: list[dict]) -> None:
        """Append an epoch's rows and log a one-line summary of its last row."""
        if not new_rows:
            return
        jsonl.append(self.path, new_rows, folder=self.folder)
        self.log(summarize(new_rows[-1]))

    def plot(self, title: str = "") -> bool:
        """diagnostics.png from all rows of the file; False when there are none."""
        all_rows = read_rows(self.path, folder=self.folder)
        if all_rows:
            plot_health(all_rows, self.png, title, folder=self.folder)
        return bool(all_rows)


def _span(values: dict, fmt: str) -> str:
    v = list(values.values())
    if not v:
        return "-"
    lo, hi = min(v), max(v)
    return format(lo, fmt) if lo == hi else f"{lo:{fmt}}..{hi:{fmt}}"


def summarize(row: dict, dtype: str = "float32") -> str:
    """One line: the range over layers of each metric, and a warning on gradient drift."""
    line = (
        f"  health @ step {row['step']}: grad norm {_span(row['grad_norm'], '.3g')}  "
        f"update/param {_span(row['update_ratio'], '.1e')}  "
        f"dead relu {_span(row['dead_relu'], '.2f')}  "
        f"saturated {_span(row['saturated'], '.2f')}  "
        f"custom~built-in {_span(row['custom_vs_builtin'], '.1e')}"
    )
    if row.get("rules"):  # surrogate rules: a deliberate difference, measured as an angle
        line += (
            f"  alignment {_span(row.get('alignment', {}), '.1f')} deg (rules: "
            f"{', '.join(row['rules'])})"
        )
        return line
    tol = tolerance("model", dtype)
    drift = [k for k, v in row["custom_vs_builtin"].items() if not v <= tol]
    if drift:
        line += (
            f"\n  WARNING: hand-written and jax.grad gradients differ (> {tol:g}) in "
            f"{', '.join(drift)}: see fnn.locate_divergence"
        )
    return line


def plot_health(all_rows: list[dict], path: str, title: str = "", *, folder=None) -> None:
    """One panel per metric (and the batch loss), one line per layer, against the step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(20, 8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 4).ravel()
    axes[-1].set_visible(False)
    steps = [r["step"] for r in all_rows]
    for ax, metric in zip(axes, METRICS + ("loss",)):
        if metric == "loss":
            ax.plot(steps, [r["loss"] for r in all_rows], marker=".", color="k")
        layers = (
            []
            if metric == "loss"
            else list(dict.fromkeys(k for r in all_rows for k in r.get(metric, {})))
        )
        if metric != "loss" and not layers:
            ax.text(
                0.5,
                0.5,
                "no such layers",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="gray",
            )
        for layer in layers:
            ax.plot(
                steps,
                [r.get(metric, {}).get(layer, np.nan) for r in all_rows],
                marker=".",
                markersize=3,
                label=layer,
            )
        if metric in ("grad_norm", "update_ratio", "custom_vs_builtin") and layers:
            ax.set_yscale("log", nonpositive="clip")
        if metric == "update_ratio" and layers:
            ax.axhline(1e-3, color="gray", ls="--", lw=1, label="1e-3 (rule of thumb)")
        if metric == "custom_vs_builtin" and layers:
            ax.axhline(
                tolerance("model", "float32"), color="red", ls="--", lw=1, label="float32 tolerance"
            )
        if metric in ("dead_relu", "saturated"):
            ax.set_ylim(-0.03, 1.03)
        ax.set_title(LABELS[metric], fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if layers:
            ax.legend(fontsize=7, ncol=1 + len(layers) // 8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    write_file(path, png_bytes(fig), folder=folder)
