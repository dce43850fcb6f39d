"""The workspace: precedence of flag, environment, settings file and default; run records."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ctfa_cli.errors import CtfaError, CtfaUsageError
from ctfa_cli.workspace import (
    Settings,
    finished_runs,
    next_run_folder,
    plan_run,
    read_settings,
    register_run,
    resolve_model,
    resolve_workspace,
    settings_path,
    write_run_record,
    write_setting,
)


def environment(tmp_path: Path, **variables: str) -> dict[str, str]:
    """An environment with only a settings folder and ``variables`` (the real one is not read)."""
    return {"XDG_CONFIG_HOME": str(tmp_path / "config"), **variables}


def write_settings(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config" / "ctfa" / "settings.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_settings_file_follows_xdg_config_home(tmp_path):
    assert settings_path({"XDG_CONFIG_HOME": "/etc/x"}) == Path("/etc/x/ctfa/settings.yaml")
    assert settings_path({}) == Path("~/.config/ctfa/settings.yaml").expanduser()


def test_default_is_ctfa_below_the_home_directory(tmp_path):
    workspace = resolve_workspace(environ=environment(tmp_path))
    home = Path("~/ctfa").expanduser()
    assert {name: (root.path, root.source) for name, root in workspace.roots.items()} == {
        "raw": (home / "raw", "default"), "data": (home / "data", "default"),
        "runs": (home / "runs", "default"), "predictions": (home / "predictions", "default")}


def test_each_root_takes_the_first_source_that_is_set(tmp_path):
    # The order: --home, CTFA_<ROOT>_DIR, CTFA_HOME, settings <root>, settings home, default.
    file = write_settings(tmp_path, f"home: {tmp_path / 'set-home'}\n"
                                    f"runs: {tmp_path / 'set-runs'}\n")
    env = environment(tmp_path, CTFA_DATA_DIR=str(tmp_path / "env-data"))
    workspace = resolve_workspace(environ=env)
    assert workspace.roots["data"].path == tmp_path / "env-data"
    assert workspace.roots["data"].source == "environment CTFA_DATA_DIR"
    assert workspace.roots["runs"].path == tmp_path / "set-runs"
    assert workspace.roots["runs"].source == f"settings file {file} (runs)"
    assert workspace.roots["raw"].path == tmp_path / "set-home" / "raw"
    assert workspace.roots["raw"].source == f"settings file {file} (home)"

    env["CTFA_HOME"] = str(tmp_path / "env-home")
    workspace = resolve_workspace(environ=env)
    assert workspace.roots["data"].path == tmp_path / "env-data"  # its own variable beats HOME
    assert workspace.roots["runs"].path == tmp_path / "env-home" / "runs"  # beats the file
    assert workspace.roots["runs"].source == "environment CTFA_HOME"

    workspace = resolve_workspace(tmp_path / "flag", environ=env)
    assert {root.path for root in workspace.roots.values()} == {
        tmp_path / "flag" / name for name in ("raw", "data", "runs", "predictions")}
    assert {root.source for root in workspace.roots.values()} == {"flag --home"}


def test_relative_and_tilde_values_become_absolute_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = environment(tmp_path, CTFA_RUNS_DIR="rel/runs", CTFA_RAW_DIR="~/raw-here")
    workspace = resolve_workspace(environ=env)
    assert workspace.runs == tmp_path / "rel" / "runs"
    assert workspace.raw == Path("~/raw-here").expanduser()


@pytest.mark.parametrize(("text", "message"), [
    ("dta: /x\n", "unknown key: 'dta' (keys: home, raw, data, runs, predictions)"),
    ("data: [1, 2]\n", "not a folder path"),
    ("- /x\n", "expected `key: folder` lines, got list"),
    ("data: [unclosed\n", "not a readable settings file"),
])
def test_an_invalid_settings_file_is_one_line_naming_the_file_and_key(tmp_path, text, message):
    path = write_settings(tmp_path, text)
    with pytest.raises(CtfaError) as raised:
        resolve_workspace(environ=environment(tmp_path))
    text = str(raised.value)
    assert text.startswith(f"{path}: ") and message in text and "ctfa settings reset" in text
    assert "\n" not in text
    # Every root set elsewhere: the file is not read, so it cannot get in the way.
    everything = environment(tmp_path, CTFA_HOME=str(tmp_path / "h"))
    assert resolve_workspace(environ=everything).data == tmp_path / "h" / "data"


def test_write_setting_round_trips_and_removes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "config" / "ctfa" / "settings.yaml"
    write_setting(path, "data", Path("big-disk/data"))
    write_setting(path, "home", Path("~/elsewhere"))
    assert read_settings(path) == Settings(data=tmp_path / "big-disk" / "data",
                                           home=Path("~/elsewhere"))
    write_setting(path, "data", None)
    assert read_settings(path) == Settings(home=Path("~/elsewhere"))
    with pytest.raises(CtfaUsageError, match="unknown settings key 'dataa'"):
        write_setting(path, "dataa", Path("/x"))


def test_run_folders_are_numbered_and_never_reused(tmp_path):
    group = tmp_path / "runs" / "potsdam"
    first, second = next_run_folder(group, None), next_run_folder(group, None)
    assert (first.name, second.name) == ("train", "train2")
    first.rmdir()  # a folder removed by hand is free again; one that exists never is
    assert next_run_folder(group, None).name == "train"
    assert next_run_folder(group, None).name == "train3"
    assert next_run_folder(group, "exp") == group / "exp"
    with pytest.raises(CtfaUsageError, match="one folder name"):
        next_run_folder(group, "a/b")


def fake_run(runs: Path, group: str, name: str, *, best: bool = True, **summary) -> Path:
    """A finished RUN_DIR with empty checkpoint files and its run.json."""
    run = runs / group / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    if best:
        (run / "checkpoints" / "best.pt").write_bytes(b"")
    write_run_record(run, {"run_dir": str(run), "dataset": group,
                           "last_checkpoint": str(run / "checkpoints" / "last.pt"),
                           "best_checkpoint": str(run / "checkpoints" / "best.pt")
                           if best else None, **summary})
    return run


def age(run: Path, seconds: float) -> None:
    """Make ``run``'s run.json ``seconds`` older than now (mtimes decide which run is newest)."""
    stamp = os.stat(run / "run.json").st_mtime - seconds
    os.utime(run / "run.json", (stamp, stamp))


