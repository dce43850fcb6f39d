"""PAR benchmark rows for ``python -m kernels.bench``: every path on the training shape.

Shape ``"BxKxHxW"``: batch 8, 6 classes, 160×160 (half of a 320 crop, where training runs
PAR), masks already at image size, the official 6 dilations and 10 iterations. Inputs are
seeded random images and softmax masks. The ``triton`` path is timed on CUDA only (on CPU
it would time Triton's interpreter, not the kernel).

Measured on the 2-core CI box (AMD EPYC, no GPU), 8×6×160×160, while other jobs kept the
load average at 3–9 (so wall times are inflated and noisy; the minimum of 3 is kept):

* peak extra memory: reference 492.2 MB, ``cpu`` path 51.6 MB (10.5 %, target ≤ 25 %);
* one thread (CPU seconds per call, the least load-sensitive figure): reference 6.1–6.8 s,
  ``cpu`` path 0.38–0.44 s, 15–16×;
* the driver on one core (``taskset -c 1``): 15.5 s vs 1.35 s (11×);
* the driver with both threads: 10.2 s vs 2.5 s (4.0×) at the quietest moment, down to
  2.3–2.9× when the load average was 6–8: the fused path's ~4,000 small parallel regions
  each wait for both OpenMP threads, which a loaded machine keeps descheduling.
"""

from __future__ import annotations

from kernels.bench import peak_extra_mb, time_ms

SHAPE: tuple[int, int, int, int] = (8, 6, 160, 160)
#: Tiny shape for a smoke run of the driver (``--quick``).
QUICK_SHAPE: tuple[int, int, int, int] = (1, 2, 24, 24)


def run(device: str, repeats: int, *, quick: bool = False) -> list[dict]:
    """Time and peak extra memory of each PAR path on ``device``.

    Args:
        device: ``"cpu"`` or ``"cuda"`` (or ``"cuda:N"``).
        repeats: timed calls per path; the minimum is kept.
        quick: use :data:`QUICK_SHAPE` instead of :data:`SHAPE`.

    Returns:
        One row per path, reference first: ``{"op": "par", "path", "device", "shape": "BxKxHxW",
        "ms", "peak_mb", "speedup", "agreement": None}`` with ``speedup`` = reference ms / this
        path's ms.
    """
    import torch

    from kernels.par import par

    batch, classes, height, width = QUICK_SHAPE if quick else SHAPE
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, height, width, generator=generator).to(device)
    logits = torch.randn(batch, classes, height, width, generator=generator) * 3
    masks = torch.softmax(logits, dim=1).to(device)
    paths = ["reference", "cpu"] + (["triton"] if device.startswith("cuda") else [])

    rows = []
    for path in paths:

        def call(path: str = path) -> torch.Tensor:
            return par(images, masks, path=path)

        with torch.no_grad():
            peak_mb = peak_extra_mb(call, device)  # also the warm-up (Triton compiles here)
            ms = time_ms(call, device, repeats)
        rows.append(
            {
                "op": "par",
                "path": path,
                "device": device,
                "shape": f"{batch}x{classes}x{height}x{width}",
                "ms": ms,
                "peak_mb": peak_mb,
                "agreement": None,
            }
        )
    for row in rows:
        row["speedup"] = rows[0]["ms"] / row["ms"]
    return rows
