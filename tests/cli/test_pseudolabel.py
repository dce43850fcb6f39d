"""`ctfa pseudolabel` through the console entry point: outputs, refusals, exit codes."""

from __future__ import annotations

import json

import pytest

from ctfa_cli.datasets.datadir import DataDir
from tests.evaluation.helpers import tiny_bundle, tiny_datadir


@pytest.fixture(scope="session")
def datadir(tmp_path_factory):
    return tiny_datadir(tmp_path_factory)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, datadir):
    return tiny_bundle(tmp_path_factory, datadir)


def test_writes_a_datadir_of_pseudo_labels(run_cli, checkpoint, datadir, tmp_path):
    out = tmp_path / "p"
    code, stdout, err = run_cli("pseudolabel", "--model", checkpoint, "--data", datadir,
                                "--out", out, "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert (report["split"], report["chips"], report["chips_with_masks"]) == ("train", 4, 4)
    assert report["amp"] == "none"
    assert 0 < report["ignored_share"] < 1
    assert sum(report["class_share"]) + report["ignored_share"] == pytest.approx(1)
    assert json.loads((out / "report.json").read_text()) == report
    pseudo = DataDir.open(out)
    assert sorted(p.name for p in (out / "chips" / "train" / "masks").iterdir()) == \
        sorted(f"{c}.tif" for c in pseudo.split("train")["chip_id"])

    code, _, err = run_cli("pseudolabel", "-m", checkpoint, "-d", datadir, "--out", out)
    assert code == 1 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    code, stdout, err = run_cli("pseudolabel", "-m", checkpoint, "-d", datadir, "--out", out,
                                "--split", "test", "--overwrite", "--amp", "bf16")
    assert code == 0, err
    for text in ("pseudo labels of test", "share of pixels", "ignored", "IoU",
                 "mean (classes present)"):
        assert text in stdout
    assert DataDir.open(out).splits == ["test"]
    assert json.loads((out / "report.json").read_text())["amp"] == "bf16"
    assert DataDir.open(out).meta["pseudo_labels"]["amp"] == "bf16"


@pytest.mark.parametrize("case", ["missing data", "missing model", "class count", "no out",
                                  "amp"])
def test_bad_inputs_end_with_one_line(run_cli, tmp_path_factory, checkpoint, datadir, tmp_path,
                                      case):
    model, data, out = checkpoint, datadir, ["--out", tmp_path / "p"]
    if case == "missing data":
        data = tmp_path / "nowhere"
    elif case == "missing model":
        model = tmp_path / "none.pt"
    elif case == "class count":
        model = tiny_bundle(tmp_path_factory, datadir, "other")
    elif case == "no out":
        out = []
    else:
        out += ["--amp", "fp16"]
    code, stdout, err = run_cli("pseudolabel", "-m", model, "-d", data, *out)
    assert stdout == "" and "Traceback" not in err
    if case == "no out":
        assert code == 2 and "--out" in err
        return
    if case == "amp":
        assert code == 2 and "unknown amp 'fp16'; choose one of none, bf16" in err
        assert not (tmp_path / "p").exists()
        return
    message = err.strip().splitlines()
    assert code == 1 and len(message) == 1
    expected = {"missing data": str(data), "missing model": str(model),
                "class count": "has 4 classes (other) but DATA_DIR"}[case]
    assert expected in message[0]
    assert not (tmp_path / "p").exists()
