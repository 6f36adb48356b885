#!/usr/bin/env python3
"""Write Deepness/GullySeg metadata into an ONNX model, from the shell (same engine as gullyseg:setmodelmetadata).

    python tools/set_model_metadata.py model.onnx --class-names background,gully --resolution 75 \
        --input-max 1023 --bands 3,2,1 --activation sigmoid [--output copy.onnx] [--show]

Values not given are kept. See docs/models.md for every key.
"""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _engine():
    """Import the plugin's engine without QGIS (the checkout's folder name is not 'gullyseg')."""
    if "gullyseg" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "gullyseg", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
        sys.modules["gullyseg"] = importlib.util.module_from_spec(spec)  # not executed: no qgis needed
    from gullyseg.processing.engine import onnx_model
    from gullyseg.processing.engine.errors import GullySegError
    from gullyseg.processing.engine.feedback import PrintFeedback

    return onnx_model, GullySegError, PrintFeedback


def main(argv=None):
    onnx_model, gullyseg_error, print_feedback = _engine()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="the .onnx file")
    p.add_argument("--output", help="write a copy instead of updating the model in place")
    p.add_argument("--overwrite", action="store_true", help="overwrite --output if it exists")
    p.add_argument("--model-type", default="Segmentor")
    p.add_argument("--class-names", help="names in output-channel order, e.g. background,gully")
    p.add_argument("--resolution", type=float, help="cm per pixel the model was trained at (75 = 0.75 m)")
    p.add_argument("--tile-size", type=int, help="window size in pixels")
    p.add_argument("--tiles-overlap", type=float, help="window overlap in percent")
    p.add_argument("--mean", help="standardization mean per channel (after /255 or /input-max)")
    p.add_argument("--std", help="standardization std per channel")
    p.add_argument("--threshold", type=float, help="segmentation threshold (seg_thresh)")
    p.add_argument("--input-max", type=float, help="pixel value meaning 1.0 (e.g. 1023 for 10-bit data)")
    p.add_argument("--activation", choices=onnx_model.ACTIVATIONS, help="what to apply to the output")
    p.add_argument("--gully-class", type=int, help="output channel of the gully class")
    p.add_argument("--bands", help="raster bands for the model's channels, e.g. 3,2,1")
    p.add_argument("--gully-output", help="output head (name or 0-based index) of a model with several outputs")
    p.add_argument("--context-margin", type=int,
                   help="the model's receptive-field radius in pixels (ignored at inner window edges)")
    p.add_argument("--clear", action="store_true", help="remove existing Deepness/GullySeg keys first")
    p.add_argument("--show", action="store_true", help="only print the model's metadata and what GullySeg reads")
    args = p.parse_args(argv)
    try:
        if args.show:
            print(json.dumps({"metadata_props": onnx_model.read_metadata(args.model),
                              "gullyseg_reads": onnx_model.describe(args.model)}, indent=2, default=str))
            return 0
        meta = onnx_model.set_model_metadata(
            args.model, output=args.output, model_type=args.model_type, class_names=args.class_names,
            resolution=args.resolution, tile_size=args.tile_size, tiles_overlap=args.tiles_overlap, mean=args.mean,
            std=args.std, threshold=args.threshold, input_max=args.input_max, activation=args.activation,
            gully_class=args.gully_class, bands=args.bands, clear=args.clear, overwrite=args.overwrite,
            feedback=print_feedback(), context_margin=args.context_margin,
            gully_output=(int(args.gully_output) if args.gully_output.isdigit() else args.gully_output)
            if args.gully_output else None)
    except gullyseg_error as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(meta, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
