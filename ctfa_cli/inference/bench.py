"""Benchmark: whole-scene prediction versus the bare forward pass of the same windows.

``python -m ctfa_cli.inference.bench [--size PX] [--tile PX] [--batch-size N] [--device D]
[--amp none|bf16] [--threads N] [--json]``

On one synthetic georeferenced scene (written to a temporary folder) and one
``vit_tiny_patch16_224`` CTFA network with random weights, in one process:

* **forward**: the model alone on random tiles, as many batches of the same shapes as the
  scene's window grid needs (so overlap costs the same on both sides);
* **predict**: :func:`~ctfa_cli.inference.predict.predict_scene` — reading, normalising,
  batching, blending, argmax, writing the class COG (overviews included);
* **predict + vector**: the same plus polygons (GeoPackage).

Throughput is scene pixels per second; ``ratio`` is a pipeline's throughput over the bare
forward's (target: >= 0.8 on CPU). Timings follow a warm-up forward pass; each configuration
runs ``--repeats`` times and keeps its best.

Measured on the 2-core CPU development box, nothing else running (``--size 2048 --threads
2``, tile 224, overlap 56, 144 windows, batch 8; docs/performance.md has both precisions):

=================  ========  =====
config             Mpx/s     ratio
=================  ========  =====
forward            1.32      1.000
predict            1.17      0.89
predict + vector   0.95      0.72  (about 4 050 polygons)
=================  ========  =====

With ``--amp bf16`` (native bfloat16 on that CPU) predict reached 1.62-1.74 Mpx/s. No GPU
figures yet: the background reader/writer threads used on CUDA are exercised on CPU by the
tests only.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin

from ctfa_cli.config import TrainConfig
from ctfa_cli.datasets.registry import get_spec
from ctfa_cli.inference.predict import (
    BundlePredictor,
    PredictOptions,
    predict_scene,
    resolve_device,
)
from ctfa_cli.precision import AMP_MODES

BACKBONE = "vit_tiny_patch16_224"


def synthetic_scene(path: Path, size: int, seed: int = 0) -> Path:
    """Write a ``size × size`` 3-band uint8 GeoTIFF (UTM 32N, 0.5 m) of smooth random blobs."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 255, (1, 3, size // 32 + 1, size // 32 + 1)))
    image = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic",
                                            align_corners=False)[0]
    data = image.clamp(0, 255).round().to(torch.uint8).numpy()
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3,
                       dtype="uint8", crs="EPSG:32632", tiled=True, compress="deflate",
                       transform=from_origin(500000, 5600000, 0.5, 0.5)) as dst:
        dst.write(data)
    return path


def run(size: int = 1024, tile: int = 224, batch_size: int = 8, device: str = "auto",
        repeats: int = 2, amp: str = "none") -> list[dict]:
    """Measure the three configurations (best of ``repeats`` each); one row per configuration.

    ``amp`` is the predictor's precision (``ctfa predict --amp``), used by all three.
    """
    from ctfa_cli.model.network import CTFANetwork

    torch.manual_seed(0)
    spec = get_spec("synthetic").model_copy(update={"tile_size": tile})
    cfg = TrainConfig(backbone=BACKBONE, pretrained=False)
    model = CTFANetwork.from_config(spec, cfg, pretrained=False)
    predictor = BundlePredictor(SimpleNamespace(model=model, spec=spec),
                                resolve_device(device), amp=amp)
    options = PredictOptions(tile=tile, batch_size=batch_size, progress=False, overwrite=True)
    grid = options.grid(predictor, size, size)
    pixels = size * size
    rows = []
    with tempfile.TemporaryDirectory(prefix="ctfa-bench-") as folder:
        scene = synthetic_scene(Path(folder) / "scene.tif", size)
        tiles = torch.randn(batch_size, spec.in_chans, tile, tile)
        sizes = [batch_size] * (len(grid) // batch_size) + [len(grid) % batch_size]
        predictor(tiles[:1])  # warm-up: allocator, kernels
        forward = 0.0
        for _ in range(repeats):
            _synchronise(predictor.device)
            started = time.perf_counter()
            for n in filter(None, sizes):
                predictor(tiles[:n]).cpu()  # the pipeline also brings probabilities back
            _synchronise(predictor.device)
            forward = max(forward, pixels / (time.perf_counter() - started))
        rows.append(_row("forward", forward, forward, size, grid, batch_size, predictor))
        for name, vector in (("predict", None), ("predict + vector", "gpkg")):
            out = Path(folder) / "out" / "classes.tif"
            results = [predict_scene(scene, predictor, out,
                                     options=PredictOptions(**{**options.__dict__,
                                                               "vector": vector}))
                       for _ in range(repeats)]
            best = max(results, key=lambda r: r.pixels_per_second)
            rows.append(_row(name, best.pixels_per_second, forward, size, grid, batch_size,
                             predictor, polygons=best.polygons))
    return rows


def _row(name, throughput, forward, size, grid, batch_size, predictor, **extra) -> dict:
    return {"config": name, "device": str(predictor.device), "threads": torch.get_num_threads(),
            "scene": f"{size}x{size}", "tile": grid.tile, "overlap": grid.overlap,
            "windows": len(grid), "batch": batch_size, "backbone": BACKBONE,
            "amp": predictor.amp,
            "mpx_per_s": round(throughput / 1e6, 4), "ratio": round(throughput / forward, 3),
            **extra}


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: print a table (or JSON rows with ``--json``) on stdout."""
    parser = argparse.ArgumentParser(prog="python -m ctfa_cli.inference.bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="scene side in pixels")
    parser.add_argument("--tile", type=int, default=224, help="window size in pixels")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="none", choices=AMP_MODES,
                        help="precision, as ctfa predict --amp")
    parser.add_argument("--repeats", type=int, default=2, help="runs per config (best kept)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args.size, args.tile, args.batch_size, args.device, args.repeats, args.amp)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("config", "device", "amp", "threads", "scene", "tile/overlap", "windows",
                  "Mpx/s", "ratio", title="ctfa predict throughput (scene pixels per second)")
    for row in rows:
        table.add_row(row["config"], row["device"], row["amp"], str(row["threads"]), row["scene"],
                      f"{row['tile']}/{row['overlap']}", str(row["windows"]),
                      f"{row['mpx_per_s']:.4f}", f"{row['ratio']:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
