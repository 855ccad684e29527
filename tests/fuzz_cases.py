"""Mutated search-space files for the property-based tests (hypothesis): what users and editors do to YAML.

A case starts from one of the shipped `search_spaces/*.yaml` and applies one mutation: a key deleted, a value
replaced by something of another type or out of range (huge numbers, NaN, unicode, empty containers), an
unknown key or primitive, emptied groups; or, on the text itself: a duplicated key, an anchor/alias bomb, a
cut-off file, stray unicode, bytes that are not UTF-8. `touches_cost` says whether a mutation reached the
settings that decide how long a run takes (train, finetune, latency, execution), so a test can run the
others for real in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
COST_KEYS = ("train", "finetune", "latency", "execution")

ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.integers(-3, 40), max_size=3), st.just([]), st.just({}),
    st.dictionaries(st.text(max_size=6), st.integers(-3, 3), max_size=2),
    st.sampled_from([0, -1, 1, 2, 0.5, 1.5, 1e308, 10**12, "x", "0.5x", "-2x", "∞", "fc1", "type:Linear",
                     "re:(", "prune", {"float": [0.9, 0.1]}, {"choice": []}, {"int": [1, 2], "step": 0}]),
)
BOMB = "bomb0: &b0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"bomb{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 9)}]\n" for i in range(1, 9))


@dataclass(frozen=True)
class Case:
    source: str  # the shipped file it came from
    mutation: str
    data: bytes  # the file's new contents
    touches_cost: bool


def shipped_spaces() -> list[Path]:
    return sorted(SPACES.glob("*.yaml"))


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a parsed YAML tree (dict keys and list indices), parents before children."""
    found = [prefix] if prefix else []
    if isinstance(tree, dict):
        for k, v in tree.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            found += _paths(v, (*prefix, i))
    return found


def _parent(tree: Any, path: tuple) -> Any:
    for step in path[:-1]:
        tree = tree[step]
    return tree


def _dump(tree: Any) -> bytes:
    return yaml.safe_dump(tree, allow_unicode=True, sort_keys=False).encode()


@st.composite
def cases(draw) -> Case:
    source = draw(st.sampled_from(shipped_spaces()))
    text = source.read_text()
    tree = yaml.safe_load(text)
    kind = draw(st.sampled_from(["delete", "replace", "replace", "replace", "add_key", "unknown_primitive",
                                 "empty_groups", "duplicate_key", "alias_bomb", "cut", "unicode", "bad_bytes"]))
    path: tuple = ()
    if kind in ("delete", "replace", "add_key"):
        path = draw(st.sampled_from(_paths(tree)))
        parent = _parent(tree, path)
        if kind == "delete":
            del parent[path[-1]]
        elif kind == "replace":
            parent[path[-1]] = draw(ODD_VALUES)
        else:
            target = parent if isinstance(parent, dict) else tree
            target[draw(st.text(min_size=1, max_size=8))] = draw(ODD_VALUES)
        data = _dump(tree)
    elif kind == "unknown_primitive":
        group = draw(st.sampled_from(tree["groups"]))
        name = draw(st.sampled_from(sorted(group["primitives"])))
        group["primitives"][draw(st.sampled_from(["prunee", "Prune", "", "ünknown", "1"]))] = \
            group["primitives"].pop(name)
        data = _dump(tree)
    elif kind == "empty_groups":
        choice = draw(st.sampled_from(["no groups", "no primitives", "no layers"]))
        if choice == "no groups":
            tree["groups"] = []
        else:
            tree["groups"][0]["primitives" if choice == "no primitives" else "layers"] = {} if \
                choice == "no primitives" else []
        data = _dump(tree)
    elif kind == "duplicate_key":
        top = draw(st.sampled_from([k for k in tree if k != "groups"]))
        data = (text + f"\n{top}: {yaml.safe_dump(tree[top], default_flow_style=True).strip()}\n").encode()
    elif kind == "alias_bomb":
        data = (text + "\n" + BOMB).encode()
    elif kind == "cut":
        data = text[: draw(st.integers(0, len(text) - 1))].encode()
    elif kind == "unicode":
        at = draw(st.integers(0, len(text)))
        data = (text[:at] + draw(st.text(min_size=1, max_size=4)) + text[at:]).encode()
    else:
        at = draw(st.integers(0, len(text)))
        data = text[:at].encode() + draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\xed\xa0\x80"])) + \
            text[at:].encode()
    touches = kind in ("delete", "replace", "add_key") and bool(path) and path[0] in COST_KEYS
    return Case(source=source.name, mutation=f"{kind} {'.'.join(map(str, path))}".strip(), data=data,
                touches_cost=touches or kind in ("cut", "unicode", "bad_bytes"))

