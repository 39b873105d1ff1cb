"""Chart checks for charts/teresa, run by charts/check.sh (and so by .ci/run).

No helm binary and no cluster: the chart is linted and rendered by Helm's own
Go library through helm-python-sdk, and every rendered object is validated
against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown
fields fail). The CRD-typed kinds the chart can emit have no schema there:
cert-manager Certificate and Issuer and the Prometheus Operator
ServiceMonitor are validated against the hand-written schemas in schemas/,
the PrometheusRule against its upstream CRD's schema in crds/ (made strict),
and any other kind without a schema is an error. The alerts also pass
`promtool check rules` and the unit tests in alerts.test.yaml.

Each check prints PASS or FAIL with what it found; the last line is
"chart-checks: N passed, M failed".
"""

from __future__ import annotations

import functools
import json
import re
import sys
import time
import traceback
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate.utils as kv
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import operator_api_calls as api_calls  # noqa: E402

TESTS = Path(__file__).resolve().parent
CHARTS = TESTS.parent
CHART = CHARTS / "teresa"
REPO = CHARTS.parent
RELEASE, NAMESPACE = "teresa", "teresa-system"
# Oldest supported (Chart.yaml kubeVersion) and newest known Kubernetes.
KUBE_VERSIONS = ("1.29.0", kv.latest_version())

# Kinds validated by our own schemas instead of the Kubernetes ones. Only
# these may lack a Kubernetes schema.
CUSTOM_SCHEMAS = {
    ("cert-manager.io/v1", "Certificate"): "certificate-cert-manager-v1.json",
    ("cert-manager.io/v1", "Issuer"): "issuer-cert-manager-v1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
}

# Kinds validated against the upstream CRD's own schema (unchanged copies in
# crds/, from prometheus-operator v0.93.0), made strict: a field the CRD does
# not define fails instead of being pruned by the API server.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
}

PORTS = {"grpc": 50052, "poolerMetrics": 8082, "admin": 50053, "operatorMetrics": 8080}


class CheckFailed(Exception):
    pass


def expect(cond: bool, message: str) -> None:
    if not cond:
        raise CheckFailed(message)


# ---------------------------------------------------------------- rendering


def load_case(name: str) -> dict:
    if name == "default":
        return {}
    return yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text()) or {}


def cases() -> list[str]:
    return ["default"] + sorted(p.name[: -len("-values.yaml")] for p in (CHART / "ci").glob("*-values.yaml"))


@functools.cache
def chart() -> helm.Chart:
    return helm.Chart.load(str(CHART))


def render(values: dict, name: str = RELEASE, namespace: str = NAMESPACE) -> tuple[list[dict], str, dict]:
    """Rendered objects, NOTES.txt, and the merged values Helm used."""
    manifests = chart().render(values, name=name, namespace=namespace, is_install=True)
    objects, notes = [], ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("__source__", path)
                objects.append(doc)
    return objects, notes, chart().merge_values(values)


def strip(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k != "__source__"}


def ident(obj: dict) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')} ({obj.get('__source__', '?')})"


