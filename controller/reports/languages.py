"""`xlt report languages`: one picture of every controlled language on a base encoder,
showing where each sits relative to English.

The items are the shipped CLDR emoji test split, which is parallel: the same emoji (name
and keywords) in every language. Each language's texts are embedded by the base encoder;
the picture projects them on the first two principal axes of all drawn languages' pooled
embeddings (English's star is the anchor), draws a sample of items faintly
and each language's centroid boldly, with a line from English to it; a second panel ranks
the languages by their mean cosine similarity to the English text of the same item (how
well the base aligns them with English: what teacher-student distillation starts from).
Written as a PNG and a self-contained HTML page (the PNG inline, plus a table).
"""

from __future__ import annotations

import base64
import html
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from controller.data.access import TaskData
from controller.drift.projection import pca_2d
from registry.errors import InvalidInput
from registry.names import encoder_ref, safe_path, task_name

ENGLISH = "en"
POINTS_PER_LANGUAGE = 150


@dataclass
class LanguagePoint:
    language: str
    items: int
    cosine_to_english: float | None  # mean over items present in both languages
    centroid_distance: float  # cosine distance between its centroid and English's
    pc1: float
    pc2: float
    phase: str | None = None
    champion: int | None = None


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def language_map(embed: Any, languages: list[str],
                 tracks: dict[str, dict[str, Any]] | None = None,
                 split: str = "test", data: TaskData | None = None,
                 ) -> tuple[list[LanguagePoint], dict[str, np.ndarray]]:
    """The numbers and the 2-D points (per language) of the picture. `embed`: texts ->
    (n, d) array (the base encoder's); `data`: the task's registered data."""
    if data is None:
        raise InvalidInput("the languages report reads a task's registered data",
                           "pass the task's TaskData")
    known = set(data.languages_with(split))
    unknown = sorted(set(languages) - known)
    if ENGLISH not in known:
        unknown = [ENGLISH, *unknown]
    if unknown:
        raise InvalidInput(f"task {data.task!r} has no labelled {split} rows in "
                           f"{', '.join(unknown)}",
                           f"languages with data: {', '.join(sorted(known)) or 'none'}")
    wanted = [ENGLISH] + [lang for lang in dict.fromkeys(languages) if lang != ENGLISH]
    rows = data.labelled(split, wanted)
    rows = rows.assign(item=rows["id"])  # the same id in two languages is the same item
    vectors = {lang: _normalise(np.asarray(embed(grp["text"].tolist()), dtype=np.float64))
               for lang, grp in rows.groupby("language", sort=False)}
    items = {lang: grp["item"].tolist() for lang, grp in rows.groupby("language", sort=False)}
    en_index = {item: i for i, item in enumerate(items[ENGLISH])}
    en = vectors[ENGLISH]
    # axes: principal directions of all drawn languages pooled (equal share each), so the
    # picture spreads languages apart where the base separates them (fitting on English
    # alone would fold every other language onto English's centre)
    rng = np.random.default_rng(0)
    pooled = np.concatenate([v[rng.choice(len(v), min(len(v), 300), replace=False)]
                             for v in vectors.values()])
    projected, _ = pca_2d(pooled, *(vectors[lang] for lang in wanted))
    xy = dict(zip(wanted, projected[1:], strict=True))
    en_centroid = en.mean(axis=0)
    points = []
    for lang in wanted:
        pairs = [(i, en_index[it]) for i, it in enumerate(items[lang]) if it in en_index]
        cosine = (float(np.mean([vectors[lang][i] @ en[j] for i, j in pairs]))
                  if pairs else None)
        centroid = vectors[lang].mean(axis=0)
        distance = max(0.0, 1.0 - float(centroid @ en_centroid / (
            np.linalg.norm(centroid) * np.linalg.norm(en_centroid))))
        track = (tracks or {}).get(lang, {})
        points.append(LanguagePoint(lang, len(items[lang]), cosine, round(distance, 6),
                                    float(xy[lang][:, 0].mean()), float(xy[lang][:, 1].mean()),
                                    track.get("phase"), track.get("champion")))
    return points, xy


