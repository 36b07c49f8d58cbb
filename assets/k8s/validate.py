"""Validates the manifests in assets/k8s offline; run by check.sh (which installs the tools).

Splits every *.yaml (except kustomization.yaml) into its documents and sends each to the
validator of its kind:
  - Kubernetes core kinds (v1, apps/v1, policy/v1, autoscaling/v2, ...): kubernetes-validate
    --strict (the Kubernetes OpenAPI schemas, unknown fields are errors);
  - Agones kinds (agones.dev, autoscaling.agones.dev): check-jsonschema against the schemas copied
    from Agones' install.yaml into schemas/, made strict here (unknown fields are errors, as the
    API server's structural-schema pruning would silently drop them);
  - monitoring.coreos.com (PodMonitor, ServiceMonitor, PrometheusRule): check-jsonschema against
    schemas/monitoring.coreos.com-v1.json (a hand-written subset, strict).
A document of any other kind is an error: every manifest must be validated by something.
Also checks that the PrometheusRule's groups are exactly those of assets/prometheus/*alerts.yml.
"""
import copy
import json
import os
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)
K8S_VERSION = os.environ.get("K8S_VERSION", "1.33.0")

AGONES = {
    ("agones.dev/v1", "Fleet"): "fleet-v1.json",
    ("agones.dev/v1", "GameServer"): "gameserver-v1.json",
    ("agones.dev/v1", "GameServerSet"): "gameserverset-v1.json",
    ("autoscaling.agones.dev/v1", "FleetAutoscaler"): "fleetautoscaler-v1.json",
}
CORE_GROUPS = ("v1", "apps/v1", "policy/v1", "autoscaling/v2", "batch/v1", "networking.k8s.io/v1", "rbac.authorization.k8s.io/v1")


def strict(schema):
    """Unknown fields become errors wherever the schema lists the fields. Also turns OpenAPI v3's
    boolean exclusiveMinimum/exclusiveMaximum (which Agones' CRDs use, e.g. the FleetAutoscaler's
    sync seconds) into draft-07's numeric form, which the schemas declare."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        for ex, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if isinstance(out.get(ex), bool):
                if out[ex] and bound in out:
                    out[ex] = out.pop(bound)
                else:
                    del out[ex]
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def agones_schema(name, api_version, kind, tmp):
    with open(os.path.join(HERE, "schemas", name)) as f:
        s = json.load(f)
    s = strict(s)
    s["properties"]["apiVersion"] = {"const": api_version}
    s["properties"]["kind"] = {"const": kind}
    s["properties"]["metadata"] = {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    s["required"] = sorted(set(s.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    path = os.path.join(tmp, "strict-" + name)
    with open(path, "w") as f:
        json.dump(s, f)
    return path


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    out = (p.stdout + p.stderr).strip()
    return p.returncode, out


def main():
    failures = []
    counts = {}
    files = sorted(f for f in os.listdir(HERE) if f.endswith(".yaml") and f != "kustomization.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        schema_cache = {}
        for fname in files:
            with open(os.path.join(HERE, fname)) as f:
                docs = [d for d in yaml.safe_load_all(f) if d is not None]
            for i, doc in enumerate(docs):
                api, kind = doc.get("apiVersion"), doc.get("kind")
                name = (doc.get("metadata") or {}).get("name", "?")
                where = f"{fname} #{i + 1} ({kind} {name})"
                docfile = os.path.join(tmp, f"{fname}.{i}.json")
                with open(docfile, "w") as out:
                    json.dump(doc, out)
                if api in CORE_GROUPS:
                    cmd = [os.path.join(BIN, "kubernetes-validate"), "--strict", "--quiet", "-k", K8S_VERSION, docfile]
                    tool = "kubernetes-validate"
                elif (api, kind) in AGONES:
                    key = (api, kind)
                    if key not in schema_cache:
                        schema_cache[key] = agones_schema(AGONES[key], api, kind, tmp)
                    cmd = [os.path.join(BIN, "check-jsonschema"), "--schemafile", schema_cache[key], docfile]
                    tool = "check-jsonschema (Agones schema)"
                elif api == "monitoring.coreos.com/v1":
                    cmd = [
                        os.path.join(BIN, "check-jsonschema"),
                        "--schemafile",
                        os.path.join(HERE, "schemas", "monitoring.coreos.com-v1.json"),
                        docfile,
                    ]
                    tool = "check-jsonschema (monitoring schema)"
                else:
                    failures.append(f"{where}: no validator for apiVersion {api} kind {kind} (add one to validate.py)")
                    continue
                rc, out = run(cmd)
                if rc != 0:
                    failures.append(f"{where}: {tool} failed:\n{out}")
                else:
                    counts[tool] = counts.get(tool, 0) + 1
                    print(f"ok   {where}: {tool}")
                if kind == "PrometheusRule":
                    failures += check_rule_source(doc, where)
    # The kustomization lists files that exist, and never the placeholder secrets.
    kpath = os.path.join(HERE, "kustomization.yaml")
    if os.path.exists(kpath):
        with open(kpath) as f:
            k = yaml.safe_load(f)
        for r in k.get("resources", []):
            if not os.path.exists(os.path.join(HERE, r)):
                failures.append(f"kustomization.yaml: resource {r} does not exist")
            if r == "secrets.yaml":
                failures.append("kustomization.yaml: lists secrets.yaml, whose values are placeholders (create the secrets instead)")
        print(f"ok   kustomization.yaml: {len(k.get('resources', []))} resources, all present")
    for tool, n in sorted(counts.items()):
        print(f"{n} documents valid with {tool}")
    if failures:
        print("\nFAILED:", file=sys.stderr)
        for f in failures:
            print("  " + f.replace("\n", "\n    "), file=sys.stderr)
        sys.exit(1)


def check_rule_source(doc, where):
    groups = []
    for src in ("alerts.yml", "lobby-alerts.yml"):
        with open(os.path.join(HERE, "..", "prometheus", src)) as f:
            groups += yaml.safe_load(f)["groups"]
    if doc["spec"]["groups"] != groups:
        return [f"{where}: its groups differ from assets/prometheus/alerts.yml + lobby-alerts.yml: run bash assets/k8s/gen-prometheusrule.sh"]
    print(f"ok   {where}: same groups as assets/prometheus/alerts.yml + lobby-alerts.yml")
    return []


if __name__ == "__main__":
    main()
