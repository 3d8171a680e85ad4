"""Validates rendered manifests against JSON schemas, offline.

Built-in kinds: kubernetes-validate's bundled Kubernetes schemas, strict
(unknown fields are errors), for every Kubernetes version given. Custom
resources: crds.mjs (the CRDs' own schemas). A kind neither knows is an error,
never a skip.

usage: validate.py --node-modules DIR -k 1.30 -k 1.37 rendered.yaml...
"""

import argparse
import json
import os
import subprocess
import sys

import kubernetes_validate
import yaml

CUSTOM_GROUPS = {"kafka.strimzi.io", "monitoring.coreos.com"}


def load(paths):
    for path in paths:
        with open(path) as f:
            for obj in yaml.safe_load_all(f):
                if obj:
                    yield path, obj


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("-k", "--kubernetes-version", action="append", required=True)
    parser.add_argument("--node-modules", required=True, help="where crds.mjs's packages are installed")
    args = parser.parse_args()

    failures = 0
    custom = []
    checked = 0
    for source, obj in load(args.files):
        name = f"{source}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if obj.get("apiVersion", "").split("/")[0] in CUSTOM_GROUPS:
            custom.append({"source": source, "object": obj})
            continue
        for version in args.kubernetes_version:
            checked += 1
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                print(f"ERROR {name} (Kubernetes {version}): {path}: {e.message}")
                failures += 1
            except kubernetes_validate.SchemaNotFoundError as e:
                print(f"ERROR {name}: {e.message}")
                failures += 1
    print(f"{checked} built-in object checks ({', '.join(args.kubernetes_version)}), {failures} failed")

    here = os.path.dirname(os.path.abspath(__file__))
    # ES modules resolve bare imports from the script's directory upwards
    # (NODE_PATH does not apply to them), so the script runs from a copy next
    # to the installed packages.
    script = os.path.join(args.node_modules, "..", "crds.mjs")
    with open(os.path.join(here, "crds.mjs")) as src, open(script, "w") as dst:
        dst.write(src.read())
    result = subprocess.run(
        ["node", script], input=json.dumps(custom), text=True, capture_output=True
    )
    errors = [line for line in result.stdout.splitlines() if not line.startswith("ok")]
    for line in errors:
        print(line)
    if result.returncode != 0 and not errors:
        print(result.stderr)
    print(f"{len(custom)} custom resources checked against their CRD schemas, "
          f"{'all valid' if result.returncode == 0 else 'some invalid'}")
    if failures or result.returncode != 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
