"""The one crash-safe write: the new file appears whole or not at all, and no temporary is left behind."""

import numpy as np
import pytest

from ddpm.fileio import atomic_path, atomic_write_text


def test_atomic_path_replaces_the_file_and_keeps_the_suffix(tmp_path):
    """np.savez appends ``.npz`` to a name without it: the temporary must end in the final suffix."""
    target = tmp_path / "stats.npz"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.suffix == ".npz"
        np.savez(tmp, mu=np.arange(3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["stats.npz"]
    np.testing.assert_array_equal(np.load(target)["mu"], np.arange(3.0))


@pytest.mark.parametrize("exc", [OSError, KeyboardInterrupt])
def test_atomic_path_leaves_the_old_file_when_the_block_raises(tmp_path, exc):
    target = tmp_path / "m.json"
    target.write_text("old")
    with pytest.raises(exc):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise exc
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"] and target.read_text() == "old"


def test_atomic_write_text_creates_the_file(tmp_path):
    atomic_write_text(tmp_path / "a.json", "{}\n")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"] and (tmp_path / "a.json").read_text() == "{}\n"
