"""write_pseudo_labels: GeoTIFFs on the chips' grids, a DATA_DIR of their own, a report."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from ctfa_cli.datasets.datadir import DataDir
from ctfa_cli.errors import CtfaError
from ctfa_cli.evaluation.evaluate import evaluate_split
from ctfa_cli.evaluation.pseudolabel import write_pseudo_labels
from ctfa_cli.model.bundle import load_bundle
from tests.evaluation.helpers import tiny_bundle, tiny_datadir


@pytest.fixture(scope="session")
def datadir(tmp_path_factory):
    return tiny_datadir(tmp_path_factory)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, datadir):
    return load_bundle(tiny_bundle(tmp_path_factory, datadir))


@pytest.fixture(scope="module")
def written(tmp_path_factory, bundle, datadir):
    """Pseudo labels of the train split and their report."""
    out = tmp_path_factory.mktemp("pseudo") / "out"
    data = DataDir.open(datadir)
    report = write_pseudo_labels(bundle.model, bundle.spec, bundle.cfg, data, "train", out,
                                 overwrite=False, progress=False, model_path=datadir / "m.pt")
    return data, out, report


def test_labels_lie_on_the_chip_grids_with_the_palette(written, bundle):
    data, out, report = written
    rows = data.split("train")
    assert report.chips == len(rows) == 4
    written_pixels = []
    for _, row in rows.iterrows():
        path = out / "chips" / "train" / "masks" / f"{row['chip_id']}.tif"
        with rasterio.open(path) as label, rasterio.open(data.image_path(row)) as image:
            assert (label.crs, label.transform, label.shape) == \
                   (image.crs, image.transform, image.shape)
            assert label.count == 1 and label.dtypes[0] == "uint8" and label.nodata == 255
            colours = label.colormap(1)
            assert [colours[k] for k in range(6)] == [(*c, 255) for c in bundle.spec.palette]
            assert colours[255] == (0, 0, 0, 0)  # undecided pixels show as transparent
            assert label.descriptions == ("pseudo label",)
            assert label.compression == rasterio.enums.Compression.deflate
            values = label.read(1)
        labels = {0} | {k for k in range(1, 6) if row[f"has_{bundle.spec.classes[k]}"]}
        assert set(np.unique(values).tolist()) <= labels | {255}
        written_pixels.append(values)
    counts = np.bincount(np.concatenate([v.ravel() for v in written_pixels]), minlength=256)
    assert report.class_pixels == counts[:6].tolist()
    assert report.ignored_pixels == counts[255] > 0
    assert report.ignored_share == pytest.approx(counts[255] / counts.sum())


def test_the_report_scores_the_labels_against_the_masks(written, bundle):
    data, out, report = written
    expected = evaluate_split(bundle.model, bundle.spec, bundle.cfg, data, "train",
                              targets=("pseudo",), progress=False)["pseudo"]
    assert report.chips_with_masks == 4
    assert report.metrics["confusion"] == expected["confusion"]
    assert report.metrics["ignored_predictions"] == expected["ignored_predictions"]
    saved = json.loads((out / "report.json").read_text())
    assert saved["ignored_pixels"] == report.ignored_pixels
    assert saved["metrics"]["miou"] == pytest.approx(report.metrics["miou"])


def test_the_output_is_a_datadir_of_images_and_pseudo_labels(written):
    data, out, _ = written
    pseudo = DataDir.open(out)
    assert pseudo.spec == data.spec and pseudo.splits == ["train"]
    assert pseudo.meta["pseudo_labels"]["split"] == "train"
    for (_, mine), (_, theirs) in zip(pseudo.split("train").iterrows(),
                                      data.split("train").iterrows(), strict=True):
        assert pseudo.image_path(mine).resolve() == data.image_path(theirs).resolve()
        assert mine["labels"] == theirs["labels"] and mine["mask"].startswith("chips/train/")
        image, label = pseudo.read_chip(mine)
        assert np.array_equal(image, data.read_chip(theirs)[0])
        assert label.shape == image.shape[1:]


def test_existing_output_is_refused_unless_overwrite(written, bundle, tmp_path):
    data, written_out, _ = written
    out = tmp_path / "out"  # a copy, so the module's fixture keeps its train labels
    shutil.copytree(written_out, out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(CtfaError, match="not empty; pass --overwrite"):
        write_pseudo_labels(bundle.model, bundle.spec, bundle.cfg, data, "val", out,
                            overwrite=False, progress=False)
    write_pseudo_labels(bundle.model, bundle.spec, bundle.cfg, data, "val", out,
                        overwrite=True, progress=False)
    assert DataDir.open(out).splits == ["val"]
    assert not (out / "chips" / "train").exists()  # the former run's labels are gone
    assert (out / "notes.txt").read_text() == "mine"  # other files are left alone
    with pytest.raises(CtfaError, match="refusing to write over the input"):
        write_pseudo_labels(bundle.model, bundle.spec, bundle.cfg, data, "val", data.root,
                            overwrite=True, progress=False)


def test_labels_of_chips_taller_than_wide(tmp_path, bundle, datadir):
    copy = tmp_path / "data"
    shutil.copytree(datadir, copy)
    data = DataDir.open(copy)
    for _, row in data.split("val").iterrows():
        for path in (data.image_path(row), copy / row["mask"]):
            with rasterio.open(path) as src:
                pixels, profile = src.read()[:, :, :48], src.profile
            profile["width"] = 48
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(pixels)
    write_pseudo_labels(bundle.model, bundle.spec, bundle.cfg, data, "val", tmp_path / "out",
                        overwrite=False, progress=False)
    for _, row in data.split("val").iterrows():
        label = tmp_path / "out" / "chips" / "val" / "masks" / f"{row['chip_id']}.tif"
        with rasterio.open(label) as src, rasterio.open(data.image_path(row)) as image:
            assert src.shape == image.shape == (64, 48)
            assert src.transform == image.transform


def test_chips_without_georeference_and_without_masks(tmp_path, bundle, datadir):
    copy = tmp_path / "data"
    shutil.copytree(datadir, copy)
    data = DataDir.open(copy)
    for _, row in data.split("val").iterrows():
        path = data.image_path(row)
        with rasterio.open(path) as src:
            pixels, profile = src.read(), src.profile
        profile.pop("crs"), profile.pop("transform")
        with pytest.warns(NotGeoreferencedWarning), rasterio.open(path, "w", **profile) as dst:
            dst.write(pixels)
    data.chips.loc[data.chips["split"] == "val", "mask"] = None
    report = write_pseudo_labels(bundle.model, bundle.spec, bundle.cfg, data, "val",
                                 tmp_path / "out", overwrite=False, progress=False)
    assert report.metrics is None and report.chips_with_masks == 0 and report.chips == 4
    label = next((tmp_path / "out" / "chips" / "val" / "masks").glob("*.tif"))
    with rasterio.open(label) as src:
        assert src.crs is None and src.transform.is_identity


def test_dataset_yaml_records_where_the_labels_come_from(written, bundle, datadir):
    data, out, report = written
    meta = DataDir.open(out).meta
    cfg = bundle.cfg
    assert meta["source"] == f"pseudo labels of {data.root.resolve()} (split train)"
    assert meta["chips"] == {"train": 4}
    assert meta["tile_size"] == data.meta["tile_size"] and meta["crs"] == data.meta["crs"]
    assert meta["pseudo_labels"] == {
        "model": str((datadir / "m.pt").resolve()), "model_dataset": "synthetic",
        "data_dir": str(data.root.resolve()), "split": "train", "ignore_index": 255,
        "method": "multi-scale + flip CAMs of the final classifier, restricted to the "
                  "image-level labels; background thresholds; PAR refinement",
        "cam_scales": list(cfg.cam_scales), "high_thre": cfg.high_thre,
        "low_thre": cfg.low_thre, "par_dilations": list(cfg.par_dilations),
        "par_iters": cfg.par_iters, "amp": "none",
    }
    saved = json.loads((out / "report.json").read_text())
    assert (saved["out"], saved["data"], saved["split"]) == (str(out), str(data.root), "train")
    assert saved["class_share"] == pytest.approx(
        [n / report.pixels for n in report.class_pixels])
