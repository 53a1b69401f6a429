"""The curation report: what each step removed and why, the score distributions, examples of what went.

``write_curation_report`` writes into one folder ``report.html`` (self-contained: plots and examples inlined),
``curation.json`` (the whole ``CurationRecord`` but the example images) and each plot as a PNG.
"""

from __future__ import annotations

import io
import posixpath
from typing import Any

import fsspec
import numpy as np

from mmgen import pages as H
from mmgen.files import write_atomic, write_json
from mmgen.retrieval.corpus_curation import CurationRecord


def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a buffer
    import matplotlib.pyplot as plt

    return plt


def score_plot(scores: list[float], kinds: list[str], threshold: float | None, recaption: list[float]) -> bytes:
    """Histogram of the CLIP scores (by noise kind when known), the threshold, and the new captions' scores."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    bins = np.linspace(min(scores + recaption + [-0.2]), max(scores + recaption + [1.0]), 41)
    groups = sorted(set(kinds)) if any(kinds) else [""]
    for kind in groups:
        values = [s for s, k in zip(scores, kinds) if k == kind] if any(kinds) else scores
        ax.hist(values, bins=bins, alpha=0.55, label=kind or "images")
    if recaption:
        ax.hist(recaption, bins=bins, histtype="step", linewidth=2, color="black", label="new captions (recaption)")
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="red", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="cosine of image and text (dual encoder)", ylabel="images", title="CLIP-score distribution")
    ax.legend(fontsize=7)
    return _figure_png(fig)


def counts_plot(before: list[int], after: list[float], names: list[str] | None, title: str,
                after_label: str = "after") -> bytes:  # fmt: skip
    """Documents per concept (or cluster) before and after balancing, most frequent first."""
    plt = _pyplot()
    order = np.argsort(before)[::-1]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    x = np.arange(len(order))
    ax.bar(x - 0.2, np.asarray(before)[order], width=0.4, label="before")
    ax.bar(x + 0.2, np.asarray(after)[order], width=0.4, label=after_label)
    if names and len(names) <= 40:
        ax.set_xticks(x, [names[i] for i in order], rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="documents", title=title)
    ax.legend(fontsize=7)
    return _figure_png(fig)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{H.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{H.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _reasons(counter: dict[str, int]) -> str:
    return ", ".join(f"{r}: {n}" for r, n in sorted(counter.items())) or "—"


def _share(part: int, whole: int) -> str:
    return f"{part} / {whole} ({part / whole:.1%})" if whole else "—"


def write_curation_report(record: CurationRecord, out_dir: str, *, title: str, summary: dict[str, Any]) -> dict[str, str]:
    """Write the report folder; returns the files written by name."""
    fs, root = fsspec.core.url_to_fs(out_dir)
    fs.makedirs(root, exist_ok=True)
    files: dict[str, str] = {}
    body = [_table(["run", ""], [[k, v] for k, v in summary.items()])]
    read = record.read
    if read:
        body.append("<h2>Reading: heuristic filters and exact dedup (data.*)</h2>")
        body.append(_table(["documents read", "skipped by reason", "images dropped by reason"],
                           [[read.get("documents_read", 0), _reasons(read.get("skipped", {})),
                             _reasons(read.get("images_dropped", {}))]]))  # fmt: skip
    body.append("<h2>Steps</h2>")
    body.append(_table(["step", "settings", "documents in", "documents out", "removed by reason",
                        "images removed (document kept)", "made", "rewritten"],
                       [[s.name, _reasons(s.settings), s.documents_in, s.documents_out, _reasons(s.removed),
                         _reasons(s.images_removed), s.added, s.changed] for s in record.steps]))  # fmt: skip
    if record.ground_truth:
        body.append("<h2>Against the ground truth of the corruption (shapes-world noise)</h2>")
        rows = [[kind, t.get("scored", 0), _share(t.get("kept_by_clip", 0), t.get("scored", 0)),
                 t.get("recaption_correct", 0), t.get("recaptioned", 0), t.get("recaptioned_correct", 0),
                 t.get("in_output", 0)] for kind, t in record.ground_truth.items()]  # fmt: skip
        body.append(_table(["injected kind", "images scored", "kept by the CLIP filter", "new caption right (parser)",
                            "recaptioned (new caption passes the filter)", "recaptioned and right", "in the output"],
                           rows))  # fmt: skip
    plots: list[tuple[str, bytes]] = []
    if record.clip_scores:
        plots.append(("clip_scores.png", score_plot(record.clip_scores, record.clip_kinds, record.clip_threshold,
                                                    record.recaption_scores)))  # fmt: skip
    if record.concepts:
        per_pass = record.concepts.get("per_pass", False)
        plots.append(("concepts.png", counts_plot(record.concepts["before"], record.concepts["after"],
                                                  record.concepts["names"], "documents per concept",
                                                  "drawn per pass (expected)" if per_pass else "after")))  # fmt: skip
    if record.clusters:
        plots.append(("clusters.png", counts_plot(record.clusters["before"], record.clusters["after"], None,
                                                  "documents per image cluster")))  # fmt: skip
    if plots:
        body.append("<h2>Distributions</h2>")
    for name, png in plots:
        path = posixpath.join(root, name)
        write_atomic(path, png, fs)
        files[name] = path
        body.append(f'<p><img src="{H.png_data_uri(png)}" alt="{H.escape(name)}"></p>')
    if record.examples:
        body.append("<h2>Examples of what was removed</h2>")
    for reason, docs in sorted(record.examples.items()):
        cards = []
        for doc in docs:
            images = "".join(H.img_tag(im, width=96) for im in doc.images[:3])
            text = H.escape(" ".join(doc.texts)[:240])
            cards.append(f'<div class="card">{images}<br>{text}</div>')
        body.append(f"<h3>{H.escape(reason)}</h3><div class='grid'>{''.join(cards)}</div>")
    page = posixpath.join(root, "report.html")
    write_atomic(page, H.page(title, "\n".join(body)), fs)
    record_path = posixpath.join(root, "curation.json")
    write_json(record_path, {"summary": summary, **record.to_dict()})
    files |= {"report.html": page, "curation.json": record_path}
    return files
