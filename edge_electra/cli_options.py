"""Click options made from a config dataclass's fields, so each flag's name, type and default live once, in the config.

    @dataclass
    class BenchConfig:
        runs: int = option_field(100, help="Timed runs per case and bundle.")

    @click.command()
    @dataclass_options(BenchConfig)
    def command(**flags):
        cfg = config_from_flags(BenchConfig, flags)

A field `x_y` becomes `--x-y` (`names=` gives others); its type picks the click type: int, float and str as they
are, `X | None` as X, bool as `--x-y/--no-x-y`, Literal[...] as a choice, list[str] as a repeatable option and
list[int] / list[float] as one comma-separated value. Extra click keywords (a click.Path type, a metavar) go in
`option_field(..., click={...})`. `overlay=True` is for commands that read a config file first: every option then
defaults to None (unset), so only the flags given override the file (see train.options.config_from_cli).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable, Iterable, TypeVar

import click

T = TypeVar("T")
MISSING = dataclasses.MISSING


def option_field(default: Any = MISSING, *, default_factory: Any = MISSING, help: str,
                 names: tuple[str, ...] = (), hidden: bool = False, click: dict | None = None) -> Any:
    """A dataclass field that documents its command-line option: help text, other flag names, extra click keywords."""
    metadata = {"help": help, "names": tuple(names), "hidden": hidden, "click": dict(click or {})}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def _optional_inner(hint: Any) -> Any:
    """X for `X | None`, else the hint itself."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _comma_separated(item: type) -> Callable:
    def parse(ctx, param, value):
        if value is None or isinstance(value, list):
            return value
        try:
            return [item(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise click.BadParameter(f"expected comma-separated {item.__name__} values, got {value!r}") from None
    return parse


def _click_kwargs(hint: Any) -> dict:
    """How a value of type `hint` is read from the command line."""
    hint = _optional_inner(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return {"type": click.Choice([str(a) for a in args])}
    if origin is list and args and args[0] in (int, float):
        return {"type": str, "callback": _comma_separated(args[0]), "metavar": f"{args[0].__name__.upper()},..."}
    if origin is list:
        return {"multiple": True, "type": args[0] if args else str}
    if hint in (int, float, str):
        return {"type": hint}
    raise TypeError(f"no command-line form for {hint!r}; give the field click={{'type': ...}}")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _declarations(f: dataclasses.Field, hint: Any) -> tuple[str, ...]:
    """The field's flag names: `names=` when given, else `--x-y` (`--x-y/--no-x-y` for a bool)."""
    flag = "--" + f.name.replace("_", "-")
    default = f"{flag}/--no-{flag[2:]}" if _optional_inner(hint) is bool else flag
    return f.metadata.get("names") or (default,)


def _option(f: dataclasses.Field, hint: Any, overlay: bool) -> Callable:
    default = _default(f)
    kwargs: dict[str, Any] = {"help": f.metadata.get("help"), "hidden": f.metadata.get("hidden", False)}
    if _optional_inner(hint) is not bool and "type" not in f.metadata.get("click", {}):
        kwargs.update(_click_kwargs(hint))
    kwargs.update(f.metadata.get("click", {}))
    if overlay:
        kwargs["default"] = None
        if default is not None and kwargs["help"]:
            kwargs["help"] += f"  [default: {_shown(default)}]"
    elif f.default is MISSING and f.default_factory is MISSING:
        kwargs["required"] = True
    elif default is not None:
        is_comma_list = "callback" in kwargs and isinstance(default, list)
        kwargs.update(default=_shown(default) if is_comma_list else default, show_default=True)
    return click.option(*_declarations(f, hint), f.name, **kwargs)


def dataclass_options(cls: type, *, only: Iterable[str] | None = None, exclude: Iterable[str] = (),
                      overlay: bool = False) -> Callable:
    """A decorator adding one click option per field of `cls` (those in `only`, less `exclude`), in field order."""
    hints = typing.get_type_hints(cls)
    chosen = [f for f in dataclasses.fields(cls) if (only is None or f.name in only) and f.name not in exclude]

    def decorate(command: Callable) -> Callable:
        for f in reversed(chosen):   # click lists options in the reverse order of application
            command = _option(f, hints[f.name], overlay)(command)
        return command
    return decorate


def config_from_flags(cls: type[T], flags: dict) -> T:
    """`cls` built from the values of its options, which are taken out of `flags` (the rest stay for the command)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {name: flags.pop(name) for name in list(flags) if name in names}
    return cls(**{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()})


def to_argv(cfg: Any, *, exclude: Iterable[str] = ()) -> list[str]:
    """The flags that `dataclass_options(type(cfg))` reads back as `cfg` (None values are left out)."""
    hints = typing.get_type_hints(type(cfg))
    argv: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in exclude or value is None:
            continue
        flag, _, negative = _declarations(f, hints[f.name])[0].partition("/")
        if _optional_inner(hints[f.name]) is bool:
            argv.append(flag if value else negative)
        elif isinstance(value, list) and "callback" not in _click_kwargs(hints[f.name]):   # a repeatable option
            argv += [part for item in value for part in (flag, str(item))]
        else:
            argv += [flag, _shown(value)]
    return argv
