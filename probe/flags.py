"""CLI flags derived from typed fields, so a flag cannot drift from the code it sets.

A dataclass field or keyword argument `num_kv_pairs: int = 4` becomes `--num-kv-pairs INT`; `bool` becomes
`--x/--no-x`; `Literal[...]` becomes a choice; `tuple[int, ...]` a comma-separated list; `X | None` also
accepts `none`. A float flag takes finite numbers only: `nan` and `inf` pass every range check (`not x < 0` is
true of NaN), so they are refused where they come in.

`matches(value, tp)` is the same contract for values that come from Python (a sweep file's fields): would a flag
of type `tp` have produced this value?
"""
from __future__ import annotations

import argparse
import dataclasses
import math
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
    if tp is float:
        return parse_float
    if tp in (int, str):
        return tp
    raise TypeError(f"flag {name}: unsupported type {tp}")


def parse_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


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


def matches(value, tp) -> bool:
    """Whether `value` fits annotation `tp` as a flag would have parsed it: bool is not an int, an int is a
    float, a float is finite, a list or tuple is a sequence (sweep files write either), a class is isinstance."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if tp is type(None) or tp is None:
        return value is None
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args))
        return all(matches(v, args[0]) for v in value) if args else True
    if origin is dict:
        return isinstance(value, dict) and (not args or all(matches(k, args[0]) and matches(v, args[1])
                                                            for k, v in value.items()))
    return isinstance(value, origin or tp)


def short_repr(value, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def describe(tp, inner: bool = False) -> str:
    """An annotation in words, for messages: `tuple[float, ...]` -> "a tuple of finite float"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a, inner) for a in args)
    if tp is type(None):
        return "None"
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a ({', '.join(describe(a, True) for a in args)}) " + ("pair" if len(args) == 2 else "tuple")
        return f"a {origin.__name__} of {describe(args[0], True)}" if args else f"a {origin.__name__}"
    if origin is dict:
        return f"a dict {describe(args[0], True)} -> {describe(args[1], True)}" if args else "a dict"
    if tp is float:
        return "finite float" if inner else "a finite number"
    return getattr(tp, "__name__", str(tp))


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
