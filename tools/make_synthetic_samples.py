"""Render the sample images of docs/synthetic.md from synthetic scenes (docs/images/synthetic_*.png).

    .venv/bin/python tools/make_synthetic_samples.py [--out docs/images] [--seed 3] [--size 2048]

Writes (PNG, palette-quantised to stay small):
  synthetic_overview.png      the whole RGB scene, downsampled, with a nodata edge
  synthetic_rgb_tiles.png     six 256x256 tiles (RGB, uint8 scene)
  synthetic_nirrg_tiles.png   the same tiles from the BGRN uint16 scene as false colour NIR-R-G
  synthetic_mask_tiles.png    the same tiles with the gully mask outlined in red
"""

import argparse
import os
import tempfile

import numpy as np
from osgeo import gdal
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _engine():
    from gullyseg_cli import register_package  # tools/ is this script's folder, first on sys.path

    register_package()
    from gullyseg.processing.engine import synthetic

    return synthetic


def _stretch(bands, valid):
    """uint16 bands -> uint8 with one 1-99 % linear stretch shared by the bands (keeps the hues)."""
    lo, hi = np.percentile(bands[:, valid], (1, 99))
    return np.clip((bands.astype(np.float32) - lo) / max(hi - lo, 1) * 255, 0, 255).astype(np.uint8)


def _outline(mask):
    inside = mask == 1
    edge = np.zeros_like(inside)
    edge[1:, :] |= inside[1:, :] != inside[:-1, :]
    edge[:, 1:] |= inside[:, 1:] != inside[:, :-1]
    return edge


def _save(rgb, path, colours=128):
    image = Image.fromarray(np.moveaxis(rgb, 0, -1))
    image.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"{path}: {os.path.getsize(path) // 1024} KB")


def _grid(tiles, cols):
    rows = [np.concatenate(tiles[i:i + cols], axis=2) for i in range(0, len(tiles), cols)]
    return np.concatenate(rows, axis=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "images"))
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tiles", help="row,col pairs of 256-pixel tiles, e.g. 1,2;3,4 (default: automatic)")
    args = parser.parse_args()
    synthetic = _engine()
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="gullyseg_samples_")
    kw = dict(width=args.size, height=args.size, seed=args.seed, nodata_edge=True)
    rgb_res = synthetic.make_scene(os.path.join(work, "rgb.tif"), bands="rgb",
                                   mask_path=os.path.join(work, "mask.tif"), **kw)
    bgrn_res = synthetic.make_scene(os.path.join(work, "bgrn.tif"), bands="bgrn", **kw)
    rgb = gdal.Open(rgb_res.path).ReadAsArray()
    bgrn = gdal.Open(bgrn_res.path).ReadAsArray()
    mask = gdal.Open(rgb_res.mask_path).ReadAsArray()
    print(f"scene: {rgb_res.gully_count} networks, {rgb_res.dam_count} dams, "
          f"gully share {100 * rgb_res.gully_fraction:.1f} %")

    # overview: 4x downsampled (area average)
    f = 4
    h, w = (args.size // f) * f, (args.size // f) * f
    small = rgb[:, :h, :w].reshape(3, h // f, f, w // f, f).mean(axis=(2, 4)).astype(np.uint8)
    _save(small, os.path.join(args.out, "synthetic_overview.png"))

    # tiles: gully share 15..55 %, fully valid, spread over the scene
    if args.tiles:
        picks = [tuple(int(v) for v in pair.split(",")) for pair in args.tiles.split(";")]
    else:
        candidates = []
        for r in range(args.size // 256):
            for c in range(args.size // 256):
                m = mask[r * 256:(r + 1) * 256, c * 256:(c + 1) * 256]
                share = (m == 1).mean()
                if (m != 255).all() and 0.12 <= share <= 0.6:
                    candidates.append((r, c))
        step = max(1, len(candidates) // 6)
        picks = candidates[::step][:6]
    cols = 3 if len(picks) >= 6 else 2
    if len(picks) < 2:
        raise SystemExit("too few tiles with gullies: try another --seed or --tiles")
    picks = picks[:len(picks) // cols * cols]
    print("tiles (row, col):", picks)
    valid = mask != 255
    nirrg = _stretch(bgrn[[3, 2, 1]], valid)
    tiles_rgb, tiles_fc, tiles_mask = [], [], []
    for r, c in picks:
        win = (slice(None), slice(r * 256, (r + 1) * 256), slice(c * 256, (c + 1) * 256))
        t = rgb[win].copy()
        tiles_rgb.append(t)
        tiles_fc.append(nirrg[win])
        edge = _outline(mask[win[1], win[2]])
        over = t.copy()
        over[:, edge] = np.array([255, 30, 30], dtype=np.uint8)[:, None]
        tiles_mask.append(over)
    _save(_grid(tiles_rgb, cols), os.path.join(args.out, "synthetic_rgb_tiles.png"))
    _save(_grid(tiles_fc, cols), os.path.join(args.out, "synthetic_nirrg_tiles.png"))
    _save(_grid(tiles_mask, cols), os.path.join(args.out, "synthetic_mask_tiles.png"))
    for name in os.listdir(work):
        os.remove(os.path.join(work, name))
    os.rmdir(work)


if __name__ == "__main__":
    main()
