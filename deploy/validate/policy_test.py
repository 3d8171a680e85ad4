"""Each policy rule fires on the fault it exists for, and only then.

Runs on the rendered prod overlay (path in AAA_RENDERED, set by
scripts/deploy-check.sh): it must be clean, and each mutation below must
produce exactly the finding named.
"""

import copy
import os
import unittest

import yaml

import policy


def rendered():
    with open(os.environ["AAA_RENDERED"]) as f:
        return [o for o in yaml.safe_load_all(f) if o]


def find(objs, kind, name):
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def container(objs, deployment):
    return find(objs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]


class PolicyTest(unittest.TestCase):
    def setUp(self):
        self.objs = copy.deepcopy(rendered())

    def assertFinding(self, fragment):
        findings = policy.check(self.objs)
        self.assertEqual(len(findings), 1, findings)
        self.assertIn(fragment, findings[0])

    def test_rendered_overlay_is_clean(self):
        self.assertEqual(policy.check(self.objs), [])

    def test_receiver_may_not_read_the_raw_topic(self):
        acls = find(self.objs, "KafkaUser", "aaa-receiver")["spec"]["authorization"]["acls"]
        acls[0]["operations"].append("Read")
        self.assertFinding("grants Read on topic raw, which receiver does not need")

    def test_consumer_may_not_write(self):
        acls = find(self.objs, "KafkaUser", "aaa-consumer")["spec"]["authorization"]["acls"]
        acls[0]["operations"].append("Write")
        self.assertFinding("grants Write on topic raw, which consumer does not need")

    def test_wildcard_acl(self):
        acls = find(self.objs, "KafkaUser", "aaa-watermark")["spec"]["authorization"]["acls"]
        acls.append({"resource": {"type": "topic", "name": "*"}, "operations": ["All"]})
        self.assertFinding("is a pattern, not one resource")

    def test_missing_kafka_user(self):
        self.objs.remove(find(self.objs, "KafkaUser", "aaa-consumer"))
        self.assertFinding("no KafkaUser aaa-consumer")

    def test_shared_kafka_credentials(self):
        pod = find(self.objs, "Deployment", "aaa-watermark")["spec"]["template"]["spec"]
        kafka = next(v for v in pod["volumes"] if v["name"] == "kafka")
        kafka["secret"]["secretName"] = "aaa-kafka-receiver"
        self.assertFinding("no Kafka credentials of its own")

    def test_missing_probe(self):
        del container(self.objs, "aaa-consumer")["readinessProbe"]
        self.assertFinding("no readinessProbe")

    def test_missing_memory_limit(self):
        del container(self.objs, "aaa-watermark")["resources"]["limits"]["memory"]
        self.assertFinding("no memory limit")

    def test_root_user(self):
        pod = find(self.objs, "Deployment", "aaa-receiver")["spec"]["template"]["spec"]
        pod["securityContext"]["runAsNonRoot"] = False
        self.assertFinding("may run as root")

    def test_writable_root_filesystem(self):
        container(self.objs, "aaa-receiver")["securityContext"]["readOnlyRootFilesystem"] = False
        self.assertFinding("root filesystem is writable")

    def test_missing_disruption_budget(self):
        self.objs.remove(find(self.objs, "PodDisruptionBudget", "aaa-watermark"))
        self.assertFinding("no PodDisruptionBudget")

    def test_latest_image(self):
        container(self.objs, "aaa-consumer")["image"] = "ghcr.io/aaa-pipeline/aaa:latest"
        self.assertFinding("not pinned")

    def test_literal_secret(self):
        env = container(self.objs, "aaa-consumer")["env"]
        env.append({"name": "AAA_DATABASE_URL", "value": "postgres://u:p@db/aaa"})
        self.assertFinding("reference a Secret")

    def test_secret_object(self):
        self.objs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "leak"}})
        self.assertFinding("Secret values do not belong")

    def test_single_receiver(self):
        find(self.objs, "HorizontalPodAutoscaler", "aaa-receiver")["spec"]["minReplicas"] = 1
        self.assertFinding("minReplicas below 2")

    def test_consumers_beyond_partitions(self):
        find(self.objs, "HorizontalPodAutoscaler", "aaa-consumer")["spec"]["maxReplicas"] = 13
        self.assertFinding("exceeds the topic's 12 partitions")

    def test_topic_replication(self):
        find(self.objs, "KafkaTopic", "aaa-raw")["spec"]["config"]["min.insync.replicas"] = 1
        self.assertFinding("min.insync.replicas below 2")

    def test_short_retention(self):
        find(self.objs, "KafkaTopic", "aaa-raw")["spec"]["config"]["retention.ms"] = 3600000
        self.assertFinding("retention shorter than 72 h")

    def test_topic_smaller_than_a_delivery(self):
        del find(self.objs, "KafkaTopic", "aaa-raw")["spec"]["config"]["max.message.bytes"]
        self.assertFinding("max.message.bytes below")

    def test_ingress_smaller_than_the_receivers_verified_limit(self):
        ingress = find(self.objs, "Ingress", "aaa-receiver")
        ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] = "1m"
        self.assertFinding("proxy-body-size 1m = 1048576 bytes, but Deployment/aaa-receiver reads bodies up to 2097152 bytes")

    def test_receiver_verifying_more_than_the_ingress_lets_through(self):
        env = container(self.objs, "aaa-receiver")["env"]
        next(e for e in env if e["name"] == "AAA_MAX_VERIFIED_BYTES")["value"] = "8388608"
        findings = policy.check(self.objs)
        self.assertTrue(any("make them agree" in f for f in findings), findings)
        self.assertTrue(any("max.message.bytes below the receiver's largest record" in f for f in findings), findings)

    def test_grace_shorter_than_drain(self):
        pod = find(self.objs, "Deployment", "aaa-receiver")["spec"]["template"]["spec"]
        pod["terminationGracePeriodSeconds"] = 10
        self.assertFinding("terminationGracePeriodSeconds 10")

    def test_no_default_deny(self):
        self.objs.remove(find(self.objs, "NetworkPolicy", "aaa-default-deny"))
        self.assertFinding("no default-deny NetworkPolicy")


if __name__ == "__main__":
    unittest.main()
