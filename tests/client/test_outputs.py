"""The keys of `infer --save-outputs` and the file it writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edgenode.client.outputs import check_writable, output_keys, save_outputs
from edgenode.errors import UsageError


@pytest.mark.parametrize(
    ("files", "keys"),
    [
        (["cat.jpg"], [""]),  # one input: the model's output names alone
        (["x/cat.jpg"], [""]),
        (["in/a.jpg", "in/b.jpg"], ["a.jpg/", "b.jpg/"]),
        # one file name in two folders: two keys (one key, one answer lost, before)
        (["a/cat.jpg", "b/cat.jpg"], ["a/cat.jpg/", "b/cat.jpg/"]),
        (["p/2024/a.jpg", "p/2025/a.jpg", "p/b.jpg"], ["2024/a.jpg/", "2025/a.jpg/", "b.jpg/"]),
        (["a/cat.jpg", "a/./b/../cat2.jpg"], ["cat.jpg/", "cat2.jpg/"]),
    ],
)
def test_keys_are_paths_from_the_deepest_common_folder(
    files: list[str], keys: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert output_keys([Path(f) for f in files]) == keys


def test_relative_and_absolute_inputs_share_one_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    files = [Path("a/cat.jpg"), tmp_path / "b" / "cat.jpg"]
    assert output_keys(files) == ["a/cat.jpg/", "b/cat.jpg/"]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (["x.jpg", "x.jpg"], "x.jpg is an input twice: "),
        (["x.jpg", "./x.jpg"], "x.jpg is an input twice: "),  # pathlib drops the "./"
        (["d/x.jpg", "e/../d/x.jpg"], "e/../d/x.jpg is an input twice (also as d/x.jpg): "),
    ],
)
def test_a_file_given_twice_is_refused(
    files: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as caught:
        output_keys([Path(f) for f in files])
    assert str(caught.value).startswith(message)


def test_saved_outputs_load_under_every_key_and_the_exact_name(tmp_path: Path) -> None:
    arrays = {
        "a/cat.jpg/probs": np.arange(6, dtype=np.float32).reshape(2, 3),
        "file": np.array([1, 2], np.int64),  # np.savez's own parameter names
        "allow_pickle": np.array(3.5),
    }
    target = tmp_path / "answers"  # np.savez would write answers.npz
    save_outputs(target, arrays)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers"]  # no partial file left
    with np.load(target) as got:
        assert sorted(got.files) == sorted(arrays)
        for key, value in arrays.items():
            assert got[key].dtype == value.dtype
            np.testing.assert_array_equal(got[key], value)


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "y.npz"
    target.write_bytes(b"old")
    with pytest.raises(ValueError, match="allow_pickle"):  # object arrays need pickle
        save_outputs(target, {"x": np.array([object()], dtype=object)})
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.npz"]


def test_an_unwritable_target_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"cannot write the outputs \(no folder "):
        check_writable(tmp_path / "missing" / "y.npz")
    with pytest.raises(UsageError, match=r"cannot write the outputs \(it is a folder\)"):
        check_writable(tmp_path)
    check_writable(tmp_path / "y.npz")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(UsageError, match=r"permission denied"):
            check_writable(locked / "y.npz")
