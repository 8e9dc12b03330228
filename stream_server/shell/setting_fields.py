"""How settings are declared, and what is derived from a declaration. Each setting is one
field of a frozen dataclass, made by `setting(default, help, bounds...)`; its flag
(`--max-streams`), environment variable (`DEEPFAKE_MAX_STREAMS`), parsing, validation and its
row of the configuration reference all come from the field and its `Setting`. The settings
themselves are declared in stream_server/shell/settings.py."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

ENV_PREFIX = "DEEPFAKE_"


class SettingsError(ValueError):
    """A setting is invalid; the message says which and why."""


def comma_list(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """A comma list's items, stripped, empty ones left out."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)


@dataclass(frozen=True)
class Setting:
    """How one setting is given and checked: its help text, bounds, choices and extra checks.
    Its name, type and default are the `Settings` field's; the flag (`--max-streams`), the
    environment variable (`DEEPFAKE_MAX_STREAMS`), the parser, the validation and the README's
    configuration reference are all derived from the two together."""

    help: str
    lo: float | None = None  # lowest allowed value (see lo_open)
    hi: float | None = None  # highest allowed value, inclusive
    lo_open: bool = False  # lo itself is not allowed: (lo, hi]
    unit: str = ""  # shown after the range in messages and the reference ("s", "ms")
    choices: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = None  # the value -> why it is refused, or None
    parse: Callable[[str], Any] | None = None  # text -> value, where the type's own does not do
    shown_default: str | None = None  # the default as the reference shows it (paths, computed)
    flag: bool = True  # False: fixed, not settable from the command line or the environment

    def range_text(self) -> str:
        lo, hi, u = self.lo, self.hi, (" " + self.unit if self.unit else "")
        if lo is not None and hi is not None:
            return f"in ({num(lo)}, {num(hi)}]{u}" if self.lo_open else f"{num(lo)}..{num(hi)}{u}"
        if lo is not None:
            return f"{'>' if self.lo_open else '>='} {num(lo)}{u}"
        if hi is not None:
            return f"<= {num(hi)}{u}"
        return ""


def num(x: float) -> str:
    """1073741824, 0.5, 30: whole numbers without a decimal point or an exponent."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def setting(default: Any, help: str, **how: Any) -> Any:
    """A `Settings` field declared once: `port: int = setting(8080, "port to listen on", lo=1,
    hi=65535)`."""
    return field(default=default, metadata={"setting": Setting(help, **how)})


def check_that(check: Callable[[Any], bool], why: str) -> Callable[[Any], str | None]:
    """A `Setting.check`: `why` when `check(value)` is false."""
    return lambda v: None if check(v) else why


def each(check: Callable[[str], str | None]) -> Callable[[tuple[str, ...]], str | None]:
    """A `Setting.check` for a comma list: the first item `check` refuses says why."""

    def run(values: tuple[str, ...]) -> str | None:
        for v in values:
            why = check(v)
            if why is not None:
                return why
        return None

    return run


def path_check(what: str, kind: str) -> Callable[[Path], str | None]:
    """A `Setting.check` for a path: `kind` is "file", "dir" or "dir if it exists"."""

    def run(path: Path) -> str | None:
        p = Path(path)
        if kind == "file" and not p.is_file():
            return f"{what} {path} does not exist"
        if kind == "dir" and not p.is_dir():
            return f"{what} {path} is not a directory"
        if kind == "dir if it exists" and p.exists() and not p.is_dir():
            return f"{what} {path} is not a directory"
        return None

    return run


@dataclass(frozen=True)
class Declared:
    """One setting as declared: the field's name, type and default with its `Setting`."""

    name: str
    kind: type  # int, float, str, bool, Path or tuple (a comma list of strings)
    optional: bool  # None allowed (and the default)
    default: Any
    how: Setting

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")

    def from_text(self, raw: str) -> Any:
        """A flag's or environment variable's text as the field's value (ValueError if not)."""
        if self.how.parse is not None:
            return self.how.parse(raw)
        if self.kind is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise SettingsError(f"{self.label} must be true or false")
            return raw.lower() in ("true", "1", "yes")
        if self.kind is tuple:
            return comma_list(raw)
        return self.kind(raw)

    def problem(self, value: Any) -> str | None:
        """Why `value` is refused, or None."""
        how = self.how
        if value is None and self.optional:
            return None
        if how.choices and value not in how.choices:
            return f"{self.label} {value!r} is not one of {', '.join(how.choices)}"
        if self.kind in (int, float) and (how.lo is not None or how.hi is not None):
            low_ok = how.lo is None or (value > how.lo if how.lo_open else value >= how.lo)
            if not (low_ok and (how.hi is None or value <= how.hi)):
                return f"{self.label} must be {how.range_text()}, got {num(value)}"
        return how.check(value) if how.check is not None else None


