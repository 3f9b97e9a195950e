"""Typed configs: strict TOML loading with ``--set`` overrides, and the engine's sections.

Public API:
    load_config(path, cls, overrides) -> cls      read TOML + overrides, validate strictly
    convert_config(data, cls, ...) -> cls         validate an already-parsed dict
    dump_config(cfg, unset_as_comments=False) -> str   TOML text that loads back to an equal config
    config_keys(cls, prefix="") -> [ConfigKey]    every key: type, default, one-line doc (docstrings)
    ConfigStruct                                  base class for every config section
    ConfigError, ConfigFieldError                 errors (see their docstrings; ConfigError is an
                                                  xt.core.errors.XTError)
    config_error_at(key, message, path, overrides) a ConfigError located like load_config's
    OptimConfig, ScheduleConfig, TrainConfig, CheckpointConfig, TrackingConfig   the engine's sections
    xt.core.config.dtypes                         dtype keys: "bf16" | "bfloat16" ... kept short
"""
from xt.core.config.base import ConfigError, ConfigFieldError, ConfigStruct, require, require_in
from xt.core.config.dump import dump_config
from xt.core.config.keys import ConfigKey, attribute_docs, config_keys
from xt.core.config.loader import (apply_overrides, config_error_at, convert_config, find_key_line,
                                   load_config, locate_key, parse_override)
from xt.core.config.sections import CheckpointConfig, OptimConfig, ScheduleConfig, TrackingConfig, TrainConfig

__all__ = [
    "CheckpointConfig", "ConfigError", "ConfigKey", "attribute_docs", "config_keys", "ConfigFieldError", "ConfigStruct", "OptimConfig",
    "ScheduleConfig", "TrackingConfig", "TrainConfig", "apply_overrides", "config_error_at", "convert_config", "dump_config",
    "find_key_line", "load_config", "locate_key", "parse_override", "require", "require_in",
]
