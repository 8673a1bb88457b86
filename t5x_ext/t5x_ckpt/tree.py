"""Nested dicts <-> flat "a/b" names: the one place the T5X checkpoint code spells them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def flatten(
  tree: Mapping[str, Any], prefix: str = "", is_leaf: Callable[[Any], bool] | None = None
) -> dict[str, Any]:
  """`{'a': {'b': x}}` -> `{'a/b': x}` (dicts only; leaves are anything else).

  Args:
    tree: nested mappings.
    prefix: prepended to every name.
    is_leaf: a mapping for which this is true is a leaf too (e.g. a tensorstore spec).

  Returns:
    The flat dict.
  """
  out: dict[str, Any] = {}
  for k, v in tree.items():
    if isinstance(v, Mapping) and not (is_leaf and is_leaf(v)):
      out.update(flatten(v, f"{prefix}{k}/", is_leaf))
    else:
      out[f"{prefix}{k}"] = v
  return out


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
  """`{'a/b': x}` -> `{'a': {'b': x}}`, the inverse of `flatten`.

  Args:
    flat: "/"-separated names -> leaves.

  Returns:
    The nested dict.
  """
  tree: dict[str, Any] = {}
  for name, value in flat.items():
    node = tree
    *parents, last = name.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = value
  return tree