def find(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    return found


def one(objects, kind, name=None):
    found = find(objects, kind, name)
    expect(len(found) == 1, f"expected one {kind}{' ' + name if name else ''}, found {len(found)}")
    return found[0]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --------------------------------------------------------------- validation


@functools.cache
def custom_validator(filename: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((TESTS / "schemas" / filename).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


# kubernetes-validate re-reads its 2 MB definitions file on every call; cache it.
kv.schema_contents = functools.cache(kv.schema_contents)


def _strict(node):
    """The schema with unknown fields refused wherever it lists the fields."""
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@functools.cache
def crd_validator(filename: str) -> jsonschema.Draft202012Validator:
    crd = yaml.safe_load((TESTS / "crds" / filename).read_text())
    [version] = [v for v in crd["spec"]["versions"] if v.get("served")]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    return jsonschema.Draft202012Validator(schema)


def validate_object(obj: dict) -> list[str]:
    body = strip(obj)
    key = (body.get("apiVersion"), body.get("kind"))
    errors = []
    if key in CRD_SCHEMAS:
        for e in crd_validator(CRD_SCHEMAS[key]).iter_errors(body):
            errors.append(f"{ident(obj)}: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}")
        return errors
    if key in CUSTOM_SCHEMAS:
        for e in custom_validator(CUSTOM_SCHEMAS[key]).iter_errors(body):
            errors.append(f"{ident(obj)}: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}")
        return errors
    for version in KUBE_VERSIONS:
        try:
            kv.validate(body, version, strict=True)
        except kv.ValidationError as e:
            errors.append(f"{ident(obj)} vs Kubernetes {e.version}: {'.'.join(map(str, e.path)) or '<root>'}: {e.message}")
        except kv.SchemaNotFoundError as e:
            errors.append(f"{ident(obj)}: {e.message}, and it is not one of the CRD kinds with a schema here {sorted(CUSTOM_SCHEMAS)}")
    return errors


# ---------------------------------------------------------- invariants


def container_ports(container) -> dict:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def pod_checks(where: str, pod_spec: dict) -> None:
    sc = pod_spec.get("securityContext", {})
    expect(sc.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot must be true")
    expect(sc.get("runAsUser") == 65532, f"{where}: pod must run as the image's user 65532")
    expect(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccompProfile must be RuntimeDefault")
    for c in pod_spec.get("initContainers", []) + pod_spec["containers"]:
        cw = f"{where} container {c['name']}"
        csc = c.get("securityContext", {})
        expect(csc.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation must be false")
        expect(csc.get("readOnlyRootFilesystem") is True, f"{cw}: readOnlyRootFilesystem must be true")
        expect(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{cw}: capabilities must drop ALL")
        expect("requests" in c.get("resources", {}), f"{cw}: resource requests must be set")
        for name in container_ports(c):
            expect(len(name) <= 15, f"{cw}: port name {name!r} is longer than 15 characters")
        if (c.get("command") or [""])[0].startswith("/usr/local/bin/teresa-"):
            for probe in ("livenessProbe", "readinessProbe"):
                expect(probe in c, f"{cw}: {probe} missing")
                port = c[probe]["httpGet"]["port"]
                expect(port in container_ports(c), f"{cw}: {probe} uses port {port!r}, not a container port")
    mounts = {m["name"] for c in pod_spec.get("initContainers", []) + pod_spec["containers"] for m in c.get("volumeMounts", [])}
    volumes = {v["name"] for v in pod_spec.get("volumes", [])}
    expect(mounts <= volumes, f"{where}: mounts without volumes: {sorted(mounts - volumes)}")


def args_map(args: list[str]) -> dict[str, str]:
    out = {}
    for a in args:
        flag, eq, value = a.partition("=")
        out[flag] = value if eq else True
    return out


def parse_duration(text: str) -> float:
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)(ns|us|ms|s|m|h)", text))


def check_invariants(objects: list[dict], values: dict, notes: str) -> list[str]:
    """Cross-object consistency of one rendering. Returns notes of what was checked."""
    fullname = values.get("fullnameOverride") or (RELEASE if "teresa" in RELEASE else f"{RELEASE}-teresa")
    seen = []
    expect(notes.strip(), "NOTES.txt rendered empty")
    for o in objects:
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            expect(o["metadata"].get("namespace") == NAMESPACE, f"{ident(o)}: namespace must be the release namespace")
        expect(len(o["metadata"]["name"]) <= 63, f"{ident(o)}: name longer than 63 characters")

    deployments = find(objects, "Deployment")
    for d in deployments:
        tpl = d["spec"]["template"]
        expect(selects(d["spec"]["selector"]["matchLabels"], tpl["metadata"]["labels"]), f"{ident(d)}: selector does not match its pod labels")
        pod_checks(ident(d), tpl["spec"])
    for other in deployments:
        for d in deployments:
            if d is not other:
                expect(not selects(d["spec"]["selector"]["matchLabels"], other["spec"]["template"]["metadata"]["labels"]),
                       f"{ident(d)} selector also selects the pods of {ident(other)}")

    def pods_selected(selector):
        return [d for d in deployments if selects(selector, d["spec"]["template"]["metadata"]["labels"])]

    for s in find(objects, "Service"):
        targets = pods_selected(s["spec"]["selector"])
        expect(len(targets) == 1, f"{ident(s)} selects {len(targets)} Deployments' pods, want 1")
        ports = {}
        for c in targets[0]["spec"]["template"]["spec"]["containers"]:
            ports.update(container_ports(c))
        for p in s["spec"]["ports"]:
            expect(p["targetPort"] in ports, f"{ident(s)} port {p['name']} targets {p['targetPort']!r}, not a container port")
            expect(ports[p["targetPort"]] == p["port"], f"{ident(s)} port {p['name']} {p['port']} != container port {ports[p['targetPort']]}")
        expect(all(p["port"] != PORTS["admin"] for p in s["spec"]["ports"]), f"{ident(s)} must not publish the admin port")
    for pdb in find(objects, "PodDisruptionBudget"):
        expect(len(pods_selected(pdb["spec"]["selector"]["matchLabels"])) == 1, f"{ident(pdb)} must select exactly one Deployment")

    operator = one(objects, "Deployment", f"{fullname}-operator")
    op_pod = operator["spec"]["template"]
    op_c = op_pod["spec"]["containers"][0]
    op_args = args_map(op_c["args"])
    expect(op_c["args"][0] == "run", "operator container must run `teresa-operator run`")
    op_env = {e["name"]: e.get("value") for e in op_c.get("env", [])}
    expect(op_env.get("TERESA_LEADER_ELECTION") == str(values["operator"]["leaderElection"]["enabled"]).lower(), "leader election env does not follow operator.leaderElection.enabled")
    expect("POD_NAMESPACE" in op_env, "operator needs POD_NAMESPACE")
    if values["operator"]["replicas"] > 1:
        expect(values["operator"]["leaderElection"]["enabled"], "several operator replicas need leader election")
    expect(op_args["--pooler-namespace"] == NAMESPACE and op_args["--lease-namespace"] == NAMESPACE, "operator namespaces must be the release namespace")
    expect(op_args["--admin-port"] == str(PORTS["admin"]), "operator --admin-port must be 50053")
    expect(op_args["--metrics-port"] == str(PORTS["operatorMetrics"]), "operator --metrics-port must be 8080")
    fleet = dict(kv_.split("=", 1) for kv_ in op_args["--pooler-selector"].split(","))
    expect(fleet == values["fleet"]["labels"], f"operator --pooler-selector {fleet} != fleet.labels {values['fleet']['labels']}")
    expect(op_args["--pooler-tls-server-name"] == values["poolerTlsServerName"], "operator --pooler-tls-server-name != poolerTlsServerName")
    snapshot = op_args["--snapshot-secret"]
    expect(op_args["--snapshot-mount-path"] == "/etc/teresa/config", "operator --snapshot-mount-path must be where poolers mount the snapshot")
    op_tls = next(v["secret"]["secretName"] for v in op_pod["spec"]["volumes"] if v["name"] == "tls")
    expected_op_tls = values["operator"]["tls"]["existingSecret"] or f"{fullname}-operator-tls"
    expect(op_tls == expected_op_tls, f"operator mounts {op_tls}, want {expected_op_tls}")
    seen.append(f"operator selector {op_args['--pooler-selector']}")

    # RBAC: bindings point at rendered roles and the operator's ServiceAccount.
    sa_name = op_pod["spec"]["serviceAccountName"]
    if values["operator"]["serviceAccount"]["create"]:
        one(objects, "ServiceAccount", sa_name)
    for binding_kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        for b in find(objects, binding_kind):
            expect(b["roleRef"]["kind"] == role_kind, f"{ident(b)} must reference a {role_kind}")
            one(objects, role_kind, b["roleRef"]["name"])
            expect(b["subjects"] == [{"kind": "ServiceAccount", "name": sa_name, "namespace": NAMESPACE}], f"{ident(b)} must bind the operator ServiceAccount")
    role = one(objects, "Role", f"{fullname}-operator")
    named = [r for r in role["rules"] if r.get("resourceNames")]
    expect(named and all(r["resourceNames"] == [snapshot] for r in named), f"Role resourceNames must name the snapshot Secret {snapshot}")
    lease_rules = [r for r in role["rules"] if "leases" in r["resources"]]
    expect(bool(lease_rules) == values["operator"]["leaderElection"]["enabled"], "Lease rules must exist exactly when leader election is on")

    pooler_enabled = values["pooler"]["enabled"]
    pooler_list = find(objects, "Deployment", f"{fullname}-pooler")
    expect(len(pooler_list) == int(pooler_enabled), "pooler Deployment must exist exactly when pooler.enabled")
    pooler_tls = values["pooler"]["tls"]["existingSecret"] or f"{fullname}-pooler-tls"
    identity = values["operatorIdentity"]
    if pooler_enabled:
        pooler = pooler_list[0]
        p_pod = pooler["spec"]["template"]
        p_c = p_pod["spec"]["containers"][0]
        p_args = args_map(p_c["args"])
        expect(selects(values["fleet"]["labels"], p_pod["metadata"]["labels"]), "pooler pods must carry the fleet labels the operator selects")
        expect(p_args["--admin-identities"] == identity, f"pooler --admin-identities {p_args['--admin-identities']} != operatorIdentity {identity}")
        expect(p_args["--config"] == "/etc/teresa/config/pooler.yaml", "pooler --config path")
        for flag, port in (("--port", "grpc"), ("--metrics-port", "poolerMetrics"), ("--admin-port", "admin")):
            expect(p_args[flag] == str(PORTS[port]), f"pooler {flag} must be {PORTS[port]}")
        vols = {v["name"]: v for v in p_pod["spec"]["volumes"]}
        expect(vols["config"]["secret"] == {"secretName": snapshot, "optional": True, "defaultMode": 0o440},
               f"pooler must mount the snapshot Secret {snapshot} optionally: {vols['config']}")
        expect(vols["tls"]["secret"]["secretName"] == pooler_tls, f"pooler mounts TLS Secret {vols['tls']['secret']['secretName']}, want {pooler_tls}")
        mtls = values["pooler"]["leaseApi"]["requireClientCert"]
        expect(("--client-ca" in p_args) == mtls, "--client-ca must be set exactly when pooler.leaseApi.requireClientCert")
        if mtls:
            want = values["pooler"]["leaseApi"]["clientCaSecret"] or pooler_tls
            expect(vols["client-ca"]["secret"]["secretName"] == want, f"client CA Secret {vols['client-ca']['secret']['secretName']} != {want}")
        plaintext = values["pooler"]["metrics"]["plaintext"]
        expect(("--metrics-plaintext" in p_args) == plaintext, "--metrics-plaintext must follow pooler.metrics.plaintext")
        scheme = "HTTP" if plaintext else "HTTPS"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            expect(p_c[probe]["httpGet"]["scheme"] == scheme, f"pooler {probe} scheme must be {scheme}")
        expect(p_c["readinessProbe"]["httpGet"]["path"] == "/readyz" and p_c["livenessProbe"]["httpGet"]["path"] == "/livez", "pooler probe paths")
        grace = p_pod["spec"]["terminationGracePeriodSeconds"]
        expect(grace > parse_duration(p_args["--drain-timeout"]), f"terminationGracePeriodSeconds {grace} must exceed --drain-timeout {p_args['--drain-timeout']}")
        expect(p_pod["spec"].get("automountServiceAccountToken") is False, "the pooler needs no API token")
        seen.append(f"pooler probes {scheme}, identity {identity}")

    certs = find(objects, "Certificate")
    issuers = {i["metadata"]["name"]: i for i in find(objects, "Issuer")}
    if values["certManager"]["enabled"]:
        by_secret = {c["spec"]["secretName"]: c for c in certs}
        for c in certs:
            ref = c["spec"]["issuerRef"]
            if ref.get("kind", "Issuer") == "Issuer" and not (values["certManager"]["issuerRef"]["name"] == ref["name"]):
                expect(ref["name"] in issuers, f"{ident(c)} references Issuer {ref['name']} that the chart does not create")
            expect(ref["name"] != f"{fullname}-selfsigned" or c["spec"].get("isCA"), f"{ident(c)}: only the CA may be self-signed")
        for i in issuers.values():
            if "ca" in i["spec"]:
                expect(i["spec"]["ca"]["secretName"] in by_secret, f"{ident(i)} uses a CA Secret no Certificate writes")
        if not values["operator"]["tls"]["existingSecret"]:
            oc = by_secret.get(op_tls)
            expect(oc is not None, f"no Certificate writes the operator Secret {op_tls}")
            expect(oc["spec"]["uris"] == [identity], f"operator certificate URIs {oc['spec']['uris']} != [{identity}]")
            expect("client auth" in oc["spec"]["usages"], "operator certificate needs client auth usage")
        if not values["pooler"]["tls"]["existingSecret"]:
            pc = by_secret.get(pooler_tls)
            expect(pc is not None, f"no Certificate writes the pooler Secret {pooler_tls}")
            expect(values["poolerTlsServerName"] in pc["spec"]["dnsNames"], "pooler certificate lacks poolerTlsServerName")
            expect(f"{fullname}-pooler.{NAMESPACE}.svc" in pc["spec"]["dnsNames"], "pooler certificate lacks the Service DNS name")
            expect("server auth" in pc["spec"]["usages"], "pooler certificate needs server auth usage")
        if values["certManager"]["issuerRef"]["name"]:
            expect(not issuers, "with certManager.issuerRef the chart must not create its own issuers")
        seen.append(f"{len(certs)} Certificates, {len(issuers)} Issuers")
    else:
        expect(not certs and not issuers, "cert-manager objects rendered with certManager.enabled=false")

    policies = find(objects, "NetworkPolicy")
    if values["networkPolicy"]["enabled"]:
        op_labels = op_pod["metadata"]["labels"]
        expect(len(policies) == 1 + int(pooler_enabled), f"expected {1 + int(pooler_enabled)} NetworkPolicies, got {len(policies)}")
        if pooler_enabled:
            np = one(objects, "NetworkPolicy", f"{fullname}-pooler")
            expect(pods_selected(np["spec"]["podSelector"]["matchLabels"]) == [pooler], "pooler NetworkPolicy must select the pooler pods only")
            admin_rules = [r for r in np["spec"]["ingress"] if any(p["port"] == PORTS["admin"] for p in r["ports"])]
            expect(len(admin_rules) == 1, "exactly one ingress rule for the admin port")
            peers = admin_rules[0].get("from", [])
            expect(peers and all(set(p) == {"podSelector"} and selects(p["podSelector"]["matchLabels"], op_labels)
                                 and not selects(p["podSelector"]["matchLabels"], p_pod["metadata"]["labels"]) for p in peers),
                   "admin port must admit only the operator's pods")
            expect(all(len(r["ports"]) == 1 for r in np["spec"]["ingress"]), "one port per rule, so peers never leak across ports")
        seen.append(f"{len(policies)} NetworkPolicies")
    else:
        expect(not policies, "NetworkPolicies rendered with networkPolicy.enabled=false")

    monitors = find(objects, "ServiceMonitor")
    if values["serviceMonitor"]["enabled"]:
        expect(len(monitors) == 1 + int(pooler_enabled), "one ServiceMonitor per component")
        services = find(objects, "Service")
        for m in monitors:
            targets = [s for s in services if selects(m["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
            expect(len(targets) == 1, f"{ident(m)} selects {len(targets)} Services, want 1")
            port_names = {p["name"] for p in targets[0]["spec"]["ports"]}
            for ep in m["spec"]["endpoints"]:
                expect(ep["port"] in port_names, f"{ident(m)} scrapes port {ep['port']} the Service lacks")
                if m["metadata"]["name"].endswith("-pooler"):
                    want = "http" if values["pooler"]["metrics"]["plaintext"] else "https"
                    expect(ep["scheme"] == want, f"{ident(m)} scheme {ep['scheme']} != {want}")
                    if want == "https" and not values["serviceMonitor"]["poolerTlsConfig"]:
                        expect(ep["tlsConfig"]["ca"]["secret"]["name"] == pooler_tls, "pooler ServiceMonitor must trust the pooler TLS Secret's CA")
                        expect(ep["tlsConfig"]["serverName"] == values["poolerTlsServerName"], "pooler ServiceMonitor serverName")
                else:
                    expect(ep["scheme"] == "http", "operator metrics are plain HTTP")
            for k, v in values["serviceMonitor"]["labels"].items():
                expect(m["metadata"]["labels"].get(k) == v, f"{ident(m)} lacks label {k}={v}")
        seen.append(f"{len(monitors)} ServiceMonitors")
    else:
        expect(not monitors, "ServiceMonitors rendered with serviceMonitor.enabled=false")
    return seen


# ------------------------------------------------------------------ checks

CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


@check
def lint_every_case():
    """helm lint (strict) passes for the defaults and every ci/ values file."""
    for case in cases():
        report = helm.lint(str(CHART), load_case(case), strict=True, namespace=NAMESPACE)
        bad = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report["errors"]]
        expect(not bad, f"lint of case {case}: {bad}")
    return f"{len(cases())} cases lint clean"


def make_render_check(case: str):
    def render_case():
        values = load_case(case)
        objects, notes, merged = render(values)
        errors = [e for o in objects for e in validate_object(o)]
        expect(not errors, "schema validation failed:\n    " + "\n    ".join(errors))
        seen = check_invariants(objects, merged, notes)
        kinds = sorted({o["kind"] for o in objects})
        return f"{len(objects)} objects valid for Kubernetes {', '.join(KUBE_VERSIONS)} ({', '.join(kinds)}); " + "; ".join(seen)

    render_case.__name__ = f"render_{case.replace('-', '_')}"
    render_case.__doc__ = f"values case '{case}' renders, validates and is consistent"
    return render_case


@check
def validation_catches_bad_objects():
    """The object validation itself refuses typos, wrong types and unknown kinds."""
    objects, _, _ = render({"certManager": {"enabled": True}, "serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}})
    deployment = one(objects, "Deployment", "teresa-pooler")
    rule = one(objects, "PrometheusRule")
    certificate = one(objects, "Certificate", "teresa-operator")
    monitor = one(objects, "ServiceMonitor", "teresa-pooler")

    def mutated(obj, change):
        copy = json.loads(json.dumps(obj))
        change(copy)
        return copy

    bad = {
        "unknown container field": mutated(deployment, lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinessProbes={})),
        "string replicas": mutated(deployment, lambda d: d["spec"].update(replicas="2")),
        "Certificate typo": mutated(certificate, lambda c: c["spec"].update(dnsName=["x"])),
        "Certificate without identity": mutated(certificate, lambda c: c["spec"].pop("uris")),
        "ServiceMonitor bad scheme": mutated(monitor, lambda m: m["spec"]["endpoints"][0].update(scheme="HTTPS")),
        "PrometheusRule typo": mutated(rule, lambda r: r["spec"]["groups"][0]["rules"][0].update(annotation={})),
        "PrometheusRule without expr": mutated(rule, lambda r: r["spec"]["groups"][0]["rules"][0].pop("expr")),
        "kind without a schema": {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": NAMESPACE}},
    }
    accepted = [name for name, obj in bad.items() if not validate_object(obj)]
    expect(not accepted, f"validation accepted: {accepted}")
    return f"{len(bad)} broken objects refused"


@check
def release_name_and_namespace_flow_into_names():
    """Another release name and namespace render with their own prefixed names."""
    objects, _, _ = render({"certManager": {"enabled": True}}, name="pools", namespace="db")
    names = {o["metadata"]["name"] for o in objects}
    expect({"pools-teresa-operator", "pools-teresa-pooler"} <= names, f"unexpected names {sorted(names)}")
    dep = one(objects, "Deployment", "pools-teresa-operator")
    args = args_map(dep["spec"]["template"]["spec"]["containers"][0]["args"])
    expect(args["--snapshot-secret"] == "pools-teresa-pooler-config" and args["--pooler-namespace"] == "db", f"{args}")
    expect(all(o["metadata"].get("namespace", "db") == "db" for o in objects), "objects outside the release namespace")
    return "release pools in namespace db"


@check
def schema_covers_every_value():
    """values.schema.json describes every key of values.yaml, and nothing else."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    defs = schema.get("definitions", {})

    def resolve(node):
        while "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[-1]]
        return node

    def props(node):
        node = resolve(node)
        out = dict(node.get("properties", {}))
        for sub in node.get("allOf", []):
            for k, v in props(sub).items():
                if out.get(k) is True or k not in out:
                    out[k] = v
        return out

    missing, extra, loose = [], [], []

    def walk(value, node, path):
        node = resolve(node)
        p = props(node)
        if not p:
            return  # a passthrough map (labels, Kubernetes objects)
        if node.get("additionalProperties") is not False:
            loose.append(path or "<root>")
        for k, v in value.items():
            if k not in p:
                missing.append(f"{path}.{k}".lstrip("."))
            elif isinstance(v, dict) and v:
                walk(v, p[k], f"{path}.{k}")
        for k in p:
            if k not in value:
                extra.append(f"{path}.{k}".lstrip("."))

    walk(values, schema, "")
    expect(not missing, f"values.yaml keys missing from values.schema.json: {missing}")
    expect(not extra, f"values.schema.json keys missing from values.yaml: {extra}")
    expect(not loose, f"objects in values.schema.json without additionalProperties: false: {loose}")
    return "every key typed, unknown keys refused at every level"


BAD_VALUES = [
    # (values, words the error must contain)
    ({"pooler": {"replicas": "two"}}, ["/pooler/replicas", "want integer"]),
    ({"operator": {"leaderElection": {"enabled": "yes"}}}, ["/operator/leaderElection/enabled", "want boolean"]),
    ({"pooler": {"replica": 3}}, ["/pooler", "'replica' not allowed"]),
    ({"servicemonitor": {"enabled": True}}, ["additional properties 'servicemonitor' not allowed"]),
    ({"certManager": {"issuerRef": {"name": "ca", "knd": "ClusterIssuer"}}}, ["/certManager/issuerRef", "'knd' not allowed"]),
    ({"logging": {"format": "xml"}}, ["/logging/format", "json", "text"]),
    ({"pooler": {"drainTimeout": "30 seconds"}}, ["/pooler/drainTimeout", "pattern"]),
    ({"pooler": {"drainTimeout": "1.5m"}}, ["/pooler/drainTimeout", "pattern"]),
    ({"operatorIdentity": "operator"}, ["/operatorIdentity", "pattern"]),
    ({"operatorIdentity": "spiffe://a/x,spiffe://b/y"}, ["/operatorIdentity"]),
    ({"pooler": {"resources": {"requests": {"cpu": "lots"}}}}, ["/pooler/resources/requests/cpu"]),
    ({"pooler": {"resources": {"request": {"cpu": "1"}}}}, ["/pooler/resources", "'request' not allowed"]),
    ({"pooler": {"tls": {"existingSecret": "Bad_Name"}}}, ["/pooler/tls/existingSecret"]),
    ({"fleet": {"labels": {"teresa.dev/fleet": None}}}, ["/fleet/labels", "minProperties"]),
    ({"image": {"digest": "latest"}}, ["/image/digest"]),
    ({"pooler": {"pdb": {"maxUnavailable": "half"}}}, ["/pooler/pdb/maxUnavailable"]),
    ({"pooler": {"service": {"type": "ExternalName"}}}, ["/pooler/service/type"]),
]


@check
def schema_rejects_bad_values():
    """Wrong types, unknown keys and malformed strings fail with the key named."""
    for values, words in BAD_VALUES:
        try:
            render(values)
        except helm.HelmValuesError as e:
            message = str(e)
            for w in words:
                expect(w.lower() in message.lower(), f"error for {values} does not mention {w!r}: {message}")
            continue
        raise CheckFailed(f"values {values} were accepted")
    good = {"pooler": {"pdb": {"maxUnavailable": "50%"}, "resources": {"limits": {"cpu": 2, "memory": "1Gi"}}}}
    render(good)
    return f"{len(BAD_VALUES)} bad inputs refused with the offending key in the message"


@check
def crd_is_the_operators_file():
    """charts/teresa/crds/tenantpool.yaml is byte-equal to crds/tenantpool.yaml."""
    source, shipped = REPO / "crds" / "tenantpool.yaml", CHART / "crds" / "tenantpool.yaml"
    if not source.exists():
        expect(not shipped.exists(), f"{shipped.relative_to(REPO)} exists but crds/tenantpool.yaml does not: the chart copy must come from the operator's generated file")
        return "SKIPPED CONTENT CHECK: crds/tenantpool.yaml is not generated yet"
    fix = "run: cp crds/tenantpool.yaml charts/teresa/crds/tenantpool.yaml"
    expect(shipped.exists(), f"the chart does not ship the CRD; {fix}")
    expect(source.read_bytes() == shipped.read_bytes(), f"charts/teresa/crds/tenantpool.yaml differs from crds/tenantpool.yaml; {fix}")
    crd = yaml.safe_load(shipped.read_text())
    errors = validate_object(crd)
    expect(not errors, "CRD fails the Kubernetes schema: " + "; ".join(errors))
    spec = crd["spec"]
    expect(crd["metadata"]["name"] == "tenantpools.teresa.dev", "CRD name")
    expect(spec["group"] == "teresa.dev" and spec["names"]["plural"] == "tenantpools" and spec["names"]["kind"] == "TenantPool", "CRD names")
    expect(spec["scope"] == "Namespaced", "TenantPool must be namespaced")
    expect("tp" in spec["names"].get("shortNames", []), "short name tp")
    served = [v for v in spec["versions"] if v["name"] == "v1alpha1"]
    expect(served and "status" in served[0].get("subresources", {}), "v1alpha1 with a status subresource (the RBAC grants tenantpools/status)")
    chart_crds = chart().crds
    names = [c["filename"] for c in chart_crds]
    expect(len(names) == 1 and names[0].endswith("crds/tenantpool.yaml"), f"Helm loads these CRDs from the chart: {names}")
    return "chart CRD equals crds/tenantpool.yaml and is a valid CustomResourceDefinition"


def rendered_grants(objects) -> set:
    grants = set()
    for o in objects:
        if o["kind"] not in ("ClusterRole", "Role"):
            continue
        for r in o["rules"]:
            for g in r["apiGroups"]:
                for res in r["resources"]:
                    for v in r["verbs"]:
                        if o["kind"] == "ClusterRole":
                            scope = api_calls.CLUSTER
                        elif r.get("resourceNames"):
                            scope = api_calls.SNAPSHOT
                        else:
                            scope = api_calls.RELEASE_NS
                        grants.add(api_calls.Grant(g, res, v, scope))
    return grants


def fmt(g) -> str:
    return f"{g.verb} {g.group or 'core'}/{g.resource} ({g.scope})"


@check
def rbac_is_the_operator_contract():
    """The rendered RBAC grants exactly the operator's specified API calls."""
    objects, _, _ = render({})
    got = rendered_grants(objects)
    want = set(api_calls.CONTRACT)
    expect(not want - got, "RBAC lacks: " + ", ".join(sorted(map(fmt, want - got))))
    expect(not got - want, "RBAC grants more than the operator uses: " + ", ".join(sorted(map(fmt, got - want))))
    for o in objects:
        for r in o.get("rules", []):
            expect("*" not in r["verbs"] + r["resources"] + r["apiGroups"], f"{ident(o)}: wildcard rule {r}")
    return f"{len(want)} grants, none extra"


@check
def rbac_covers_operator_code():
    """Every Kubernetes API call found in operator/src is granted by the chart's RBAC."""
    result = api_calls.scan_operator_sources(REPO)
    if result is None:
        return "operator/src has no Rust files yet; RBAC checked against the contract only"
    objects, _, _ = render({})
    granted = {(g.group, g.resource, g.verb) for g in rendered_grants(objects)}
    uncovered = sorted({f"{c.verb} {c.group or 'core'}/{c.resource} at {c.where}" for c in result.calls if (c.group, c.resource, c.verb) not in granted})
    expect(not uncovered, "operator calls without an RBAC rule (add them to the chart's operator-rbac.yaml and operator_api_calls.CONTRACT):\n    " + "\n    ".join(uncovered))
    expect(not result.unknown_kinds, "operator uses API kinds this check cannot map to an RBAC resource (add them to operator_api_calls.KINDS): " + ", ".join(result.unknown_kinds))
    used = {(c.group, c.resource, c.verb) for c in result.calls}
    unused = sorted(f"{v} {g or 'core'}/{r}" for g, r, v in granted - used)
    note = f"; granted but not seen in code: {', '.join(unused)}" if unused else ""
    return f"{len(used)} distinct calls in {result.files} files, all granted{note}"


@check
def rbac_scanner_reads_kube_idioms():
    """The operator-code scanner finds calls written in the usual kube-rs forms."""
    src = """
    use k8s_openapi::api::{core::v1::{Pod, Secret as CoreSecret}, events::v1::Event};
    use crate::resources::TenantPool;
    struct Context { pods: Api<Pod> }
    async fn reconcile(ctx: &Context, client: Client) {
        let pools: Api<TenantPool> = Api::all(client.clone());
        let secrets = Api::<CoreSecret>::namespaced(client.clone(), "ns");
        // secrets.delete("commented out", &dp)
        let m = HashMap::new(); m.get("not an api call");
        secrets.get_opt("db-credentials").await;
        ctx.pods.list(&lp).await;
        pools.patch_status("t", &pp, &patch).await;
        pools.replace("t", &pp, &tp).await;
        Api::<CoreSecret>::namespaced(client, "ns").patch("snap", &pp, &p).await;
        Controller::new(pools.clone(), wc).owns(Api::<CoreSecret>::all(client), wc);
        watcher(ctx.pods.clone(), cfg);
        finalizer(&pools, "teresa.dev/cleanup", tp, handler).await;
        let recorder = Recorder::new(client, reporter);
        let widgets: Api<Widget> = Api::all(client);
    }
    """
    calls, unknown = api_calls.scan_source(src, "sample.rs")
    got = {(c.group, c.resource, c.verb) for c in calls}
    want = {
        ("", "secrets", "get"), ("", "pods", "list"), ("teresa.dev", "tenantpools/status", "patch"),
        ("teresa.dev", "tenantpools", "update"), ("", "secrets", "patch"), ("teresa.dev", "tenantpools", "list"),
        ("teresa.dev", "tenantpools", "watch"), ("", "secrets", "list"), ("", "secrets", "watch"),
        ("", "pods", "watch"), ("teresa.dev", "tenantpools", "patch"),
        ("events.k8s.io", "events", "create"), ("events.k8s.io", "events", "patch"),
    }
    expect(got == want, f"scanner found {sorted(got)}; missing {sorted(want - got)}, unexpected {sorted(got - want)}")
    expect(unknown == ["sample.rs:19 Api<Widget>"], f"unknown kinds reported: {unknown}")
    return f"{len(want)} calls found in the sample, the unknown kind reported"


@check
def sidecar_example_matches_chart():
    """examples/sidecar.yaml is valid and agrees with the chart's own pooler."""
    docs = [d for d in yaml.safe_load_all((CHART / "examples" / "sidecar.yaml").read_text()) if d]
    expect(len(docs) == 1 and docs[0]["kind"] == "Deployment", "the example is one Deployment")
    app = docs[0]
    errors = validate_object(app)
    expect(not errors, "; ".join(errors))
    objects, _, merged = render({"certManager": {"enabled": True}})
    pod = app["spec"]["template"]
    pod_checks("sidecar example", pod["spec"])
    expect(app["metadata"]["namespace"] == NAMESPACE, "the application must run in the release namespace")
    expect(selects(merged["fleet"]["labels"], pod["metadata"]["labels"]), "the application pod must carry the fleet labels")
    sidecars = [c for c in pod["spec"].get("initContainers", []) if c["name"] == "teresa-pooler"]
    expect(len(sidecars) == 1 and sidecars[0].get("restartPolicy") == "Always", "teresa-pooler must be a native sidecar (init container, restartPolicy Always)")
    sidecar = sidecars[0]
    pooler = one(objects, "Deployment", "teresa-pooler")["spec"]["template"]
    chart_c = pooler["spec"]["containers"][0]
    expect(sidecar["args"] == chart_c["args"], f"sidecar args differ from the chart's pooler:\n    {sidecar['args']}\n    {chart_c['args']}")
    expect(sidecar["command"] == chart_c["command"] and sidecar["image"] == chart_c["image"], "sidecar command or image differ")
    expect(sidecar["securityContext"] == chart_c["securityContext"], "sidecar securityContext differs")
    expect(pod["spec"]["securityContext"] == pooler["spec"]["securityContext"], "pod securityContext differs")
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    chart_vols = {v["name"]: v for v in pooler["spec"]["volumes"]}
    mounts = {m["mountPath"]: vols[m["name"]] for m in sidecar["volumeMounts"]}
    chart_mounts = {m["mountPath"]: chart_vols[m["name"]] for m in chart_c["volumeMounts"]}
    for path in ("/etc/teresa/tls", "/etc/teresa/config", "/tmp"):
        a, b = dict(mounts[path]), dict(chart_mounts[path])
        a.pop("name"), b.pop("name")
        expect(a == b, f"volume at {path} differs: {a} vs {b}")
    ports = {p["containerPort"] for p in sidecar["ports"]}
    expect(ports == set(PORTS.values()) - {PORTS["operatorMetrics"]}, f"sidecar ports {ports}")
    app_c = pod["spec"]["containers"][0]
    expect(all(vols[m["name"]]["secret"].get("items") == [{"key": "ca.crt", "path": "ca.crt"}]
               for m in app_c.get("volumeMounts", []) if "secret" in vols[m["name"]]),
           "the application container may see ca.crt only, never the pooler's key")
    return "valid Deployment; args, image, labels, Secrets and security equal the chart's pooler"


DOCKERFILE_BINARIES = ("teresa-pooler", "teresa-operator")


@check
def dockerfile_builds_what_the_chart_runs():
    """The Dockerfile builds both binaries where the chart runs them, as user 65532."""
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.M | re.I)
    expect(len(stages) >= 2 and stages[0][0].startswith("rust:"), f"multi-stage build from a rust image: {stages}")
    final = stages[-1][0]
    expect(final.startswith(("gcr.io/distroless/", "scratch")), f"final stage {final} must be distroless or scratch")
    expect(re.search(r"cargo build --release --locked -p teresa-pooler -p teresa-operator", text), "cargo build --release --locked -p teresa-pooler -p teresa-operator")
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    expect(users and users[-1].split(":")[0] == "65532", f"final USER must be 65532, got {users}")
    for package in DOCKERFILE_BINARIES:
        crate = "pooler" if package.endswith("pooler") else "operator"
        manifest = (REPO / crate / "Cargo.toml").read_text()
        expect(re.search(rf'^name\s*=\s*"{package}"', manifest, flags=re.M), f"{crate}/Cargo.toml does not define package {package}")
        expect(f"/usr/local/bin/{package}" in text, f"the image must install /usr/local/bin/{package}")
    objects, _, _ = render({})
    commands = {c["command"][0] for d in find(objects, "Deployment") for c in d["spec"]["template"]["spec"]["containers"]}
    expect(commands == {f"/usr/local/bin/{b}" for b in DOCKERFILE_BINARIES}, f"chart commands {commands}")
    ignored = [l.strip() for l in (REPO / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    workspace = re.search(r"members\s*=\s*\[([^\]]*)\]", (REPO / "Cargo.toml").read_text()).group(1)
    for member in re.findall(r'"([^"]+)"', workspace):
        expect(not any(re.fullmatch(p.strip("/").replace("*", ".*"), member) for p in ignored), f".dockerignore excludes workspace member {member}")
    for needed in ("Cargo.toml", "Cargo.lock"):
        expect(needed not in ignored, f".dockerignore excludes {needed}")
    expect(any(p.strip("/") == "target" for p in ignored), ".dockerignore must exclude target/")
    return f"{len(stages)} stages, final {final}, both binaries, user 65532"


# ------------------------------------------------- dashboards and alerts

ALERTS = (
    "TeresaPoolSaturated",
    "TeresaAcquireTimeouts",
    "TeresaDatabaseDown",
    "TeresaConfigRejected",
    "TeresaLeasesExpiring",
    "TeresaOperatorPushFailing",
    "TeresaNoOperatorLeader",
)
MONITORING_ON = {"dashboards": {"enabled": True}, "prometheusRule": {"enabled": True, "labels": {"release": "prom"}}}


def monitoring_objects(values: dict) -> tuple[dict, dict]:
    objects, _, _ = render(values)
    rule = one(objects, "PrometheusRule")
    dashboard = one(objects, "ConfigMap", "teresa-dashboard")
    return rule, json.loads(dashboard["data"]["teresa.json"])


def exprs(rule: dict, dashboard: dict) -> list[str]:
    found = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    def walk(panels):
        for p in panels:
            found.extend(t["expr"] for t in p.get("targets", []))
            walk(p.get("panels", []))
    walk(dashboard["panels"])
    return found


@check
def monitoring_objects_follow_their_switches():
    """The dashboard ConfigMap and the PrometheusRule exist only when enabled,
    carry the sidecar and Prometheus selector labels, and every alert names
    what it is about and says what to do."""
    objects, _, _ = render({})
    expect(not find(objects, "PrometheusRule"), "PrometheusRule rendered by default")
    expect(not [o for o in find(objects, "ConfigMap") if "teresa.json" in o.get("data", {})], "dashboard rendered by default")
    objects, _, _ = render(MONITORING_ON)
    dashboard = one(objects, "ConfigMap", "teresa-dashboard")
    expect(dashboard["metadata"]["labels"].get("grafana_dashboard") == "1", "dashboard lacks the Grafana sidecar label")
    board = json.loads(dashboard["data"]["teresa.json"])
    expect({v["name"] for v in board["templating"]["list"]} >= {"datasource", "namespace", "tenant"}, "dashboard variables")
    rule = one(objects, "PrometheusRule")
    expect(rule["metadata"]["labels"].get("release") == "prom", "PrometheusRule lacks prometheusRule.labels")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    expect(sorted(alerts) == sorted(ALERTS), f"alerts {sorted(alerts)} != {sorted(ALERTS)}")
    for name, r in alerts.items():
        expect(r["labels"].get("severity") in ("warning", "critical"), f"{name} has no severity")
        text = r["annotations"]["summary"] + r["annotations"]["description"]
        expect(any(w in text for w in ("$labels.tenant", "$labels.pod", "$labels.reason", NAMESPACE)), f"{name} does not say what it is about")
        expect(NAMESPACE in r["expr"] and "namespace" in r["expr"], f"{name} is not limited to the release namespace")
    return f"dashboard with {len(board['panels'])} panels, {len(alerts)} alerts"


@check
def monitoring_uses_only_metrics_that_exist():
    """Every teresa_* series a dashboard panel or an alert reads is a metric
    the pooler or the operator registers."""
    rule, board = monitoring_objects(MONITORING_ON)
    known = set()
    for source in (REPO / "pooler" / "src" / "metrics.rs", REPO / "operator" / "src" / "metrics.rs"):
        for name in re.findall(r'"(teresa_[a-z_]+)"', source.read_text()):
            known |= {name, f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    used = {name for e in exprs(rule, board) for name in re.findall(r"\b(teresa_[a-z_]+)", e)}
    unknown = sorted(used - known)
    expect(not unknown, f"series that no program exports: {unknown}")
    return f"{len(used)} series, all exported"


@check
def alerts_pass_promtool():
    """promtool check rules accepts the rendered rules, and promtool test
    rules passes a unit test of every alert (tests/alerts.test.yaml)."""
    import shutil
    import subprocess
    import tempfile

    promtool = shutil.which("promtool")
    expect(promtool is not None, "promtool not found (apt-get install prometheus; .ci/run does)")
    rule, _ = monitoring_objects(MONITORING_ON)
    tests = yaml.safe_load((TESTS / "alerts.test.yaml").read_text())
    tested = {a["alertname"] for t in tests["tests"] for a in t.get("alert_rule_test", [])}
    expect(tested >= set(ALERTS), f"alerts without a promtool test: {sorted(set(ALERTS) - tested)}")
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules.yaml"
        rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        shutil.copy(TESTS / "alerts.test.yaml", Path(tmp) / "alerts.test.yaml")
        for args in (["check", "rules", "rules.yaml"], ["test", "rules", "alerts.test.yaml"]):
            done = subprocess.run([promtool, *args], cwd=tmp, capture_output=True, text=True)
            expect(done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}")
    cases = sum(len(t.get("alert_rule_test", [])) for t in tests["tests"])
    return f"{len(ALERTS)} alerts, {cases} promtool cases pass"


@check
def readme_documents_every_ci_case():
    """The chart README mentions every documented values case and key option."""
    readme = (CHART / "README.md").read_text()
    missing = [c for c in cases()[1:] if f"ci/{c}-values.yaml" not in readme]
    expect(not missing, f"charts/teresa/README.md does not mention: {missing}")
    for word in ("certManager.enabled", "existingSecret", "serviceMonitor.enabled", "dashboards.enabled", "prometheusRule.enabled", "networkPolicy.enabled", "examples/sidecar.yaml", "pooler.metrics.plaintext", "operatorIdentity"):
        expect(word in readme, f"README lacks {word}")
    return "README covers the options"


def print_render(namespace: str) -> int:
    """The chart rendered with default values into `namespace`, as YAML documents."""
    objects, _, _ = render({}, namespace=namespace)
    print(yaml.safe_dump_all([strip(o) for o in objects], sort_keys=True), end="")
    return 0


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--render":
        return print_render(sys.argv[2])
    all_checks = list(CHECKS)
    at = all_checks.index(release_name_and_namespace_flow_into_names)
    all_checks[at:at] = [make_render_check(c) for c in cases()]
    passed = failed = 0
    start = time.monotonic()
    for fn in all_checks:
        t0 = time.monotonic()
        try:
            detail = fn()
            passed += 1
            print(f"PASS {fn.__name__} ({time.monotonic() - t0:.1f}s): {detail}")
        except CheckFailed as e:
            failed += 1
            print(f"FAIL {fn.__name__}: {fn.__doc__.strip()}\n    {e}")
        except Exception as e:  # a broken check is a failure, with its trace
            failed += 1
            print(f"FAIL {fn.__name__}: {type(e).__name__}: {e}")
            traceback.print_exc(limit=4, file=sys.stdout)
        sys.stdout.flush()
    print(f"({time.monotonic() - start:.1f}s)")
    print(f"chart-checks: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
