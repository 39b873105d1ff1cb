"""The Kubernetes API calls teresa-operator makes, and the RBAC rules they need.

Two sources, compared by check_rbac in run_checks.py:

* CONTRACT: the calls the operator is specified to make (DESIGN.md and the
  chart's brief), each with the scope its rule must have. The chart's rendered
  RBAC must grant exactly these, no more and no less.
* scan_operator_sources(): what operator/src actually calls, found by reading
  the Rust code (kube-rs idioms: `Api::<K>` handles and the methods called on
  them, watchers, Controller, finalizer, Recorder, kube-lease-manager). Every
  call found there must be covered by CONTRACT.

The scan is a reader of idioms, not a Rust parser: it follows handles bound to
a variable, a struct field or a function parameter typed `Api<K>`, and chains
on `Api::<K>::all(..)`. A call it cannot attribute to a kind is reported, so a
new idiom shows up instead of passing silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Scopes of a rule in the chart.
CLUSTER = "cluster"  # ClusterRole: TenantPools, their Secrets and Events anywhere
RELEASE_NS = "release-namespace"  # Role in the release (pooler) namespace
SNAPSHOT = "snapshot-secret"  # Role in the release namespace, resourceNames = snapshot Secret


@dataclass(frozen=True)
class Grant:
    group: str
    resource: str  # may carry a subresource: "tenantpools/status"
    verb: str
    scope: str


def _grants(group, resource, verbs, scope):
    return [Grant(group, resource, v, scope) for v in verbs]


CONTRACT: list[Grant] = [
    # Controller reflector (list, watch); kube's finalizer helper (JSON patch).
    *_grants("teresa.dev", "tenantpools", ["list", "watch", "patch"], CLUSTER),
    # Status by server-side apply.
    *_grants("teresa.dev", "tenantpools/status", ["patch"], CLUSTER),
    # Needed where OwnerReferencesPermissionEnforcement guards finalizers.
    *_grants("teresa.dev", "tenantpools/finalizers", ["update"], CLUSTER),
    *_grants("", "secrets", ["list", "watch"], CLUSTER),
    # Server-side apply of the snapshot Secret creates it the first time.
    *_grants("", "secrets", ["create"], RELEASE_NS),
    *_grants("", "secrets", ["patch"], SNAPSHOT),
    *_grants("", "pods", ["list", "watch"], RELEASE_NS),
    # kube's Recorder writes events.k8s.io/v1 Events.
    *_grants("events.k8s.io", "events", ["create", "patch"], CLUSTER),
    # Leader election (operator/src/leader.rs): read, create, and renew or
    # release with update on resourceVersion (never patch).
    *_grants("coordination.k8s.io", "leases", ["get", "create", "update"], RELEASE_NS),
]

# Rust type (last path segment, or a distinguishing path suffix) -> (group, plural).
KINDS: dict[str, tuple[str, str]] = {
    "TenantPool": ("teresa.dev", "tenantpools"),
    "Secret": ("", "secrets"),
    "Pod": ("", "pods"),
    "ConfigMap": ("", "configmaps"),
    "Service": ("", "services"),
    "Endpoints": ("", "endpoints"),
    "Namespace": ("", "namespaces"),
    "Node": ("", "nodes"),
    "ServiceAccount": ("", "serviceaccounts"),
    "core::v1::Event": ("", "events"),
    "events::v1::Event": ("events.k8s.io", "events"),
    "Lease": ("coordination.k8s.io", "leases"),
    "EndpointSlice": ("discovery.k8s.io", "endpointslices"),
    "Deployment": ("apps", "deployments"),
    "StatefulSet": ("apps", "statefulsets"),
    "ReplicaSet": ("apps", "replicasets"),
    "DaemonSet": ("apps", "daemonsets"),
    "CustomResourceDefinition": ("apiextensions.k8s.io", "customresourcedefinitions"),
}

# kube::Api method -> (verb, subresource or "").
METHODS: dict[str, tuple[str, str]] = {
    "get": ("get", ""),
    "get_opt": ("get", ""),
    "get_metadata": ("get", ""),
    "get_metadata_opt": ("get", ""),
    "entry": ("get", ""),
    "get_status": ("get", "status"),
    "list": ("list", ""),
    "list_metadata": ("list", ""),
    "watch": ("watch", ""),
    "watch_metadata": ("watch", ""),
    "create": ("create", ""),
    "replace": ("update", ""),
    "replace_status": ("update", "status"),
    "patch": ("patch", ""),
    "patch_metadata": ("patch", ""),
    "patch_status": ("patch", "status"),
    "delete": ("delete", ""),
    "delete_collection": ("deletecollection", ""),
}

# Helpers that take an Api handle and call list+watch on it.
WATCHING_CALLS = ("watcher", "metadata_watcher", "Controller::new", "reflector")
WATCHING_METHODS = ("owns", "watches", "owns_with", "watches_with")

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
TYPE = r"[A-Za-z_][A-Za-z0-9_:]*"


@dataclass(frozen=True)
class Call:
    group: str
    resource: str
    verb: str
    where: str  # file:line


@dataclass
class ScanResult:
    calls: list[Call]
    unknown_kinds: list[str]  # "file:line Kind"
    files: int


def _strip_comments(src: str) -> str:
    """Blank out comments, keeping line numbers (strings are left alone)."""
    src = re.sub(r"/\*.*?\*/", lambda m: re.sub(r"[^\n]", " ", m.group(0)), src, flags=re.S)
    return re.sub(r"//[^\n]*", "", src)


def _imports(src: str) -> dict[str, str]:
    """Map a local type name to its full use-path (handles `as` and groups)."""
    names: dict[str, str] = {}
    for m in re.finditer(r"\buse\s+([^;]+);", src):
        body = re.sub(r"\s+", " ", m.group(1)).strip()
        body = re.sub(r"\s*(::|\{|\}|,)\s*", r"\1", body)
        _expand_use("", body, names)
    return names


def _expand_use(prefix: str, body: str, names: dict[str, str]) -> None:
    brace = body.find("{")
    if brace == -1:
        path, _, alias = body.partition(" as ")
        full = prefix + path
        local = alias or full.rsplit("::", 1)[-1]
        if local not in ("self", "*", "_"):
            names[local] = full
        return
    head, inner = body[:brace], body[brace + 1 : body.rfind("}")]
    depth, start = 0, 0
    for i, ch in enumerate(inner + ","):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            part = inner[start:i]
            if part:
                _expand_use(prefix + head, part, names)
            start = i + 1


def resolve_kind(type_name: str, imports: dict[str, str]) -> tuple[str, str] | None:
    """(group, plural) of a Rust type as written at a use site, or None."""
    head, _, rest = type_name.partition("::")
    full = imports.get(head, head) + ("::" + rest if rest else "")
    for suffix, kind in KINDS.items():
        if "::" in suffix and (full == suffix or full.endswith("::" + suffix)):
            return kind
    last = full.rsplit("::", 1)[-1]
    return None if last == "Event" else KINDS.get(last)


def _line(src: str, pos: int) -> int:
    return src.count("\n", 0, pos) + 1


def scan_source(src: str, name: str) -> tuple[list[Call], list[str]]:
    src = _strip_comments(src)
    imports = _imports(src)
    calls: list[Call] = []
    unknown: list[str] = []
    # name -> [(position, kind)]: a name means the handle bound most recently
    # before the use (functions often reuse `api` for different kinds).
    bindings: dict[str, list[tuple[int, tuple[str, str]]]] = {}

    def bind(name: str, pos: int, kind: tuple[str, str]) -> None:
        bindings.setdefault(name, []).append((pos, kind))

    def handle(name: str, pos: int) -> tuple[str, str] | None:
        before = [k for p, k in bindings.get(name, []) if p < pos]
        return before[-1] if before else None

    def kind_of(type_name: str, pos: int) -> tuple[str, str] | None:
        kind = resolve_kind(type_name, imports)
        if kind is None and not re.fullmatch(r"[A-Z]|Self|DynamicObject|K|T", type_name):
            unknown.append(f"{name}:{_line(src, pos)} Api<{type_name}>")
        return kind

    def add(kind, verb, sub, pos):
        group, plural = kind
        calls.append(Call(group, plural + ("/" + sub if sub else ""), verb, f"{name}:{_line(src, pos)}"))

    # Handles: `let x: Api<K>`, `let x = Api::<K>::..`, `x: Api<K>` (fields, params).
    for m in re.finditer(rf"\blet\s+(?:mut\s+)?({IDENT})\s*(?::\s*Api\s*<\s*({TYPE})\s*>)?\s*=\s*(?:Api\s*::\s*<\s*({TYPE})\s*>)?", src):
        kind_name = m.group(2) or m.group(3)
        if kind_name:
            kind = kind_of(kind_name, m.start())
            if kind:
                bind(m.group(1), m.start(), kind)
    for m in re.finditer(rf"\b({IDENT})\s*:\s*&?\s*(?:mut\s+)?Api\s*<\s*({TYPE})\s*>", src):
        kind = kind_of(m.group(2), m.start())
        if kind:
            bind(m.group(1), m.start(), kind)

    methods = "|".join(sorted(METHODS, key=len, reverse=True))
    # Method calls on a handle: `x.get(`, `self.x.patch(`, `ctx.x.list(`.
    for m in re.finditer(rf"(?<![A-Za-z0-9_])({IDENT})\s*\.\s*({methods})\s*(?:::\s*<[^>]*>\s*)?\(", src):
        kind = handle(m.group(1), m.start())
        if kind:
            verb, sub = METHODS[m.group(2)]
            add(kind, verb, sub, m.start())
    # Chains on a fresh handle: `Api::<K>::namespaced(c, ns).get(`.
    for m in re.finditer(rf"Api\s*::\s*<\s*({TYPE})\s*>\s*::\s*\w+\s*\(([^;{{}}]*?)\)\s*\.\s*({methods})\s*\(", src):
        kind = kind_of(m.group(1), m.start())
        if kind:
            verb, sub = METHODS[m.group(3)]
            add(kind, verb, sub, m.start())
    # Watches: `watcher(x, ..)`, `Controller::new(x, ..)`, `.owns(x, ..)`.
    watch_fns = "|".join(re.escape(w) for w in WATCHING_CALLS)
    for m in re.finditer(rf"(?:\b(?:{watch_fns})|\.\s*(?:{'|'.join(WATCHING_METHODS)}))\s*\(\s*&?\s*(?:Api\s*::\s*<\s*({TYPE})\s*>|({IDENT}(?:\s*\.\s*{IDENT})*))", src):
        if m.group(1):
            kind = kind_of(m.group(1), m.start())
        else:
            path = [p.strip() for p in m.group(2).split(".")]
            kind = next((k for k in (handle(p, m.start()) for p in path) if k), None)
        if kind:
            add(kind, "list", "", m.start())
            add(kind, "watch", "", m.start())
    # kube::runtime::finalizer(&api, NAME, obj, ..): adds/removes the
    # finalizer with JSON patches on the object.
    for m in re.finditer(rf"\bfinalizer\s*\(\s*&?\s*({IDENT})\b", src):
        kind = handle(m.group(1), m.start())
        if kind:
            add(kind, "patch", "", m.start())
    # kube::runtime::events::Recorder publishes events.k8s.io Events,
    # creating them and patching repeats into a series.
    for m in re.finditer(r"\bRecorder\s*::\s*new\s*\(", src):
        add(("events.k8s.io", "events"), "create", "", m.start())
        add(("events.k8s.io", "events"), "patch", "", m.start())
    # kube-lease-manager reads, creates and renews its Lease.
    for m in re.finditer(r"\bLeaseManager(?:Builder)?\s*::\s*(?:new|builder)\s*\(|\bkube_lease_manager\b", src):
        for verb in ("get", "create", "patch"):
            add(("coordination.k8s.io", "leases"), verb, "", m.start())
    return calls, sorted(set(unknown))


def scan_operator_sources(root: Path) -> ScanResult | None:
    """Scan operator/src (and operator/tests) if the operator code exists."""
    files = sorted(p for d in ("src", "tests") for p in (root / "operator" / d).rglob("*.rs"))
    if not files:
        return None
    calls: list[Call] = []
    unknown: list[str] = []
    for path in files:
        if "tests" in path.relative_to(root / "operator").parts[:1]:
            continue  # integration tests drive mocks; they make no calls of their own
        c, u = scan_source(path.read_text(), str(path.relative_to(root)))
        calls += c
        unknown += u
    return ScanResult(calls, unknown, len(files))
