"""The `charlm config` group: `config show` (resolved settings) and `config list` (shipped ones)."""

from __future__ import annotations

from charlm.cli.app import config_app, handle_errors
from charlm.cli.options import ConfigOpt, SetOpt


@config_app.command("show")
@handle_errors
def config_show(config: ConfigOpt = None, overrides: SetOpt = None) -> None:
    """Print the resolved settings as YAML (file and --set applied), or the error."""
    from charlm.config import build_config, config_to_yaml

    print(config_to_yaml(build_config(config_file=config, overrides=overrides or [])), end="")


@config_app.command("list")
@handle_errors
def config_list() -> None:
    """The configs that ship with charlm: `--config NAME` uses one from any folder.

    Example: charlm train --config quickstart --out runs/quick
    """
    from charlm.config import describe_config, shipped_configs

    for name, path in shipped_configs().items():
        print(f"{name:20s} {describe_config(path)}")
