"""Options shared by several verbs, defined once so that a flag means the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ModelOpt = Annotated[
    Path, typer.Option("--model", "-m", help="Checkpoint (model bundle) written by `ctfa train`.")
]
DataDirOpt = Annotated[
    Path, typer.Option("--data", "-d", help="DATA_DIR written by `ctfa prepare`.")
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace existing outputs instead of refusing.")
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of a table.")
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")
]
WorkersOpt = Annotated[
    int, typer.Option("--workers", min=0, help="Parallel worker processes (0: in-process).")
]
TileOpt = Annotated[
    int | None, typer.Option("--tile", min=16, help="Tile (window) size in pixels.")
]
StrideOpt = Annotated[
    int | None, typer.Option("--stride", min=1, help="Step between chips in pixels.")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
SplitOpt = Annotated[str, typer.Option("--split", help="Split of DATA_DIR to use.")]
BatchSizeOpt = Annotated[
    int | None, typer.Option("--batch-size", min=1, help="Images per forward pass.")
]
AmpOpt = Annotated[
    str, typer.Option("--amp", help="none (float32) or bf16 (bfloat16 autocast: faster on GPUs "
                                    "and on CPUs with native bfloat16, e.g. AVX512-BF16; "
                                    "results differ slightly from float32).")
]
TtaOpt = Annotated[
    bool, typer.Option("--tta", help="Test-time augmentation: multi-scale and flip.")
]
DataOutOpt = Annotated[
    Path, typer.Option("--out", "-o", help="DATA_DIR to write (created; a finished one is "
                       "reused, anything else is refused unless --overwrite).")
]
BandsOpt = Annotated[
    str | None,
    typer.Option("--bands", help="Bands: a preset name or 1-based indices such as 4,1,2."),
]
