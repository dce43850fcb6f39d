"""scripts/mutmut_recheck.py: which survivors it re-runs and which it reports."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mutmut_recheck.py"
_spec = importlib.util.spec_from_file_location("mutmut_recheck", SCRIPT)
recheck_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recheck_script)

# Lines as `mutmut results` 3.8 prints them (the class separator is "ǁ").
RESULTS = """\
    ctfa_cli.evaluation.pseudolabel.x__index__mutmut_2: survived
    ctfa_cli.evaluation.pseudolabel.xǁPseudoLabelReportǁto_json__mutmut_3: survived
    ctfa_cli.evaluation.pseudolabel.x__relative__mutmut_9: no tests
    ctfa_cli.evaluation.metrics.xǁConfusionMatrixǁupdate__mutmut_6: survived
    ctfa_cli.evaluation.report.x_metrics_table__mutmut_1: not checked
"""


def test_survivors_are_the_survived_lines_matching_the_pattern():
    assert recheck_script.survivors(RESULTS, "ctfa_cli.evaluation.pseudolabel*") == [
        "ctfa_cli.evaluation.pseudolabel.x__index__mutmut_2",
        "ctfa_cli.evaluation.pseudolabel.xǁPseudoLabelReportǁto_json__mutmut_3",
    ]
    assert recheck_script.survivors(RESULTS, "*update*") == [
        "ctfa_cli.evaluation.metrics.xǁConfusionMatrixǁupdate__mutmut_6"]


def test_recheck_reports_only_the_mutants_the_whole_files_let_pass():
    seen = []

    def run(name, tests):
        seen.append((name, tuple(tests)))
        return name.endswith("_2")  # the tests still pass with this mutant only

    alive = recheck_script.recheck(["m_1", "m_2", "m_3"], ["tests/a.py", "tests/b"], run=run)
    assert alive == ["m_2"]
    assert sorted(seen) == [(n, ("tests/a.py", "tests/b")) for n in ("m_1", "m_2", "m_3")]
