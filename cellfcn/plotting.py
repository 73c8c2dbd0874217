"""matplotlib set-up shared by every figure: off-screen backend, square score axes, atomic PNG writes."""
from cellfcn import files


def pyplot():
    """matplotlib.pyplot on the off-screen Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def score_axes(title, xlabel, ylabel):
    """A figure with one axes spanning [0, 1] on both axes, for ROC, PR and score curves."""
    fig, ax = pyplot().subplots(figsize=(5.2, 4.6))
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    return fig, ax


def save_figure(fig, path, dpi=120):
    """Save a figure as PNG atomically (no timestamp metadata, so reruns give the same bytes) and close it."""
    with files.atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    pyplot().close(fig)
