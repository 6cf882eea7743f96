#!/usr/bin/env python3
"""Validate rendered Helm manifests offline, strictly.

Core kinds are checked with kubernetes-validate's strict schemas (unknown
fields rejected) for one pinned Kubernetes version. A kind without a schema
there is an error, except for the CRD kinds listed in CRD_KINDS: those are
written as JSON (one file per object) to --crd-out for a validator that knows
their schema, and listed on stdout.

Exit status: 0 when every object passed, 1 otherwise.
"""

import argparse
import json
import os
import sys

import yaml
import kubernetes_validate
from kubernetes_validate import utils

# (apiVersion, kind) of custom resources the chart may render; validated
# elsewhere against their own schema, never silently skipped.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kubernetes-version", required=True)
    parser.add_argument("--crd-out", required=True, help="directory for CRD objects as JSON")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()

    os.makedirs(args.crd_out, exist_ok=True)
    failures = 0
    validated = 0
    for filename in args.files:
        with open(filename, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        if not docs:
            print(f"ERROR {filename}: no objects rendered")
            failures += 1
            continue
        for doc in docs:
            kind = doc.get("kind", "?")
            api = doc.get("apiVersion", "?")
            name = (doc.get("metadata") or {}).get("name", "?")
            what = f"{filename}: {api} {kind}/{name}"
            if (api, kind) in CRD_KINDS:
                out = os.path.join(args.crd_out, f"{os.path.basename(filename)}.{kind}.{name}.json")
                with open(out, "w", encoding="utf-8") as f:
                    json.dump(doc, f)
                print(f"CRD   {what}: handed to the CRD validator")
                continue
            try:
                kubernetes_validate.validate(doc, args.kubernetes_version, strict=True)
                validated += 1
                print(f"OK    {what}")
            except utils.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                print(f"ERROR {what}: {path}: {e.message}")
                failures += 1
            except utils.SchemaNotFoundError as e:
                print(f"ERROR {what}: {e.message} (not a known kind: add it to CRD_KINDS with a validator, or fix the apiVersion)")
                failures += 1
            except utils.VersionNotSupportedError as e:
                print(f"ERROR {e.message}")
                return 1
    print(f"{validated} objects strictly valid for Kubernetes {args.kubernetes_version}, {failures} errors")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
