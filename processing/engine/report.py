"""Report files: JSON, CSV and HTML written atomically, and the evaluation's HTML page.

Shared by metrics (the evaluation report: HTML with JSON and CSV twins) and rasterize (the
problem report: CSV or JSON).
"""

import csv
import html
import math
import os

from . import dataset, gdalio


def fmt(value, digits=4) -> str:
    """A score for people: fixed digits, 'n/a' for None and NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def report_paths(report_path) -> tuple:
    """(html, json, csv) paths: the JSON and CSV are written beside the HTML report."""
    path = os.path.abspath(str(report_path))
    stem, ext = os.path.splitext(path)
    html_path = stem + ".html" if ext.lower() in ("", ".json", ".csv") else path
    return html_path, stem + ".json", stem + ".csv"


def write_json(path, data, overwrite=True, what="OUTPUT_REPORT") -> None:
    """``data`` as indented JSON (keys in their order), atomically."""
    dataset.write_json(path, data, overwrite=overwrite, what=what, indent=2, sort_keys=False)


def write_csv(path, fieldnames, rows, overwrite=True, what="OUTPUT_REPORT") -> None:
    """Rows (dicts) as CSV with a header, atomically; NaN is written as an empty cell."""
    with gdalio.atomic_output(path, overwrite=overwrite, what=what) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fieldnames)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})


def write_text(path, text, overwrite=True, what="OUTPUT_REPORT") -> None:
    with gdalio.atomic_output(path, overwrite=overwrite, what=what) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)


def evaluation_html(result, rows, json_name, csv_name, convention, max_tiles=500) -> str:
    """The evaluation report as one HTML page (scores, matrix, per-class IoU, worst tiles)."""
    s = result.scores
    e = html.escape
    names = result.classes
    m = result.matrix
    total = max(1, int(m.sum()))
    out = [
        "<!DOCTYPE html>",
        "<html><head><meta charset='utf-8'><title>GullySeg evaluation</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:70em}"
        "table{border-collapse:collapse;margin:0.5em 0 1.2em}"
        "td,th{border:1px solid #bbb;padding:0.25em 0.6em;text-align:right}"
        "th{background:#eee}td.l,th.l{text-align:left}.note{color:#444;font-size:0.92em}"
        ".big{font-size:1.3em;font-weight:bold}</style></head><body>",
        "<h1>GullySeg evaluation</h1>",
        f"<p>Prediction: <code>{e(result.prediction)}</code><br>Reference: <code>{e(result.reference)}</code><br>"
        f"Mode: {e(result.mode)}"
        + (f" (per-tile scores on a {result.tile_size} x {result.tile_size} pixel grid)" if result.tile_size else "")
        + "</p>",
        "<table><tr><th class='l'>Metric</th><th>Value</th></tr>",
        f"<tr><td class='l'>mIoU (mean over {e(', '.join(names))})</td><td class='big'>{fmt(s['miou'])}</td></tr>",
        f"<tr><td class='l'>IoU of {e(names[result.gully_index])} alone</td><td>{fmt(s['iou_gully'])}</td></tr>",
        f"<tr><td class='l'>Overall accuracy (OA)</td><td class='big'>{fmt(s['oa'])}</td></tr>",
        f"<tr><td class='l'>Precision ({e(names[result.gully_index])})</td><td>{fmt(s['precision'])}</td></tr>",
        f"<tr><td class='l'>Recall ({e(names[result.gully_index])})</td><td>{fmt(s['recall'])}</td></tr>",
        f"<tr><td class='l'>F1 ({e(names[result.gully_index])})</td><td>{fmt(s['f1'])}</td></tr>",
        f"<tr><td class='l'>Pixels evaluated</td><td>{s['pixels']:,}</td></tr>",
        f"<tr><td class='l'>Ignored reference pixels (value {result.ignore_value})</td>"
        f"<td>{result.ignored:,}</td></tr>",
        f"<tr><td class='l'>Reference pixels without prediction (nodata)</td>"
        f"<td>{result.prediction_nodata:,}</td></tr>",
        "</table>",
        f"<p class='note'><b>Convention.</b> {e(convention)}</p>",
        "<h2>Confusion matrix</h2><p class='note'>Rows: reference; columns: prediction; "
        "pixel counts and share of all evaluated pixels.</p>",
        "<table><tr><th class='l'>reference \\ prediction</th>"
        + "".join(f"<th>{e(n)}</th>" for n in names) + "<th>total</th></tr>",
    ]
    for i, name in enumerate(names):
        cells = "".join(f"<td>{int(m[i, j]):,}<br><span class='note'>{100.0 * m[i, j] / total:.2f} %</span></td>"
                        for j in range(len(names)))
        out.append(f"<tr><th class='l'>{e(name)}</th>{cells}<td>{int(m[i].sum()):,}</td></tr>")
    out.append("<tr><th class='l'>total</th>" + "".join(f"<td>{int(m[:, j].sum()):,}</td>" for j in range(len(names)))
               + f"<td>{int(m.sum()):,}</td></tr></table>")
    out.append("<h2>Per-class IoU</h2><table><tr><th class='l'>class</th><th>IoU</th><th>TP</th><th>FP</th>"
               "<th>FN</th></tr>")
    for i, name in enumerate(names):
        tp = int(m[i, i])
        fp = int(m[:, i].sum()) - tp
        fn = int(m[i, :].sum()) - tp
        out.append(f"<tr><td class='l'>{e(name)}</td><td>{fmt(s['iou'][i])}</td><td>{tp:,}</td><td>{fp:,}</td>"
                   f"<td>{fn:,}</td></tr>")
    out.append("</table>")
    for w in result.warnings:
        out.append(f"<p class='note'><b>Warning:</b> {e(w)}</p>")
    shown = rows[:max_tiles]
    out.append(f"<h2>Per-tile scores, worst first</h2><p class='note'>{len(rows)} tiles"
               + (f"; the {len(shown)} worst are shown" if len(shown) < len(rows) else "")
               + f". All tiles: <a href='{e(csv_name)}'>{e(csv_name)}</a> (CSV), "
               f"<a href='{e(json_name)}'>{e(json_name)}</a> (JSON). n/a: undefined (class absent from "
               "reference and prediction, or nothing evaluated).</p>")
    out.append("<table><tr><th class='l'>tile</th><th>mIoU</th><th>gully IoU</th><th>OA</th><th>precision</th>"
               "<th>recall</th><th>pixels</th><th>gully px (ref)</th><th>gully px (pred)</th>"
               + ("<th>x_off</th><th>y_off</th>" if result.mode == "rasters" else "") + "</tr>")
    for row in shown:
        out.append(
            f"<tr><td class='l'>{e(row['tile'])}</td><td>{fmt(row['miou'])}</td><td>{fmt(row['iou_gully'])}</td>"
            f"<td>{fmt(row['oa'])}</td><td>{fmt(row['precision'])}</td><td>{fmt(row['recall'])}</td>"
            f"<td>{row['pixels']:,}</td><td>{row['reference_gully_pixels']:,}</td>"
            f"<td>{row['predicted_gully_pixels']:,}</td>"
            + (f"<td>{row['x_off']}</td><td>{row['y_off']}</td>" if result.mode == "rasters" else "") + "</tr>"
        )
    out.append("</table></body></html>")
    return "\n".join(out) + "\n"
