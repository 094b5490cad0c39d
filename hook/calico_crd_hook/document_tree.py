"""Where a CRD document differs from a released one, as field paths, without shipping the releases'
files: every released document as a tree of short digests (`data/release-trees.json`), each node's
digest made of its children's, so equal subtrees of different releases are stored once.

The tree is only read when a document differs from the release's, so a run on the released files
never loads it."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib import resources
from typing import Any

TREES_FILE = "data/release-trees.json"
# A short digest is enough to find where two documents part: whether they are equal at all is
# decided by the full sha256 of the whole document (releases.document_digest).
REF_LENGTH = 12
Shape = dict[str, str] | list[str]  # an inner node: its children's digests


def tree_ref(node: Any, shapes: dict[str, Shape] | None = None, refs: dict[int, str] | None = None) -> str:
    """The node's digest. `shapes` collects every inner node's children (the generator's table);
    `refs` every node's digest by id (a candidate being compared)."""
    shape: Shape | None = None
    if isinstance(node, dict):
        shape = {key: tree_ref(child, shapes, refs) for key, child in node.items()}
        text = "{" + ",".join(f"{json.dumps(key)}:{shape[key]}" for key in sorted(shape)) + "}"
    elif isinstance(node, list):
        shape = [tree_ref(child, shapes, refs) for child in node]
        text = "[" + ",".join(shape) + "]"
    else:
        text = json.dumps(node)
    ref = hashlib.sha256(text.encode()).hexdigest()[:REF_LENGTH]
    if shapes is not None and shape is not None:
        shapes[ref] = shape
    if refs is not None:
        refs[id(node)] = ref
    return ref


@lru_cache(maxsize=1)
def release_trees() -> tuple[dict[str, str], dict[str, Shape]]:
    """(document digest -> its root's ref, ref -> shape)."""
    decoded = json.loads(resources.files("calico_crd_hook").joinpath(TREES_FILE).read_text())
    return decoded["roots"], decoded["shapes"]


def differences(document: dict[str, Any], released_digest: str, limit: int = 20) -> list[str]:
    """Paths where `document` differs from the released document, in key order, at most `limit`:
    `spec.versions[0].schema.openAPIV3Schema.required (changed)`."""
    roots, shapes = release_trees()
    root = roots.get(released_digest)
    if root is None:
        return ["the whole document (the release's tree is not shipped)"]
    refs: dict[int, str] = {}
    tree_ref(document, refs=refs)
    found: list[str] = []
    _walk(document, root, "", shapes, refs, found, limit)
    return found


def _walk(node: Any, ref: str, path: str, shapes: dict[str, Shape], refs: dict[int, str], found: list[str],
          limit: int) -> None:
    if len(found) >= limit or refs[id(node)] == ref:
        return
    shape = shapes.get(ref)
    if isinstance(node, dict) and isinstance(shape, dict):
        for key in sorted(set(node) | set(shape)):
            where = _joined(path, key)
            if key not in shape:
                found.append(f"{where} (added)")
            elif key not in node:
                found.append(f"{where} (removed)")
            else:
                _walk(node[key], shape[key], where, shapes, refs, found, limit)
            if len(found) >= limit:
                return
    elif isinstance(node, list) and isinstance(shape, list):
        for index in range(max(len(node), len(shape))):
            where = f"{path}[{index}]"
            if index >= len(shape):
                found.append(f"{where} (added)")
            elif index >= len(node):
                found.append(f"{where} (removed)")
            else:
                _walk(node[index], shape[index], where, shapes, refs, found, limit)
            if len(found) >= limit:
                return
    else:
        found.append(f"{path or 'the document'} (changed)")


def _joined(path: str, key: str) -> str:
    plain = key.replace("-", "").replace("_", "").isalnum()
    return (f"{path}.{key}" if path else key) if plain else f"{path}[{key}]"
