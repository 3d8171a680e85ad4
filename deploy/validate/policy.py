"""Deployment policy for the rendered manifests: what a platform team checks
in review, as code. Each rule returns findings ("Kind/name: what is wrong").

usage: policy.py rendered.yaml...   (exit status 1 on any finding)
"""

import sys

import yaml

# Receiver: X needs an answer within 3 s at all times, also during a drain.
MIN_RECEIVER_REPLICAS = 2
# Kafka: survive one broker loss without losing acknowledged deliveries, and
# keep deliveries long enough for a consumer outage over a weekend.
MIN_TOPIC_REPLICAS = 3
MIN_INSYNC_REPLICAS = 2
MIN_RETENTION_MS = 72 * 3600 * 1000
# The receiver produces bodies up to AAA_MAX_VERIFIED_BYTES (an authentic
# body over AAA_MAX_BODY_BYTES is kept whole as a dead letter) with up to
# 64 KiB of key and headers; a smaller topic limit turns such deliveries
# into 503s forever. The receiver's defaults when its env does not say:
RECORD_OVERHEAD_BYTES = 64 * 1024
RECEIVER_DEFAULT_MAX_BODY_BYTES = 1024 * 1024
RECEIVER_DEFAULT_MAX_VERIFIED_BYTES = 2 * 1024 * 1024
SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "DATABASE_URL")
# What each service may do on Kafka, and nothing more: (resource type,
# resource name or None for the cluster, operation). "raw" stands for the
# raw topic and "group" for the consumer group the consumer runs in.
KAFKA_NEEDS = {
    "receiver": {("topic", "raw", "Write"), ("topic", "raw", "Describe"), ("cluster", None, "IdempotentWrite")},
    "watermark": {("topic", "raw", "Write"), ("topic", "raw", "Describe"), ("cluster", None, "IdempotentWrite")},
    "consumer": {("topic", "raw", "Read"), ("topic", "raw", "Describe"), ("group", "group", "Read")},
}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


def name(obj):
    return f"{obj['kind']}/{obj['metadata']['name']}"


def pod_spec(obj):
    return obj["spec"]["template"]["spec"]


def pod_labels(obj):
    return obj["spec"]["template"].get("metadata", {}).get("labels", {})


def selects(selector, labels):
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    if selector is None:
        return False
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        value = labels.get(expr["key"])
        op = expr["operator"]
        if op == "In" and value not in expr.get("values", []):
            return False
        if op == "NotIn" and present and value in expr.get("values", []):
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def same_namespace(a, b):
    return a["metadata"].get("namespace") == b["metadata"].get("namespace")


def containers(obj):
    spec = pod_spec(obj)
    return spec.get("initContainers", []) + spec.get("containers", [])


def check_containers(obj):
    findings = []
    spec = pod_spec(obj)
    pod_sc = spec.get("securityContext", {})
    if spec.get("automountServiceAccountToken") is not False:
        findings.append(f"{name(obj)}: mounts a service account token it does not need")
    if pod_sc.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
        findings.append(f"{name(obj)}: no RuntimeDefault seccomp profile")
    for c in containers(obj):
        where = f"{name(obj)} container {c['name']}"
        sc = c.get("securityContext", {})
        if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True):
            findings.append(f"{where}: may run as root (runAsNonRoot is not true)")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            findings.append(f"{where}: runs as user 0")
        if sc.get("privileged"):
            findings.append(f"{where}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            findings.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            findings.append(f"{where}: root filesystem is writable")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            findings.append(f"{where}: capabilities are not all dropped")
        resources = c.get("resources", {})
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(kind, {}):
                    findings.append(f"{where}: no {resource} {kind[:-1]}")
        image = c.get("image", "")
        tag = image.rsplit("/", 1)[-1]
        if "@sha256:" not in image and (":" not in tag or tag.endswith(":latest")):
            findings.append(f"{where}: image {image!r} is not pinned to a tag or digest")
        for env in c.get("env", []):
            if "value" in env and any(w in env["name"] for w in SECRET_WORDS) and not env["name"].endswith("_FILE"):
                findings.append(f"{where}: {env['name']} is a literal value; reference a Secret")
        if obj["kind"] != "Job":
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    findings.append(f"{where}: no {probe}")
    return findings


def check_disruption_budgets(objs):
    pdbs = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    findings = []
    for obj in objs:
        if obj["kind"] != "Deployment":
            continue
        if not any(same_namespace(p, obj) and selects(p["spec"].get("selector"), pod_labels(obj)) for p in pdbs):
            findings.append(f"{name(obj)}: no PodDisruptionBudget selects its pods")
    return findings


def check_network_policies(objs):
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    findings = []
    namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] in WORKLOADS}
    for ns in namespaces:
        deny = [
            p for p in policies
            if p["metadata"].get("namespace") == ns
            and p["spec"].get("podSelector") == {}
            and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress") and not p["spec"].get("egress")
        ]
        if not deny:
            findings.append(f"namespace {ns}: no default-deny NetworkPolicy")
    return findings


