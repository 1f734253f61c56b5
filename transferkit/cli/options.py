"""Command options generated from the config dataclasses (transferkit.config.FLAT_SETTINGS).

A setting is described once, as a field of a config section; its flag name, type, help and default
come from that field. Every generated option defaults to None: "not given", so a config file, the
recommender (``--strategy auto``) or the dataclass default decides.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Iterable, Mapping, Optional

import typer

from transferkit.config import FLAT_SETTINGS, FlatSetting
from transferkit.strategy.plan import strategy_names

__all__ = ["setting_option", "with_settings"]

# settings whose valid values live in a registry above config: the help lists them from there
_CHOICES: dict[str, Callable[[], list[str]]] = {"strategy": strategy_names}


def _help(setting: FlatSetting) -> str:
    """The field's help, its valid values where a registry holds them, and its default (unless explained)."""
    text = setting.help
    if setting.name in _CHOICES:
        text = f"{text.rstrip('.')}; one of {' | '.join(_CHOICES[setting.name]())}."
    if setting.default is None or "default" in text:
        return text
    shown = ("on" if setting.default else "off") if setting.value_type is bool else str(setting.default)
    text, dot = (text[:-1], ".") if text.endswith(".") else (text, "")
    return f"{text} (default {shown}){dot}"


def setting_option(setting: FlatSetting) -> inspect.Parameter:
    """The keyword-only parameter a typer command declares for one flat setting."""
    flag = "--" + setting.name.replace("_", "-")
    decls = [f"{flag}/--no-{flag[2:]}"] if setting.value_type is bool else [flag]
    section = setting.key.partition(".")[0] if "." in setting.key else None
    option = typer.Option(None, *decls, help=_help(setting),
                          rich_help_panel=f"{section.capitalize()} settings" if section else None)
    return inspect.Parameter(setting.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                             annotation=Optional[setting.value_type])


def with_settings(
    names: Optional[Iterable[str]] = None,
    registry: Optional[Mapping[str, FlatSetting]] = None,
    into: str = "settings",
    defaults: Optional[Mapping[str, Any]] = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the command also takes the flat settings ``names`` (default: all) of ``registry``
    (default: the run settings, FLAT_SETTINGS) as options.

    The decorated function declares a parameter named ``into`` and receives the given ones there, as a
    dict of flat name -> value (options left out are absent, never None). Decorators stack, one per
    registry (``adapt`` takes the run settings and the adaptation settings). ``defaults`` shows a
    command's own defaults in the help where they differ from the dataclass's (the command applies them).
    """
    registry = FLAT_SETTINGS if registry is None else registry
    wanted = set(registry if names is None else names)
    unknown = wanted - set(registry)
    if unknown:
        raise KeyError(f"not flat settings: {sorted(unknown)}")
    chosen = [dataclasses.replace(setting, default=(defaults or {}).get(setting.name, setting.default))
              for setting in registry.values() if setting.name in wanted]  # in dataclass order

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(func, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != into]
        clash = {p.name for p in own} & {s.name for s in chosen}
        if clash:
            raise TypeError(f"{func.__name__}: parameters {sorted(clash)} are also settings")

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            given = {s.name: kwargs.pop(s.name) for s in chosen}
            return func(**kwargs, **{into: {k: v for k, v in given.items() if v is not None}})

        parameters = own + [setting_option(setting) for setting in chosen]
        command.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        return command

    return decorate
