"""The simulation report's pictures (matplotlib, written as PNG files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def write_plots(
    out_dir: Path,
    report: dict[str, Any],
    scored: dict[str, dict[str, np.ndarray]],
    reward_points: dict[str, tuple[np.ndarray, np.ndarray]] | None,
) -> list[str]:
    """Write the plots that apply; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    iterations = [n for n in report["models"] if "/iter_" in n]
    if iterations:
        # Iteration 0 is the NTP model itself: the baseline, gain 0 by definition.
        xs, ys, lo, hi = [0], [0.0], [0.0], [0.0]
        for name in iterations:
            k = int(name.rsplit("_", 1)[1])
            gain = report["gains"].get(name, {"swt_rel": 0.0, "ci95": [0.0, 0.0]})
            xs.append(k)
            ys.append(100 * gain["swt_rel"])
            lo.append(100 * (gain["swt_rel"] - gain["ci95"][0]))
            hi.append(100 * (gain["ci95"][1] - gain["swt_rel"]))
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=4)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xlabel("IPA iteration")
        ax.set_ylabel(f"session watch time gain vs {report['baseline']} (%)")
        ax.set_title(f"Watch-time gain per IPA iteration\n(95% bootstrap CI, {report['simulator']} simulator)")
        ax.set_xticks(xs)
        fig.tight_layout()
        fig.savefig(out_dir / "ipa_gain.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append("ipa_gain.png")

    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(scored)), 4))
    names = list(scored)
    data = [scored[n]["swt"][:, 0][np.isfinite(scored[n]["swt"][:, 0])] / 1000 for n in names]
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
    ax.set_ylabel("served session watch time (s)")
    ax.set_title(f"Session watch time per model ({report['simulator']} simulator)")
    fig.tight_layout()
    fig.savefig(out_dir / "swt_distribution.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    written.append("swt_distribution.png")

    if reward_points:
        fig, ax = plt.subplots(figsize=(6, 5))
        for name, (reward, swt) in reward_points.items():
            ax.scatter(reward, swt / 1000, s=6, alpha=0.4, label=name)
        ax.set_xlabel("reward model score")
        ax.set_ylabel(f"simulated session watch time (s, {report['simulator']})")
        ax.set_title("Reward model vs simulator, served sessions")
        ax.legend(markerscale=3, fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "reward_vs_simulator.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append("reward_vs_simulator.png")
    return written
