"""`ctfa evaluate` through the console entry point: table, JSON, output folder, exit codes."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.evaluation.helpers import tiny_bundle, tiny_datadir


@pytest.fixture(scope="session")
def datadir(tmp_path_factory):
    return tiny_datadir(tmp_path_factory)


@pytest.fixture
def checkpoint(tmp_path_factory, tmp_path, datadir):
    """A private copy of the tiny bundle at RUN_DIR/checkpoints/last.pt."""
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    shutil.copyfile(tiny_bundle(tmp_path_factory, datadir), path)
    return path


def test_json_report_and_files_next_to_the_run(run_cli, checkpoint, datadir):
    code, out, err = run_cli("evaluate", "--model", checkpoint, "--data", datadir, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["split"], report["target"], report["tta"], report["amp"]) == \
        ("test", "seg", False, "none")
    metrics = report["metrics"]
    assert set(metrics) >= {"miou", "mf1", "oa", "kappa", "iou", "precision", "recall", "f1"}
    assert len(metrics["iou"]) == len(report["classes"]) == 6
    assert 0 <= metrics["miou"] <= 1 and metrics["pixels"] == 4 * 64 * 64
    folder = checkpoint.parent.parent / "eval_test_seg"
    assert report["out"] == str(folder)
    assert json.loads((folder / "metrics.json").read_text()) == report
    assert (folder / "confusion.png").is_file() and len(list(folder.glob("overlays/*.png"))) == 4

    code, _, err = run_cli("evaluate", "--model", checkpoint, "--data", datadir)
    assert code == 1 and "--overwrite" in err and len(err.strip().splitlines()) == 1


def test_table_for_cam_target_into_a_chosen_folder(run_cli, checkpoint, datadir, tmp_path):
    code, out, err = run_cli("evaluate", "-m", checkpoint, "-d", datadir, "--split", "val",
                             "--target", "cam", "--out", tmp_path / "e", "--batch-size", 2)
    assert code == 0, err
    for text in ("cam on val", "low_vegetation", "IoU", "precision", "recall", "F1",
                 "mean (classes present)", "OA", "kappa"):
        assert text in out
    assert (tmp_path / "e" / "confusion.png").is_file()


def test_bfloat16_scores_stay_close_to_float32(run_cli, checkpoint, datadir, tmp_path):
    scores = {}
    for amp in ("none", "bf16"):
        code, out, err = run_cli("evaluate", "-m", checkpoint, "-d", datadir, "--target",
                                 "pseudo", "--amp", amp, "--out", tmp_path / amp, "--json")
        assert code == 0, err
        report = json.loads(out)
        assert report["amp"] == amp
        scores[amp] = report["metrics"]["oa"]
    # bfloat16 CAMs move a few pixels across the thresholds, not the picture.
    assert scores["bf16"] == pytest.approx(scores["none"], abs=0.05)


@pytest.mark.parametrize("case", ["missing data", "missing model", "class count", "target",
                                  "tta", "amp"])
def test_bad_inputs_end_with_one_line(run_cli, tmp_path_factory, checkpoint, datadir, tmp_path,
                                      case):
    model, data, extra, code_expected = checkpoint, datadir, [], 1
    if case == "missing data":
        data = tmp_path / "nowhere"
    elif case == "missing model":
        model = tmp_path / "none.pt"
    elif case == "class count":
        model = tiny_bundle(tmp_path_factory, datadir, "other")
    elif case == "target":
        extra, code_expected = ["--target", "crf"], 2
    elif case == "amp":
        extra, code_expected = ["--amp", "fp16"], 2
    else:
        extra, code_expected = ["--target", "cam", "--tta"], 2
    code, out, err = run_cli("evaluate", "-m", model, "-d", data, "--out", tmp_path / "e",
                             *extra)
    assert code == code_expected and out == ""
    message = err.strip().splitlines()
    assert len(message) == 1 and "Traceback" not in err
    expected = {"missing data": str(data), "missing model": str(model),
                "class count": "has 4 classes (other) but DATA_DIR", "target": "'crf'",
                "tta": "--tta applies to --target seg",
                "amp": "unknown amp 'fp16'; choose one of none, bf16"}[case]
    assert expected in message[0]
    if case == "class count":
        assert "has 6 (synthetic)" in message[0]


def test_official_protocol_with_crf_reports_seg_and_seg_crf(run_cli, checkpoint, datadir):
    code, out, err = run_cli("evaluate", "--model", checkpoint, "--data", datadir,
                             "--protocol", "official", "--crf", "--json", "--device", "cpu")
    assert code == 0, err
    report = json.loads(out)
    assert report["protocol"] == "official" and report["target"] == "seg"
    plain, crf = report["metrics"], report["metrics_crf"]
    for metrics in (plain, crf):
        assert metrics["pixels"] == 4 * 64 * 64 and metrics["mf1_official"] >= metrics["mf1"]
    assert plain["confusion"] != crf["confusion"]  # the CRF moved labels
    folder = checkpoint.parent.parent / "eval_test_seg_official_crf"
    assert report["out"] == str(folder)
    assert (folder / "confusion.png").is_file() and (folder / "confusion_crf.png").is_file()
    code, out, _ = run_cli("evaluate", "--model", checkpoint, "--data", datadir, "--crf-set",
                           "bi_w=0", "--crf-set", "pos_w=0", "--json", "--device", "cpu",
                           "--out", checkpoint.parent / "no-pairwise")
    report = json.loads(out)
    # Without pairwise terms the CRF returns the (clipped) probabilities: seg_crf = seg.
    assert report["metrics_crf"]["confusion"] == report["metrics"]["confusion"]
    code, _, err = run_cli("evaluate", "--model", checkpoint, "--data", datadir, "--crf-set",
                           "bi_ww=1")
    assert code == 2 and "not a CRF parameter" in err
    code, _, err = run_cli("evaluate", "--model", checkpoint, "--data", datadir, "--target",
                           "cam", "--crf")
    assert code == 2 and "--crf applies to --target seg only" in err
