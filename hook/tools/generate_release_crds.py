"""Produce the package's table of what each Calico release ships, from the real release files.

    python hook/tools/generate_release_crds.py --from ~/src/calico         # a clone with its tags
    python hook/tools/generate_release_crds.py --from ../shared/calico     # <tag>/<file> folders
    python hook/tools/generate_release_crds.py --from ../shared/calico --check

For every file in the package's SHA256SUMS it reads the file (from a Calico git repository, at the
tag, under manifests/; or from a folder laid out as <tag>/<file>), checks it against its digest,
validates it with the program's own CRD rules, and records each CRD's name and document digest,
and of each document its own labels and annotations (what the no-op check compares with the
cluster), its scope, storage and served versions and names (what a newer release's documents are
held to), and its tree of digests (`data/release-trees.json`: where a modified document differs).
Files with the same bytes share one entry. `--check` compares what the given files produce with
the shipped table (every file the source holds must match; the table must cover SHA256SUMS).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "hook"))

from calico_crd_hook.document_tree import TREES_FILE, Shape, tree_ref  # noqa: E402 - after the sys.path entry above
from calico_crd_hook.manifest import released_view, validate_documents  # noqa: E402 - after the sys.path entry above
from calico_crd_hook.release_rules import check_unreleased_document  # noqa: E402 - after the sys.path entry above
from calico_crd_hook.releases import (  # noqa: E402 - after the sys.path entry above
    TABLE_FILE,
    document_digest,
    document_facts,
    document_metadata,
    parse_table,
)
from calico_crd_hook.source import known_digests  # noqa: E402 - after the sys.path entry above
from calico_crd_hook.structural import cel_rule_count  # noqa: E402 - after the sys.path entry above
from calico_crd_hook.version import ApiMode  # noqa: E402 - after the sys.path entry above

TABLE_PATH = REPO / "hook" / "calico_crd_hook" / TABLE_FILE
TREES_PATH = REPO / "hook" / "calico_crd_hook" / TREES_FILE
_MODE_OF_FILE = {mode.manifest_file: mode for mode in ApiMode}


def read_release_file(source: Path, tag: str, file_name: str) -> bytes | None:
    """The file's bytes, or None when the source does not hold it."""
    if (source / "objects").is_dir() or (source / ".git").exists():
        git_dir = source if (source / "objects").is_dir() else source / ".git"
        shown = subprocess.run(["git", f"--git-dir={git_dir}", "show", f"{tag}:manifests/{file_name}"],
                               capture_output=True)
        return shown.stdout if shown.returncode == 0 else None
    path = source / tag / file_name
    return path.read_bytes() if path.is_file() else None


def table_entries(source: Path, documents: dict[str, dict] | None = None,
                  trees: dict[str, dict] | None = None) -> tuple[dict[str, dict], list[str]]:
    """{file sha256: {"releases": [...], "crds": {name: digest}}} for the files the source holds,
    and the releases it does not hold. `documents`: filled with {digest: metadata and facts};
    `trees`: {"roots": {digest: ref}, "shapes": {ref: shape}}."""
    entries: dict[str, dict] = {}
    absent: list[str] = []
    documents = {} if documents is None else documents
    trees = {"roots": {}, "shapes": {}} if trees is None else trees
    for (tag, file_name), expected in sorted(known_digests().items()):
        release = f"{tag}/{file_name}"
        if expected in entries:
            entries[expected]["releases"].append(release)
            continue
        data = read_release_file(source, tag, file_name)
        if data is None:
            absent.append(release)
            continue
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise SystemExit(f"{release} from {source} has sha256 {actual}, not {expected} (SHA256SUMS)")
        crds = validate_documents(data, release, _MODE_OF_FILE[file_name].default_allowed_groups,
                                  trust_shipped=False)  # every rule, on every document
        entries[expected] = {"releases": [release], "crds": {crd.name: crd.digest for crd in crds}}
        for crd in crds:
            check_unreleased_document(crd.name, released_view(crd.body))  # every release passes them
            documents[crd.digest] = {**document_metadata(crd.body), **document_facts(crd.body, cel_rule_count(crd.body))}
            released = released_view(crd.body)
            if document_digest(released) != crd.digest:
                raise SystemExit(f"{release}: CRD {crd.name} does not round-trip to its digest")
            trees["roots"][crd.digest] = tree_ref(released, trees["shapes"])
    return entries, absent


