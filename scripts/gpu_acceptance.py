"""The GPU acceptance run: everything a first session with a CUDA GPU checks, in one command.

``python scripts/gpu_acceptance.py [--work DIR] [--report FILE] [--train-steps 300]``

Stages, in order; the run stops at the first that fails and exits 1 (2: bad arguments):

1. ``environment``: a CUDA GPU is present; its name, capability and memory, and the torch,
   CUDA, cuDNN, Triton and Python versions.
2. ``gpu_tests``: ``pytest tests/kernels``, where every GPU-only test is; any failure, or a
   test still skipped as "needs a CUDA GPU", fails the stage.
3. ``kernels_bench``: ``python -m kernels.bench --device cuda --json`` (every kernel path on
   the training shapes); its rows go into the report.
4. ``step_bench``: the real training step (:func:`ctfa_cli.training.loop.train_step`) of the
   ``paper`` preset (ViT-B/16 ``deit_base_patch16_224`` from random weights, crop 320, batch
   8, 8 local crops of 96) on random batches, in float32 (``tf32: false``), TF32 (``tf32:
   true``, the default) and bf16 (``amp: bf16``): seconds per step and peak memory.
5. ``train``: ``ctfa prepare synthetic`` then ``ctfa train --preset paper --device cuda`` for
   ``--train-steps`` steps (the paper preset's network, crop and batch, with the schedule
   shortened so that the warm-up gate is passed: warm-up 50, gate 100, evaluation every 100).
6. ``evaluate``: ``ctfa evaluate --json`` of that run's best checkpoint on the test split.
7. ``predict``: ``ctfa predict --json`` of one 4096×4096 synthetic scene with that checkpoint.
8. ``torchrun_nccl``: ``torchrun --standalone --nproc-per-node 1`` of a process that joins an
   NCCL group on ``cuda:LOCAL_RANK``, all-reduces a tensor and takes a DDP step.

The report (``--report``, default ``WORK/gpu_acceptance.json``) is written after every stage,
so a run cut short still leaves what it measured: ``{"format", "ok", "failed_stage",
"environment", "stages": [{"name", "ok", "seconds", "figures" | "error"}], ...}``.
Meant to finish in under 10 minutes on one data-centre GPU (A100/H100).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REPORT_FORMAT = "ctfa-gpu-acceptance/1"
# Every GPU-only test is in tests/kernels (grep -rn "needs a CUDA GPU" tests/); the whole folder
# runs, so that a new GPU-only test file is not missed (about 90 s on the 2-core CPU machine).
GPU_TEST_FILES = ("tests/kernels",)
# The skip reason of the GPU-only tests: on a GPU machine none may remain.
GPU_SKIP_REASON = "needs a CUDA GPU"
PRECISIONS = {"float32": {"amp": "none", "tf32": False},
              "tf32": {"amp": "none", "tf32": True},
              "bf16": {"amp": "bf16", "tf32": True}}
# The paper preset's schedule shortened for a short run that still passes the warm-up gate.
SHORT_SCHEDULE = {"warmup_iters": 50, "seg_gate_iters": 100, "eval_every": 100, "log_every": 20,
                  "pretrained": False}
PREDICT_SCENE_SIZE = 4096


class StageFailed(Exception):
    """A stage's check failed; the message says what was expected and what came."""


@dataclass
class Stage:
    """One named check: ``run(context)`` returns the stage's figures or raises."""

    name: str
    run: Callable[[dict[str, Any]], dict[str, Any]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--help`` lists it); exits 2 on bad usage."""
    parser = argparse.ArgumentParser(prog="python scripts/gpu_acceptance.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for data, runs and predictions (default: a new "
                             "temporary folder)")
    parser.add_argument("--report", type=Path, default=None,
                        help="JSON report to write (default: WORK/gpu_acceptance.json)")
    parser.add_argument("--train-steps", type=_positive, default=300,
                        help="steps of the ctfa train stage (default 300)")
    parser.add_argument("--bench-steps", type=_positive, default=10,
                        help="timed steps per precision in step_bench (default 10)")
    parser.add_argument("--only", action="append", choices=[s.name for s in stages()],
                        help="run only this stage (repeatable; environment always runs; "
                             "evaluate and predict need train)")
    args = parser.parse_args(argv)
    if args.work is None:
        args.work = Path(tempfile.mkdtemp(prefix="ctfa-gpu-acceptance-"))
    if args.report is None:
        args.report = args.work / "gpu_acceptance.json"
    return args


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run_stages(selected: list[Stage], report_path: Path, context: dict[str, Any]) -> int:
    """Run ``selected`` in order, writing the report after each; stop at the first failure.

    Returns:
        0 when every stage passed, 1 otherwise (the report names the stage and its error).
    """
    report: dict[str, Any] = {"format": REPORT_FORMAT, "ok": False, "failed_stage": None,
                              "started_utc": _now(), "finished_utc": None,
                              "argv": context.get("argv", []), "environment": {},
                              "stages": []}
    code = 0
    for stage in selected:
        tic = time.perf_counter()
        entry: dict[str, Any] = {"name": stage.name}
        try:
            figures = stage.run(context)
        except Exception as error:  # every failure is reported, then the run stops
            report["environment"] = context.get("environment", {})
            entry.update(ok=False, seconds=round(time.perf_counter() - tic, 3),
                         error=f"{type(error).__name__}: {error}")
            report["stages"].append(entry)
            report["failed_stage"] = stage.name
            code = 1
            print(f"gpu_acceptance: {stage.name} FAILED: {entry['error']}", file=sys.stderr)
            break
        entry.update(ok=True, seconds=round(time.perf_counter() - tic, 3), figures=figures)
        report["stages"].append(entry)
        print(f"gpu_acceptance: {stage.name} ok ({entry['seconds']:.1f} s)", file=sys.stderr)
        report["environment"] = context.get("environment", {})
        write_report(report, report_path)
    report["ok"] = code == 0
    report["finished_utc"] = _now()
    write_report(report, report_path)
    return code


def write_report(report: dict[str, Any], path: Path) -> None:
    """Write ``report`` as indented JSON to ``path`` atomically (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, path)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# --- stages -------------------------------------------------------------------------------------


