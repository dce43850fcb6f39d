"""The CTFA training loop behind ``ctfa train``.

RUN_DIR layout::

    RUN_DIR/
      config.yaml            resolved training config (``train``) and dataset spec (``dataset``)
      train.log              the run's log (every rank-0 INFO record)
      metrics.jsonl          one JSON object per logged step (``"kind": "train"``) and per
                             evaluation (``"kind": "eval"``)
      checkpoints/last.pt    model bundle + training state, written at every evaluation and at
                             the end; ``--resume`` continues from it
      checkpoints/best.pt    the bundle with the best validation segmentation mIoU
      run.json               the run's summary (as ``ctfa train`` prints it), written when the
                             command ends having applied at least one step: a finished run
                             of the workspace (:mod:`ctfa_cli.workspace`)

Reproducibility: the data order, the augmentation and every random draw of a step are pure
functions of ``(seed, step, rank)`` (see :mod:`ctfa_cli.training.data`; the global torch RNG is
re-seeded from them before each step), so a checkpoint needs no RNG state: model (with the EMA
teacher), optimiser state, step counter, best metric and skipped-step count are enough, and N
steps in one run equal N/2 steps, ``--resume``, N/2 steps (bit for bit on CPU).

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) each process trains on its share of every
global batch (``batch_size`` chips per process) with DDP (NCCL on CUDA, gloo on CPU); rank 0
alone writes logs, metrics and checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ctfa_cli.config import RUN_CONFIG_FORMAT, DatasetSpec, TrainConfig, resolve_train_config
from ctfa_cli.datasets.datadir import DataDir
from ctfa_cli.errors import CtfaError, CtfaUsageError
from ctfa_cli.evaluation.evaluate import evaluate_split
from ctfa_cli.inference.predict import make_current, resolve_device
from ctfa_cli.io import atomic_path
from ctfa_cli.model.bundle import load_bundle, save_bundle
from ctfa_cli.model.network import CTFANetwork
from ctfa_cli.precision import autocast, tf32_mode
from ctfa_cli.progress import progress_bar
from ctfa_cli.training.data import (
    STEP,
    StepBatchSampler,
    TrainChips,
    derive_seed,
    validation_split,
)
from ctfa_cli.training.optim import build_optimizer
from ctfa_cli.training.step import CTFAStep
from ctfa_cli.training.tensorboard import TENSORBOARD_DIR, open_writer
from ctfa_cli.workspace import RUN_JSON, write_run_record

log = logging.getLogger("ctfa.training.loop")

CONFIG_YAML = "config.yaml"
TRAIN_LOG = "train.log"
METRICS_JSONL = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LAST_PT = "last.pt"
BEST_PT = "best.pt"
# Terms shown next to the progress bar (all terms go to metrics.jsonl).
BAR_TERMS = ("loss", "cls", "ctc", "ptc", "seg")
# Seed domain of the model initialisation (data and steps use the others in data.py).
INIT = 3
# Share of skipped (non-finite) steps above which the run ends with a warning.
SKIPPED_WARN_FRACTION = 0.05


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        run_dir: the RUN_DIR.
        step: global steps completed (resumed ones included).
        skipped: steps skipped because their loss or gradient was not finite.
        best_miou: best validation segmentation mIoU so far (None: never evaluated).
        last_checkpoint: ``RUN_DIR/checkpoints/last.pt``.
        best_checkpoint: ``RUN_DIR/checkpoints/best.pt``, or None when not written.
        model: the trained network (in train mode, on the training device), on every rank.
        rank: this process' rank (0 without torchrun); rank 0 wrote the RUN_DIR.
        dataset: the dataset spec's name; ``classes`` its class names.
        data_dir: the DATA_DIR trained on.
    """

    run_dir: Path
    step: int
    skipped: int
    best_miou: float | None
    last_checkpoint: Path
    best_checkpoint: Path | None
    model: CTFANetwork
    rank: int = 0
    dataset: str = ""
    classes: list[str] = field(default_factory=list)
    data_dir: Path | None = None

    @property
    def applied(self) -> int:
        """Steps that changed the weights (``step - skipped``)."""
        return self.step - self.skipped

    def to_json(self) -> dict[str, Any]:
        """The run's summary: what ``ctfa train`` prints and ``RUN_DIR/run.json`` holds
        (``run_dir`` first, so that ``jq -r .run_dir`` and ``head -1`` find it)."""
        return {
            "run_dir": str(self.run_dir.absolute()),
            "dataset": self.dataset,
            "classes": list(self.classes),
            "data_dir": str(self.data_dir.absolute()) if self.data_dir else None,
            "step": self.step,
            "skipped": self.skipped,
            "applied_steps": self.applied,
            "skipped_fraction": round(self.skipped / self.step, 6) if self.step else 0.0,
            "best_seg_miou": self.best_miou,
            "last_checkpoint": str(self.last_checkpoint.absolute()),
            "best_checkpoint": (str(self.best_checkpoint.absolute())
                                if self.best_checkpoint else None),
        }


