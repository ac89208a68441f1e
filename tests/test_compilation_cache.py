"""JAX's persistent compilation cache: entries cut short are removed and written again."""

from __future__ import annotations

import builtins
import errno
import os
import zlib
from pathlib import Path

from helpers.common import compiled_line, run_summary

from jaxcnn import train
from jaxcnn.compilation_cache import entry_is_whole, remove_damaged_entries

TRAIN_STEP = "jit_train_step"


def run_one_step(data_dir: Path, workdir: Path, capsys) -> tuple[str, list[str], str]:
    """Train one step into ``workdir``; return its "compiled" line's cache count, its stderr
    lines and its ``params_sha256``."""
    argv = ["--max-steps", "1", "--data-dir", str(data_dir), "--workdir", str(workdir)]
    assert train.cli_main(argv) == 0
    out, err = capsys.readouterr()
    digest = run_summary(workdir)["params_sha256"]
    return compiled_line(out).split("; ")[-1], err.splitlines(), digest


def entries(cache: Path, name: str = "") -> list[Path]:
    return sorted(cache.glob(f"{name}*-cache"))


def test_an_entry_is_whole_only_if_it_decompresses_to_its_end(tmp_path):
    compressed = zlib.compress(os.urandom(4096))  # as JAX writes an entry without zstd
    assert entry_is_whole(compressed)
    assert not entry_is_whole(compressed[: len(compressed) // 2])
    assert not entry_is_whole(b"")
    (tmp_path / "jit_a-1-cache").write_bytes(compressed)
    (tmp_path / "jit_a-2-cache").write_bytes(compressed[:100])
    (tmp_path / "jit_b-3-cache").write_bytes(b"")
    assert remove_damaged_entries(tmp_path, "jit_a") == [tmp_path / "jit_a-2-cache"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["jit_a-1-cache", "jit_b-3-cache"]


def test_a_damaged_entry_is_noted_in_one_line_removed_and_written_again(
    data_dir, tmp_path, monkeypatch, capsys
):
    cache = tmp_path / "cache"
    monkeypatch.setenv("JAXCNN_COMPILATION_CACHE", str(cache))
    first = run_one_step(data_dir, tmp_path / "first", capsys)
    assert first[0] == "0 of 3 from the compilation cache)" and first[1] == []
    assert all(entry_is_whole(entry.read_bytes()) for entry in entries(cache))
    (step_entry,) = entries(cache, TRAIN_STEP)
    whole = step_entry.read_bytes()
    step_entry.write_bytes(whole[: len(whole) // 2])  # as a full disk or a kill leaves it

    second = run_one_step(data_dir, tmp_path / "second", capsys)
    assert second[0] == "2 of 3 from the compilation cache)"
    (note,) = second[1]
    assert note.startswith(f"note: compilation cache: {TRAIN_STEP}'s entry in {cache}")
    assert "damaged" in note and "written again" in note
    assert entry_is_whole(step_entry.read_bytes())

    third = run_one_step(data_dir, tmp_path / "third", capsys)
    assert third[:2] == ("3 of 3 from the compilation cache)", [])
    assert first[2] == second[2] == third[2]


def test_a_full_disk_while_an_entry_is_written_is_one_line_and_leaves_no_part(
    data_dir, tmp_path, monkeypatch, capsys
):
    cache = tmp_path / "cache"
    monkeypatch.setenv("JAXCNN_COMPILATION_CACHE", str(cache))
    real_open = builtins.open

    class FillsUp:
        """A file that takes half of what is written to it, then reports a full disk."""

        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self.handle.close()

        def write(self, data: bytes) -> int:
            self.handle.write(data[: len(data) // 2])
            self.handle.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def open_on_a_full_disk(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode and Path(file).name.startswith(TRAIN_STEP) and Path(file).parent == cache:
            return FillsUp(handle)
        return handle

    monkeypatch.setattr(builtins, "open", open_on_a_full_disk)
    full = run_one_step(data_dir, tmp_path / "full", capsys)
    assert full[0] == "0 of 3 from the compilation cache)"
    (note,) = full[1]
    assert note.startswith(f"note: compilation cache: could not write {TRAIN_STEP}'s entry")
    assert "(No space left on device)" in note and "the part written was removed" in note
    assert entries(cache, TRAIN_STEP) == []
    assert all(entry_is_whole(entry.read_bytes()) for entry in entries(cache))

    monkeypatch.setattr(builtins, "open", real_open)  # space again
    again = run_one_step(data_dir, tmp_path / "again", capsys)
    assert again[:2] == ("2 of 3 from the compilation cache)", [])
    (step_entry,) = entries(cache, TRAIN_STEP)
    assert entry_is_whole(step_entry.read_bytes()) and full[2] == again[2]
