"""`xt convert` of GGUF sources, the cheap cases (the real conversion of SmolLM2-135M is the RL
demo's first command): which sources count as GGUF, and the user errors for bad ones."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from xt.cli.gguf import resolve_gguf
from xt.cli.main import cli
from xt.data import DataError


def test_resolve_gguf_names_only_gguf_sources(tmp_path: Path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert resolve_gguf(f) == f
    assert resolve_gguf(tmp_path) is None and resolve_gguf(tmp_path / "ckpt") is None
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_gguf(tmp_path / "missing.gguf")
    with pytest.raises(DataError, match="unknown asset"):
        resolve_gguf("asset:no-such-asset")


@pytest.mark.parametrize("src, needle", [("missing.gguf", "does not exist"), ("asset:nope", "unknown asset 'nope'")])
def test_bad_gguf_source_is_one_error_line(tmp_path: Path, src, needle):
    r = CliRunner().invoke(cli, ["convert", str(tmp_path / src) if src.endswith(".gguf") else src,
                                 str(tmp_path / "out")])
    errors = [x for x in r.output.splitlines() if x.startswith("error: ")]
    assert r.exit_code == 1 and len(errors) == 1 and needle in errors[0], r.output
    assert not (tmp_path / "out").exists()
