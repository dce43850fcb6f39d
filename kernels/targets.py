"""Compile every Triton kernel of ``kernels/`` for real GPU targets, without a GPU.

Triton's interpreter (``TRITON_INTERPRET=1``, what the CPU tests run) executes a kernel as
Python, so it accepts code the compiler refuses (a plain global float read inside
``@triton.jit`` is the case that motivated this module). :func:`compile_all` runs Triton's own
compiler — front end, LLVM, ``ptxas`` (shipped with Triton) — for a ``GPUTarget`` such as
sm_80 (A100) or sm_90 (H100), at the block sizes the dispatchers launch with, and reads each
cubin's registers and local-memory (spill) bytes with ``cuobjdump`` (also shipped with Triton).
On a GPU, ``CompiledKernel.n_regs``/``n_spills`` give the same figures from the driver
(``n_spills`` is the local size in bytes / 4, as here).

``python -m kernels.targets`` prints the table (no GPU needed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Compute capabilities compiled for: Ampere (A100) and Hopper (H100/H200).
ARCHS: tuple[int, ...] = (80, 90)
#: Class counts the bilateral kernel is compiled for beyond the built-in datasets' (a folder
#: dataset may have more classes; 64 is the largest single-tile channel block).
EXTRA_CLASS_COUNTS: tuple[int, ...] = (64,)


@dataclass(frozen=True)
class Launch:
    """One kernel at one launch configuration.

    Attributes:
        name: readable label (``kernel[constexpr=value,…]``).
        kernel: the ``@triton.jit`` function.
        signature: Triton type of every argument (``*fp32``, ``i32``, ``fp32``, ``constexpr``).
        constexprs: the constexpr values the dispatcher passes.
    """

    name: str
    kernel: Any
    signature: dict[str, str]
    constexprs: dict[str, int]


@dataclass(frozen=True)
class Compiled:
    """Resources of one compiled launch.

    Attributes:
        launch: the :class:`Launch`.
        arch: compute capability (80, 90).
        aligned: compiled with every pointer and integer argument marked divisible by 16 (how
            Triton specialises a launch on aligned tensors and sizes), else generic.
        registers: registers per thread.
        spills: local-memory words per thread (Triton's ``n_spills``: local bytes / 4).
        shared_bytes: static shared memory per block.
    """

    launch: Launch
    arch: int
    aligned: bool
    registers: int
    spills: int
    shared_bytes: int


def launches() -> list[Launch]:
    """Every Triton kernel at every block configuration its dispatcher chooses on a GPU.

    PAR: the default dilations (48 neighbours) on RGB; the bilateral filter: one channel block
    per class count of the built-in datasets plus :data:`EXTRA_CLASS_COUNTS`.
    """
    from ctfa_cli.datasets.registry import BUILTIN_SPECS
    from kernels.bilateral import exact_triton
    from kernels.par import triton_kernel
    from kernels.par.reference import DEFAULT_DILATIONS, neighbour_offsets

    if triton_kernel.INTERPRETED:
        raise RuntimeError("kernels.targets needs the compiled kernels: unset TRITON_INTERPRET")
    neighbours = len(neighbour_offsets(DEFAULT_DILATIONS))
    pixels = 160 * 160  # the block choice on a GPU does not depend on the size
    found = [
        _launch(triton_kernel._affinity_kernel,
                ["*fp32", "*i32", "*i32", "*fp32", "*fp32", "i32", "i32", "i32",
                 "fp32", "fp32", "fp32"],
                triton_kernel.affinity_constants(3, neighbours, pixels)),
        _launch(triton_kernel._propagate_kernel,
                ["*fp32", "*fp32", "*i32", "*i32", "*fp32", "i32", "i32", "i32", "i32"],
                triton_kernel.propagate_constants(neighbours, pixels)),
    ]
    class_counts = {spec.num_classes for spec in BUILTIN_SPECS.values()} | set(EXTRA_CLASS_COUNTS)
    blocks = {tuple(exact_triton.block_sizes(k).items()) for k in sorted(class_counts)}
    for block in sorted(blocks):
        found.append(_launch(exact_triton._exact_bilateral_kernel,
                             ["*fp32", "*fp32", "*fp32", "i32", "i32"], dict(block)))
    return found


def _launch(kernel, runtime_types: list[str], constexprs: dict[str, int]) -> Launch:
    names = kernel.arg_names
    signature = dict(zip(names, runtime_types + ["constexpr"] * len(constexprs), strict=True))
    label = ",".join(f"{k}={v}" for k, v in constexprs.items())
    return Launch(f"{kernel.__name__}[{label}]", kernel, signature, constexprs)


def tool_problem() -> str | None:
    """Why nothing can be compiled here (None: Triton's NVIDIA backend and tools are present)."""
    try:
        import triton.backends.nvidia.compiler as nvidia
    except ImportError as error:
        return f"Triton's NVIDIA backend is not installed ({error})"
    ptxas = Path(nvidia.get_ptxas(90).path)
    if not ptxas.is_file():
        return f"ptxas not found at {ptxas}"
    if not (ptxas.parent / "cuobjdump").is_file():
        return f"cuobjdump not found beside {ptxas}"
    return None


def compile_launch(launch: Launch, arch: int, *, aligned: bool) -> Compiled:
    """Compile ``launch`` for ``sm_<arch>`` and read the cubin's resources.

    Raises:
        triton.CompilationError: the kernel does not compile (e.g. a non-constexpr global).
        RuntimeError: ``ptxas`` or ``cuobjdump`` failed.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    attrs = {}
    if aligned:
        divisible = [["tt.divisibility", 16]]
        attrs = {(i,): divisible for i, kind in enumerate(launch.signature.values())
                 if kind.startswith("*") or kind == "i32"}
    source = ASTSource(fn=launch.kernel, signature=launch.signature,
                       constexprs=launch.constexprs, attrs=attrs)
    compiled = triton.compile(source, target=target)
    registers, local_bytes, shared = _cubin_resources(compiled.asm["cubin"], launch.kernel.__name__)
    return Compiled(launch, arch, aligned, registers, local_bytes // 4, shared)


def _cubin_resources(cubin: bytes, name: str) -> tuple[int, int, int]:
    """``(registers, local bytes, shared bytes)`` of function ``name`` in ``cubin``."""
    import triton.backends.nvidia.compiler as nvidia

    cuobjdump = Path(nvidia.get_ptxas(90).path).parent / "cuobjdump"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.cubin"
        path.write_bytes(cubin)
        done = subprocess.run([str(cuobjdump), "--dump-resource-usage", str(path)],
                              capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"cuobjdump failed on {name}: {done.stderr.strip()}")
    # " Function _propagate_kernel:\n  REG:230 STACK:0 SHARED:1024 LOCAL:0 …"
    match = re.search(rf"Function {re.escape(name)}:\s*REG:(\d+) STACK:\d+ SHARED:(\d+) "
                      r"LOCAL:(\d+)", done.stdout)
    if match is None:
        raise RuntimeError(f"cuobjdump printed no resource usage for {name}:\n{done.stdout}")
    return int(match[1]), int(match[3]), int(match[2])


def compile_all(archs: tuple[int, ...] = ARCHS) -> Iterator[Compiled]:
    """Every :func:`launches` entry, generic and aligned, for every arch in ``archs``."""
    for launch in launches():
        for arch in archs:
            for aligned in (False, True):
                yield compile_launch(launch, arch, aligned=aligned)


def format_row(result: Compiled) -> str:
    """One line of the resource table."""
    return (f"sm_{result.arch} {'aligned' if result.aligned else 'generic'} "
            f"{result.launch.name}: {result.registers} registers, {result.spills} spilled "
            f"words, {result.shared_bytes} B shared")


def as_record(result: Compiled) -> dict[str, Any]:
    """One compiled launch as a JSON object (what ``--json`` prints, one per line)."""
    return {"name": result.launch.name, "kernel": result.launch.kernel.__name__,
            "arch": result.arch, "variant": "aligned" if result.aligned else "generic",
            "registers": result.registers, "spills": result.spills,
            "shared_bytes": result.shared_bytes}


def main(argv: list[str] | None = None) -> int:
    """``python -m kernels.targets [--arch 80 --arch 90] [--variant generic] [--json]``: the
    resource table on stdout (``--json``: one JSON object per compiled launch, and one with an
    ``error`` for a launch that does not compile); exit 1 on a spill or a compile error, 2 when
    this machine cannot compile."""
    parser = argparse.ArgumentParser(prog="python -m kernels.targets", description=__doc__)
    parser.add_argument("--arch", type=int, action="append", choices=(75, 80, 86, 89, 90),
                        help="compute capability (repeatable; default 80 and 90)")
    parser.add_argument("--variant", choices=("generic", "aligned", "both"), default="both",
                        help="argument specialisation to compile (default both)")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of the table")
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    problem = tool_problem()
    if problem:
        print(f"kernels.targets: cannot compile here: {problem}", file=sys.stderr)
        return 2
    variants = {"generic": (False,), "aligned": (True,), "both": (False, True)}[args.variant]
    failed = False
    for launch in launches():
        for arch in tuple(args.arch or ARCHS):
            for aligned in variants:
                try:
                    result = compile_launch(launch, arch, aligned=aligned)
                except Exception as error:  # report every launch, then fail
                    failed = True
                    message = f"{type(error).__name__}: {error}"
                    if args.json:
                        print(json.dumps({"name": launch.name, "kernel": launch.kernel.__name__,
                                          "arch": arch,
                                          "variant": "aligned" if aligned else "generic",
                                          "error": message}))
                    else:
                        print(f"sm_{arch} {launch.name}: does not compile: {message}")
                    continue
                print(json.dumps(as_record(result)) if args.json else format_row(result))
                failed |= result.spills > 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
