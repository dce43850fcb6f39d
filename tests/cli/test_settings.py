"""`ctfa settings`: show, set and reset the workspace folders, with where each comes from."""

from __future__ import annotations

import json


def roots(out: str) -> dict[str, tuple[str, str]]:
    return {name: (root["path"], root["source"])
            for name, root in json.loads(out)["roots"].items()}


def test_set_show_and_reset_round_trip(run_cli, tmp_path, monkeypatch):
    monkeypatch.delenv("CTFA_HOME")
    file = tmp_path / "xdg-config" / "ctfa" / "settings.yaml"
    code, out, err = run_cli("settings", "set", "home", tmp_path / "disk", "--json")
    assert code == 0, err
    assert file.read_text() == f"home: {tmp_path / 'disk'}\n"
    assert roots(out)["data"] == (str(tmp_path / "disk" / "data"),
                                  f"settings file {file} (home)")
    code, out, _ = run_cli("settings", "set", "runs", tmp_path / "fast" / "runs", "--json")
    assert roots(out)["runs"] == (str(tmp_path / "fast" / "runs"), f"settings file {file} (runs)")
    # The environment beats the file, the flag beats both.
    monkeypatch.setenv("CTFA_RUNS_DIR", str(tmp_path / "env-runs"))
    code, out, _ = run_cli("settings", "--json")
    assert roots(out)["runs"] == (str(tmp_path / "env-runs"), "environment CTFA_RUNS_DIR")
    code, out, _ = run_cli("--home", tmp_path / "flag", "settings", "--json")
    assert roots(out)["runs"] == (str(tmp_path / "flag" / "runs"), "flag --home")
    monkeypatch.delenv("CTFA_RUNS_DIR")

    code, out, _ = run_cli("settings", "reset", "runs", "--json")
    assert roots(out)["runs"] == (str(tmp_path / "disk" / "runs"), f"settings file {file} (home)")
    code, out, _ = run_cli("settings", "reset", "--json")
    assert not file.exists()
    assert {source for _, source in roots(out).values()} == {"default"}


def test_the_table_names_every_folder_and_source(run_cli, workspace_home):
    code, out, _ = run_cli("settings")
    assert code == 0
    for name in ("raw", "data", "runs", "predictions"):
        line = next(line for line in out.splitlines() if f" {name} " in line)
        assert str(workspace_home / name) in line and "environment CTFA_HOME" in line


def test_bad_keys_and_bad_files(run_cli, tmp_path, monkeypatch):
    code, _, err = run_cli("settings", "set", "model", tmp_path)
    assert code == 2 and "unknown settings key 'model'" in err
    monkeypatch.delenv("CTFA_HOME")
    file = tmp_path / "xdg-config" / "ctfa" / "settings.yaml"
    file.parent.mkdir(parents=True)
    file.write_text("runs: /x\nhomee: /y\n")
    code, _, err = run_cli("settings")
    assert code == 1 and err == (f"Error: {file}: unknown key: 'homee' (keys: home, raw, data, "
                                 "runs, predictions); fix it, or remove it with `ctfa settings "
                                 "reset`\n")
    code, _, err = run_cli("prepare", "potsdam")  # every verb that needs a default says so
    assert code == 1 and "homee" in err
    code, out, _ = run_cli("--help")  # … but help does not read it
    assert code == 0 and "~/ctfa/raw/<dataset>" in out
    code, _, _ = run_cli("settings", "reset")
    assert code == 0 and not file.exists()
