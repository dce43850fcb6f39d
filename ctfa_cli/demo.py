"""``ctfa demo``: the whole pipeline on built-in synthetic scenes, through the verbs' own calls.

The demo is not a special code path: each stage calls the library function its verb calls
(``prepare synthetic`` → ``train --preset cpu`` → ``evaluate`` of the segmentation, CAM and
pseudo-label targets on the test split → ``pseudolabel`` of the train split → ``predict`` of
the held-out test scene), then renders two previews with the evaluation's report helpers.

Budgets (what ``--quick`` changes): both train the ``cpu`` preset from scratch (no download).

* default: 8 scenes of 640 px (96 training chips), the preset's 300 steps; the aim is a few
  minutes on 2 CPU cores and a clearly better mIoU than ``--quick``;
* ``--quick``: 4 scenes of 384 px (18 training chips), 60 steps with the schedule shortened to
  match (warm-up, segmentation gate, one validation); the aim is under 2 minutes.

Layout of OUT (default ``./ctfa-demo``)::

    OUT/
      data/                     DATA_DIR (``ctfa prepare synthetic``): chips.gpkg, chips/, scenes/
      run/                      RUN_DIR (``ctfa train``): checkpoints/last.pt, metrics.jsonl …
      evaluate/{seg,cam,pseudo}/  ``ctfa evaluate`` of each target on the test split
      pseudolabels/             ``ctfa pseudolabel`` of the train split (a DATA_DIR of its own)
      predict/                  ``ctfa predict`` of the test scene: class COG, probabilities COG,
                                GeoPackage polygons
      previews/chips.png        test chips: image, CAMs, pseudo label, segmentation, ground truth
      previews/<scene>.png      the predicted test scene beside its ground truth
      summary.json              metrics, files and timings (what ``ctfa demo --json`` prints)

Re-running into a folder that holds anything is refused (one-line error) unless ``overwrite``;
then only the entries above are removed and the demo starts again from scratch, since a demo
that mixes the outputs of two runs would show numbers no single run produced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from ctfa_cli.errors import CtfaUsageError

log = logging.getLogger("ctfa.demo")

DATA = "data"
RUN = "run"
EVALUATE = "evaluate"
PSEUDO_LABELS = "pseudolabels"
PREDICT = "predict"
PREVIEWS = "previews"
SUMMARY_JSON = "summary.json"
OUTPUTS = (DATA, RUN, EVALUATE, PSEUDO_LABELS, PREDICT, PREVIEWS, SUMMARY_JSON)

# Targets scored on the test split, with their column titles in the summary.
EVAL_TARGETS = {"seg": "segmentation", "cam": "CAM", "pseudo": "pseudo label"}
# Test chips shown in the mosaic: the ones carrying the most classes.
MOSAIC_CHIPS = 6
# Longest side of each panel of the scene preview, pixels.
SCENE_PANEL = 480
SEED = 0


@dataclass(frozen=True)
class DemoBudget:
    """How much the demo does.

    Attributes:
        name: ``default`` or ``quick``.
        scenes: synthetic scenes drawn (the split rule keeps the last one for test).
        size: scene width and height, pixels.
        train: overrides of the ``cpu`` preset (``--set`` values).
    """

    name: str
    scenes: int
    size: int
    train: dict[str, Any] = field(default_factory=dict)


DEFAULT_BUDGET = DemoBudget("default", scenes=8, size=640)
QUICK_BUDGET = DemoBudget("quick", scenes=4, size=384, train={
    "max_iters": 60, "warmup_iters": 10, "seg_gate_iters": 30, "eval_every": 60})


@dataclass(frozen=True)
class DemoFile:
    """One output of the demo.

    Attributes:
        path: file or folder (relative to the working directory when ``out`` was).
        what: what it is, in a few words.
        how: how to look at it (``open in QGIS`` …).
    """

    path: Path
    what: str
    how: str


@dataclass
class DemoResult:
    """What :func:`run_demo` did.

    Attributes:
        out: the demo folder.
        budget: the budget it ran with (overrides included).
        device: the device it ran on (``cpu``, ``cuda:0`` …).
        steps: training steps done.
        checkpoint: the model bundle every later stage used.
        metrics: ``seg``, ``cam`` and ``pseudo`` on the test split (see
            :func:`ctfa_cli.evaluation.evaluate.evaluate_split`), and ``pseudo_labels``: the
            written pseudo labels of the train split against its masks.
        classes: class names in index order.
        files: every output, in the order of the pipeline.
        seconds: wall time of each stage and ``total``.
    """

    out: Path
    budget: DemoBudget
    device: str
    steps: int
    checkpoint: Path
    metrics: dict[str, dict]
    classes: list[str]
    files: list[DemoFile]
    seconds: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary: metrics without confusion matrices, files, timings."""
        from ctfa_cli.evaluation.report import jsonable

        keep = ("miou", "mf1", "mf1_official", "oa", "kappa", "iou", "f1", "present", "pixels",
                "ignored_predictions")
        return jsonable({
            "out": str(self.out),
            "budget": dataclasses.asdict(self.budget),
            "device": self.device,
            "steps": self.steps,
            "checkpoint": str(self.checkpoint),
            "classes": self.classes,
            "metrics": {name: {k: m[k] for k in keep} for name, m in self.metrics.items()},
            "files": [{"path": str(f.path), "what": f.what, "how": f.how} for f in self.files],
            "seconds": {k: round(v, 1) for k, v in self.seconds.items()},
        })

    def metrics_table(self) -> Table:
        """IoU per class and the means, one column per target (rich table)."""
        columns = {name: f"{title}\n(test)" for name, title in EVAL_TARGETS.items()}
        columns["pseudo_labels"] = "pseudo labels\nwritten (train)"
        table = Table(title=f"ctfa demo ({self.budget.name}): {self.steps} training steps on "
                      f"{self.device}, {self.seconds['total']:.0f} s", title_justify="left")
        table.add_column("IoU")
        for title in columns.values():
            table.add_column(title, justify="right")
        metrics = [self.metrics[name] for name in columns]
        for index, name in enumerate(self.classes):
            table.add_row(name, *(_number(m["iou"][index]) if m["present"][index] else "—"
                                  for m in metrics))
        table.add_section()
        for key, title in (("miou", "mIoU"), ("mf1", "mF1"), ("oa", "OA")):
            table.add_row(title, *(_number(m[key]) for m in metrics),
                          style="bold" if key == "miou" else None)
        table.caption = ("CAM and pseudo labels use the chips' image-level labels, as in the "
                         "official evaluation; segmentation needs none.")
        table.caption_justify = "left"
        return table

    def file_lines(self) -> list[Text]:
        """One line per output: its path, what it is and how to open it."""
        return [Text.assemble((str(item.path), "bold"), f"  {item.what}; {item.how}")
                for item in self.files]