def _kind(hint: Any) -> tuple[type, bool]:
    args = [a for a in get_args(hint) if a is not type(None)]
    optional = len(args) < len(get_args(hint))
    base = args[0] if optional else hint
    origin = get_origin(base)
    return (origin if origin is not None else base), optional


@functools.cache
def declarations(cls: type) -> tuple[Declared, ...]:
    """Every setting of the dataclass `cls`, in declaration order."""
    hints = get_type_hints(cls)
    out = []
    for f in fields(cls):
        kind, optional = _kind(hints[f.name])
        out.append(Declared(f.name, kind, optional, f.default, f.metadata["setting"]))
    return tuple(out)


def flagged(cls: type) -> tuple[Declared, ...]:
    """The settings a flag and an environment variable set (all but the fixed ones)."""
    return tuple(d for d in declarations(cls) if d.how.flag)


def validate(settings: object) -> None:
    """Raise SettingsError for the first field of the dataclass instance `settings` that its
    declaration refuses (called from its `__post_init__`)."""
    cls: type = type(settings)
    for d in declarations(cls):
        why = d.problem(getattr(settings, d.name))
        if why is not None:
            raise SettingsError(why)


def add_flags(p: argparse.ArgumentParser, cls: type) -> None:
    """One option per flagged setting of `cls` (its default None: not given)."""
    for d in flagged(cls):
        extra: dict[str, Any] = {}
        if d.kind is bool:
            extra = {"nargs": "?", "const": "true"}  # `--tls-self-signed` alone means true
        p.add_argument(
            d.flag,
            dest=d.name,
            type=d.kind if d.kind in (int, float, Path) else str,
            default=None,
            help=f"{d.how.help} [env {d.env}]",
            **extra,
        )


def given(cls: type, args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, Any]:
    """The values of `cls`'s settings that `args` (parsed with `add_flags`) or `env`
    (DEEPFAKE_<NAME>) give; a flag wins over the environment."""
    values: dict[str, Any] = {}
    for d in flagged(cls):
        raw = getattr(args, d.name)
        if raw is None and d.env in env:
            raw = env[d.env]
            if d.kind in (int, float):
                try:
                    raw = d.kind(raw)
                except ValueError:
                    raise SettingsError(f"{d.env} is not a valid {d.kind.__name__}") from None
        if raw is None:
            continue
        values[d.name] = d.from_text(raw) if isinstance(raw, str) else raw
    return values


def _shown(d: Declared) -> str:
    if d.how.shown_default is not None:
        return d.how.shown_default
    if d.default is None or d.default == ():
        return "none"
    if isinstance(d.default, bool):
        return str(d.default).lower()
    if isinstance(d.default, int | float):
        return num(d.default)
    return str(d.default)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference_markdown(cls: type) -> str:
    """A configuration reference (Markdown): one row per flag of `cls`, from the declarations."""
    rows = [
        "| flag | environment | type | default | allowed | what |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for d in flagged(cls):
        allowed = d.how.range_text() or ", ".join(d.how.choices)
        if d.kind is bool:
            allowed = "true, false"
        kind = "list" if d.kind is tuple else "path" if d.kind is Path else d.kind.__name__
        rows.append(
            f"| `{d.flag}` | `{d.env}` | {kind} | {_cell(_shown(d))} | {_cell(allowed)} "
            f"| {_cell(d.how.help)} |"
        )
    return "\n".join(rows) + "\n"
