"""Loss, reward and learning-rate curves of a stage, from the trainer's log history."""
from __future__ import annotations

from pathlib import Path


def plot_curves(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = result.get("log_history", [])
    series = {k: [(h["step"], h[k]) for h in hist if k in h] for k in ("loss", "reward", "kl", "learning_rate")}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return
    fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3.2), squeeze=False)
    for ax, (name, pts) in zip(axes[0], series.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    acc = result.get("eval", {}).get("accuracy")
    fig.suptitle(f"{result.get('stage')}" + (f" — held-out closed-question accuracy {acc:.3f}" if acc is not None else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