def render(entries: dict[str, dict], documents: dict[str, dict]) -> str:
    table = {"comment": "Generated by hook/tools/generate_release_crds.py from the released files; "
                        "do not edit. crds: CRD name -> sha256 of the CRD as applied, in canonical "
                        "JSON (releases.document_digest); documents: each document's own labels and "
                        "annotations, and what its spec declares (releases.DocumentFacts).",
             "files": entries, "documents": documents}
    return json.dumps(table, indent=1, sort_keys=True) + "\n"


def render_trees(trees: dict[str, dict]) -> str:
    """JSON with one entry per line, so a new release's diff shows only its new subtrees."""
    shapes: dict[str, Shape] = trees["shapes"]
    comment = ("Generated by hook/tools/generate_release_crds.py; do not edit. roots: document digest -> "
               "its tree's ref; shapes: ref -> its children's refs (document_tree.tree_ref).")
    roots = ",\n".join(f"{json.dumps(digest)}:{json.dumps(ref)}" for digest, ref in sorted(trees["roots"].items()))
    rows = ",\n".join(f"{json.dumps(ref)}:{json.dumps(shape, separators=(',', ':'))}"
                      for ref, shape in sorted(shapes.items()))
    return f'{{"comment":{json.dumps(comment)},\n"roots":{{\n{roots}}},\n"shapes":{{\n{rows}}}}}\n'


def check(entries: dict[str, dict], documents: dict[str, dict] | None = None,
          trees: dict[str, dict] | None = None) -> list[str]:
    shipped = parse_table(TABLE_PATH.read_text())
    problems = []
    for sha256, entry in entries.items():
        found = shipped.with_sha256(sha256)
        if found is None or found.crds != entry["crds"]:
            problems.append(f"{entry['releases'][0]}: the shipped table differs from the file")
    shipped_documents = json.loads(TABLE_PATH.read_text())["documents"]
    for digest, recorded in (documents or {}).items():
        if shipped_documents.get(digest) != recorded:
            problems.append(f"document {digest[:12]}: the shipped table's metadata or facts differ")
    shipped_trees = json.loads(TREES_PATH.read_text())
    for digest, root in ((trees or {}).get("roots") or {}).items():
        if shipped_trees["roots"].get(digest) != root:
            problems.append(f"document {digest[:12]}: the shipped tree differs")
    listed = {release for file in shipped.files for release in file.releases}
    expected = {f"{tag}/{name}" for tag, name in known_digests()}
    if listed != expected:
        problems.append(f"the table's releases differ from SHA256SUMS: {sorted(listed ^ expected)[:5]}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, required=True,
                        help="a Calico git repository, or a folder of <tag>/<file>")
    parser.add_argument("--check", action="store_true", help="compare with the shipped table")
    args = parser.parse_args()
    documents: dict[str, dict] = {}
    trees: dict[str, dict] = {"roots": {}, "shapes": {}}
    entries, absent = table_entries(args.source, documents, trees)
    if args.check:
        problems = check(entries, documents, trees)
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"checked {sum(len(e['releases']) for e in entries.values())} release files from {args.source}")
        return 1 if problems else 0
    if absent:
        print(f"{args.source} lacks {len(absent)} release files ({', '.join(absent[:3])}, ...): "
              "generate from a clone of projectcalico/calico with its tags", file=sys.stderr)
        return 1
    TABLE_PATH.write_text(render(entries, documents))
    TREES_PATH.write_text(render_trees(trees))
    print(f"wrote {TABLE_PATH}: {len(entries)} distinct files for {len(known_digests())} release files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