def test_the_model_of_each_kind_of_model_value(tmp_path):
    workspace = resolve_workspace(environ=environment(tmp_path, CTFA_HOME=str(tmp_path / "h")))
    runs = workspace.runs
    with pytest.raises(CtfaError, match=r"^no trained model yet: run `ctfa demo` or `ctfa "
                                        r"train …`, or pass --model"):
        resolve_model(workspace, None)
    old = fake_run(runs, "potsdam", "train")
    unvalidated = fake_run(runs, "potsdam", "train2", best=False)
    isaid = fake_run(runs, "isaid", "train")
    age(old, 30), age(unvalidated, 20), age(isaid, 10)

    checkpoint, record = resolve_model(workspace, None)  # the newest run of any dataset
    assert checkpoint == isaid / "checkpoints" / "best.pt" and record.name == "isaid/train"
    checkpoint, record = resolve_model(workspace, "potsdam")  # a dataset: its newest run
    assert checkpoint == unvalidated / "checkpoints" / "last.pt"  # no best.pt: last.pt
    assert record.name == "potsdam/train2"
    assert resolve_model(workspace, "potsdam/train")[0] == old / "checkpoints" / "best.pt"
    assert resolve_model(workspace, str(old))[0] == old / "checkpoints" / "best.pt"
    checkpoint, record = resolve_model(workspace, str(old / "checkpoints" / "last.pt"))
    assert checkpoint == old / "checkpoints" / "last.pt" and record.name == "potsdam/train"
    with pytest.raises(CtfaError, match="names no checkpoint, finished run folder"):
        resolve_model(workspace, "vaihingen")
    with pytest.raises(CtfaError, match="missing.pt: no such checkpoint"):
        resolve_model(workspace, str(tmp_path / "missing.pt"))


def test_a_registered_run_points_elsewhere_and_is_refreshed_not_repeated(tmp_path):
    runs = tmp_path / "runs"
    demo = fake_run(tmp_path / "demo-out", "x", "run")
    summary = {"run_dir": str(demo), "dataset": "synthetic",
               "model": str(demo / "checkpoints" / "last.pt")}
    entry = register_run(runs, "synthetic", "demo", summary).parent
    assert entry == runs / "synthetic" / "demo"
    assert register_run(runs, "synthetic", "demo", summary).parent == entry
    other = fake_run(tmp_path / "demo-two", "x", "run")
    assert register_run(runs, "synthetic", "demo", {
        "run_dir": str(other), "model": str(other / "checkpoints" / "last.pt")}
    ).parent == runs / "synthetic" / "demo2"
    (record, _) = finished_runs(runs, "synthetic")
    # "model" wins over best.pt: the demo maps with the checkpoint it evaluated.
    assert record.run_dir == demo and record.checkpoint == demo / "checkpoints" / "last.pt"
    # A registered run whose folder was deleted is not a finished run any more.
    for path in (demo / "checkpoints").iterdir():
        path.unlink()
    assert [r.run_dir for r in finished_runs(runs, "synthetic")] == [other]


