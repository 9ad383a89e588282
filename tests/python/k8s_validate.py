#!/usr/bin/env python3
"""Checks what the Rust tests produce against independent implementations (called by
tests/src/kube/schemas.rs):

- every patched pod: the webhook's JSONPatch applied to the pod with python's `jsonpatch` (an
  RFC 6902 implementation of its own) must give the pod the Rust side computed;
- every object (patched pods, rendered chart objects) must validate against the strict
  Kubernetes JSON schemas of `kubernetes-validate` (generated from each release's OpenAPI) for
  each Kubernetes version the case supports.

Input (argv[1], JSON): {"versions": ["1.25.0", ...],
  "pods": [{"name", "original", "patch", "expected", "min_version"?}],
  "objects": [{"name", "object", "min_version"?}]}
Exit 0 when everything holds, 1 with one line per problem otherwise, 3 when a module is missing.
"""
import json
import sys

try:
    import jsonpatch
    import kubernetes_validate
except ImportError as e:  # the Rust side turns this into a skip (a failure under CI=true)
    print(f"missing python module: {e.name}", file=sys.stderr)
    sys.exit(3)


def vkey(v):
    return tuple(int(x) for x in v.split("."))


def validate(name, obj, versions, min_version, problems):
    for v in versions:
        if min_version and vkey(v) < vkey(min_version):
            continue
        try:
            kubernetes_validate.validate(obj, v, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            problems.append(f"{name}: Kubernetes {v}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{name}: Kubernetes {v}: no schema: {e}")


def main():
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    versions = cases["versions"]
    problems = []
    checked = 0
    for p in cases.get("pods", []):
        patched = jsonpatch.apply_patch(p["original"], p["patch"])
        if patched != p["expected"]:
            problems.append(
                f"{p['name']}: python jsonpatch gives another pod than the Rust side:\n"
                f"  python: {json.dumps(patched, sort_keys=True)}\n"
                f"  rust:   {json.dumps(p['expected'], sort_keys=True)}"
            )
        validate(p["name"], patched, versions, p.get("min_version"), problems)
        checked += 1
    for o in cases.get("objects", []):
        validate(o["name"], o["object"], versions, o.get("min_version"), problems)
        checked += 1
    for line in problems:
        print(line)
    print(f"checked {checked} objects against Kubernetes {', '.join(versions)}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
