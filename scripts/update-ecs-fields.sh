#!/usr/bin/env bash
# Regenerate tests/data/schemas/ecs_fields-<version>.json: the field definitions of the Elastic
# Common Schema as Elastic publishes them in the npm package @elastic/ecs (generated/ecs_flat,
# the flattened ecs_flat.yml), reduced to what the alert-export tests check: each field's
# type, its allowed values (with the event types each category expects) and whether it is an
# array. Needs node and npm. Usage: scripts/update-ecs-fields.sh [VERSION]
set -euo pipefail
version="${1:-9.4.0}"
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@elastic/ecs@${version}" >/dev/null && tar xzf elastic-ecs-*.tgz)
node -e '
const flat = require(process.argv[1]).EcsFlat;
const out = {};
for (const [name, f] of Object.entries(flat)) {
  const e = { type: f.type };
  if (f.allowed_values) {
    e.allowed_values = f.allowed_values.map((a) => a.name);
    const expected = {};
    for (const a of f.allowed_values) if (a.expected_event_types) expected[a.name] = a.expected_event_types;
    if (Object.keys(expected).length) e.expected_event_types = expected;
  }
  if (f.normalize && f.normalize.length) e.normalize = f.normalize;
  out[name] = e;
}
process.stdout.write(JSON.stringify({ source: "npm @elastic/ecs " + process.argv[2] + " generated/ecs_flat", fields: out }, null, 0) + "\n");
' "$work/package/build/commonjs/ecs_flat.js" "$version" > "$root/tests/data/schemas/ecs_fields-${version}.json"
echo "wrote tests/data/schemas/ecs_fields-${version}.json"
