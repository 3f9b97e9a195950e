"""The errors a user can cause, rooted in one class: `XTError`.

An `XTError`'s message is written for the user: it says what is wrong, where (dotted config key,
``file:line``, checkpoint folder) and what would be valid. The ``xt`` command prints it as one
``error: MESSAGE`` line and exits with status 1, without a traceback (``xt --debug`` or
``XT_DEBUG=1`` shows the traceback). Anything else escaping is a bug.

The hierarchy (each class is also a `ValueError`, as before it joined the hierarchy)::

    XTError
    ├── xt.core.config.ConfigError         a config file, ``--set`` override or value (key, file, line)
    │   └── xt.models.ModelConfigError     an HF model config field (``[model.config]``, config.json)
    ├── xt.core.errors.CheckpointError     a folder that is not a usable checkpoint for this run
    ├── xt.data.DataError                  unreadable, malformed or empty data (file:line)
    │   └── AssetError → ChecksumError     pinned assets that cannot be fetched or verified
    └── xt.parallel.LayoutError            a ``[parallel]`` layout that cannot work

One warning class: `CheckpointWarning` (a `UserWarning`), for a checkpoint that loads but holds
more than the caller restored (named extra state nobody asked for).
"""
from __future__ import annotations

__all__ = ["XTError", "ConfigError", "CheckpointError", "CheckpointWarning"]


class XTError(Exception):
    """Base of every user-caused error; the message is complete and meant for the user.

    Catch it (plus `OSError` for files that cannot be read) at a program's top level and print the
    message; everything else is a bug and deserves its traceback.
    """


class ConfigError(XTError, ValueError):
    """A config file, override or value is invalid (re-exported as `xt.core.config.ConfigError`).

    Attributes:
        key: dotted key of the offending entry (e.g. ``"train.steps"``), or None for file-level
            problems (unreadable file, TOML syntax error).
        path: the config file, or None when the config did not come from a file.
        line: 1-based line in `path` where `key` is set, when it could be located, else None.
    """

    def __init__(self, message: str, *, key: str | None = None, path: str | None = None,
                 line: int | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.path = path
        self.line = line


class CheckpointError(XTError, ValueError):
    """A folder cannot be used as the checkpoint asked for: it is not a (complete) checkpoint,
    it was saved with another number of ranks, or its tensors do not fit the model being trained
    (another ``[model.config]``). The message names the folder and, for a mismatch, the tensor.
    """


class CheckpointWarning(UserWarning):
    """A checkpoint was loaded but part of it was left unused: it holds named extra state that the
    caller did not pass (`xt.core.checkpoint.load_checkpoint`). The message names the folder and
    the states."""
