#!/usr/bin/env python3
"""Every value in the chart's values.yaml has a row in its README.md table.

A value is a leaf of values.yaml: a scalar, a list, or an empty map. Its row
starts with the dotted path in backticks, e.g. | `image.tag` | ... |.
Exit status 1 names the undocumented values and the rows for values that no
longer exist.
"""

import re
import sys

import yaml


def leaves(node, prefix=""):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix


def main() -> int:
    values_file, readme_file = sys.argv[1], sys.argv[2]
    with open(values_file, encoding="utf-8") as f:
        values = yaml.safe_load(f)
    with open(readme_file, encoding="utf-8") as f:
        rows = set(re.findall(r"^\|\s*`([^`]+)`\s*\|", f.read(), flags=re.M))
    paths = set(leaves(values))
    missing = sorted(paths - rows)
    stale = sorted(rows - paths)
    for p in missing:
        print(f"ERROR value {p} has no row in {readme_file}")
    for p in stale:
        print(f"ERROR {readme_file} documents {p}, which values.yaml does not have")
    print(f"{len(paths)} values, {len(missing)} undocumented, {len(stale)} stale rows")
    return 1 if missing or stale else 0


if __name__ == "__main__":
    sys.exit(main())
