"""Write files and folders so that a reader never sees half of one.

Everything is written under a temporary name beside its destination and renamed into place when
complete: a process killed half way leaves the old version (or nothing), never a mixture.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# Marks temporary names, so that leftovers of a killed process can be recognised and removed.
TEMPORARY_MARK = ".partial-"


def temporary_sibling(path: Path, *, keep_suffix: bool = True) -> Path:
    """A fresh name beside `path` that no reader takes for the real thing."""
    path = Path(path)
    suffix = path.suffix if keep_suffix else ""
    return path.with_name(f".{path.name}{TEMPORARY_MARK}{uuid.uuid4().hex[:8]}{suffix}")


def write_file(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write(temporary_path)`, then rename the result onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    write_file(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


@contextmanager
def replacing_folder(target: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; when the block ends normally it replaces `target`.

    If the block raises (or the process dies), `target` is left as it was and the temporary
    folder is removed (or left for `remove_leftovers`).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f"{target.name}{TEMPORARY_MARK}{uuid.uuid4().hex[:8]}"
    temporary.mkdir()
    try:
        yield temporary
        _swap_in(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _swap_in(new: Path, target: Path) -> None:
    """Put `new` in place of `target`. Between the two renames neither name holds a half folder."""
    if target.exists():
        retired = target.parent / f"{target.name}{TEMPORARY_MARK}old-{uuid.uuid4().hex[:8]}"
        os.replace(target, retired)
        os.replace(new, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(new, target)


def is_temporary(path: Path) -> bool:
    return TEMPORARY_MARK in Path(path).name


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete what killed writers left in `folder` (not recursively); returns what was removed."""
    removed = []
    folder = Path(folder)
    if folder.is_dir():
        for path in folder.iterdir():
            if is_temporary(path):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
    return removed
