"""CLI flags derived from typed fields, so a flag cannot drift from the code it sets.

A dataclass field or keyword argument `num_kv_pairs: int = 4` becomes `--num-kv-pairs INT`; `bool` becomes
`--x/--no-x`; `Literal[...]` becomes a choice; `tuple[int, ...]` a comma-separated list; `X | None` also
accepts `none`.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal


def kebab(name: str) -> str:
    return name.replace("_", "-")


def _optional(tp) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _scalar(tp, name: str):
    if tp is bool:
        def parse_bool(text: str) -> bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"{text!r} is not a boolean")
        return parse_bool
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)

        def parse_choice(text: str):
            for c in choices:
                if str(c) == text:
                    return c
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(map(str, choices))}")
        return parse_choice
    if tp in (int, float, str):
        return tp
    raise TypeError(f"flag {name}: unsupported type {tp}")


def parser_for(tp, name: str):
    """A function text -> value for annotation `tp`."""
    inner, optional = _optional(tp)
    if typing.get_origin(inner) is tuple:
        item = _scalar(typing.get_args(inner)[0], name)

        def parse(text: str):
            return tuple(item(t) for t in text.split(",") if t.strip())
    else:
        parse = _scalar(inner, name)
    if not optional:
        return parse

    def parse_optional(text: str):
        return None if text.lower() == "none" else parse(text)
    return parse_optional


def metavar(tp) -> str:
    inner, optional = _optional(tp)
    if typing.get_origin(inner) is Literal:
        text = "{" + ",".join(map(str, typing.get_args(inner))) + "}"
    elif typing.get_origin(inner) is tuple:
        text = typing.get_args(inner)[0].__name__.upper() + ",..."
    else:
        text = getattr(inner, "__name__", str(inner)).upper()
    return text + ("|none" if optional else "")


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, fields: dict[str, tuple[Any, Any]]):
    """fields: name -> (annotation, default). Flags default to argparse.SUPPRESS: only given ones appear."""
    for name, (tp, default) in fields.items():
        inner, _ = _optional(tp)
        if inner is bool and default is not None:
            parser.add_argument(f"--{kebab(name)}", dest=name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=f"(default: {default})")
        else:
            parser.add_argument(f"--{kebab(name)}", dest=name, type=parser_for(tp, name), metavar=metavar(tp),
                                default=argparse.SUPPRESS, help=f"(default: {default})")


def dataclass_fields(cls, exclude: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f.default) for f in dataclasses.fields(cls)
            if f.init and f.name not in exclude}


def pick(namespace: argparse.Namespace, names) -> dict[str, Any]:
    given = vars(namespace)
    return {n: given[n] for n in names if n in given}
