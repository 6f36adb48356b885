"""Benchmark: GullySeg's segment side by side with the Deepness plugin's own processor, one scene, one model.

    .venv/bin/python benchmarks/bench_deepness.py --deepness-src DIR --deepness-python PY [--size 2304]
                                                  [--overlaps 128,76]

DIR: a checkout of PUTvision/qgis-plugin-deepness (its ``src/deepness``); PY: a Python that runs
QGIS and Deepness' pinned requirements, kept out of the project's venv, e.g.::

    /usr/bin/python3 -m venv --system-site-packages /tmp/deepvenv
    /tmp/deepvenv/bin/pip install "numpy<2.0.0" "onnxruntime>=1.12.1,<=1.17.0" \\
        "opencv-python-headless>=4.5.5.64,<=4.9.0.80"

The model: six dilated 3x3 convolutions (receptive-field radius 63 px; tests/onnx_models.py) with a
fixed 512 x 512 input (Deepness needs one), sigmoid, on a random 8-bit scene. Deepness runs
``MapProcessorSegmentation`` headless as its own tests do (batch 8, overlap in pixels, threshold
0.5, no dilate/erode); GullySeg runs ``segment_raster`` with the same windows, batch and threshold,
with and without ``context_margin`` 63. Each run is a child process (time, peak RSS); the pixels
are compared with one whole-image onnxruntime run of the same network: the share of mask pixels
that differ, and for GullySeg the share of probabilities more than one step (1/254) off.
Deepness writes a class map only (no probability raster).
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prepare(out, size):
    import numpy as np
    import onnx
    import onnxruntime

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import onnx_models as om
    import rasters

    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, (3, size, size)).astype(np.uint8)
    rasters.write_raster(os.path.join(out, "scene.tif"), data, options=["TILED=YES"])
    dynamic = om.make_dilated_model(os.path.join(out, "dynamic.onnx"))
    model = onnx.load(dynamic)
    for vi in (model.graph.input[0], model.graph.output[0]):
        for axis in (2, 3):
            dim = vi.type.tensor_type.shape.dim[axis]
            dim.ClearField("dim_param")
            dim.dim_value = 512
    for key, value in {"model_type": '"Segmentor"', "class_names": '{"0": "gully"}', "resolution": "75",
                       "tile_size": "512"}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, os.path.join(out, "dilated512.onnx"))
    sess = onnxruntime.InferenceSession(dynamic, providers=["CPUExecutionProvider"])
    x = (data.astype(np.float32) / 255)[None]
    np.save(os.path.join(out, "reference.npy"), sess.run(None, {"input": x})[0][0, 0])


def run_deepness(src, out, overlap):
    from unittest.mock import MagicMock

    import numpy as np

    sys.path.insert(0, os.path.join(src, "src"))
    from qgis.core import QgsApplication, QgsProject, QgsRasterLayer

    app = QgsApplication([b""], False)
    app.initQgis()
    from deepness.common.channels_mapping import ChannelsMapping, ImageChannelStandaloneBand
    from deepness.common.processing_overlap import ProcessingOverlap, ProcessingOverlapOptions
    from deepness.common.processing_parameters.map_processing_parameters import ProcessedAreaType
    from deepness.common.processing_parameters.segmentation_parameters import SegmentationParameters
    from deepness.processing.map_processor.map_processor_segmentation import MapProcessorSegmentation
    from deepness.processing.models.segmentor import Segmentor

    layer = QgsRasterLayer(os.path.join(out, "scene.tif"), "scene")
    if QgsProject.instance().addMapLayer(layer) is None:
        raise SystemExit("Deepness: cannot add the scene layer")
    channels = ChannelsMapping()
    channels.set_image_channels([ImageChannelStandaloneBand(band_number=i + 1, name=n) for i, n in enumerate("rgb")])
    channels.set_number_of_model_inputs_same_as_image_channels()
    params = SegmentationParameters(
        resolution_cm_per_px=75, tile_size_px=512, batch_size=8, local_cache=False,
        processed_area_type=ProcessedAreaType.ENTIRE_LAYER, mask_layer_id=None, input_layer_id=layer.id(),
        input_channels_mapping=channels, postprocessing_dilate_erode_size=0,
        processing_overlap=ProcessingOverlap(ProcessingOverlapOptions.OVERLAP_IN_PIXELS, overlap_px=overlap),
        pixel_classification__probability_threshold=0.5, model=Segmentor(os.path.join(out, "dilated512.onnx")))
    processor = MapProcessorSegmentation(rlayer=layer, vlayer_mask=None, map_canvas=MagicMock(), params=params)
    t = time.perf_counter()
    processor.run()
    seconds = time.perf_counter() - t
    np.save(os.path.join(out, f"deepness_{overlap}.npy"), np.asarray(processor.get_result_img()))
    return seconds


def run_gullyseg(out, overlap, margin):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from gullyseg_cli import register_package

    register_package()
    from gullyseg.processing.engine import inference

    name = f"g{margin}_{overlap}"
    t = time.perf_counter()
    inference.segment_raster(os.path.join(out, "scene.tif"), os.path.join(out, "dilated512.onnx"),
                             output_probability=os.path.join(out, f"{name}_p.tif"),
                             output_mask=os.path.join(out, f"{name}_m.tif"), overlap=overlap, batch_size=8,
                             threshold=0.5, overwrite=True, context_margin=margin)
    return time.perf_counter() - t


def compare(out, run):
    import numpy as np
    from osgeo import gdal

    ref = np.load(os.path.join(out, "reference.npy"))
    if run["tool"] == "deepness":
        cls = np.load(os.path.join(out, f"deepness_{run['overlap']}.npy"))
        cls = cls[0] if cls.ndim == 3 else cls
        # Deepness' class map: 0 outside the area, else class index + 1; one sigmoid channel is named
        # [background, gully], so gully pixels are 2
        run["mask_off_pct"] = 100.0 * float(((cls[:ref.shape[0], :ref.shape[1]] == 2) != (ref >= 0.5)).mean())
        return run
    name = f"g{run['margin']}_{run['overlap']}"
    ds = gdal.Open(os.path.join(out, f"{name}_m.tif"))
    mask = ds.ReadAsArray()
    ds = gdal.Open(os.path.join(out, f"{name}_p.tif"))
    prob = ds.ReadAsArray().astype(int)
    ds = None
    run["mask_off_pct"] = 100.0 * float(((mask == 1) != (ref >= 0.5)).mean())
    run["prob_off_pct"] = 100.0 * float((np.abs(prob - np.rint(ref * 254)) > 1).mean())
    return run


def child(args):
    """One run in this (child) process; prints its JSON line."""
    if args.tool == "deepness":
        seconds = run_deepness(args.deepness_src, args.out, args.overlap)
    else:
        seconds = run_gullyseg(args.out, args.overlap, args.margin)
    print(json.dumps({"tool": args.tool, "overlap": args.overlap, "margin": args.margin, "seconds": seconds,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deepness-src")
    parser.add_argument("--deepness-python")
    parser.add_argument("--size", type=int, default=2304)
    parser.add_argument("--overlaps", default="128,76")
    parser.add_argument("--child", dest="tool", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--overlap", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--margin", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tool:
        return child(args)
    if not (args.deepness_src and args.deepness_python):
        parser.error("--deepness-src and --deepness-python are needed (see the module doc)")
    out = tempfile.mkdtemp(prefix="gullyseg_bench_deepness_")
    prepare(out, args.size)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    for overlap in (int(v) for v in args.overlaps.split(",")):
        for tool, python, margin in (("deepness", args.deepness_python, 0), ("gullyseg", sys.executable, 0),
                                     ("gullyseg", sys.executable, 63)):
            done = subprocess.run([python, os.path.abspath(__file__), "--child", tool, "--out", out, "--overlap",
                                   str(overlap), "--margin", str(margin), "--deepness-src", args.deepness_src],
                                  capture_output=True, text=True, env=env, check=True)
            run = compare(out, json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(run), flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
