#!/usr/bin/env python3
"""Segment many scenes on Dask from the command line (the engine of gullyseg:segmentmany, no QGIS).

    .venv/bin/python tools/segmentmany.py --model model.onnx --output-dir out/ scenes/*.tif
    .venv/bin/python tools/segmentmany.py --model model.onnx --folder scenes/ --pattern "*.tif" \
        --scheduler tcp://10.0.0.1:8786 --polygons --output-dir /shared/out

Without --scheduler a local cluster of --workers processes runs the job. Rerunning with the same
--output-dir resumes (complete scenes are checked and skipped). Exit status: 0 when every scene is
done or complete, 2 when a scene failed (see summary.csv), 1 on a bad parameter. docs/scale.md has
the multi-machine set-up.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gullyseg_cli


def read_mask(path):
    """Polygons of a vector file as (wkts, crs_wkt)."""
    from osgeo import ogr

    ds = ogr.Open(path)
    if ds is None:
        raise SystemExit(f"--mask: cannot open '{path}' as a vector file")
    layer = ds.GetLayer(0)
    srs = layer.GetSpatialRef()
    wkts = [f.GetGeometryRef().ExportToWkt() for f in layer if f.GetGeometryRef() is not None]
    return wkts, srs.ExportToWkt() if srs is not None else ""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("inputs", nargs="*", help="input rasters")
    ap.add_argument("--folder", help="a folder of input rasters")
    ap.add_argument("--pattern", default="*.tif", help="file pattern in --folder (several separated by ';')")
    ap.add_argument("--model", required=True, help="ONNX model")
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--bands", default=None, help="e.g. 3,2,1 (default: from the model)")
    ap.add_argument("--overlap", type=int, default=-1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threshold", type=float, default=-1.0)
    ap.add_argument("--tta", type=int, default=0, choices=[0, 1, 2])
    ap.add_argument("--mask", help="vector file: segment only inside its polygons (any CRS)")
    ap.add_argument("--compression", default="DEFLATE", choices=["DEFLATE", "ZSTD", "LZW", "NONE"])
    ap.add_argument("--polygons", action="store_true", help="write gully polygons")
    ap.add_argument("--min-area", type=float, default=None, help="m2 (default: 4 pixels, as segment)")
    ap.add_argument("--context-margin", type=int, default=None, help="pixels (default: from the model)")
    ap.add_argument("--simplify", type=float, default=0.0)
    ap.add_argument("--scheduler", default=None, help="tcp://host:port of a Dask scheduler (default: local cluster)")
    ap.add_argument("--workers", type=int, default=2, help="local cluster: worker processes")
    ap.add_argument("--threads-per-worker", type=int, default=1, help="local cluster: tasks at once per worker")
    ap.add_argument("--block-size", type=int, default=16384)
    ap.add_argument("--retries", type=int, default=2)
    args = ap.parse_args(argv)

    gullyseg_cli.register_package()
    from gullyseg.processing.engine import distributed
    from gullyseg.processing.engine.errors import GullySegError
    from gullyseg.processing.engine.feedback import PrintFeedback

    try:
        inputs = distributed.find_inputs(args.inputs, args.folder, args.pattern)
        summary = distributed.segment_many(
            inputs, args.model, args.output_dir, bands=args.bands, overlap=args.overlap, batch_size=args.batch_size,
            threshold=args.threshold, tta=args.tta, mask=read_mask(args.mask) if args.mask else None,
            compression=args.compression, polygons=args.polygons, min_area=args.min_area, simplify=args.simplify,
            scheduler=args.scheduler, workers=args.workers, threads_per_worker=args.threads_per_worker,
            block_size=args.block_size, retries=args.retries, context_margin=args.context_margin,
            feedback=PrintFeedback())
    except GullySegError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    print(os.path.join(os.path.abspath(args.output_dir), "summary.csv"))
    return 2 if any(r["status"] == "failed" for r in summary["scenes"]) else 0


if __name__ == "__main__":  # required: worker processes are spawned and import this file
    sys.exit(main())
