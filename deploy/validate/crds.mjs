// Validates custom resources against their CRDs' OpenAPI schemas, offline:
// the @kubernetes-models packages compile those schemas into validators.
// Input (stdin): JSON array of {source, object}. Output: one line per object;
// exit status 1 if any object is invalid or of a kind we have no schema for.
import { readFileSync } from "node:fs";

// API group → package whose `<apiVersion>/<Kind>` modules validate it.
const PACKAGES = {
  "kafka.strimzi.io": "@kubernetes-models/strimzi-kafka-operator",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
};

const items = JSON.parse(readFileSync(0, "utf8"));
let failures = 0;
for (const { source, object } of items) {
  const label = `${source}: ${object.kind}/${object.metadata?.name}`;
  const group = String(object.apiVersion).split("/")[0];
  const pkg = PACKAGES[group];
  if (!pkg) {
    console.log(`ERROR ${label}: no schema for API group ${group}`);
    failures++;
    continue;
  }
  let Model;
  try {
    const module = await import(`${pkg}/${object.apiVersion}/${object.kind}`);
    Model = module[object.kind];
  } catch (e) {
    console.log(`ERROR ${label}: no schema for ${object.apiVersion} ${object.kind}`);
    failures++;
    continue;
  }
  try {
    new Model(object).validate();
    console.log(`ok    ${label} (${object.apiVersion})`);
  } catch (e) {
    console.log(`ERROR ${label}: ${e.message}`);
    failures++;
  }
}
process.exit(failures === 0 ? 0 : 1);
