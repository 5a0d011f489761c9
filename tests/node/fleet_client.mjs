// A client of the fleet orchestrator's API that is not ours: gRPC's own JavaScript client,
// its stubs loaded at run time from the .proto alone (tests/integration/test_fleet_grpc.py).
// Usage: node fleet_client.mjs HOST:PORT PROTO_ROOT
// Prints one JSON line of what it saw; exits 1 with a message on the first surprise.
import { randomUUID } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const [address, protoRoot] = process.argv.slice(2);
const definition = protoLoader.loadSync("fleet/orchestrator/v1/orchestrator.proto", {
  includeDirs: [protoRoot], keepCase: true, longs: Number, enums: String, defaults: true,
});
const v1 = grpc.loadPackageDefinition(definition).fleet.orchestrator.v1;
const client = new v1.OrchestratorService(address, grpc.credentials.createInsecure());

function fail(message) {
  console.error(`fleet_client: ${message}`);
  process.exit(1);
}

function call(method, request, seconds = 120) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + seconds * 1000 }, (error, reply) =>
      error ? reject(error) : resolve(reply));
  });
}

async function code(method, request) {
  try {
    await call(method, request, 20);
  } catch (error) {
    return [grpc.status[error.code], error.details];
  }
  fail(`${method} ${JSON.stringify(request)} succeeded`);
}

const council = (task_id, fields = {}) =>
  ({ task_id, task_description: "Add rate limiting to the login endpoint", role: "QA", num_agents: 3, ...fields });

const seen = {};

const done = await call("Deliberate", council(randomUUID()));
if (done.results.length !== 3) fail(`Deliberate answered ${done.results.length} results`);
if (done.winner_id !== done.results[0].proposal.author_id) fail("the winner is not ranked first");
seen.deliberated = done.winner_id;

const taskId = `node-${randomUUID()}`;
const submitted = await call("DeliberateForBacklogReview", council(taskId), 30);
if (submitted.task_id !== taskId || submitted.results.length !== 0) fail("backlog review did not answer at once");
let got;
for (const started = Date.now(); ; await new Promise((r) => setTimeout(r, 500))) {
  got = await call("GetDeliberationResult", { task_id: taskId }, 30);
  if (!["DELIBERATION_STATUS_PENDING", "DELIBERATION_STATUS_IN_PROGRESS"].includes(got.status)) break;
  if (Date.now() - started > 120000) fail(`still ${got.status} after 120 s`);
}
seen.backlog = got.status;

const updates = await new Promise((resolve, reject) => {
  const all = [];
  const stream = client.StreamDeliberation(council(randomUUID()), { deadline: Date.now() + 120000 });
  stream.on("data", (update) => all.push(update));
  stream.on("error", reject);
  stream.on("end", () => resolve(all));
});
if (updates.at(-1).status !== "complete") fail(`the stream ended with ${updates.at(-1).status}`);
seen.streamed = updates.filter((u) => u.partial_result).length;

seen.codes = {
  invalid: await code("DeliberateForBacklogReview", council("", { role: "CEO" })),
  not_found: await code("GetDeliberationResult", { task_id: "never-submitted" }),
  exists: await code("DeliberateForBacklogReview", council(taskId, { role: "DEV" })),
};
const unserved = await new Promise((resolve) =>
  client.makeUnaryRequest("/fleet.orchestrator.v1.OrchestratorService/ListCouncils", (x) => x, (x) => x,
    Buffer.alloc(0), (error) => resolve(error ? [grpc.status[error.code], error.details] : null)));
seen.codes.unimplemented = unserved;
client.close();
console.log(JSON.stringify(seen));
