"""Run mutmut's surviving mutants again, each against whole test files.

mutmut 3 runs, for each mutant, only the tests it saw call the mutated function. A function
called while a module- or session-scoped fixture is set up is credited to the first test that
used the fixture, so a mutant that only a later test of the module catches is reported as
surviving (``write_pseudo_labels`` runs once per module, for example). This script gives each
survivor whose name matches PATTERN the whole of the given test files and prints those that
still pass: the real survivors.

Usage, from the project root after ``mutmut run`` (same environment as that run)::

    python scripts/mutmut_recheck.py "ctfa_cli.evaluation.pseudolabel*" \\
        tests/evaluation/test_pseudolabel.py tests/cli/test_pseudolabel.py

Exit status: 0, with the real survivors' names on stdout (one per line) and a count on stderr.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor


def survivors(results: str, pattern: str) -> list[str]:
    """The mutant names that ``mutmut results`` lists as survived and match ``pattern``."""
    names = []
    for line in results.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if status == "survived" and fnmatch.fnmatchcase(name, pattern):
            names.append(name)
    return names


def passes(name: str, tests: Iterable[str]) -> bool:
    """Whether the tests pass with mutant ``name`` active (run from ``mutants/``)."""
    env = os.environ | {"MUTANT_UNDER_TEST": name}
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    return subprocess.run(command, cwd="mutants", env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


def recheck(names: list[str], tests: list[str], *, workers: int = 2,
            run: Callable[[str, list[str]], bool] = passes) -> list[str]:
    """The names among ``names`` whose mutant the whole of ``tests`` does not catch."""
    with ThreadPoolExecutor(workers) as pool:
        survived = list(pool.map(lambda name: run(name, tests), names))
    return [name for name, alive in zip(names, survived, strict=True) if alive]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pattern", help="mutant names, fnmatch-style (as `mutmut run` takes)")
    parser.add_argument("tests", nargs="+", help="test files or folders, relative to the root")
    parser.add_argument("--workers", type=int, default=2, help="tests run in parallel")
    args = parser.parse_args(argv)
    results = subprocess.run(["mutmut", "results"], capture_output=True, text=True,
                             check=True).stdout
    names = survivors(results, args.pattern)
    alive = recheck(names, args.tests, workers=args.workers)
    for name in alive:
        print(name)
    print(f"{len(names) - len(alive)} of {len(names)} survivors caught by the whole files; "
          f"{len(alive)} survive", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