def environment(context: dict[str, Any]) -> dict[str, Any]:
    """The GPU and the software versions; fails without a CUDA GPU."""
    import torch

    # Kept in the context (the report's "environment") also when the stage fails.
    figures = context.setdefault("environment", {})
    figures.update(torch=torch.__version__, cuda=torch.version.cuda,
                   python=platform.python_version(), host=platform.node())
    try:
        import triton

        figures["triton"] = triton.__version__
    except ImportError:
        figures["triton"] = None
    if not torch.cuda.is_available():
        raise StageFailed("no CUDA GPU here (torch.cuda.is_available() is False); this "
                          "script is for a session with a GPU")
    props = torch.cuda.get_device_properties(0)
    figures.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                   gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   gpu_count=torch.cuda.device_count(),
                   cudnn=torch.backends.cudnn.version())
    return figures


def gpu_tests(context: dict[str, Any]) -> dict[str, Any]:
    """The kernel tests, GPU-only ones included; none may fail or skip for want of a GPU."""
    done = _run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                 *GPU_TEST_FILES], timeout=360)
    output = done.stdout + done.stderr
    figures = pytest_counts(output)
    if done.returncode != 0:
        raise StageFailed(f"pytest exited {done.returncode}: {_tail(output)}")
    if GPU_SKIP_REASON in output:
        raise StageFailed(f"tests skipped as '{GPU_SKIP_REASON}' on a GPU machine: "
                          f"{_tail(output)}")
    return figures


def pytest_counts(output: str) -> dict[str, int]:
    """``{"passed": n, "failed": n, "skipped": n, …}`` from pytest's final summary line."""
    lines = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    if not lines:
        return {}
    return {word: int(count) for count, word in re.findall(r"(\d+) ([a-z]+)", lines[-1])
            if word in ("passed", "failed", "skipped", "errors", "error", "xfailed",
                        "xpassed", "deselected")}


def kernels_bench(context: dict[str, Any]) -> dict[str, Any]:
    """``python -m kernels.bench --device cuda --json``: every row."""
    done = _run([sys.executable, "-m", "kernels.bench", "--device", "cuda", "--json"],
                timeout=300)
    if done.returncode != 0:
        raise StageFailed(f"kernels.bench exited {done.returncode}: {_tail(done.stderr)}")
    return {"rows": json.loads(done.stdout)}