def demo_budget(quick: bool, *, scenes: int | None = None, size: int | None = None,
                overrides: dict[str, Any] | None = None) -> DemoBudget:
    """The budget of ``--quick`` or the default, with the hidden options applied.

    Args:
        quick: the quick budget instead of the default one.
        scenes, size: replace the budget's synthetic scenes (count, pixels).
        overrides: training overrides applied after the budget's (``--set key=value``).

    Raises:
        CtfaUsageError: fewer than 3 scenes (the demo needs train, val and test scenes).
    """
    base = QUICK_BUDGET if quick else DEFAULT_BUDGET
    scenes = base.scenes if scenes is None else scenes
    if scenes < 3:
        raise CtfaUsageError(f"--scenes {scenes}: the demo needs at least 3 scenes (train, val "
                             "and a held-out test scene)")
    return DemoBudget(base.name, scenes=scenes, size=base.size if size is None else size,
                      train={**base.train, **(overrides or {})})


def run_demo(out: Path, *, quick: bool = False, device: str = "auto", overwrite: bool = False,
             budget: DemoBudget | None = None, progress: bool = True,
             runs: Path | None = None) -> DemoResult:
    """Run prepare → train → evaluate → pseudolabel → predict on synthetic scenes into ``out``.

    See the module docstring for the stages, budgets and layout.

    Args:
        out: the demo folder; must be missing or empty unless ``overwrite``.
        quick: the quick budget (ignored when ``budget`` is given).
        device: ``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``.
        overwrite: remove the outputs of an earlier demo in ``out`` (only those) first.
        budget: an explicit budget (see :func:`demo_budget`); None: the default or quick one.
        progress: progress bars on stderr (only when it is a terminal).
        runs: the workspace's runs folder, to register the demo's run in as
            ``<runs>/synthetic/demo`` (so that ``ctfa predict SCENE`` uses its model); None:
            not registered.

    Returns:
        The :class:`DemoResult` (also written as ``summary.json``).

    Raises:
        CtfaError: ``out`` is a file, or not empty without ``overwrite``; or any error of the
            verbs it runs.
        CtfaUsageError: an invalid override or an unavailable device.
    """
    from ctfa_cli.datasets.datadir import DataDir, write_json
    from ctfa_cli.datasets.synthetic import prepare_synthetic
    from ctfa_cli.evaluation.evaluate import evaluate_checkpoint
    from ctfa_cli.evaluation.pseudolabel import write_pseudo_labels
    from ctfa_cli.inference.predict import (
        BundlePredictor,
        PredictOptions,
        predict_scenes,
        resolve_device,
    )
    from ctfa_cli.io import claim_folder
    from ctfa_cli.model.bundle import load_bundle
    from ctfa_cli.training.loop import run_config, train
    from ctfa_cli.workspace import register_run, write_run_record

    out = Path(out)
    budget = budget or demo_budget(quick)
    resolved = resolve_device(device)
    claim_folder(out, overwrite, owned=OUTPUTS)
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    with _timed(seconds, "prepare"):
        log.info("[1/6] prepare synthetic: %d scenes of %d px → %s", budget.scenes, budget.size,
                 out / DATA)
        prepare_synthetic(out / DATA, scenes=budget.scenes, size=budget.size, seed=SEED)
        data = DataDir.open(out / DATA)
    with _timed(seconds, "train"):
        cfg = run_config(data.root, preset="cpu", overrides=budget.train)
        log.info("[2/6] train --preset cpu: %d steps of batch %d on %s → %s", cfg.max_iters,
                 cfg.batch_size, resolved, out / RUN)
        trained = train(data.root, out / RUN, cfg, device=str(resolved))
        # The end of the schedule, not best.pt: picking among 3 evaluations on one 16-chip
        # validation scene is noise (measured: best.pt of step 200 scored seg 0.23 on the
        # test scene where the final step's model scored 0.28).
        checkpoint = trained.last_checkpoint
        if runs is not None:
            summary = {**trained.to_json(), "model": str(checkpoint.absolute())}
            write_run_record(trained.run_dir, summary)
            log.info("registered the demo's model as %s: `ctfa predict SCENE.tif` maps your "
                     "own scenes with it", register_run(runs, "synthetic", "demo", summary).parent)
    metrics: dict[str, dict] = {}
    with _timed(seconds, "evaluate"):
        log.info("[3/6] evaluate %s on the test split", ", ".join(EVAL_TARGETS))
        for target in EVAL_TARGETS:
            metrics[target] = evaluate_checkpoint(
                checkpoint, data.root, split="test", target=target, out=out / EVALUATE / target,
                device=str(resolved), progress=progress).metrics
    bundle = load_bundle(checkpoint, resolved)
    with _timed(seconds, "pseudolabel"):
        log.info("[4/6] pseudolabel the train split → %s", out / PSEUDO_LABELS)
        pseudo = write_pseudo_labels(bundle.model, bundle.spec, bundle.cfg, data, "train",
                                     out / PSEUDO_LABELS, overwrite=False, device=resolved,
                                     progress=progress, model_path=checkpoint)
        metrics["pseudo_labels"] = pseudo.metrics
    with _timed(seconds, "predict"):
        scene, scene_label = data.scene_paths("test")[0]
        log.info("[5/6] predict the held-out scene %s → %s", scene.name, out / PREDICT)
        options = PredictOptions(probs=True, vector="gpkg", stac=True, progress=progress)
        (predicted,) = predict_scenes([scene], BundlePredictor(bundle, resolved), out / PREDICT,
                                      options=options)
    with _timed(seconds, "previews"):
        log.info("[6/6] previews → %s", out / PREVIEWS)
        mosaic, scene_png = _write_previews(out / PREVIEWS, bundle, data, predicted.classes,
                                            scene, scene_label, resolved)
    seconds["total"] = time.perf_counter() - started
    result = DemoResult(
        out=out, budget=budget, device=str(resolved), steps=trained.step, checkpoint=checkpoint,
        metrics=metrics, classes=list(bundle.spec.classes), seconds=seconds,
        files=_describe(out, data, checkpoint, predicted, mosaic, scene_png))
    write_json(out / SUMMARY_JSON, result.to_json())
    log.info("demo finished in %.0f s: segmentation mIoU %.3f on the test split",
             seconds["total"], metrics["seg"]["miou"])
    return result


