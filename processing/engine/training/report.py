"""The training report: per-epoch CSV and an HTML page with curves, confusion matrix and test tiles.

Pictures are PNGs drawn with matplotlib's Agg backend (no display) and embedded in the page, so the
report is one self-contained file plus its CSV. Both are written atomically.
"""

import base64
import csv
import html
import io
import math
import os

import numpy as np

from .. import gdalio

CSV_FIELDS = ("epoch", "train_loss", "val_loss", "val_miou", "lr", "samples", "seconds", "samples_per_s")


def csv_path_of(report_path) -> str:
    return os.path.splitext(str(report_path))[0] + ".csv"


def _png(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figures(history, tiles, input_max):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.2))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    ax1.plot(epochs, [h["val_loss"] for h in history], "s-", label="val loss")
    ax1.set_xlabel("epoch")
    ax1.legend()
    ax2.plot(epochs, [h["val_miou"] for h in history], "o-", color="tab:green", label="val mIoU")
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1)
    ax2.legend()
    curves = _png(fig)
    grid = None
    if tiles:
        fig = Figure(figsize=(6, 2 * len(tiles)))
        axes = fig.subplots(len(tiles), 3, squeeze=False)
        for row, (sid, raw, ref, pred) in zip(axes, tiles):
            img = raw[:3] if raw.shape[0] >= 3 else np.repeat(raw[:1], 3, axis=0)
            img = np.clip(np.moveaxis(img.astype(np.float32) / float(input_max), 0, -1), 0, 1)
            row[0].imshow(img)
            row[0].set_title(sid, fontsize=6)
            row[1].imshow(np.where(ref == 255, 0.5, ref), cmap="gray", vmin=0, vmax=1)
            row[1].set_title("reference", fontsize=7)
            row[2].imshow(pred, cmap="gray", vmin=0, vmax=1)
            row[2].set_title("prediction", fontsize=7)
            for ax in row:
                ax.set_axis_off()
        grid = _png(fig)
    return curves, grid


def _fmt(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))


def write_training_report(report_path, record, history, matrix, tiles, spec) -> tuple:
    """Write the HTML report and its per-epoch CSV beside it; returns (html, csv)."""
    csv_path = csv_path_of(report_path)
    with gdalio.atomic_output(csv_path, overwrite=True, what="OUTPUT_REPORT", side_suffixes=[]) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            w = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            for row in history:
                w.writerow(row)
    curves, grid = _figures(history, tiles, spec.input_max)
    test = record.get("test") or {}
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(test.get(k))}</td></tr>"
                   for k in ("oa", "miou", "iou_gully", "precision", "recall", "f1"))
    m = np.asarray(matrix)
    cm = ("<table><tr><th>reference \\ prediction</th><th>background</th><th>gully</th></tr>"
          f"<tr><th>background</th><td>{m[0, 0]}</td><td>{m[0, 1]}</td></tr>"
          f"<tr><th>gully</th><td>{m[1, 0]}</td><td>{m[1, 1]}</td></tr></table>")
    setting = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(record.get(k)))}</td></tr>" for k in (
        "architecture_label", "encoder", "encoder_weights", "parameters", "epochs_run", "best_epoch", "batch_size",
        "learning_rate", "loss", "class_weights", "seed", "device", "threads", "duration_s", "torch"))
    title = html.escape(f"{record.get('architecture_label', '')} / {record.get('encoder', '')}")
    sizes = html.escape(str(record["dataset"]["split_sizes"]))
    page = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>GullySeg training report</title>
<style>body{{font-family:sans-serif;max-width:60em}}td,th{{border:1px solid #ccc;padding:2px 6px}}
table{{border-collapse:collapse}}</style></head><body>
<h1>Training report: {title}</h1>
<p>Dataset {html.escape(str(record['dataset']['folder']))}: split sizes {sizes}.
Best epoch {record.get('best_epoch')} (chosen on the val split's mIoU). Per-epoch numbers:
<a href="{html.escape(os.path.basename(csv_path))}">{html.escape(os.path.basename(csv_path))}</a>.</p>
<h2>Settings</h2><table>{setting}</table>
<h2>Curves</h2><img alt="loss and val mIoU per epoch" src="data:image/png;base64,{curves}">
<h2>Test split (evaluate's conventions)</h2><table>{rows}</table>
<h3>Confusion matrix (pixels)</h3>{cm}
<p>{html.escape(record.get('metric_convention', ''))}</p>
{'<h2>Test tiles: image, reference, prediction</h2><img alt="test tiles" src="data:image/png;base64,' + grid + '">'
 if grid else ''}
</body></html>
"""
    with gdalio.atomic_output(report_path, overwrite=True, what="OUTPUT_REPORT", side_suffixes=[]) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(page)
    return os.path.abspath(report_path), os.path.abspath(csv_path)