def test_under_torchrun_a_new_run_needs_a_name(tmp_path, monkeypatch):
    workspace = resolve_workspace(environ=environment(tmp_path, CTFA_HOME=str(tmp_path / "h")))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(CtfaUsageError, match="under torchrun pass --name NAME"):
        plan_run(lambda: workspace, dataset="isaid", data=tmp_path, out=None, name=None,
                 resume=False)
    assert not (workspace.runs / "isaid").exists()  # no folder claimed
    assert plan_run(lambda: workspace, dataset="isaid", data=tmp_path, out=None, name="ddp",
                    resume=False)[1] == workspace.runs / "isaid" / "ddp"


def test_plan_run_defaults(tmp_path):
    workspace = resolve_workspace(environ=environment(tmp_path, CTFA_HOME=str(tmp_path / "h")))
    calls = []

    def lazily():
        calls.append(1)
        return workspace

    given = plan_run(lazily, dataset=None, data=tmp_path / "d", out=tmp_path / "r", name=None,
                     resume=False)
    assert given == (tmp_path / "d", tmp_path / "r") and calls == []  # nothing resolved
    with pytest.raises(CtfaUsageError, match="pass --dataset NAME"):
        plan_run(lazily, dataset=None, data=None, out=None, name=None, resume=False)
    with pytest.raises(CtfaUsageError, match="--name and --out exclude each other"):
        plan_run(lazily, dataset="potsdam", data=tmp_path, out=tmp_path, name="x",
                 resume=False)
    with pytest.raises(CtfaError, match=r"no prepared potsdam DATA_DIR at .*h/data/potsdam "
                                        r"\(data folder set by environment CTFA_HOME\): make "
                                        r"it with `ctfa prepare potsdam`"):
        plan_run(lazily, dataset="potsdam", data=None, out=None, name=None, resume=False)
    # --data without --dataset: the runs are filed under the DATA_DIR's folder name.
    data, run = plan_run(lazily, dataset=None, data=tmp_path / "potsdam-rgb", out=None,
                         name=None, resume=False)
    assert run == workspace.runs / "potsdam-rgb" / "train" and run.is_dir()
    with pytest.raises(CtfaError, match="no run of potsdam-rgb to resume"):
        plan_run(lazily, dataset=None, data=data, out=None, name=None, resume=True)
    for name, seconds in (("train", 0), ("train2", 60)):
        last = workspace.runs / "potsdam-rgb" / name / "checkpoints" / "last.pt"
        last.parent.mkdir(parents=True, exist_ok=True)
        last.write_bytes(b"")
        os.utime(last, (last.stat().st_mtime - seconds,) * 2)
    # --resume continues the newest started run (finished or not), here train.
    assert plan_run(lazily, dataset=None, data=data, out=None, name=None, resume=True)[1] == \
        workspace.runs / "potsdam-rgb" / "train"


def test_run_json_is_what_train_prints(tmp_path):
    from ctfa_cli.training.loop import TrainResult

    result = TrainResult(run_dir=tmp_path / "run", step=5, skipped=1, best_miou=0.25,
                         last_checkpoint=tmp_path / "run" / "checkpoints" / "last.pt",
                         best_checkpoint=None, model=None, dataset="potsdam",
                         classes=["a", "b"], data_dir=tmp_path / "d")
    summary = result.to_json()
    assert next(iter(summary)) == "run_dir"  # `jq -r .run_dir`, and the first line after {
    assert summary == {
        "run_dir": str(tmp_path / "run"), "dataset": "potsdam", "classes": ["a", "b"],
        "data_dir": str(tmp_path / "d"), "step": 5, "skipped": 1, "applied_steps": 4,
        "skipped_fraction": 0.2, "best_seg_miou": 0.25,
        "last_checkpoint": str(tmp_path / "run" / "checkpoints" / "last.pt"),
        "best_checkpoint": None}
