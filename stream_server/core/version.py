"""The program's version, for every command's --version (serving, scanning, export, training)."""

import argparse
from typing import Any

__version__ = "0.1.0"


def version_string(prog: str) -> str:
    """`PROG VERSION` for every command's --version (the installed distribution's version)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("deepfake-live")
    except PackageNotFoundError:
        v = __version__
    return f"{prog} {v}"


class VersionOrValue(argparse.Action):
    """A `--version` option that already takes a value (a model's version): with a value it
    stores it; given alone it prints the program's version and exits, as --version does."""

    def __init__(self, *args: Any, prog_name: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "VERSION: the model's version; alone: print the program's")
        super().__init__(*args, **kwargs)
        self.prog_name = prog_name

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if values is None:  # like argparse's own --version: on stdout, exit 0
            print(version_string(self.prog_name))
            parser.exit()
        setattr(namespace, self.dest, values)
