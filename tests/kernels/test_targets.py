"""Every Triton kernel compiles for real GPUs (sm_80, sm_90) on this CPU machine, without spills.

The other kernel tests run the kernels under ``TRITON_INTERPRET=1``, which executes them as
Python and so accepts code that Triton's compiler refuses. Triton decides between interpreter
and compiler when a kernel module is imported, so the compilation runs in a fresh process with
``TRITON_INTERPRET`` unset (and an empty Triton cache, so that every kernel is really compiled).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kernels.targets import tool_problem

REPO = Path(__file__).resolve().parents[2]
# Every @triton.jit kernel of kernels/ (grep -rn "triton.jit" kernels/): a new kernel must be
# added to kernels.targets.launches() and here.
KERNELS = {"_affinity_kernel", "_propagate_kernel", "_exact_bilateral_kernel"}
# @triton.jit functions called from those kernels, compiled inside them.
HELPERS = {"_neighbour_tile"}
# The largest register file a thread can have on sm_80/sm_90.
MAX_REGISTERS = 255

PROBLEM = tool_problem()
needs_tools = pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")


def _compiler_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    env["PYTHONPATH"] = str(REPO)
    return env


@needs_tools
def test_every_kernel_compiles_for_sm80_and_sm90_without_spills(tmp_path):
    # Both variants of every launch for both archs: about 20 s on 2 CPU cores, cold cache.
    done = subprocess.run([sys.executable, "-m", "kernels.targets", "--json"], cwd=REPO,
                          env=_compiler_env(tmp_path), capture_output=True, text=True,
                          timeout=600, check=False)
    records = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    errors = [f"sm_{r['arch']} {r['variant']} {r['name']}: {r['error']}"
              for r in records if "error" in r]
    assert not errors, "\n".join(errors)
    assert done.returncode == 0, done.stdout + done.stderr
    assert {r["kernel"] for r in records} == KERNELS
    for name in {r["name"] for r in records}:
        combos = sorted((r["arch"], r["variant"]) for r in records if r["name"] == name)
        assert combos == [(80, "aligned"), (80, "generic"), (90, "aligned"), (90, "generic")]
    spilled = [f"sm_{r['arch']} {r['variant']} {r['name']}: {r['spills']} words"
               for r in records if r["spills"]]
    assert not spilled, "\n".join(spilled)
    assert all(0 < r["registers"] <= MAX_REGISTERS for r in records), records


def test_every_triton_kernel_of_the_project_is_compiled():
    # A kernel added anywhere in the project (kernels/ or ctfa_cli/) without an entry in
    # kernels.targets.launches() and KERNELS would escape the compile test.
    jitted = set()
    for folder in ("kernels", "ctfa_cli"):
        for path in (REPO / folder).rglob("*.py"):
            jitted |= set(re.findall(r"^@triton\.jit[^\n]*\ndef (\w+)", path.read_text(),
                                     flags=re.MULTILINE))
    assert jitted == KERNELS | HELPERS


@needs_tools
def test_a_plain_global_float_in_a_kernel_fails_to_compile(tmp_path):
    # The defect that motivated the compile test: the interpreter runs this kernel, the
    # compiler refuses it. kernels.targets must report it as an error, not pass it.
    (tmp_path / "broken_kernel.py").write_text(textwrap.dedent("""
        import triton
        import triton.language as tl

        SCALE = 1.4426950408889634

        @triton.jit
        def broken(x_ptr, n, BLOCK: tl.constexpr):
            offsets = tl.arange(0, BLOCK)
            mask = offsets < n
            tl.store(x_ptr + offsets, tl.load(x_ptr + offsets, mask=mask) * SCALE, mask=mask)
    """))
    script = textwrap.dedent("""
        import triton
        from broken_kernel import broken
        from kernels.targets import _launch, compile_launch

        launch = _launch(broken, ["*fp32", "i32"], {"BLOCK": 64})
        try:
            compile_launch(launch, 90, aligned=False)
        except triton.CompilationError as error:
            print("refused:", "SCALE" in str(error))
        else:
            print("compiled")
    """)
    env = _compiler_env(tmp_path)
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{REPO}"
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.stdout.strip() == "refused: True", done.stdout + done.stderr