def check_replicas(objs):
    findings = []
    hpas = [o for o in objs if o["kind"] == "HorizontalPodAutoscaler"]
    for obj in objs:
        if obj["kind"] != "Deployment":
            continue
        hpa = next((h for h in hpas if same_namespace(h, obj)
                    and h["spec"]["scaleTargetRef"]["kind"] == "Deployment"
                    and h["spec"]["scaleTargetRef"]["name"] == obj["metadata"]["name"]), None)
        component = pod_labels(obj).get("app.kubernetes.io/name")
        if component in ("receiver", "consumer") and hpa is None:
            findings.append(f"{name(obj)}: no HorizontalPodAutoscaler")
        if component == "receiver":
            if obj["spec"].get("replicas", 1) < MIN_RECEIVER_REPLICAS:
                findings.append(f"{name(obj)}: fewer than {MIN_RECEIVER_REPLICAS} replicas")
            if hpa and hpa["spec"].get("minReplicas", 1) < MIN_RECEIVER_REPLICAS:
                findings.append(f"{name(hpa)}: minReplicas below {MIN_RECEIVER_REPLICAS}")
        if component == "consumer" and hpa:
            topic = raw_topic_partitions(objs, obj)
            if topic is None:
                findings.append(f"{name(obj)}: no KafkaTopic for its raw topic")
            elif hpa["spec"]["maxReplicas"] > topic:
                findings.append(f"{name(hpa)}: maxReplicas {hpa['spec']['maxReplicas']} exceeds the topic's {topic} partitions")
    return findings


def raw_topic_partitions(objs, consumer):
    """Partitions of the topic the consumer reads (AAA_RAW_TOPIC in its ConfigMap)."""
    topic_name = None
    for ref in containers(consumer)[0].get("envFrom", []):
        cm_name = ref.get("configMapRef", {}).get("name")
        for cm in objs:
            if cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == cm_name and same_namespace(cm, consumer):
                topic_name = cm.get("data", {}).get("AAA_RAW_TOPIC", topic_name)
    for topic in objs:
        if topic["kind"] == "KafkaTopic" and topic["spec"].get("topicName", topic["metadata"]["name"]) == topic_name:
            return topic["spec"]["partitions"]
    return None


def check_topics(objs):
    findings = []
    for topic in objs:
        if topic["kind"] != "KafkaTopic":
            continue
        spec = topic["spec"]
        config = spec.get("config", {})
        if spec.get("replicas", 0) < MIN_TOPIC_REPLICAS:
            findings.append(f"{name(topic)}: replication factor below {MIN_TOPIC_REPLICAS}")
        if int(config.get("min.insync.replicas", 1)) < MIN_INSYNC_REPLICAS:
            findings.append(f"{name(topic)}: min.insync.replicas below {MIN_INSYNC_REPLICAS}")
        largest = receiver_largest_record(objs)
        if int(config.get("max.message.bytes", 1048588)) < largest:
            findings.append(f"{name(topic)}: max.message.bytes below the receiver's largest record ({largest} bytes: AAA_MAX_VERIFIED_BYTES plus headers)")
        if int(config.get("retention.ms", 0)) < MIN_RETENTION_MS:
            findings.append(f"{name(topic)}: retention shorter than 72 h")
    return findings


