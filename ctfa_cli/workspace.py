"""The workspace: the default places of raw releases, DATA_DIRs, runs and predictions.

Every verb that needs a place nobody named asks :func:`resolve_workspace` for it, so that the
decision is made once::

    <home>/                       default ~/ctfa
    ├── raw/<dataset>/            releases as distributed (``ctfa prepare <dataset>`` reads)
    ├── data/<dataset>/           DATA_DIRs (``ctfa prepare`` writes, ``ctfa train`` reads)
    ├── runs/<group>/<run>/       RUN_DIRs: train, train2, … (``ctfa predict`` picks the newest)
    └── predictions/<group>/<run>/<scene stem>.tif

Each root is resolved on its own, the first of these that is set winning: the ``--home``
flag of ``ctfa``; the environment variable of the root (``CTFA_RAW_DIR``, ``CTFA_DATA_DIR``,
``CTFA_RUNS_DIR``, ``CTFA_PREDICTIONS_DIR``); ``CTFA_HOME``; the root's key in the settings
file; its ``home`` key; ``~/ctfa``. The settings file is ``$XDG_CONFIG_HOME/ctfa/settings.yaml``
(``~/.config/ctfa/settings.yaml`` without ``XDG_CONFIG_HOME``), written by ``ctfa settings``.

A finished run is a folder holding ``run.json`` (:data:`RUN_JSON`, written by ``ctfa train``);
a run kept elsewhere (``ctfa demo``'s) is registered by a ``run.json`` whose ``run_dir`` points
to it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from ctfa_cli.errors import CtfaError, CtfaUsageError
from ctfa_cli.io import atomic_path

log = logging.getLogger("ctfa.workspace")

ROOTS: tuple[str, ...] = ("raw", "data", "runs", "predictions")
SETTING_KEYS: tuple[str, ...] = ("home", *ROOTS)
HOME_ENV = "CTFA_HOME"
ROOT_ENV: dict[str, str] = {root: f"CTFA_{root.upper()}_DIR" for root in ROOTS}
DEFAULT_HOME = Path("~/ctfa")
RUN_JSON = "run.json"
#: Default run folder name of ``ctfa train``: ``train``, then ``train2``, ``train3`` …
TRAIN_RUN_NAME = "train"


class Settings(BaseModel):
    """The user settings file: a home and/or one folder per root (all optional)."""

    model_config = ConfigDict(extra="forbid")

    home: Path | None = None
    raw: Path | None = None
    data: Path | None = None
    runs: Path | None = None
    predictions: Path | None = None


def settings_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/ctfa/settings.yaml``, or ``~/.config/ctfa/settings.yaml``."""
    environ = os.environ if environ is None else environ
    config_home = environ.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    return Path(config_home) / "ctfa" / "settings.yaml"


def read_settings(path: Path) -> Settings:
    """The settings in ``path`` (empty settings when it does not exist).

    Raises:
        CtfaError: unreadable YAML, not a mapping, an unknown key or a value that is no path;
            the one-line message names the file and the key.
    """
    if not path.is_file():
        return Settings()
    fix = "fix it, or remove it with `ctfa settings reset`"
    try:
        body = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())
        raise CtfaError(f"{path}: not a readable settings file ({reason}); {fix}") from None
    if body is None:
        return Settings()
    if not isinstance(body, dict):
        raise CtfaError(f"{path}: expected `key: folder` lines, got {type(body).__name__}; {fix}")
    try:
        return Settings.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        reason = ("unknown key" if error["type"] == "extra_forbidden"
                  else f"not a folder path ({error['msg']})")
        raise CtfaError(f"{path}: {reason}: {key!r} (keys: {', '.join(SETTING_KEYS)}); "
                        f"{fix}") from None


def write_setting(path: Path, key: str, value: Path | None) -> Settings:
    """Set (or, with ``value`` None, remove) one key of the settings file, atomically.

    Relative folders are stored absolute (relative to the current directory), ``~`` as given.

    Raises:
        CtfaUsageError: an unknown key.
        CtfaError: the existing file is invalid (see :func:`read_settings`).
    """
    if key not in SETTING_KEYS:
        raise CtfaUsageError(f"unknown settings key {key!r}; choose one of "
                             f"{', '.join(SETTING_KEYS)}")
    settings = read_settings(path)
    if value is not None and not str(value).startswith("~"):
        value = Path(value).absolute()
    settings = settings.model_copy(update={key: value})
    body = {k: str(v) for k, v in settings.model_dump().items() if v is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(body, sort_keys=False) if body else "")
    return settings