def step_bench(context: dict[str, Any]) -> dict[str, Any]:
    """Seconds per paper-preset training step in float32, TF32 and bf16 (random weights)."""
    import torch

    from ctfa_cli.config import resolve_train_config
    from ctfa_cli.datasets.registry import get_spec
    from ctfa_cli.model.network import CTFANetwork
    from ctfa_cli.precision import tf32_mode
    from ctfa_cli.training.bench import synthetic_batch
    from ctfa_cli.training.loop import _Meter, train_step
    from ctfa_cli.training.optim import build_optimizer
    from ctfa_cli.training.step import CTFAStep

    device = torch.device(context.get("device", "cuda"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    cuda = device.type == "cuda"
    spec = get_spec("synthetic")
    steps, warmup = context["bench_steps"], context.get("bench_warmup", 3)
    sets = {"pretrained": False, **context.get("bench_sets", {})}
    results: dict[str, Any] = {}
    for name, precision in PRECISIONS.items():
        cfg = resolve_train_config("synthetic", "paper", None, {**sets, **precision})
        torch.manual_seed(0)
        model = CTFANetwork.from_config(spec, cfg, pretrained=False).to(device).train()
        forward = CTFAStep(model, spec, cfg)
        optimizer = build_optimizer(model, cfg)
        params = [p for p in model.parameters() if p.requires_grad]
        meter = _Meter(0, 0, device)
        generator = torch.Generator().manual_seed(0)
        batches = [synthetic_batch(cfg, spec.num_cam_classes, generator, device)
                   for _ in range(2)]
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        with tf32_mode(cfg.tf32, device):
            for i in range(warmup + steps):
                if i == warmup:
                    if cuda:
                        torch.cuda.synchronize(device)
                    tic = time.perf_counter()
                train_step(forward, batches[i % 2], cfg.seg_gate_iters + 1 + i, model=model,
                           optimizer=optimizer, params=params, meter=meter, cfg=cfg,
                           world_size=1, device=device)
            if cuda:
                torch.cuda.synchronize(device)
        seconds = (time.perf_counter() - tic) / steps
        record = meter.flush(warmup + steps, optimizer, cfg.batch_size)
        if record["skipped"]:
            raise StageFailed(f"{name}: {record['skipped']} non-finite steps")
        results[name] = {"s_per_step": round(seconds, 4),
                         "img_per_s": round(cfg.batch_size / seconds, 2),
                         "peak_memory_gib": (round(torch.cuda.max_memory_allocated(device)
                                                   / 2**30, 2) if cuda else None),
                         "loss": record["loss"]}
        del model, forward, optimizer, params, batches
        if cuda:
            torch.cuda.empty_cache()
    cfg = resolve_train_config("synthetic", "paper", None, sets)
    return {"config": {"backbone": cfg.backbone, "crop_size": cfg.crop_size,
                       "batch_size": cfg.batch_size, "num_local_crops": cfg.num_local_crops,
                       "local_crop_size": cfg.local_crop_size,
                       "energy_filter": cfg.energy_filter, "timed_steps": steps},
            **results}


def train(context: dict[str, Any]) -> dict[str, Any]:
    """``ctfa prepare synthetic`` and a short ``ctfa train --preset paper --device cuda``."""
    work: Path = context["work"]
    data, run = work / "data", work / "run"
    scenes, size = context.get("synthetic", (8, 640))
    _ctfa("prepare", "synthetic", "--out", data, "--scenes", scenes, "--size", size, "--json",
          timeout=300)
    steps = context["train_steps"]
    sets = {**SHORT_SCHEDULE, "max_iters": steps, **context.get("train_sets", {})}
    tic = time.perf_counter()
    summary = _ctfa("train", "--data", data, "--out", run, "--preset", "paper",
                    "--device", context.get("device", "cuda"), "--overwrite",
                    *[arg for k, v in sets.items() for arg in ("--set", f"{k}={_cli(v)}")],
                    timeout=420)
    seconds = time.perf_counter() - tic
    if summary["step"] != steps or summary["applied_steps"] < 1:
        raise StageFailed(f"expected {steps} steps with some applied, got {summary}")
    context["checkpoint"] = summary["best_checkpoint"] or summary["last_checkpoint"]
    context["data"] = data
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last_train = [r for r in records if r["kind"] == "train"][-1]
    return {"steps": summary["step"], "skipped": summary["skipped"],
            "best_seg_miou": summary["best_seg_miou"], "wall_s": round(seconds, 1),
            "img_per_s_last_log": round(last_train["img_per_s"], 2),
            "last_log": {k: v for k, v in last_train.items() if k != "kind"}}


def evaluate(context: dict[str, Any]) -> dict[str, Any]:
    """``ctfa evaluate --json`` of the train stage's checkpoint on the test split."""
    if "checkpoint" not in context:
        raise StageFailed("needs the train stage")
    tic = time.perf_counter()
    report = _ctfa("evaluate", "--model", context["checkpoint"], "--data", context["data"],
                   "--split", "test", "--device", context.get("device", "cuda"), "--json",
                   timeout=300)
    metrics = report["metrics"]
    return {"wall_s": round(time.perf_counter() - tic, 1),
            **{k: metrics[k] for k in ("miou", "mf1", "oa", "kappa")}, "report": report}


def predict(context: dict[str, Any]) -> dict[str, Any]:
    """``ctfa predict --json`` of a 4096×4096 synthetic scene."""
    from ctfa_cli.datasets.synthetic import generate_scenes

    if "checkpoint" not in context:
        raise StageFailed("needs the train stage")
    work: Path = context["work"]
    size = context.get("scene_px", PREDICT_SCENE_SIZE)
    tic = time.perf_counter()
    (scene,) = generate_scenes(work / "big_scene", scenes=1, size=size, seed=7)
    drawn = time.perf_counter() - tic
    out = work / "prediction" / "scene.tif"
    tic = time.perf_counter()
    result = _ctfa("predict", scene.image, "--model", context["checkpoint"], "--out", out,
                   "--device", context.get("device", "cuda"), "--overwrite", "--json",
                   timeout=300)
    seconds = time.perf_counter() - tic
    if not out.is_file():
        raise StageFailed(f"ctfa predict wrote no {out}")
    return {"scene_px": size, "draw_s": round(drawn, 1), "wall_s": round(seconds, 1),
            "mpx_per_s_wall": round(size**2 / 1e6 / seconds, 2), "result": result}


# Run by torchrun in the torchrun_nccl stage: an NCCL group, an all-reduce, one DDP step.
# (SMOKE_DEVICE=cpu runs it with gloo: how the tests check the command line without a GPU.)
NCCL_SMOKE = """
import os, torch, torch.distributed as dist
from ctfa_cli.inference.predict import make_current, resolve_device
device = resolve_device(os.environ.get("SMOKE_DEVICE", "cuda"))
assert device.type == "cpu" or device.index == int(os.environ["LOCAL_RANK"]), device
make_current(device)
dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
value = torch.full((4,), float(dist.get_rank() + 1), device=device)
dist.all_reduce(value)
expected = sum(range(1, dist.get_world_size() + 1))
assert value.tolist() == [expected] * 4, value
model = torch.nn.parallel.DistributedDataParallel(
    torch.nn.Linear(8, 2).to(device), device_ids=[device.index] if device.index is not None
    else None)
model(torch.ones(3, 8, device=device)).sum().backward()
grad = model.module.weight.grad
assert torch.equal(grad, torch.ones_like(grad) * 3), grad
dist.barrier()
print(dist.get_backend(), "ok", dist.get_world_size(),
      torch.cuda.nccl.version() if device.type == "cuda" else "")
dist.destroy_process_group()
"""


def torchrun_nccl(context: dict[str, Any]) -> dict[str, Any]:
    """A 1-process ``torchrun``: NCCL group on cuda:LOCAL_RANK, all-reduce, a DDP backward."""
    script = Path(context["work"]) / "nccl_smoke.py"
    script.write_text(NCCL_SMOKE)
    backend = "nccl" if context.get("device", "cuda").startswith("cuda") else "gloo"
    done = _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc-per-node", "1", str(script)], timeout=180,
                env={"SMOKE_DEVICE": context.get("device", "cuda")})
    if done.returncode != 0 or f"{backend} ok" not in done.stdout:
        raise StageFailed(f"torchrun exited {done.returncode}: {_tail(done.stdout + done.stderr)}")
    return {"output": done.stdout.strip().splitlines()[-1]}


def stages() -> list[Stage]:
    """Every stage, in the order they run."""
    return [Stage("environment", environment), Stage("gpu_tests", gpu_tests),
            Stage("kernels_bench", kernels_bench), Stage("step_bench", step_bench),
            Stage("train", train), Stage("evaluate", evaluate), Stage("predict", predict),
            Stage("torchrun_nccl", torchrun_nccl)]


# --- helpers ------------------------------------------------------------------------------------


def _run(command: list[str], *, timeout: float,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("TRITON_INTERPRET", None)  # the GPU stages need Triton's compiler
    try:
        return subprocess.run([str(c) for c in command], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise StageFailed(f"{' '.join(map(str, command[:4]))} … ran past {timeout} s") from error


def _ctfa(*args: Any, timeout: float) -> Any:
    """Run ``python -m ctfa_cli ARGS`` (with ``--json``) and return its parsed stdout."""
    done = _run([sys.executable, "-m", "ctfa_cli", *args], timeout=timeout)
    if done.returncode != 0:
        raise StageFailed(f"ctfa {args[0]} exited {done.returncode}: {_tail(done.stderr)}")
    text = done.stdout.strip()
    with contextlib.suppress(json.JSONDecodeError):
        return json.loads(text)
    # JSON lines (one object per scene or per item): the last one.
    return json.loads(text.splitlines()[-1])


def _cli(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _tail(text: str, lines: int = 15) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def main(argv: list[str] | None = None) -> int:
    """Run the selected stages; 0 all passed, 1 a stage failed (see the report)."""
    args = parse_args(argv)
    chosen = stages()
    if args.only:
        chosen = [s for s in chosen if s.name == "environment" or s.name in args.only]
    args.work.mkdir(parents=True, exist_ok=True)
    context = {"work": args.work, "train_steps": args.train_steps,
               "bench_steps": args.bench_steps, "argv": sys.argv[1:] if argv is None else argv}
    code = run_stages(chosen, args.report, context)
    print(f"gpu_acceptance: report {args.report}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
