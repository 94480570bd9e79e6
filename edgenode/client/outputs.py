"""What ``infer --save-outputs F.npz`` writes: every final output under a key that is
unique and that a reader can predict from the command line alone.

One input: the model's output names (``probs``). Several: ``FILE/NAME``, where FILE is
the input's path relative to the deepest folder that holds every input, with ``/``
between folders: ``infer a/cat.jpg b/cat.jpg`` gives ``a/cat.jpg/probs`` and
``b/cat.jpg/probs``, ``infer photos/`` gives ``cat.jpg/probs``, ``dog.jpg/probs``, ...
A file given twice (also as ``./x.jpg`` and ``x.jpg``, or inside a folder given too)
would need one key twice, so it is refused before anything is sent.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from edgenode.errors import UsageError

__all__ = ["check_writable", "output_keys", "save_outputs"]


def output_keys(files: Sequence[Path]) -> list[str]:
    """The key prefix of each input's outputs ("" for a single input, else "FILE/");
    UsageError when one file is given twice."""
    if len(files) == 1:
        return [""]
    absolute = [os.path.abspath(f) for f in files]
    seen: dict[str, Path] = {}
    for path, full in zip(files, absolute, strict=True):
        if full in seen:
            also = f" (also as {seen[full]})" if str(seen[full]) != str(path) else ""
            raise UsageError(
                f"{path} is an input twice{also}: --save-outputs keeps one answer per "
                "input file, give each file once"
            )
        seen[full] = path
    root = os.path.commonpath(absolute)
    return [Path(os.path.relpath(full, root)).as_posix() + "/" for full in absolute]


def check_writable(path: Path) -> None:
    """UsageError unless ``path`` can be written: checked before anything is sent, so that
    no answer is computed only to be lost."""
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(f"{path}: cannot write the outputs (no folder {folder})")
    if path.is_dir():
        raise UsageError(f"{path}: cannot write the outputs (it is a folder)")
    if not os.access(folder, os.W_OK | os.X_OK):  # the file is replaced, not written into
        raise UsageError(f"{path}: cannot write the outputs (permission denied)")


def save_outputs(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` as an uncompressed .npz (``np.load`` reads it), under
    exactly that name, whole or not at all (blocking)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        # np.savez would take keys such as "file" or "allow_pickle" as its own arguments
        # and add ".npz" to another name; the members are written the way it writes them.
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for key, array in arrays.items():
                with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
        partial.replace(path)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the outputs ({exc.strerror or exc})") from exc
    finally:
        partial.unlink(missing_ok=True)
