"""YAML files hpcblend reads (job files, ``--set`` values, thresholds): a strict loader and typed mappings.

The loader is a ``yaml.SafeLoader`` that also refuses anchors and aliases,
merge keys, duplicate or non-string keys and tags without a safe constructor,
so nothing in a file is ever expanded or executed. A parsed mapping becomes a
tree of frozen dataclasses (:func:`mapping_to_dataclass`) with every unknown
key or mistyped value a :class:`~hpcblend.errors.ConfigError` naming the key.
Every message is one line and quotes at most about 200 characters of a value
(:func:`quote_value`). The job schema itself is :mod:`hpcblend.config`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import typing
from typing import Tuple

import yaml

from hpcblend.errors import ConfigError

__all__ = [
    "QUOTE_LIMIT",
    "RefusedYAMLError",
    "quote_value",
    "load_yaml",
    "yaml_error_message",
    "read_yaml_file",
    "expect_mapping",
    "mapping_to_dataclass",
    "dataclass_to_mapping",
    "apply_overrides",
]

#: Characters of a value's repr an error message quotes at most (:func:`quote_value`).
QUOTE_LIMIT = 200


def _shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with the full length said when cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def quote_value(value, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters.

    Every ConfigError that quotes a user value goes through this, so a huge
    value (a 10 MB string, a long list) can never flood stderr or the log:
    longer reprs end with ``... (N characters)``, N the string's length (or
    the repr's, for other values).

    Parameters
    ----------
    value : object
    limit : int, default :data:`QUOTE_LIMIT`

    Returns
    -------
    str
        Never raises, also for an int beyond ``sys.get_int_max_str_digits()``
        (quoted as ``<int>``).
    """
    if isinstance(value, str):
        text = repr(value[: limit + 1])
        if len(value) <= limit and len(text) <= limit:
            return text
        return f"{text[:limit]}... ({len(value)} characters)"
    try:
        text = repr(value)
    except ValueError:  # an int beyond sys.get_int_max_str_digits()
        text = f"<{type(value).__name__}>"
    return _shorten(text, limit)


class RefusedYAMLError(yaml.YAMLError):
    """YAML that hpcblend refuses (alias, anchor, duplicate or non-string key, tag, ...).

    ``message`` is one line; ``mark`` (a ``yaml.Mark`` or None) says where.
    ``kind`` is ``"alias"`` for an alias (which, anchors being refused, is
    always an undefined one), else ``"refused"``.
    """

    def __init__(self, message: str, mark=None, kind: str = "refused"):
        super().__init__(message)
        self.message = message
        self.mark = mark
        self.kind = kind

    def located(self) -> str:
        """``line N: message`` (the message alone without a mark)."""
        return f"line {self.mark.line + 1}: {self.message}" if self.mark is not None else self.message


