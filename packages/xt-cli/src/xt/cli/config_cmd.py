"""`xt config show` and `xt config keys`: what a run's config resolves to, and every key there is.

Both read the typed sections themselves: `show` loads a run file like `xt train` (or, for a file with
`xt rl`'s sections, `xt rl`) does (same checks, same ``--set``) and prints it as TOML with every default filled in; `keys` lists the keys
of every run command's config (`COMMAND_CONFIGS`: `xt train`'s `xt.cli.config.XTConfig`, `xt rl`'s
`xt.cli.rl_config.RLRunConfig`) with their types, defaults and the first sentence of their
docstring entries (`xt.core.config.config_keys`), so the listing cannot drift from the code. A
section both commands read (``[train]``, ``[parallel]``, ...) is listed once, its header naming them.
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Sequence

from xt.cli.config import XTConfig, load_xt_config
from xt.cli.rl_config import RLRunConfig, load_rl_config
from xt.core.config import ConfigError, ConfigKey, config_keys, dump_config

__all__ = ["resolved_config_text", "keys_text", "section_listings", "write_run_config", "RUN_CONFIG",
           "COMMAND_CONFIGS"]

#: the run commands and the top-level config Struct each reads, in the order `xt config keys` lists them
COMMAND_CONFIGS: tuple[tuple[str, type], ...] = (("xt train", XTConfig), ("xt rl", RLRunConfig))

#: the resolved config a run keeps in its folder (``train.out_dir``)
RUN_CONFIG = "config.toml"


def resolved_config_text(cfg: XTConfig | RLRunConfig, source: str | Path | None) -> str:
    """`cfg` as TOML with every default, unset keys as ``# key = (unset)`` comments, headed by
    where it came from; ``load_xt_config`` (``load_rl_config``) of the text gives back an equal config."""
    head = f"# resolved config of {source} (every default filled in; unset keys shown as comments)\n"
    return head + dump_config(cfg, unset_as_comments=True)


def section_listings() -> list[tuple[str, tuple[str, ...], list[ConfigKey]]]:
    """Every top-level section of the run commands' configs (`COMMAND_CONFIGS`), once each:
    ``(section, commands that read it, its keys)``, in first-seen order (`xt train`'s sections,
    then those only `xt rl` has).

    A section two commands declare with the same keys (types, defaults and docs alike) is one
    entry naming both; were they to differ, each command's version is an entry of its own.
    """
    out: list[tuple[str, tuple[str, ...], list[ConfigKey]]] = []
    for command, cls in COMMAND_CONFIGS:
        by_section: dict[str, list[ConfigKey]] = {}
        for k in config_keys(cls):
            by_section.setdefault(k.key.split(".")[0], []).append(k)
        for section, keys in by_section.items():
            i = next((i for i, (s, _, ks) in enumerate(out) if s == section and ks == keys), None)
            if i is None:
                out.append((section, (command,), keys))
            else:
                out[i] = (section, out[i][1] + (command,), keys)
    return out


def keys_text(section: str | None = None) -> str:
    """The keys (all, or those of `section`: ``train``, ``rollout``, ``model.config`` ... or one
    dotted key) of every run command's config, each section under a ``# [SECTION]  (COMMANDS)``
    header naming the commands that read it, then one line per key: ``key = default  (type)  doc``.

    Raises:
        xt.core.config.ConfigError: `section` matches no key of any command (the sections are listed).
    """
    listings = section_listings()
    if section:
        listings = [(s, cmds, [k for k in keys if k.key == section or k.key.startswith(section + ".")])
                    for s, cmds, keys in listings]
        listings = [(s, cmds, keys) for s, cmds, keys in listings if keys]
        if not listings:
            sections = sorted({s for s, _, _ in section_listings()})
            raise ConfigError(f"xt config keys: no key {section!r}; the sections are {', '.join(sections)} "
                              f"(of {', '.join(c for c, _ in COMMAND_CONFIGS)})")
    width = min(max(len(f"{k.key} = {k.default}") for _, _, keys in listings for k in keys), 48)
    lines: list[str] = []
    for s, cmds, keys in listings:
        lines.append(f"# [{s}]  ({', '.join(cmds)})")
        lines += [f"{f'{k.key} = {k.default}':<{width}}  ({k.type})  {k.doc}".rstrip() for k in keys]
    return "\n".join(lines) + "\n"


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


#: top-level sections only `xt rl`'s config has: a file with one of them is shown as `xt rl` reads it
RL_ONLY_SECTIONS = ("task", "rollout", "rl", "orchestrator")


def show(config: str | Path, overrides: Sequence[str] = ()) -> str:
    """The text `xt config show CONFIG --set ...` prints (`resolved_config_text`): the config as
    `xt rl` resolves it when the file (or a ``--set``) has one of `RL_ONLY_SECTIONS`, else as
    `xt train` does.

    Raises:
        xt.core.config.ConfigError: as `load_xt_config` / `load_rl_config`.
    """
    if _is_rl_config(config, overrides):
        return resolved_config_text(load_rl_config(config, overrides), config)
    return resolved_config_text(load_xt_config(config, overrides), config)


def _is_rl_config(config: str | Path, overrides: Sequence[str]) -> bool:
    """Whether the file's top level or an override names an `xt rl`-only section (a file that does
    not parse is left to the loaders, which report it with its line)."""
    if any(o.split("=", 1)[0].strip().split(".", 1)[0] in RL_ONLY_SECTIONS for o in overrides):
        return True
    try:
        top = tomllib.loads(Path(config).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return any(k in top for k in RL_ONLY_SECTIONS)