@dataclass(frozen=True)
class Root:
    """One resolved root.

    Attributes:
        name: ``raw``, ``data``, ``runs`` or ``predictions``.
        path: the folder (absolute, ``~`` expanded; it may not exist yet).
        source: where the value came from: ``flag --home``, ``environment CTFA_…``,
            ``settings file <path>`` or ``default``.
    """

    name: str
    path: Path
    source: str

    @property
    def origin(self) -> str:
        """`` (set by …)`` for a root that is not the default, to append to messages."""
        return "" if self.source == "default" else f" ({self.name} folder set by {self.source})"


@dataclass(frozen=True)
class Workspace:
    """The four resolved roots and the settings file they were read with."""

    roots: dict[str, Root]
    settings_file: Path

    @property
    def raw(self) -> Path:
        return self.roots["raw"].path

    @property
    def data(self) -> Path:
        return self.roots["data"].path

    @property
    def runs(self) -> Path:
        return self.roots["runs"].path

    @property
    def predictions(self) -> Path:
        return self.roots["predictions"].path

    def to_json(self) -> dict[str, Any]:
        """What ``ctfa settings --json`` prints."""
        return {"settings_file": str(self.settings_file),
                "roots": {name: {"path": str(root.path), "source": root.source}
                          for name, root in self.roots.items()}}


def _folder(value: str | Path) -> Path:
    return Path(value).expanduser().absolute()


def resolve_workspace(home: Path | None = None,
                      environ: Mapping[str, str] | None = None) -> Workspace:
    """Resolve every root (see the module docstring for the order).

    Args:
        home: the ``--home`` flag (None: not given).
        environ: the environment (default ``os.environ``).

    Raises:
        CtfaError: an invalid settings file (only read when some root needs it).
    """
    environ = os.environ if environ is None else environ
    file = settings_path(environ)
    settings: Settings | None = None
    roots = {}
    for name in ROOTS:
        env = ROOT_ENV[name]
        if home is not None:
            roots[name] = Root(name, _folder(home) / name, "flag --home")
        elif environ.get(env):
            roots[name] = Root(name, _folder(environ[env]), f"environment {env}")
        elif environ.get(HOME_ENV):
            roots[name] = Root(name, _folder(environ[HOME_ENV]) / name,
                               f"environment {HOME_ENV}")
        else:
            settings = settings or read_settings(file)
            own, common = getattr(settings, name), settings.home
            if own is not None:
                roots[name] = Root(name, _folder(own), f"settings file {file} ({name})")
            elif common is not None:
                roots[name] = Root(name, _folder(common) / name, f"settings file {file} (home)")
            else:
                roots[name] = Root(name, _folder(DEFAULT_HOME) / name, "default")
    return Workspace(roots, file)


