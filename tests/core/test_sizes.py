"""`xt.core.sizes.parse_size` reads sizes as transformers' ``max_shard_size`` does (its own
``convert_file_size_to_int`` is the reference), and `checkpoint.hf_max_shard_size` refuses a bad value
naming the field and the file."""
from __future__ import annotations

import pytest

from xt.core.config.base import ConfigFieldError
from xt.core.config.sections import CheckpointConfig
from xt.core.sizes import parse_size


@pytest.mark.parametrize("size", [123456, "5GB", "5gb", "5Gb", "20KB", "20Kb", "3MB", "7MiB", "1GiB", "2KiB",
                                  "500mb"])
def test_sizes_equal_transformers(size):
    from transformers.utils.hub import convert_file_size_to_int
    assert parse_size(size) == convert_file_size_to_int(size)


def test_sizes_transformers_lacks():
    assert parse_size("1.5 GB") == 1_500_000_000 and parse_size("2TiB") == 2 * 2**40 and parse_size("10B") == 10


@pytest.mark.parametrize("bad,why", [("5XB", "cannot parse"), ("GB", "cannot parse"), (0, "> 0"), ("0MB", "> 0"),
                                     (-3, "> 0"), (True, "integer"), (2.5, "integer")])
def test_bad_sizes_are_refused_naming_the_field(bad, why):
    with pytest.raises(ValueError, match=f"bucket_bytes: .*{why}"):
        parse_size(bad, "bucket_bytes")
    with pytest.raises(ConfigFieldError, match=f"`hf_max_shard_size` .*{why}") as err:
        CheckpointConfig(hf_max_shard_size=bad)
    assert err.value.field == "hf_max_shard_size"


def test_bad_toml_value_names_key_and_file(tmp_path):
    from xt.core.config import ConfigError, ConfigStruct, load_config
    toml = tmp_path / "run.toml"
    toml.write_text('[checkpoint]\nevery_steps = 1\nhf_max_shard_size = "5 XB"\n')

    class Run(ConfigStruct):  # a one-section run struct, as the CLI composes them
        checkpoint: CheckpointConfig = CheckpointConfig()

    with pytest.raises(ConfigError, match=r"run\.toml:3: .*checkpoint\.hf_max_shard_size.*cannot parse '5 XB'"):
        load_config(toml, Run)