@contextlib.contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    """Record the wall time of the block as ``seconds[stage]``."""
    started = time.perf_counter()
    yield
    seconds[stage] = time.perf_counter() - started


def _number(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _write_previews(folder: Path, bundle, data, classes_path: Path, scene: Path,
                    scene_label: Path | None, device) -> tuple[Path, Path]:
    """The chip mosaic and the scene preview; returns their paths."""
    import numpy as np
    import rasterio

    from ctfa_cli.datasets.datadir import parse_labels
    from ctfa_cli.evaluation import report
    from ctfa_cli.evaluation.evaluate import predict_chips

    rows = data.split("test")
    richest = rows["labels"].map(lambda text: len(parse_labels(text)))
    # the test chips carrying the most classes (stable: earlier chips first among equals)
    shown = set(rows.loc[richest.sort_values(ascending=False, kind="stable").index[:MOSAIC_CHIPS],
                         "chip_id"])
    view = dataclasses.replace(data, chips=data.chips[data.chips["chip_id"].isin(shown)])
    chips = list(predict_chips(bundle.model, bundle.spec, bundle.cfg, view, "test",
                               targets=("pseudo", "seg"), keep_cams=True, device=device))
    mosaic = folder / "chips.png"
    report.write_mosaic_png(mosaic, chips, bundle.spec)

    with rasterio.open(scene) as src:
        image = src.read()
    with rasterio.open(classes_path) as src:
        prediction = src.read(1)
    truth = None
    if scene_label is not None:
        with rasterio.open(scene_label) as src:
            truth = src.read(1).astype(np.uint8)
    scene_png = folder / f"{scene.stem}.png"
    report.write_overlay_png(scene_png, image, truth, prediction, bundle.spec,
                             prediction_title="prediction (ctfa predict)", panel=SCENE_PANEL)
    return mosaic, scene_png


def _describe(out: Path, data, checkpoint: Path, predicted, mosaic: Path,
              scene_png: Path) -> list[DemoFile]:
    """Every output of the demo, with what it is and how to open it."""
    qgis, viewer, jq = "open in QGIS", "open in an image viewer", "read with jq or a text editor"
    files = [
        DemoFile(out / DATA / "chips.gpkg", "chip footprints with their image-level labels",
                 qgis),
        DemoFile(out / DATA / "scenes", f"the {len(data.meta.get('scenes', []))} synthetic "
                 "scenes (GeoTIFF, UTM 33N) and their label rasters", qgis),
        DemoFile(checkpoint, "the trained model bundle",
                 f"use with ctfa predict SCENE.tif --model {checkpoint} --out OUT.tif"),
        DemoFile(out / RUN / "metrics.jsonl", "training losses and validation mIoU per step",
                 jq),
        DemoFile(out / RUN / "config.yaml", "the resolved training config",
                 f"train again with ctfa train --config {out / RUN / 'config.yaml'} …"),
    ]
    for target, title in EVAL_TARGETS.items():
        folder = out / EVALUATE / target
        files += [
            DemoFile(folder / "confusion.png", f"{title} confusion matrix on the test split",
                     viewer),
            DemoFile(folder / "overlays", f"test chips: image | ground truth | {title}",
                     viewer),
            DemoFile(folder / "metrics.json", f"{title} metrics on the test split", jq),
        ]
    files += [
        DemoFile(out / PSEUDO_LABELS / "chips" / "train" / "masks",
                 "refined pseudo labels of the train chips (GeoTIFF with the palette)", qgis),
        DemoFile(out / PSEUDO_LABELS / "report.json", "pseudo-label quality and class shares",
                 jq),
        DemoFile(predicted.classes, f"class map of the held-out scene {predicted.scene.name} "
                 "(Cloud-Optimized GeoTIFF)", qgis),
        DemoFile(predicted.probs, "class probabilities, one band per class, 0–255", qgis),
        DemoFile(predicted.vector, f"{predicted.polygons} class polygons (GeoPackage)", qgis),
        DemoFile(predicted.stac, "STAC Item of the map: footprint, assets, classes, model", jq),
        DemoFile(mosaic, "test chips: image, CAMs, pseudo label, segmentation, ground truth",
                 viewer),
        DemoFile(scene_png, "the held-out scene, its ground truth and the prediction", viewer),
        DemoFile(out / SUMMARY_JSON, "this summary: metrics, files and timings", jq),
    ]
    return files