_NO_ALIASES = "YAML aliases/anchors are not allowed in job files"


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` for job files and ``--set`` values.

    Refuses, while composing and constructing (so nothing is ever expanded):
    anchors and aliases (a "billion laughs" alias bomb), merge keys (``<<``),
    duplicate keys in any mapping, non-string keys, tags without a safe
    constructor (``!!python/object/...``) and scalars that cannot be
    converted (an integer beyond Python's digit limit, an impossible date).
    Every refusal is a :class:`RefusedYAMLError` with the position.
    """

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise RefusedYAMLError(f"{_NO_ALIASES} (alias {quote_value('*' + str(event.anchor), 60)}, "
                                   f"column {event.start_mark.column + 1})", event.start_mark, kind="alias")
        if getattr(event, "anchor", None) is not None:
            raise RefusedYAMLError(f"{_NO_ALIASES} (anchor {quote_value('&' + str(event.anchor), 60)}, "
                                   f"column {event.start_mark.column + 1})", event.start_mark)
        return super().compose_node(parent, index)

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:
            raise RefusedYAMLError(f"cannot read value: {_shorten(str(exc), 120)}", node.start_mark) from None

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise RefusedYAMLError("YAML merge keys ('<<') are not allowed in job files",
                                           key_node.start_mark)
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    raise RefusedYAMLError(f"key {quote_value(key, 60)} is not a string (quote it)",
                                           key_node.start_mark)
                if key in first:
                    raise RefusedYAMLError(f"duplicate key {quote_value(key, 60)} "
                                           f"(first at line {first[key].line + 1})", key_node.start_mark)
                first[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)

    def _refuse_tag(self, node):
        tag = str(node.tag)
        if tag.startswith("tag:yaml.org,2002:"):
            tag = "!!" + tag[len("tag:yaml.org,2002:"):]
        raise RefusedYAMLError(f"YAML tag {quote_value(tag, 80)} is not allowed in job files", node.start_mark)


_StrictLoader.add_constructor(None, _StrictLoader._refuse_tag)
# YAML 1.2 floats: PyYAML (YAML 1.1) reads ``1e-4`` (exponent, no dot) as a string; the job files and
# ``--set deblend.e_rel=1e-4`` mean a number.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml(stream):
    """Parse one YAML document with the strict loader.

    Parameters
    ----------
    stream : str or text file

    Returns
    -------
    object
        The document (a mapping, list, scalar or None).

    Raises
    ------
    RefusedYAMLError
        An anchor or alias, a merge key, a duplicate or non-string key, a tag
        without a safe constructor, a value that cannot be converted, or
        nesting too deep for Python's recursion limit.
    yaml.YAMLError
        Not valid YAML.
    """
    loader = _StrictLoader(stream)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise RefusedYAMLError("YAML nested too deeply") from None
    finally:
        loader.dispose()


def yaml_error_message(exc: yaml.YAMLError) -> str:
    """One bounded line for a YAML error: ``line N: ...`` (at most about 300 characters)."""
    if isinstance(exc, RefusedYAMLError):
        return exc.located()
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is not None and problem:
        context = getattr(exc, "context", None)
        text = f"line {mark.line + 1}: not valid YAML: {context + ': ' if context else ''}{problem}"
    else:
        text = f"not valid YAML: {exc}"
    return _shorten(" ".join(text.split()), 300)


def read_yaml_file(path: str, what: str = "job file"):
    """Read one YAML document from a file with :func:`load_yaml`, every failure a one-line ConfigError.

    Parameters
    ----------
    path : str
    what : str
        Names the file's role in messages (``"job file"``, ``"thresholds file"``).

    Returns
    -------
    object
        The document (None for an empty file).

    Raises
    ------
    ConfigError
        ``path: <what> not found``; ``path: cannot read <what>: ...``; not
        UTF-8 (``path: not a UTF-8 text file (byte N)``); not valid or refused
        YAML (``path: line N: ...``, see :func:`yaml_error_message`).
    """
    try:
        with open(path, encoding="utf-8") as fh:
            return load_yaml(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {yaml_error_message(exc)}") from None


def expect_mapping(data, prefix: str, source: str) -> None:
    """Raise a :class:`ConfigError` naming ``source`` and key ``prefix`` unless ``data`` is a dict."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: key '{prefix or '<top>'}': expected a mapping, got {quote_value(data)}")


def _convert(value, tp, where: str, source: str):
    """Convert a YAML value to the annotated type, or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _convert(value, inner, where, source)
    if origin in (tuple, Tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: key '{where}': expected a list, got {quote_value(value)}")
        return tuple(_convert(v, args[0], f"{where}[{i}]", source) for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: key '{where}': expected true or false, got {quote_value(value)}")
    if tp is int:
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or (isinstance(value, float) and not value.is_integer())):  # also inf and nan
            raise ConfigError(f"{source}: key '{where}': expected an integer, got {quote_value(value)}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: key '{where}': expected a number, got {quote_value(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{source}: key '{where}': expected a string, got {quote_value(value)}")
        return str(value)
    raise ConfigError(f"{source}: key '{where}': unsupported type {tp}")


def mapping_to_dataclass(cls, data, source: str, prefix: str = ""):
    """Build the frozen dataclass ``cls`` (and its nested dataclass fields) from a parsed mapping.

    Missing keys take the dataclass defaults. Fields whose metadata has
    ``yaml=False`` are not keys. Field annotations drive the conversion:
    ``bool`` takes only true/false, ``int`` also an integral float, ``float``
    any number, ``str`` also a number, ``Tuple[X, ...]`` a list (or one
    scalar), ``Optional[X]`` also null.

    Parameters
    ----------
    cls : dataclass type
    data : dict or None
        None: all defaults.
    source : str
        Names the file in error messages.
    prefix : str
        Dotted key of ``data`` in the file ("" at the top).

    Returns
    -------
    cls instance

    Raises
    ------
    ConfigError
        ``data`` is not a mapping; an unknown key (with the closest known key
        as a suggestion); a value of the wrong type. The message names
        ``source`` and the dotted key.
    """
    if data is None:
        data = {}
    expect_mapping(data, prefix, source)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("yaml", True)}
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1) if len(str(key)) <= 100 else []
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(fields)})"
            raise ConfigError(f"{source}: unknown key {quote_value(where)}{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = mapping_to_dataclass(tp, value, source, where)
        else:
            kwargs[key] = _convert(value, tp, where, source)
    return cls(**kwargs)


def dataclass_to_mapping(obj) -> dict:
    """A dataclass tree as a plain mapping (nested dataclasses as dicts, tuples as lists), for YAML or JSON."""

    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    return conv(obj)


def apply_overrides(data: dict, overrides, source: str = "--set") -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a job mapping (copied).

    Values are parsed by the job-file loader (see :func:`load_yaml`): a value
    with an anchor, a duplicate or non-string key or a refused tag is an
    error; a value that is not YAML at all, including a bare alias such as
    ``input.paths=*.npz`` (never expanded), is kept as the raw string.

    Parameters
    ----------
    data : dict or None
        The parsed job (None: empty).
    overrides : iterable of str
    source : str
        Names ``data`` in error messages.

    Returns
    -------
    dict

    Raises
    ------
    ConfigError
        ``data`` is not a mapping; an override without ``=``, with an empty
        key, or with a refused YAML value.
    """
    data = {} if data is None else data
    expect_mapping(data, "", source)
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {quote_value(item)}: expected section.key=value")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set {quote_value(item)}: empty key")
        try:
            value = load_yaml(raw)
        except RefusedYAMLError as exc:
            if exc.kind != "alias":  # an alias here is an undefined one: not YAML, kept as text as before
                raise ConfigError(f"--set {quote_value(item)}: {exc.message}") from None
            value = raw
        except yaml.YAMLError:
            value = raw
        node = out
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return out
