"""One experiment config for every stage: ``load_config(argv)`` is all a CLI needs."""

from __future__ import annotations

import importlib
import sys
from typing import Callable

from mmgen.config.errors import ConfigError
from mmgen.config.overrides import apply_overrides, help_text
from mmgen.config.paths import RunPaths
from mmgen.config.presets import BUILTIN
from mmgen.config.schema import ExperimentConfig
from mmgen.config.validation import validate_config

__all__ = ["ConfigError", "ExperimentConfig", "RunPaths", "load_config", "resolve_config", "validate_config"]


def resolve_config(name: str) -> ExperimentConfig:
    """A built-in config by name, or a user's ``package.module:function`` returning one."""
    if name in BUILTIN:
        return BUILTIN[name]()
    if ":" not in name:
        raise ConfigError(
            f"unknown config '{name}': use one of {', '.join(sorted(BUILTIN))} or package.module:function"
        )
    module_name, _, fn_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"cannot import config module '{module_name}': {err}") from None
    fn: Callable[[], ExperimentConfig] | None = getattr(module, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"config module '{module_name}' has no function '{fn_name}'")
    config = fn()
    if not isinstance(config, ExperimentConfig):
        raise ConfigError(f"config function '{name}' returned {type(config).__name__}, not ExperimentConfig")
    return config


def _split_argv(argv: list[str]) -> tuple[str | None, dict[str, str], bool]:
    """Pull ``--config NAME``, ``--help`` and ``--key value`` pairs out of argv."""
    config_name, overrides, want_help = None, {}, False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            want_help = True
            i += 1
            continue
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument '{arg}' (overrides look like --section.field VALUE)")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv):
                raise ConfigError(f"missing value for '--{key}'")
            value = argv[i + 1]
            i += 1
        i += 1
        if key == "config":
            config_name = value
        else:
            overrides[key] = value
    return config_name, overrides, want_help


def load_config(
    argv: list[str] | None = None,
    *,
    description: str = "",
    aliases: dict[str, str] | None = None,
    default: str = "demo",
) -> ExperimentConfig:
    """Parse a stage's command line into the experiment config.

    ``aliases`` maps short stage flags to config keys (``prompt`` → ``sample.prompt``).
    ``--help`` prints every field with its doc and exits.
    """
    argv = sys.argv[1:] if argv is None else argv
    config_name, overrides, want_help = _split_argv(argv)
    config = resolve_config(config_name or default)
    aliases = aliases or {}
    apply_overrides(config, {aliases.get(k, k): v for k, v in overrides.items()})
    if want_help:
        alias_line = "".join(f"\n  --{k} is short for --{v}" for k, v in aliases.items())
        print(
            f"{description}\n\n--config NAME  a built-in config ({', '.join(sorted(BUILTIN))}) "
            f"or package.module:function (default: {default}){alias_line}\n{help_text(config)}"
        )
        raise SystemExit(0)
    validate_config(config)
    return config
