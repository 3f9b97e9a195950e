"""`xt config show` and `xt config keys`: what a run's config resolves to, and every key there is.

Both read the typed sections themselves: `show` loads a run file like `xt train` does (same
checks, same ``--set``) and prints it as TOML with every default filled in; `keys` lists the keys
of `xt.cli.config.XTConfig` with their types, defaults and the first sentence of their docstring
entries (`xt.core.config.config_keys`), so the listing cannot drift from the code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from xt.cli.config import XTConfig, load_xt_config
from xt.core.config import ConfigError, config_keys, dump_config

__all__ = ["resolved_config_text", "keys_text", "write_run_config", "RUN_CONFIG"]

#: the resolved config a run keeps in its folder (``train.out_dir``)
RUN_CONFIG = "config.toml"


def resolved_config_text(cfg: XTConfig, source: str | Path | None) -> str:
    """`cfg` as TOML with every default, unset keys as ``# key = (unset)`` comments, headed by
    where it came from; ``load_xt_config`` of the text gives back an equal config."""
    head = f"# resolved config of {source} (every default filled in; unset keys shown as comments)\n"
    return head + dump_config(cfg, unset_as_comments=True)


def keys_text(section: str | None = None) -> str:
    """The keys (all, or those of `section`: ``train``, ``model.config`` ... or one dotted key), one
    per line: ``key = default  (type)  doc``.

    Raises:
        xt.core.config.ConfigError: `section` matches no key (the sections are listed).
    """
    keys = config_keys(XTConfig)
    if section:
        keys = [k for k in keys if k.key == section or k.key.startswith(section + ".")]
        if not keys:
            sections = sorted({k.key.split(".")[0] for k in config_keys(XTConfig)})
            raise ConfigError(f"xt config keys: no key {section!r}; the sections are {', '.join(sections)}")
    width = max(len(f"{k.key} = {k.default}") for k in keys)
    width = min(width, 48)
    return "\n".join(f"{f'{k.key} = {k.default}':<{width}}  ({k.type})  {k.doc}".rstrip() for k in keys) + "\n"


def write_run_config(cfg: XTConfig, source: str | Path | None) -> Path:
    """Write the resolved config to ``train.out_dir/config.toml`` atomically (temp file, then
    rename); `xt convert` and `--resume` read it back. Returns the path."""
    out = Path(cfg.train.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RUN_CONFIG
    tmp = path.with_name(f".{RUN_CONFIG}.tmp")
    tmp.write_text(resolved_config_text(cfg, source), encoding="utf-8")
    tmp.replace(path)
    return path


def show(config: str | Path, overrides: Sequence[str] = ()) -> str:
    """The text `xt config show CONFIG --set ...` prints (`resolved_config_text`).

    Raises:
        xt.core.config.ConfigError: as `load_xt_config`.
    """
    return resolved_config_text(load_xt_config(config, overrides), config)