@dataclass
class _Process:
    """Where this process trains: its rank, the world size and its device."""

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def run_config(data_dir: Path, *, dataset: str | None = None, preset: str = "paper",
               config_file: Path | None = None,
               overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Resolve the training config of a run on ``data_dir``.

    Args:
        data_dir: the DATA_DIR (its dataset name picks the per-dataset ``paper`` values).
        dataset: dataset whose official hyper-parameters the ``paper`` preset uses; default
            the DATA_DIR's dataset.
        preset: ``paper`` or ``cpu``.
        config_file: YAML of config fields (a RUN_DIR's ``config.yaml`` works too).
        overrides: ``--set`` fields, applied last.

    Raises:
        CtfaError: DATA_DIR missing or not prepared.
        CtfaUsageError: unknown preset, unreadable file, unknown field or invalid value.
    """
    name = dataset or DataDir.open(data_dir).spec.name
    return resolve_train_config(name, preset, config_file, overrides)


def train(data_dir: Path, run_dir: Path, cfg: TrainConfig | None, *, resume: bool = False,
          overwrite: bool = False, max_iters: int | None = None,
          device: str | None = None) -> TrainResult:
    """Train CTFA on the ``train`` split of ``data_dir``, writing the run to ``run_dir``.

    Args:
        data_dir: DATA_DIR written by ``ctfa prepare``.
        run_dir: RUN_DIR; must be absent or empty unless ``resume`` or ``overwrite``.
        cfg: the training config. With ``resume`` the checkpoint's config is used (a ``cfg``
            that differs is reported and ignored, so that the run continues exactly); None is
            allowed only with ``resume``.
        resume: continue from ``run_dir/checkpoints/last.pt``.
        overwrite: replace the outputs of an earlier run in ``run_dir``.
        max_iters: stop after this many steps in total (resumed ones included) without
            changing the schedule (``cfg.max_iters`` stays the schedule length); None: train
            to ``cfg.max_iters``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; None: ``cfg.device``. Under
            ``torchrun`` CUDA ranks use ``cuda:LOCAL_RANK``.

    Returns:
        A :class:`TrainResult`.

    Raises:
        CtfaError: DATA_DIR missing/unprepared or without a train split, RUN_DIR not empty
            without ``resume``/``overwrite``, no checkpoint to resume from, or a checkpoint
            for another class set than DATA_DIR's.
        CtfaUsageError: ``resume`` with ``overwrite``, no config, ``max_iters`` beyond the
            schedule, or an unavailable device.
    """
    run_dir = Path(run_dir)
    paths = _RunPaths(run_dir)
    if resume and overwrite:
        raise CtfaUsageError("--resume and --overwrite exclude each other; pick one")
    data = DataDir.open(data_dir)
    state: dict[str, Any] = {"step": 0, "skipped": 0, "best_miou": None}
    if resume:
        bundle = _load_resume_bundle(paths.last, data.spec)
        model, optimizer_state = bundle.model, bundle.extra["optimizer"]
        state.update({k: bundle.extra[k] for k in state})
        if cfg is not None and cfg != bundle.cfg:
            changed = sorted(k for k in TrainConfig.model_fields
                             if getattr(cfg, k) != getattr(bundle.cfg, k))
            log.warning("resuming with the run's own config; ignoring the differing fields "
                        "given now: %s", ", ".join(changed))
        cfg = bundle.cfg
    elif cfg is None:
        raise CtfaUsageError("no training config given (only --resume reuses the run's own)")
    else:
        _check_new_run(run_dir, overwrite)
    stop = cfg.max_iters if max_iters is None else max_iters
    if stop > cfg.max_iters:
        raise CtfaUsageError(f"--max-iters {stop} is past the schedule's max_iters "
                             f"{cfg.max_iters}; lengthen the schedule with --set max_iters={stop}")

    proc = _start_process(device or cfg.device)
    try:
        with _console_of_rank(proc.rank):
            if not resume:
                torch.manual_seed(derive_seed(cfg.seed, INIT))
                model, optimizer_state = CTFANetwork.from_config(data.spec, cfg), None
            model.to(proc.device).train()
            if proc.is_main:
                paths.prepare(overwrite=overwrite,
                              resume_step=state["step"] if resume else None)
                paths.write_config(cfg, data.spec, data.root)
            with _log_file(paths.log if proc.is_main else None), \
                    tf32_mode(cfg.tf32, proc.device):
                return _train(data, paths, cfg, model, optimizer_state, state, stop, proc)
    finally:
        _end_process(proc)


def _train(data: DataDir, paths: _RunPaths, cfg: TrainConfig, model: CTFANetwork,
           optimizer_state: dict | None, state: dict[str, Any], stop: int,
           proc: _Process) -> TrainResult:
    spec = data.spec
    start = state["step"]
    optimizer = build_optimizer(model, cfg)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    step_module = CTFAStep(model, spec, cfg)
    forward = step_module
    if proc.world_size > 1:
        forward = DistributedDataParallel(
            step_module, device_ids=[proc.device.index] if proc.device.type == "cuda" else None)
    params = [p for p in model.parameters() if p.requires_grad]

    train_set = TrainChips(data, cfg)
    sampler = StepBatchSampler(len(train_set), cfg.batch_size, seed=cfg.seed, start_step=start,
                               stop_step=stop, rank=proc.rank, world_size=proc.world_size)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.num_workers,
                        pin_memory=proc.device.type == "cuda")
    val_split = validation_split(data)
    if start >= stop:
        log.info("nothing to do: the run is already at step %d of %d", start, stop)
    else:
        log.info("training %s on %s: steps %d→%d of a %d-step schedule, %d process(es) × "
                 "batch %d on %s; %d training chips", cfg.backbone, data.root, start, stop,
                 cfg.max_iters, proc.world_size, cfg.batch_size, proc.device, len(train_set))
        log.info("validation split: %s", val_split
                 or "none (no val or test split with masks): best.pt will not be written")
        if val_split == "test":
            log.warning("%s has no val split: best.pt is chosen on the test split, as the "
                        "official scripts do, so a test score of best.pt is optimistic (the "
                        "eval records of metrics.jsonl say selected_on_test); prepare with "
                        "--val-fraction 0.1 to hold scenes out for validation", data.root)

    board = (open_writer(paths.root, spec, cfg, data, val_split, start_step=start)
             if proc.is_main else None)  # TensorBoard: a copy of metrics.jsonl and chip grids
    paths.board = board
    meter = _Meter(start, state["skipped"], proc.device)
    logged_skipped = state["skipped"]  # skipped steps already warned about
    with progress_bar("train", stop, enabled=proc.is_main, completed=start) as advance:
        for step, batch in zip(range(start, stop), loader, strict=True):
            torch.manual_seed(derive_seed(cfg.seed, STEP, step, proc.rank))
            batch = {k: v.to(proc.device, non_blocking=True) for k, v in batch.items()}
            train_step(forward, batch, step, model=model, optimizer=optimizer, params=params,
                       meter=meter, cfg=cfg, world_size=proc.world_size, device=proc.device)
            done = step + 1
            if done % cfg.log_every == 0 or done == stop:
                record = meter.flush(done, optimizer, cfg.batch_size * proc.world_size)
                state["skipped"] = record["skipped"]
                if state["skipped"] > logged_skipped:
                    log.warning("%d step(s) up to step %d skipped: non-finite loss or gradient "
                                "(%d skipped so far)", state["skipped"] - logged_skipped, done,
                                state["skipped"])
                    logged_skipped = state["skipped"]
                advance(status=_bar_status(record))
                if proc.is_main:
                    log.info(_format_record(record))
                    paths.append_metrics(record)
            else:
                advance()  # the bar keeps the status of the last log step
            if done % cfg.eval_every == 0 or done == stop:
                state["step"] = done
                state["skipped"] = meter.skipped_so_far()  # for the checkpoint
                _evaluate_and_save(model, data, cfg, optimizer, val_split, paths, state, proc)
    if board is not None:
        board.close()
    if proc.world_size > 1:
        dist.barrier()
    ran = max(state["step"] - start, 0)
    if ran and state["skipped"] / max(state["step"], 1) > SKIPPED_WARN_FRACTION:
        log.warning("%d of %d steps (%.0f%%) were skipped as non-finite: the run is unstable; "
                    "lower the lr, try --set amp=none or look for bad chips", state["skipped"],
                    state["step"], 100 * state["skipped"] / state["step"])
    result = TrainResult(
        run_dir=paths.root, step=state["step"], skipped=state["skipped"],
        best_miou=state["best_miou"], last_checkpoint=paths.last,
        best_checkpoint=paths.best if paths.best.is_file() else None, model=model,
        rank=proc.rank, dataset=spec.name, classes=list(spec.classes), data_dir=data.root,
    )
    if proc.is_main and result.applied > 0:
        # run.json marks a run that trained: `ctfa predict` picks the newest of these.
        write_run_record(paths.root, result.to_json())
    return result


def train_step(forward, batch: dict[str, torch.Tensor], step: int, *, model: CTFANetwork,
               optimizer, params: list[torch.nn.Parameter], meter: _Meter, cfg: TrainConfig,
               world_size: int, device: torch.device) -> None:
    """One training step: forward, backward, clipping, and an update applied only if finite.

    Nothing here reads a tensor on the host (tests/training/test_syncs.py counts it): a
    non-finite step is skipped on the device, without waiting for the GPU to know. The
    optimiser's fused kernel then changes nothing (``found_inf``), the teacher keeps its weights,
    the meter adds nothing and its skipped counter counts the step; all are read on the host
    only at log steps (:meth:`_Meter.flush`).

    Args:
        forward: the :class:`CTFAStep` (or its DDP wrapper).
        batch: the step's batch (see :meth:`CTFAStep.forward`), on ``device``.
        step: 0-based global step.
        model: the network (its teacher is updated after the optimiser step).
        optimizer: the :class:`~ctfa_cli.training.optim.PolyWarmupAdamW`.
        params: the parameters whose gradient norm is clipped.
        meter: the run's :class:`_Meter`.
        cfg: the training config (``amp``, ``grad_clip``).
        world_size: processes under torchrun (1 without).
        device: the training device.
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast(cfg.amp, device):
        out = forward(batch, step)
    out.loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(
        params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    finite = (torch.isfinite(out.loss.detach()) & torch.isfinite(grad_norm)).float()
    if world_size > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)  # every rank skips together
    # The schedule follows the step index, so a skipped step does not shift it.
    applied = finite.bool()
    optimizer.global_step = step
    optimizer.step(skip=1.0 - finite)
    # The reference updates the teacher at the start of the next forward; nothing
    # changes the student in between, so updating it here is the same.
    model.ema_update(apply=applied)
    meter.add(out, applied)


def _evaluate_and_save(model: CTFANetwork, data: DataDir, cfg: TrainConfig, optimizer,
                       val_split: str | None, paths: _RunPaths, state: dict[str, Any],
                       proc: _Process) -> None:
    """Validate (every rank takes its share), then rank 0 writes metrics and checkpoints.

    As the official validation: CAM, aux-CAM and segmentation mIoU, chips resized to the
    training crop size and predictions back to the mask size.
    """
    improved = False
    if val_split is not None:
        metrics = evaluate_split(model, data.spec, cfg, data, val_split,
                                 targets=("cam", "aux_cam", "seg"), device=proc.device,
                                 batch_size=cfg.batch_size, progress=False,
                                 input_size=cfg.crop_size, amp=cfg.amp)
        seg_miou = metrics["seg"]["miou"]
        improved = state["best_miou"] is None or seg_miou > state["best_miou"]
        if improved:
            state["best_miou"] = seg_miou
        if proc.is_main:
            record = {"kind": "eval", "step": state["step"], "split": val_split,
                      "selected_on_test": val_split == "test", **metrics}
            paths.append_metrics(record)
            log.info("step %d · %s mIoU: CAM %.4f · aux-CAM %.4f · seg %.4f%s", state["step"],
                     val_split, metrics["cam"]["miou"], metrics["aux_cam"]["miou"],
                     seg_miou, " (best)" if improved else "")
            if paths.board is not None:
                paths.board.add_grid(model, state["step"], proc.device)
    if proc.is_main:
        extra = {"optimizer": optimizer.state_dict(), "step": state["step"],
                 "skipped": state["skipped"], "best_miou": state["best_miou"]}
        save_bundle(paths.last, model, data.spec, cfg, extra=extra)
        if improved:
            shutil.copyfile(paths.last, paths.best_tmp)
            os.replace(paths.best_tmp, paths.best)


# --- RUN_DIR ------------------------------------------------------------------------------------


class _RunPaths:
    """The files of a RUN_DIR."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.config = self.root / CONFIG_YAML
        self.log = self.root / TRAIN_LOG
        self.metrics = self.root / METRICS_JSONL
        self.checkpoints = self.root / CHECKPOINTS
        self.last = self.checkpoints / LAST_PT
        self.best = self.checkpoints / BEST_PT
        self.best_tmp = self.checkpoints / f".tmp-{os.getpid()}-{BEST_PT}"
        self.board = None  # a TensorBoardWriter that gets every record too (rank 0)

    @property
    def owned(self) -> list[Path]:
        return [self.config, self.log, self.metrics, self.checkpoints, self.root / RUN_JSON,
                self.root / TENSORBOARD_DIR]

    def prepare(self, *, overwrite: bool, resume_step: int | None) -> None:
        """Create the RUN_DIR; ``overwrite`` removes an earlier run's outputs (only those);
        on resume, metrics of steps after the checkpoint (about to be redone) are dropped."""
        if overwrite:
            for entry in self.owned:
                if entry.is_dir():
                    shutil.rmtree(entry)
                elif entry.exists():
                    entry.unlink()
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.metrics.is_file():
            kept = [line for line in self.metrics.read_text().splitlines()
                    if _record_step(line) <= resume_step]
            with atomic_path(self.metrics) as tmp:
                tmp.write_text("".join(f"{line}\n" for line in kept))

    def write_config(self, cfg: TrainConfig, spec: DatasetSpec, data_root: Path) -> None:
        body = {"format": RUN_CONFIG_FORMAT, "data_dir": str(Path(data_root).resolve()),
                "train": cfg.model_dump(mode="json"), "dataset": spec.model_dump(mode="json")}
        with atomic_path(self.config) as tmp:
            tmp.write_text(yaml.safe_dump(body, sort_keys=False, allow_unicode=True))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.board is not None:
            self.board.add_record(record)


def _record_step(line: str) -> float:
    """Step of a metrics.jsonl line; a line cut short by a crash counts as after any step."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def _check_new_run(run_dir: Path, overwrite: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise CtfaError(f"{run_dir} is a file; --out must be a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
        raise CtfaError(f"{run_dir} is not empty; pass --resume to continue its run, "
                        "--overwrite to replace it, or choose a new --out")


def _load_resume_bundle(last: Path, spec: DatasetSpec):
    if not last.is_file():
        raise CtfaError(f"{last}: no checkpoint to resume from; start the run without --resume")
    bundle = load_bundle(last, "cpu")
    if bundle.spec.classes != spec.classes or bundle.spec.bands != spec.bands:
        raise CtfaError(f"{last}: trained on {bundle.spec.num_classes} classes / bands "
                        f"{bundle.spec.bands}, but the DATA_DIR has {spec.num_classes} / "
                        f"{spec.bands}; resume with the DATA_DIR the run started on")
    missing = [k for k in ("optimizer", "step", "skipped", "best_miou") if k not in bundle.extra]
    if missing:
        raise CtfaError(f"{last}: not a training checkpoint (no {', '.join(missing)}); "
                        "start a new run with --overwrite instead")
    return bundle


# --- processes, logging, progress ---------------------------------------------------------------


def _start_process(device: str) -> _Process:
    """Resolve the device and, under torchrun, join the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    resolved = resolve_device(device)
    if world_size <= 1:
        # --device cuda:N: the Triton kernels launch on the current device (kernels.launch
        # also enters the tensors' device per launch; this covers everything else).
        make_current(resolved)
        return _Process(0, 1, resolved, owns_group=False)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if resolved.type == "cuda":
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    return _Process(rank, world_size, resolved, owns_group=owns)


def _end_process(proc: _Process) -> None:
    if proc.owns_group and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def _console_of_rank(rank: int) -> Iterator[None]:
    """On ranks > 0, keep ``ctfa`` console output to errors while training, so that K
    processes do not print K copies of every line (rank 0 reports for all of them)."""
    handlers = logging.getLogger("ctfa").handlers
    saved = [(handler, handler.level) for handler in handlers]
    if rank > 0:
        for handler, level in saved:
            handler.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        for handler, level in saved:
            handler.setLevel(level)


@contextlib.contextmanager
def _log_file(path: Path | None) -> Iterator[None]:
    """Also log INFO records of ``ctfa`` to ``path`` (None: nothing to do) while training;
    the console handlers keep the verbosity the user chose (``-q``, ``-v``)."""
    if path is None:
        yield
        return
    logger = logging.getLogger("ctfa")
    previous = logger.level
    effective = logger.getEffectiveLevel()
    saved = [(handler, handler.level) for handler in logger.handlers]
    for handler, level in saved:
        handler.setLevel(max(level, effective))
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    file_handler.setLevel(logging.INFO)
    logger.addHandler(file_handler)
    logger.setLevel(min(effective, logging.INFO))
    try:
        yield
    finally:
        logger.removeHandler(file_handler)
        file_handler.close()
        logger.setLevel(previous)
        for handler, level in saved:
            handler.setLevel(level)


class _Meter:
    """Sums loss terms and counts applied and skipped steps on the device between log steps.

    Nothing is read on the host until :meth:`flush`, which reads everything in one transfer.

    Args:
        step: the step the run starts at.
        skipped: steps skipped before it (a resumed run's count).
        device: the training device.
    """

    def __init__(self, step: int, skipped: int, device: torch.device) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}
        self.skipped = torch.tensor(skipped, dtype=torch.int64, device=device)
        self.tic = time.perf_counter()
        self.step = step

    def add(self, out, applied: torch.Tensor) -> None:
        """Count one step's terms where ``applied`` (0-d bool) is True, else count it skipped."""
        for name, value in {"loss": out.loss.detach(), **out.terms}.items():
            # 0 + v is v (also for the first term, as a plain sum from 0 would start).
            value = torch.where(applied, value.float(), 0.0)
            self.sums[name] = self.sums[name] + value if name in self.sums else value
            self.counts[name] = self.counts.get(name, 0) + applied.long()
        self.skipped += ~applied

    def skipped_so_far(self) -> int:
        """Steps skipped up to now, resumed ones included (a host read)."""
        return int(self.skipped)

    def flush(self, step: int, optimizer, images_per_step: int) -> dict[str, Any]:
        """Means since the last flush (terms of applied steps only), lr, throughput and the
        skipped count; then reset. The one host read of the interval."""
        names = list(self.sums)
        values = torch.stack([*(self.sums[k] for k in names),
                              *(self.counts[k].float() for k in names),
                              self.skipped.float()]).tolist()
        sums, counts, skipped = values[:len(names)], values[len(names):-1], int(values[-1])
        elapsed = time.perf_counter() - self.tic
        record: dict[str, Any] = {"kind": "train", "step": step,
                                  "lr": optimizer.param_groups[0]["lr"]}
        record.update({k: total / count for k, total, count in zip(names, sums, counts,
                                                                    strict=True) if count})
        record["img_per_s"] = images_per_step * (step - self.step) / elapsed
        record["skipped"] = skipped
        record["skipped_fraction"] = round(skipped / max(step, 1), 6)
        self.sums, self.counts = {}, {}
        self.tic, self.step = time.perf_counter(), step
        return record


def _format_record(record: dict[str, Any]) -> str:
    terms = " ".join(f"{k} {v:.4f}" for k, v in record.items()
                     if k not in ("kind", "step", "lr", "img_per_s", "skipped",
                                  "skipped_fraction"))
    terms = terms or "every step since the last line skipped"
    return (f"step {record['step']} · lr {record['lr']:.3e} · {terms} · "
            f"{record['img_per_s']:.1f} img/s · skipped {record['skipped']}")


def _bar_status(record: dict[str, Any]) -> str:
    """The progress bar's status: the means of a log record (no host read of its own)."""
    return " ".join(f"{k} {record[k]:.3f}" for k in BAR_TERMS if k in record)
