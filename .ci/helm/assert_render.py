#!/usr/bin/env python3
"""Assert what the chart promises, on its rendered manifests.

Usage: assert_render.py default|all-features MANIFESTS.yaml

Schema validation says the objects are well-formed; this says they are the
objects a platform team was promised: gRPC probes on the right health
services, no unavailable pod during a rollout, a locked-down pod, the
configuration wired to the ports and mounts, secrets only by reference.
"""

import sys

import yaml

errors = []


def check(cond, message):
    if not cond:
        errors.append(message)


def one(objs, kind):
    found = [o for o in objs if o["kind"] == kind]
    check(len(found) == 1, f"expected exactly one {kind}, found {len(found)}")
    return found[0] if found else {}


def common(objs):
    kinds = [o["kind"] for o in objs]
    check("Secret" not in kinds, "the chart must never render a Secret")
    for o in objs:
        labels = o["metadata"].get("labels", {})
        for label in ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                      "app.kubernetes.io/version", "app.kubernetes.io/managed-by",
                      "helm.sh/chart"):
            check(label in labels, f"{o['kind']}/{o['metadata']['name']} lacks label {label}")

    dep = one(objs, "Deployment")
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    check(spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, "rolling update must keep maxUnavailable 0")
    check("checksum/config" in spec["template"]["metadata"].get("annotations", {}),
          "pod template lacks the checksum/config annotation")
    check(pod["automountServiceAccountToken"] is False, "pod must not mount a service-account token")
    check(pod["enableServiceLinks"] is False,
          "service links must be off: they inject INTROSPECTD_* variables the service would read as config")
    check(pod["terminationGracePeriodSeconds"] >= 15, "terminationGracePeriodSeconds must be >= 15")
    psc = pod["securityContext"]
    check(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 65532 and psc.get("runAsGroup") == 65532,
          "pod securityContext must run as 65532:65532, non-root")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod seccompProfile must be RuntimeDefault")
    tsc = pod.get("topologySpreadConstraints", [])
    check({c["topologyKey"] for c in tsc} >= {"topology.kubernetes.io/zone", "kubernetes.io/hostname"},
          "topology spread over zone and hostname expected")

    (c,) = pod["containers"]
    sc = c["securityContext"]
    check(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem must be true")
    check(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation must be false")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities must drop ALL")
    check(sc.get("runAsNonRoot") is True, "container must run as non-root")
    check(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "container seccompProfile must be RuntimeDefault")
    check("requests" in c.get("resources", {}) and "limits" in c.get("resources", {}), "resources need requests and limits")
    check(c["args"][:3] == ["serve", "--config", "/etc/introspectd/config.yaml"], f"unexpected args {c['args']}")
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    check("/tmp" in mounts, "an emptyDir must be mounted at /tmp")
    check(mounts.get("/etc/introspectd/config.yaml", {}).get("subPath") == "config.yaml", "config.yaml not mounted")
    for e in c.get("env", []):
        check("value" not in e or not any(w in e["name"].upper() for w in ("SECRET", "PASSWORD", "KEY")),
              f"env {e['name']} looks like a secret given as a literal value")

    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    cm = one(objs, "ConfigMap")
    config = yaml.safe_load(cm["data"]["config.yaml"])
    check(config["server"]["listen"].endswith(f":{ports['grpc']}"), "server.listen does not match the grpc port")
    check(config["server"]["metrics_listen"].endswith(f":{ports['metrics']}"), "server.metrics_listen does not match the metrics port")
    for key in ("max_connection_age", "max_connection_age_grace", "request_timeout"):
        check(key in config["server"], f"server.{key} not rendered")

    svc = [o for o in objs if o["kind"] == "Service" and o["spec"].get("clusterIP") != "None"]
    check(len(svc) == 1, "expected one ClusterIP Service")
    if svc:
        sp = {p["name"]: p for p in svc[0]["spec"]["ports"]}
        check(sp.get("grpc", {}).get("appProtocol") == "grpc", "Service port grpc needs appProtocol grpc")
        check("metrics" in sp, "Service lacks the metrics port")

    sa = one(objs, "ServiceAccount")
    check(sa.get("automountServiceAccountToken") is False, "ServiceAccount must set automountServiceAccountToken: false")
    return dep, c, config


def default(objs):
    dep, c, config = common(objs)
    check(dep["spec"].get("replicas") == 2, "default replicas should be 2")
    check(c["livenessProbe"].get("grpc") == {"port": 50051, "service": ""}, f"liveness probe: {c['livenessProbe']}")
    check(c["startupProbe"].get("grpc") == {"port": 50051, "service": ""}, f"startup probe: {c['startupProbe']}")
    check(c["readinessProbe"].get("grpc") == {"port": 50051, "service": "introspect.v1.TokenService"},
          f"readiness probe: {c['readinessProbe']}")
    check(c["image"] == "ghcr.io/introspectd/introspectd:0.1.0", f"default image is {c['image']}")
    check("tls" not in config["server"], "server.tls rendered without tls.enabled")
    check("shared_state" not in config, "shared_state rendered without sharedState.enabled")
    check(config["server"].get("admin") is False, "AdminService must be off on the gRPC port by default")
    check("admin_listen" not in config["server"], "no admin listener unless admin.enabled")
    check(all(p["name"] != "admin" for p in c["ports"]), "the admin port must not be declared by default")
    kinds = sorted(o["kind"] for o in objs)
    check(kinds == sorted(["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]),
          f"default render has {kinds}")


def all_features(objs):
    dep, c, config = common(objs)
    kinds = sorted(o["kind"] for o in objs)
    want = sorted(["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy",
                   "PodDisruptionBudget", "Service", "Service", "ServiceAccount", "ServiceMonitor"])
    check(kinds == want, f"all-features render has {kinds}, want {want}")
    check("replicas" not in dep["spec"], "with the HPA on, the Deployment must not set replicas")
    tls = config["server"].get("tls", {})
    mounts = [m["mountPath"] for m in c["volumeMounts"]]
    for key in ("cert_file", "key_file", "client_ca_file"):
        path = tls.get(key, "")
        check(any(path.startswith(m + "/") for m in mounts), f"server.tls.{key} {path!r} is not under a mount")
    health_port = int(config["server"]["health_listen"].rsplit(":", 1)[1])
    for probe, service in (("livenessProbe", ""), ("readinessProbe", "introspect.v1.TokenService"),
                           ("startupProbe", "")):
        check(c[probe].get("grpc") == {"port": health_port, "service": service},
              f"with TLS, {probe} must be a gRPC probe on the plaintext health port: {c[probe]}")
    check(any(p.get("containerPort") == health_port for p in c["ports"]), "the health port is declared")
    env = {e["name"]: e for e in c.get("env", [])}
    for t in config["tenants"]:
        for name in (t.get("hmac_secret_env"), (t.get("introspection") or {}).get("client_secret_env")):
            if name:
                check("secretKeyRef" in env.get(name, {}).get("valueFrom", {}), f"{name} must come from a secretKeyRef")
        for jwks in [t.get("jwks_file")] if t.get("jwks_file") else []:
            check(any(jwks.startswith(m + "/") for m in mounts), f"jwks_file {jwks} is not under a mount")
    ids = {t["id"] for t in config["tenants"]}
    check({"entra", "contoso-b2c"} <= ids, "the Entra ID and B2C tenants must be rendered")
    headless = [o for o in objs if o["kind"] == "Service" and o["spec"].get("clusterIP") == "None"]
    check(headless and all(p["name"] != "metrics" for p in headless[0]["spec"]["ports"]),
          "the headless Service must not carry the metrics port (double scraping)")
    admin_port = int(config["server"]["admin_listen"].rsplit(":", 1)[1])
    check("admin_auth" in config["server"], "an exposed admin port needs server.admin_auth")
    check(any(p["name"] == "admin" and p["containerPort"] == admin_port for p in c["ports"]),
          "admin.expose declares the admin port")
    netpol = one(objs, "NetworkPolicy")
    admin_rules = [r for r in netpol["spec"]["ingress"]
                   if any(p.get("port") == "admin" for p in r.get("ports", []))]
    check(len(admin_rules) == 1 and admin_rules[0].get("from"),
          "the admin port is open only to networkPolicy.ingress.adminFrom")
    egress_ports = {(p["port"], p.get("protocol")) for r in netpol["spec"]["egress"] for p in r.get("ports", [])}
    check({(53, "UDP"), (53, "TCP"), (443, "TCP")} <= egress_ports, "egress must allow DNS and 443")
    shared_state(config, c, env, mounts, netpol)


def shared_state(config, c, env, mounts, netpol):
    """sharedState: rendered config, password by reference, CA mounted, egress to Redis."""
    ss = config.get("shared_state")
    check(isinstance(ss, dict), "sharedState.enabled must render config.shared_state")
    if not isinstance(ss, dict):
        return
    check(bool(ss.get("cluster_nodes")) != bool(ss.get("redis_url")), "exactly one of redis_url and cluster_nodes")
    check(not any("@" in u for u in ss.get("cluster_nodes", []) + [ss.get("redis_url", "")]),
          "no credentials in a Redis URL")
    for key in ("redis_password_env", "integrity_key_env"):
        var = ss.get(key)
        check(var and "secretKeyRef" in env.get(var, {}).get("valueFrom", {}),
              f"shared_state.{key} ({var}) must come from a secretKeyRef")
    ca = ss.get("tls_ca_file", "")
    check(any(ca.startswith(m + "/") for m in mounts), f"shared_state.tls_ca_file {ca!r} is not under a mount")
    redis_rules = [r for r in netpol["spec"]["egress"]
                   if any(p.get("port") == 6379 for p in r.get("ports", []))]
    check(len(redis_rules) == 1 and redis_rules[0].get("to"), "egress to Redis (6379) limited to sharedState.networkPolicy.to")


def main() -> int:
    mode, filename = sys.argv[1], sys.argv[2]
    with open(filename, encoding="utf-8") as f:
        objs = [o for o in yaml.safe_load_all(f) if o]
    {"default": default, "all-features": all_features}[mode](objs)
    for e in errors:
        print(f"ERROR {mode}: {e}")
    print(f"{mode}: {len(objs)} objects, {len(errors)} broken promises")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
