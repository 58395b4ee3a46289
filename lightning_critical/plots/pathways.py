"""Figures of the multi-pathway experiments; each takes a results table and returns a Figure."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from lightning_critical.plots._figure import subplots
from lightning_critical.theory import pathway_flow

DEFICIT_VERBS = {"freeze": "frozen", "silence": "silenced", "noise": "fed noise"}
PATHWAY_MARKERS = ("x", "+", "1", "2")


def _mode_colors(n: int) -> list:
    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def plot_deficit_trajectories(frame: pd.DataFrame, deprived: str = "b", marker_every: int = 40) -> Figure:
    """One panel per run (``label``): every mode's ``K_a`` and ``K_b``, measured (SGD) markers, theory lines.

    ``frame``: the table of :func:`lightning_critical.experiments.early_middle_late` (columns
    label, onset, length, step, pathway, mode, singular_value, measured, theory).
    """
    labels = list(dict.fromkeys(frame["label"]))
    modes = sorted(frame["mode"].unique())
    colors = _mode_colors(len(modes))
    fig, axes = subplots(1, len(labels), figsize=(4.2 * len(labels), 3.6), sharey=True, squeeze=False)
    # markers cycle: a fifth pathway used to be dropped from the plot and the legend
    markers = {p: PATHWAY_MARKERS[i % len(PATHWAY_MARKERS)] for i, p in enumerate(sorted(frame["pathway"].unique()))}
    for ax, label in zip(axes[0], labels, strict=True):
        run = frame[frame["label"] == label]
        onset, length = int(run["onset"].iloc[0]), int(run["length"].iloc[0])
        ax.axvspan(onset, onset + length, color="0.85", zorder=0)
        for a, color in zip(modes, colors, strict=True):
            for pathway, marker in markers.items():
                rows = run[(run["mode"] == a) & (run["pathway"] == pathway)].sort_values("step")
                ax.plot(rows["step"], rows["theory"], color="k", lw=0.8, ls="--", alpha=0.6, zorder=1)
                pick = rows[rows["step"] % marker_every == 0]
                ax.scatter(pick["step"], pick["measured"], color=color, marker=marker, s=22 if marker == "+" else 14,
                           lw=1, zorder=2)
        verb = DEFICIT_VERBS.get(run["deficit"].iloc[0], "deprived") if "deficit" in run else "deprived"
        ax.set_title(f"{label.capitalize()} deficit: pathway {deprived} {verb} [{onset}, {onset + length})", fontsize=9)
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel(r"mode strength $K_{p,\alpha} = u_\alpha^T \Omega_p v_\alpha$")
    handles = [Line2D([], [], color="k", ls="--", lw=0.8, label="theory (ODE)")]
    handles += [Line2D([], [], color="0.3", marker=m, ls="", label=f"SGD $K_{{{p}}}$") for p, m in markers.items()]
    s = frame.groupby("mode")["singular_value"].first()
    handles += [Line2D([], [], color=c, lw=3, label=fr"mode {a} ($s$={s[a]:.2f})")
                for a, c in zip(modes, colors, strict=True)]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle("Two-pathway deep linear network: a deficit early in training is permanent, late it is harmless",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_deprived_share(frame: pd.DataFrame) -> Figure:
    """Final share of each mode held by the deprived pathway against deficit onset, per depth.

    One panel per distinct singular value (degenerate modes are averaged); theory lines and
    markers for the trained nets (``source`` ``"measured"``). ``frame``:
    :func:`lightning_critical.experiments.deficit_onset_sweep`.
    """
    table = frame.assign(s=frame["singular_value"].round(6))
    groups = sorted(table["s"].unique(), reverse=True)
    depths = sorted(table["depth"].unique())
    cmap = matplotlib.colormaps["viridis"]
    colors = {d: cmap(i / max(1, len(depths) - 1)) for i, d in enumerate(depths)}
    fig, axes = subplots(1, len(groups), figsize=(3.3 * len(groups), 3.3), sharey=True, squeeze=False)
    for ax, s in zip(axes[0], groups, strict=True):
        sub = table[table["s"] == s].groupby(["source", "depth", "onset"], as_index=False)["share"].mean()
        for depth in depths:
            th = sub[(sub["source"] == "theory") & (sub["depth"] == depth)]
            sg = sub[(sub["source"] == "measured") & (sub["depth"] == depth)]
            ax.plot(th["onset"], th["share"], color=colors[depth], lw=1.5, label=f"depth {depth}")
            ax.scatter(sg["onset"], sg["share"], color=colors[depth], edgecolor="k", s=28, zorder=3)
        ax.axhline(0.5, color="0.6", ls=":", lw=1)
        ax.set_title(f"modes with $s$ = {s:.2f}", fontsize=9)
        ax.set_xlabel("deficit onset (epoch)")
        ax.set_ylim(-0.02, 0.55)
    axes[0][0].set_ylabel("deprived pathway's final share $K_b / (K_a + K_b)$")
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles.append(Line2D([], [], color="0.5", marker="o", markeredgecolor="k", ls="", label="SGD (Trainer run)"))
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle("Critical period: early deficits leave the deprived pathway with less, more so in deeper nets",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_phase_portraits(frame: pd.DataFrame, measured: pd.DataFrame | None = None, grid: int = 21) -> Figure:
    """Phase portraits of ``(K_a, K_b)`` for one mode: rows = deficit windows, columns = depths.

    Arrows: the continuous-time flow without deficit; line: the theory trajectory (bold
    where pathway b is deprived). ``frame``: :func:`lightning_critical.experiments.phase_trajectories`.
    ``measured``: optionally the early/middle/late table, whose trained runs of matching depth
    and label are drawn as markers.
    """
    depths = sorted(frame["depth"].unique())
    labels = list(dict.fromkeys(frame["label"]))
    s = float(frame["singular_value"].iloc[0])
    mode = int(frame["mode"].iloc[0]) if "mode" in frame else 0
    fig, axes = subplots(len(labels), len(depths), figsize=(3.2 * len(depths), 3.1 * len(labels)), squeeze=False)
    ka, kb = np.meshgrid(np.linspace(0, 1.05 * s, grid), np.linspace(0, 1.05 * s, grid))
    for i, label in enumerate(labels):
        for j, depth in enumerate(depths):
            ax = axes[i][j]
            du, dv = pathway_flow(ka, kb, s, depth)
            speed = np.hypot(du, dv)
            ax.streamplot(ka, kb, du, dv, color=np.log10(speed + 1e-9), cmap="Greys", density=0.7, linewidth=0.6,
                          arrowsize=0.7)
            ax.plot([0, s], [s, 0], color="tab:green", lw=1, ls=":", label="$K_a + K_b = s$")
            tr = frame[(frame["label"] == label) & (frame["depth"] == depth)].sort_values("step")
            ax.plot(tr["k_a"], tr["k_b"], color="tab:blue", lw=1.2, label="trajectory")
            dep = tr[tr["deprived"]]
            ax.plot(dep["k_a"], dep["k_b"], color="tab:red", lw=3, alpha=0.7, label="b deprived")
            ax.scatter(tr["k_a"].iloc[-1], tr["k_b"].iloc[-1], color="tab:blue", s=25, zorder=4)
            if measured is not None and depth in set(measured["depth"]):
                run = measured[(measured["label"] == label) & (measured["mode"] == mode)
                               & (measured["depth"] == depth)]
                piv = run.pivot_table(index="step", columns="pathway", values="measured")
                if not piv.empty:
                    ax.scatter(piv["a"][::5], piv["b"][::5], marker="x", color="k", s=10, lw=0.7, label="SGD", zorder=5)
            ax.set_xlim(0, 1.05 * s)
            ax.set_ylim(0, 1.05 * s)
            ax.set_title(f"depth {depth}, {label} deficit", fontsize=9)
            ax.set_xlabel("$K_a$")
            ax.set_ylabel("$K_b$")
    axes[0][-1].legend(fontsize=7, loc="upper right", frameon=True)
    fig.suptitle(
        f"Phase portraits of mode {mode} ($s$ = {s:.2f}): early deprivation pushes the state to $K_b \\approx 0$",
        fontsize=10,
    )
    fig.tight_layout()
    return fig