def draw(points: list[LanguagePoint], xy: dict[str, np.ndarray], base: str, task: str,
         path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmap = matplotlib.colormaps["tab10" if len(points) <= 10 else "tab20"]
    colours = {p.language: ("black" if p.language == ENGLISH else cmap(i % cmap.N))
               for i, p in enumerate(points)}
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(15, 7),
                                   gridspec_kw={"width_ratios": [3, 2]})
    rng = np.random.default_rng(0)
    english = next(p for p in points if p.language == ENGLISH)
    for p in points:
        pts = xy[p.language]
        keep = rng.choice(len(pts), min(len(pts), POINTS_PER_LANGUAGE), replace=False)
        ax.scatter(pts[keep, 0], pts[keep, 1], s=6, color=colours[p.language], alpha=0.18)
    for p in points:
        if p.language != ENGLISH:
            ax.plot([english.pc1, p.pc1], [english.pc2, p.pc2], color=colours[p.language],
                    linewidth=0.8, alpha=0.6)
        ax.scatter([p.pc1], [p.pc2], s=140 if p.language == ENGLISH else 80,
                   color=colours[p.language], edgecolors="white", linewidths=1.2, zorder=3,
                   marker="*" if p.language == ENGLISH else "o", label=p.language)
        ax.annotate(p.language, (p.pc1, p.pc2), xytext=(5, 4), textcoords="offset points",
                    fontsize=9, weight="bold" if p.language == ENGLISH else "normal")
    ax.set_xlabel("PC1 of the embeddings of all drawn languages")
    ax.set_ylabel("PC2 of the embeddings of all drawn languages")
    ax.set_title("Centroid of each language (its items faint); lines from English",
                 fontsize=10)
    ax.grid(alpha=0.25)
    ax.legend(title="language", fontsize=8, ncol=2, loc="upper right", framealpha=0.8)
    ranked = sorted((p for p in points if p.cosine_to_english is not None),
                    key=lambda p: p.cosine_to_english or 0.0)
    bars.barh([p.language for p in ranked], [p.cosine_to_english for p in ranked],
              color=[colours[p.language] for p in ranked])
    for i, p in enumerate(ranked):
        note = f"{p.cosine_to_english:.2f}" + (f"  {p.phase}" if p.phase else "")
        bars.text((p.cosine_to_english or 0) + 0.01, i, note, va="center", fontsize=8)
    bars.set_xlim(0, 1.15)
    bars.set_xlabel("mean cosine similarity to the English text of the same item")
    bars.set_ylabel("language")
    bars.set_title("Alignment with English (1 = English itself)", fontsize=10)
    bars.grid(axis="x", alpha=0.25)
    fig.suptitle(f"{task}: controlled languages on base {base}, relative to English "
                 f"(CLDR emoji test items)", fontsize=12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_html(points: list[LanguagePoint], png: Path, base: str, task: str,
               path: Path) -> Path:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    head = ["language", "items", "cosine_to_english", "centroid_distance", "phase",
            "champion"]
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(asdict(p)[c]))}</td>" for c in head)
        + "</tr>" for p in sorted(points, key=lambda p: -(p.cosine_to_english or 0)))
    title = html.escape(f"xlt: {task} languages on {base}")
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        "<style>body{font-family:sans-serif;margin:24px}td,th{padding:4px 10px;"
        "border-bottom:1px solid #ddd;text-align:left}</style></head><body>"
        f"<h1>{title}</h1><img alt='languages relative to English' style='max-width:100%' "
        f"src='data:image/png;base64,{data}'/>"
        f"<table><tr>{''.join(f'<th>{c}</th>' for c in head)}</tr>{body}</table>"
        "</body></html>", encoding="utf-8")
    return path


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def report_languages(registry: Any, task: str, languages: list[str], base: str,
                     out_dir: Path, device: str = "cpu") -> dict[str, Any]:
    """Embed, draw, write; returns the numbers and the two file paths."""
    from controller.training.pipeline import load_base

    _, encoder = load_base(registry, base, device)
    tracks = {r["language"]: r for r in registry.status(task)}
    points, xy = language_map(encoder.embed, languages, tracks, data=TaskData(registry, task))
    name, version = encoder_ref(base)
    stem = safe_path(out_dir, f"languages-{task_name(task)}-{name}-{version}")
    png = draw(points, xy, base, task, stem.with_suffix(".png"))
    page = write_html(points, png, base, task, stem.with_suffix(".html"))
    return {"task": task, "base": base, "png": str(png), "html": str(page),
            "languages": [asdict(p) for p in points]}