# --- runs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """A finished run of the workspace, as its ``run.json`` describes it.

    Attributes:
        entry: the folder holding ``run.json`` under the runs root (``<group>/<run>``).
        run_dir: the RUN_DIR itself (``entry``, or where a registered run lives).
        checkpoint: the checkpoint ``predict`` uses: ``model`` of ``run.json``, else best.pt,
            else last.pt.
        summary: the whole ``run.json``.
    """

    entry: Path
    run_dir: Path
    checkpoint: Path
    summary: dict[str, Any]

    @property
    def name(self) -> str:
        """``<group>/<run>``: how predictions are filed."""
        return f"{self.entry.parent.name}/{self.entry.name}"

    def describe(self) -> str:
        """``<checkpoint> (<dataset>, N classes: …, validation seg mIoU x)`` for stderr."""
        classes = self.summary.get("classes") or []
        miou = self.summary.get("best_seg_miou")
        score = "not validated" if miou is None else f"validation seg mIoU {miou:.3f}"
        return (f"{self.checkpoint} ({self.summary.get('dataset', '?')}, {len(classes)} classes:"
                f" {', '.join(classes)}; {score})")


def write_run_record(entry: Path, summary: dict[str, Any]) -> Path:
    """Write ``entry/run.json`` (atomically); ``summary['run_dir']`` names the RUN_DIR."""
    entry.mkdir(parents=True, exist_ok=True)
    path = entry / RUN_JSON
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
    return path


def read_run_record(entry: Path) -> RunRecord | None:
    """The run filed at ``entry``; None when it holds no readable ``run.json`` or its RUN_DIR
    (or checkpoint) has gone."""
    path = entry / RUN_JSON
    try:
        summary = json.loads(path.read_text())
        run_dir = Path(summary["run_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    candidates = [summary.get("model"), summary.get("best_checkpoint"),
                  summary.get("last_checkpoint")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return RunRecord(entry, run_dir, Path(candidate), summary)
    log.debug("%s: its checkpoints are gone; skipped", path)
    return None


def finished_runs(runs: Path, group: str | None = None) -> list[RunRecord]:
    """The finished runs under ``runs`` (of one group), newest ``run.json`` last."""
    pattern = f"{group}/*/{RUN_JSON}" if group else f"*/*/{RUN_JSON}"
    entries = sorted(runs.glob(pattern), key=lambda path: path.stat().st_mtime_ns)
    records = (read_run_record(path.parent) for path in entries)
    return [record for record in records if record is not None]


def next_run_folder(group_dir: Path, name: str | None) -> Path:
    """A new run folder in ``group_dir``: ``name`` as given, else the first free of ``train``,
    ``train2``, ``train3`` … (created empty, so that two runs started together never share
    one; a folder once used is never reused, since ``run.json`` and checkpoints stay)."""
    if name is not None:
        if Path(name).name != name or name in ("", ".", ".."):
            raise CtfaUsageError(f"--name {name!r}: a run name is one folder name, not a path; "
                                 "pass --out for a run elsewhere")
        return group_dir / name
    group_dir.mkdir(parents=True, exist_ok=True)
    number = 1
    while True:
        folder = group_dir / (TRAIN_RUN_NAME if number == 1 else f"{TRAIN_RUN_NAME}{number}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            number += 1


def newest_started_run(group_dir: Path) -> Path | None:
    """The run folder in ``group_dir`` with the newest ``checkpoints/last.pt`` (finished or
    not: what ``--resume`` continues)."""
    lasts = sorted(group_dir.glob("*/checkpoints/last.pt"), key=lambda p: p.stat().st_mtime_ns)
    return lasts[-1].parent.parent if lasts else None


def register_run(runs: Path, group: str, stem: str, summary: dict[str, Any]) -> Path:
    """File a run kept outside the runs root as ``<runs>/<group>/<stem>[N]/run.json``.

    A registration of the same RUN_DIR is refreshed rather than repeated.
    """
    run_dir = Path(summary["run_dir"]).resolve()
    group_dir = runs / group
    for path in sorted(group_dir.glob(f"*/{RUN_JSON}")):
        record = read_run_record(path.parent)
        if record is not None and record.run_dir.resolve() == run_dir:
            return write_run_record(path.parent, summary)
    number = 1
    while (entry := group_dir / (stem if number == 1 else f"{stem}{number}")).exists():
        number += 1
    return write_run_record(entry, summary)


def resolve_model(workspace: Workspace | None,
                  model: Path | str | None) -> tuple[Path, RunRecord | None]:
    """The checkpoint ``ctfa predict`` uses, and its run when it belongs to one.

    Args:
        workspace: the resolved workspace (only read when ``model`` is not a file).
        model: None (the newest finished run of the runs root), a checkpoint file, a run
            folder, a run name under the runs root (``potsdam/train2``) or a group name
            (``potsdam``: that dataset's newest finished run).

    Raises:
        CtfaError: no finished run at all, or ``model`` names nothing of the above.
    """
    if model is not None and (given := Path(model).expanduser()).is_file():
        entry = given.parent.parent  # RUN_DIR/checkpoints/<name>.pt
        record = read_run_record(entry)
        if record is None or record.run_dir.resolve() != entry.resolve():
            return given, None
        return given, dataclasses.replace(record, checkpoint=given)
    runs_root = workspace.roots["runs"]
    if model is None:
        records = finished_runs(runs_root.path)
        if not records:
            raise CtfaError("no trained model yet: run `ctfa demo` or `ctfa train …`, or pass "
                            f"--model (no finished run in {runs_root.path}{runs_root.origin})")
        return records[-1].checkpoint, records[-1]
    given = Path(model).expanduser()
    if given.suffix.lower() in (".pt", ".pth"):
        raise CtfaError(f"{given}: no such checkpoint; pass a file written by `ctfa train` "
                        "(RUN_DIR/checkpoints/best.pt), a run folder or a dataset name")
    for folder in (given, runs_root.path / str(model)):
        if (folder / RUN_JSON).is_file() and (record := read_run_record(folder)):
            return record.checkpoint, record
        if folder.is_dir() and (records := finished_runs(folder.parent, folder.name)):
            return records[-1].checkpoint, records[-1]
    if given.is_dir() and (checkpoint := _run_dir_checkpoint(given)):
        return checkpoint, None
    raise CtfaError(f"--model {model}: names no checkpoint, finished run folder, run name or "
                    f"dataset with finished runs in {runs_root.path}{runs_root.origin}; list "
                    f"them with `ls {runs_root.path}/*`")


def _run_dir_checkpoint(run_dir: Path) -> Path | None:
    """best.pt, else last.pt, of a RUN_DIR without ``run.json`` (a run of an older ctfa)."""
    for name in ("best.pt", "last.pt"):
        if (run_dir / "checkpoints" / name).is_file():
            return run_dir / "checkpoints" / name
    return None


def plan_run(workspace: Callable[[], Workspace], *, dataset: str | None, data: Path | None,
             out: Path | None, name: str | None, resume: bool) -> tuple[Path, Path]:
    """The DATA_DIR and RUN_DIR of ``ctfa train`` when some were not given.

    Args:
        workspace: returns the resolved workspace (called only when a default is needed).
        dataset: ``--dataset``: names the DATA_DIR ``<data>/<dataset>`` when ``data`` is None,
            and the run group ``<runs>/<dataset>/``.
        data: ``--data`` (None: from ``dataset``).
        out: ``--out`` (None: ``<runs>/<group>/<name>``, the group being ``dataset`` or the
            DATA_DIR's folder name).
        name: ``--name``: the run folder's name (None: a new ``train<N>``, or with ``resume``
            the group's newest started run).
        resume: ``--resume``.

    Raises:
        CtfaUsageError: neither ``dataset`` nor ``data``, ``name`` with ``out``, or a new run
            under torchrun (``WORLD_SIZE`` > 1) without ``name`` or ``out``.
        CtfaError: the default DATA_DIR is not prepared (the message gives the ``ctfa prepare``
            command), or there is no run to resume.
    """
    from ctfa_cli.datasets.datadir import is_datadir

    if out is not None and name is not None:
        raise CtfaUsageError("--name and --out exclude each other: --name picks the folder "
                             "under the runs folder, --out any folder")
    if data is None:
        if dataset is None:
            raise CtfaUsageError("pass --dataset NAME (its DATA_DIR is <data folder>/NAME) or "
                                 "--data DATA_DIR")
        root = workspace().roots["data"]
        data = root.path / dataset
        if not is_datadir(data):
            raise CtfaError(f"no prepared {dataset} DATA_DIR at {data}{root.origin}: make it "
                            f"with `ctfa prepare {dataset}` (or pass --data DATA_DIR)")
    if out is not None:
        return Path(data), Path(out)
    runs = workspace().roots["runs"]
    group = dataset or Path(data).absolute().name
    group_dir = runs.path / group
    if not resume and name is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Each process would claim its own train<N>: they must be told one folder.
        raise CtfaUsageError("under torchrun pass --name NAME (or --out RUN_DIR), so that every "
                             "process trains into the same run folder")
    if not resume or name is not None:
        return Path(data), next_run_folder(group_dir, name)
    newest = newest_started_run(group_dir)
    if newest is None:
        raise CtfaError(f"no run of {group} to resume in {group_dir}{runs.origin}: start one "
                        f"with `ctfa train --dataset {group}`")
    log.info("resuming the newest run of %s: %s", group, newest)
    return Path(data), newest


def prediction_folder(workspace: Workspace, checkpoint: Path, run: RunRecord | None) -> Path:
    """``<predictions>/<group>/<run>`` of the model's run; for a checkpoint of no finished run,
    ``<predictions>/<RUN_DIR name>`` (``RUN_DIR/checkpoints/x.pt``) or ``<checkpoint stem>``."""
    if run is not None:
        return workspace.predictions / run.name
    if checkpoint.parent.name == "checkpoints":
        return workspace.predictions / checkpoint.absolute().parent.parent.name
    return workspace.predictions / checkpoint.stem