def receivers(objs):
    return [o for o in objs if o["kind"] == "Deployment" and pod_labels(o).get("app.kubernetes.io/name") == "receiver"]


def receiver_verified_bytes(objs, receiver):
    """The largest body the receiver reads whole (AAA_MAX_VERIFIED_BYTES, at
    least AAA_MAX_BODY_BYTES), as the receiver computes it."""
    body = int(config_value(objs, receiver, "AAA_MAX_BODY_BYTES") or RECEIVER_DEFAULT_MAX_BODY_BYTES)
    verified = int(config_value(objs, receiver, "AAA_MAX_VERIFIED_BYTES") or RECEIVER_DEFAULT_MAX_VERIFIED_BYTES)
    return max(body, verified)


def receiver_largest_record(objs):
    sizes = [receiver_verified_bytes(objs, r) for r in receivers(objs)] or [RECEIVER_DEFAULT_MAX_VERIFIED_BYTES]
    return max(sizes) + RECORD_OVERHEAD_BYTES


def nginx_size(text):
    """nginx's size syntax (client_max_body_size): bytes, or k/m/g suffixed."""
    text = str(text).strip().lower()
    units = {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


def check_body_limits(objs):
    """The ingress lets through exactly what the receiver reads whole: a
    smaller ingress limit refuses X's signed bodies with 413 before the
    receiver sees them (no trace, no gap); a larger one lets unread bodies
    through only to be refused by the receiver."""
    findings = []
    for ingress in objs:
        if ingress["kind"] != "Ingress":
            continue
        annotation = ingress["metadata"].get("annotations", {}).get("nginx.ingress.kubernetes.io/proxy-body-size")
        backends = {
            path["backend"]["service"]["name"]
            for rule in ingress["spec"].get("rules", [])
            for path in rule.get("http", {}).get("paths", [])
        }
        for receiver in receivers(objs):
            if not same_namespace(receiver, ingress) or not any(
                svc["kind"] == "Service" and svc["metadata"]["name"] in backends and same_namespace(svc, receiver)
                and selects({"matchLabels": svc["spec"].get("selector", {})}, pod_labels(receiver))
                for svc in objs
            ):
                continue
            verified = receiver_verified_bytes(objs, receiver)
            # nginx's default limit is 1m.
            allowed = nginx_size(annotation if annotation is not None else "1m")
            if allowed != verified:
                findings.append(
                    f"{name(ingress)}: proxy-body-size {annotation or '1m (default)'} = {allowed} bytes, but {name(receiver)} reads bodies up to {verified} bytes (AAA_MAX_VERIFIED_BYTES): make them agree"
                )
    return findings


def check_graceful_shutdown(objs):
    """The pod must outlive its preStop pause plus the drain it was told to do."""
    findings = []
    for obj in objs:
        if obj["kind"] != "Deployment":
            continue
        grace = pod_spec(obj).get("terminationGracePeriodSeconds", 30)
        for c in containers(obj):
            pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            drain_ms = next((int(e["value"]) for e in c.get("env", []) if e["name"] == "AAA_DRAIN_TIMEOUT_MS"), 0)
            if pause + drain_ms / 1000 > grace:
                findings.append(f"{name(obj)}: terminationGracePeriodSeconds {grace} < preStop {pause} s + drain {drain_ms / 1000} s")
            if pod_labels(obj).get("app.kubernetes.io/name") == "receiver" and pause == 0:
                findings.append(f"{name(obj)}: no preStop pause; the load balancer still routes to a stopping receiver")
    return findings


def config_value(objs, workload, key):
    """A setting of the workload: its env, else a ConfigMap it takes envFrom."""
    c = containers(workload)[0]
    for e in c.get("env", []):
        if e["name"] == key and "value" in e:
            return e["value"]
    for ref in c.get("envFrom", []):
        cm_name = ref.get("configMapRef", {}).get("name")
        for cm in objs:
            if cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == cm_name and same_namespace(cm, workload):
                if key in cm.get("data", {}):
                    return cm["data"][key]
    return None


def check_kafka_access(objs):
    """Each Kafka client authenticates as its own KafkaUser, whose ACLs grant
    exactly what the service needs on the raw topic (least privilege)."""
    findings = []
    users = {o["metadata"]["name"]: o for o in objs if o["kind"] == "KafkaUser"}
    for obj in objs:
        component = pod_labels(obj).get("app.kubernetes.io/name") if obj["kind"] == "Deployment" else None
        if component not in KAFKA_NEEDS:
            continue
        properties = config_value(objs, obj, "AAA_KAFKA_PROPERTIES_FILE")
        secrets = [v["secret"]["secretName"] for v in pod_spec(obj).get("volumes", []) if "secret" in v]
        if properties is None or f"aaa-kafka-{component}" not in secrets:
            findings.append(f"{name(obj)}: no Kafka credentials of its own (AAA_KAFKA_PROPERTIES_FILE from Secret aaa-kafka-{component})")
        user = users.get(f"aaa-{component}")
        if user is None:
            findings.append(f"{name(obj)}: no KafkaUser aaa-{component}")
            continue
        spec = user["spec"]
        if spec.get("authentication", {}).get("type") not in ("scram-sha-512", "tls"):
            findings.append(f"{name(user)}: no authentication")
        if spec.get("authorization", {}).get("type") != "simple":
            findings.append(f"{name(user)}: no ACLs (authorization type simple)")
            continue
        raw = config_value(objs, obj, "AAA_RAW_TOPIC")
        group = config_value(objs, obj, "AAA_CONSUMER_GROUP")
        granted = set()
        for acl in spec["authorization"].get("acls", []):
            resource = acl["resource"]
            kind = resource["type"]
            rname = resource.get("name")
            if resource.get("patternType", "literal") != "literal" or rname == "*":
                findings.append(f"{name(user)}: ACL on {kind} {rname} is a pattern, not one resource")
                continue
            alias = {raw: "raw"}.get(rname) if kind == "topic" else ({group: "group"}.get(rname) if kind == "group" else None)
            for op in acl.get("operations", []):
                granted.add((kind, alias if alias else rname, op))
        needs = KAFKA_NEEDS[component]
        for extra in sorted(granted - needs, key=str):
            findings.append(f"{name(user)}: grants {extra[2]} on {extra[0]} {extra[1]}, which {component} does not need")
        for missing in sorted(needs - granted, key=str):
            findings.append(f"{name(user)}: lacks {missing[2]} on {missing[0]} {missing[1]}")
    return findings


def check_no_secret_values(objs):
    return [f"{name(o)}: Secret values do not belong in the manifests; reference a Secret created out of band"
            for o in objs if o["kind"] == "Secret"]


RULES = (
    lambda objs: [f for o in objs if o["kind"] in WORKLOADS for f in check_containers(o)],
    check_disruption_budgets,
    check_network_policies,
    check_replicas,
    check_topics,
    check_graceful_shutdown,
    check_body_limits,
    check_kafka_access,
    check_no_secret_values,
)


def check(objs):
    return [finding for rule in RULES for finding in rule(objs)]


def main(paths):
    objs = []
    for path in paths:
        with open(path) as f:
            objs.extend(o for o in yaml.safe_load_all(f) if o)
    findings = check(objs)
    for finding in findings:
        print(f"POLICY {finding}")
    print(f"policy: {len(objs)} objects, {len(findings)} findings")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
