// Validate custom resources (JSON files, one object each) against the schema
// generated from prometheus-operator's Go types (@kubernetes-models/*):
// types, required fields, enums and patterns. Exit 1 on any error.
//
// Usage: node validate_crds.mjs FILE.json...
import { readFileSync } from "node:fs";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const models = {
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
};

let failures = 0;
for (const file of process.argv.slice(2)) {
  const obj = JSON.parse(readFileSync(file, "utf8"));
  const key = `${obj.apiVersion}/${obj.kind}`;
  const Model = models[key];
  if (!Model) {
    console.log(`ERROR ${file}: no validator for ${key}`);
    failures++;
    continue;
  }
  try {
    new Model(obj).validate();
    console.log(`OK    ${file}: ${key} ${obj.metadata?.name}`);
  } catch (err) {
    console.log(`ERROR ${file}: ${key} ${obj.metadata?.name}: ${err.message}`);
    failures++;
  }
}
process.exit(failures ? 1 : 0);
