"""YAML read with a safe loader that keeps the 1-based line of every mapping, key, value and list item.

It refuses anchors/aliases (no alias "bombs") and duplicate keys, and reads `1e-3` as a float (YAML 1.1
reads it as a string; people write learning rates that way). Every problem is a `SpaceError` with its line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

from autocomp.errors import SpaceError


class LinedMap(dict):
    """A YAML mapping that remembers its own line and the line of each key and value (1-based)."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[Any, int] = {}
        self.value_lines: dict[Any, int] = {}


class LinedList(list):
    """A YAML sequence that remembers its own line and the line of each item (1-based)."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []

    def lined(self) -> list[tuple[Any, int]]:
        """(item, line) pairs."""
        return list(zip(self, self.item_lines, strict=True))


def _line(node_or_mark: Any) -> int:
    mark = getattr(node_or_mark, "start_mark", node_or_mark)
    return mark.line + 1


class _Loader(yaml.SafeLoader):
    """SafeLoader that records lines, rejects duplicate keys and rejects anchors/aliases."""

    file = "<string>"

    def compose_node(self, parent: Any, index: Any) -> Any:
        # refuse before composing: an alias "bomb" never gets to expand
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise SpaceError("anchors and aliases are not supported", file=self.file,
                             line=_line(event), value=f"{sign}{event.anchor}")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = True) -> LinedMap:
        # no flatten_mapping: a `<<` merge key is just an unknown key to the schema
        out = LinedMap(_line(node))
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpaceError("mapping keys must be plain names", file=self.file, line=_line(key_node))
            key = self.construct_object(key_node, deep=True)
            if key in out:
                raise SpaceError(f"duplicate key '{key}' (lines {out.key_lines[key]} and {_line(key_node)})",
                                 file=self.file, line=_line(key_node), key=str(key))
            out[key] = self.construct_object(value_node, deep=True)
            out.key_lines[key], out.value_lines[key] = _line(key_node), _line(value_node)
        return out

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = True) -> LinedList:
        out = LinedList(_line(node))
        for item in node.value:
            out.append(self.construct_object(item, deep=True))
            out.item_lines.append(_line(item))
        return out


# the tags decide the node kinds (a map tag is a MappingNode); the stubs cannot know that
_Loader.add_constructor("tag:yaml.org,2002:map",
                        lambda loader, node: loader.construct_mapping(node))  # type: ignore[arg-type]
_Loader.add_constructor("tag:yaml.org,2002:seq",
                        lambda loader, node: loader.construct_sequence(node))  # type: ignore[arg-type]
# YAML 1.1 reads `1e-3` (no dot) as a string; people write learning rates that way, so read it as a float
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(text: str, file: str) -> Any:
    """The document in `text` (LinedMap / LinedList / scalars); `file` names it in errors."""
    loader = None
    try:
        loader = _Loader(text)  # it checks the characters first: a NUL or a control byte fails here
        loader.file = file
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise SpaceError(f"invalid YAML: {problem}", file=file, line=_line(mark) if mark else None) from None
    except yaml.reader.ReaderError as exc:
        raise SpaceError(f"invalid YAML: character {exc.character:#06x} is not allowed", file=file,
                         line=text[: exc.position].count("\n") + 1) from None
    except yaml.YAMLError as exc:
        raise SpaceError(f"invalid YAML: {' '.join(str(exc).split())}", file=file) from None
    except RecursionError:
        raise SpaceError("invalid YAML: nested too deeply", file=file) from None
    finally:
        if loader is not None:
            loader.dispose()


def plain(value: Any) -> Any:
    """Plain dicts/lists (safe_dump cannot write tuples, and parsed values carry line info)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
