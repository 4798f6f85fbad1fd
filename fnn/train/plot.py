"""Loss and accuracy curves of a run as a PNG (matplotlib's Agg canvas: no display needed).
A figure is rendered to bytes (`png_bytes`) and written by fnn.train.files.write_file."""

from __future__ import annotations

import io

from fnn.train.files import write_file


def png_bytes(fig, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def plot_curves(history: list[dict], path: str, title: str = "", *, folder=None) -> None:
    """Two panels, loss and accuracy per epoch, train and validation, saved to `path`.

    Args:
        history: the epoch records (fit's).
        path: a name in `folder`, or any path.
        title: the figure's title.
        folder: a fnn.train.files.Folder `path` is a name in.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    epochs = [r["epoch"] for r in history]
    for ax, metric, label in zip(fig.subplots(1, 2), ("loss", "acc"), ("loss", "accuracy")):
        for split, style in (("train", "-"), ("val", "--")):
            values = [r.get(f"{split}_{metric}") for r in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, style, marker="o", markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    write_file(path, png_bytes(fig), folder=folder)
