"""The drift report's picture: a 2-D projection of the reference and current embeddings of
one language, coloured by script (left) and by predicted label (right).

PCA by SVD (numpy) fitted on the reference, so the axes are the reference's own main
directions and traffic that moves away shows as a displaced cloud; milliseconds for a few
thousand points. Evidently's EmbeddingsDrift metric is deliberately not used: it draws a
t-SNE plot that costs 30-55 s. matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MAX_POINTS = 1000  # per side: enough to see the clouds, cheap to draw


def pca_2d(reference: np.ndarray, *others: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Project onto the reference's first two principal axes; returns the projections
    (reference first) and the share of the reference's variance each axis explains."""
    from threadpoolctl import threadpool_limits

    ref = np.asarray(reference, dtype=np.float64)
    mean = ref.mean(axis=0)
    # one BLAS thread: the matrix is small, and OpenBLAS threads on a busy machine turn a
    # 0.2 s SVD into 6-13 s (measured on the shared 2-core box)
    with threadpool_limits(1):
        _, s, vt = np.linalg.svd(ref - mean, full_matrices=False)
    axes = vt[:2].T
    explained = (s[:2] ** 2) / max(float((s ** 2).sum()), 1e-12)
    return [(np.asarray(x, dtype=np.float64) - mean) @ axes for x in (ref, *others)], explained


def _sample(n: int, seed: int = 0) -> np.ndarray:
    idx = np.arange(n)
    if n > MAX_POINTS:
        idx = np.sort(np.random.default_rng(seed).choice(n, MAX_POINTS, replace=False))
    return idx


def _palette(values: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(values) <= 10 else "tab20"]
    return {v: cmap(i % cmap.N) for i, v in enumerate(values)}


def draw_projection(path: Path, title: str, reference: np.ndarray, current: np.ndarray,
                    ref_scripts: Sequence[str], cur_scripts: Sequence[str],
                    ref_labels: Sequence[str] | None, cur_labels: Sequence[str] | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    ri, ci = _sample(len(reference)), _sample(len(current), 1)
    (ref_xy, cur_xy), explained = pca_2d(np.asarray(reference)[ri], np.asarray(current)[ci])
    panels = [("dominant script", [str(ref_scripts[i]) for i in ri],
               [str(cur_scripts[i]) for i in ci])]
    if ref_labels is not None and cur_labels is not None:
        panels.append(("predicted label", [str(ref_labels[i]) for i in ri],
                       [str(cur_labels[i]) for i in ci]))
    fig, axs = plt.subplots(1, len(panels), figsize=(7 * len(panels), 6), squeeze=False)
    for ax, (what, ref_vals, cur_vals) in zip(axs[0], panels, strict=True):
        colours = _palette(sorted(set(ref_vals) | set(cur_vals)))
        ax.scatter(ref_xy[:, 0], ref_xy[:, 1], s=14, marker="o", facecolors="none",
                   edgecolors=[colours[v] for v in ref_vals], linewidths=0.7, alpha=0.6)
        ax.scatter(cur_xy[:, 0], cur_xy[:, 1], s=16, marker="x",
                   c=[colours[v] for v in cur_vals], linewidths=0.9, alpha=0.8)
        handles = [Line2D([], [], marker="s", linestyle="", color=c, label=v)
                   for v, c in colours.items()]
        handles += [Line2D([], [], marker="o", linestyle="", markerfacecolor="none",
                           color="grey", label=f"reference ({len(ri)} shown)"),
                    Line2D([], [], marker="x", linestyle="", color="grey",
                           label=f"current ({len(ci)} shown)")]
        ax.legend(handles=handles, title=f"colour: {what}", fontsize=7, title_fontsize=8,
                  loc="upper right", framealpha=0.8)
        ax.set_xlabel(f"PC1 of the reference ({explained[0]:.0%} of its variance)")
        ax.set_ylabel(f"PC2 of the reference ({explained[1]:.0%} of its variance)")
        ax.set_title(f"coloured by {what}", fontsize=10)
        ax.grid(alpha=0.25)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def embed_in_html(html_path: Path, png_path: Path, caption: str) -> None:
    """Put the PNG (as a data: URI, so the page stays one self-contained file) at the top
    of Evidently's HTML report."""
    data = base64.b64encode(png_path.read_bytes()).decode("ascii")
    block = (f'<div style="font-family:sans-serif;margin:16px"><h2>{caption}</h2>'
             f'<img alt="{caption}" style="max-width:100%" '
             f'src="data:image/png;base64,{data}"/></div>')
    page = html_path.read_text(encoding="utf-8")
    at = page.find("<body")
    at = page.find(">", at) + 1 if at >= 0 else 0
    html_path.write_text(page[:at] + block + page[at:], encoding="utf-8")
