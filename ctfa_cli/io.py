"""Safe output writing: temporary name, then rename; never clobber without ``--overwrite``."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from ctfa_cli.errors import CtfaError


def check_writable(path: Path, overwrite: bool, *, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse to write ``path`` when it exists (unless ``overwrite``) or when it is an input.

    Raises:
        CtfaError: ``path`` exists and ``overwrite`` is False, or ``path`` is one of ``inputs``.
    """
    path = Path(path)
    for source in inputs:
        if Path(source).resolve() == path.resolve():
            raise CtfaError(f"{path}: refusing to write onto an input file; choose another output")
    if path.exists() and not overwrite:
        raise CtfaError(f"{path} already exists; pass --overwrite to replace it")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the suffix (GDAL and torch pick drivers from it) and starts with
    ``.tmp-`` so that an interrupted run never leaves a file that looks finished.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def claim_folder(path: Path, overwrite: bool, *, owned: tuple[str, ...],
                 inputs: tuple[Path, ...] = ()) -> None:
    """Make ``path`` an output folder: created when missing, used as is when empty.

    A folder that holds anything is refused unless ``overwrite``; then only the ``owned``
    entries (names of the files and folders this output writes) are removed, never other files.

    Raises:
        CtfaError: ``path`` is a file, is one of ``inputs``, has an ``owned`` entry that holds
            one of ``inputs``, or is not empty and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CtfaError(f"{path} is a file; the output must be a folder")
    entries = [(path / name).resolve() for name in owned]
    for source in (Path(p).resolve() for p in inputs):
        if source == path.resolve() or any(e == source or e in source.parents for e in entries):
            raise CtfaError(f"{path}: refusing to write over the input {source}; choose another "
                            "output folder")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise CtfaError(f"{path} is not empty; pass --overwrite to replace its outputs, or "
                            "choose another folder")
        remove_entries(path, owned)
    path.mkdir(parents=True, exist_ok=True)


def remove_entries(folder: Path, names: Iterable[str], *, keep: Iterable[Path] = ()) -> None:
    """Remove ``folder/name`` for each of ``names`` (files or whole trees), nothing else.

    An entry that is, or contains, one of ``keep`` (e.g. the inputs of the run) is left alone.
    """
    kept = [Path(p).resolve() for p in keep]
    for name in names:
        entry = (Path(folder) / name).resolve()
        if any(p == entry or entry in p.parents for p in kept):
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        elif entry.exists():
            entry.unlink()
