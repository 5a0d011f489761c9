// A client of the deliberation service written as another team would write it: the official
// NATS JavaScript client and its services client, nothing of ours but the JSON Schemas.
//   node client.mjs NATS_URL SCHEMA_DIR
// Discovers the service, submits a deliberation and reads it until it concludes, submits a
// second one and cancels it, and checks every reply against its schema. Prints one JSON
// line of what it saw; exits 1 on the first thing that is not as the contract says.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { connect } from "@nats-io/transport-node";
import { Svcm } from "@nats-io/services";
import Ajv2020 from "ajv/dist/2020.js";

const [url, schemaDir] = process.argv.slice(2);
// Formats (date-time) are not checked: ajv needs a plugin for them.
const ajv = new Ajv2020({ strict: false, validateFormats: false });
const validators = {};
const check = (name, document) => {
  validators[name] ??= ajv.compile(JSON.parse(readFileSync(join(schemaDir, `${name}.schema.json`), "utf8")));
  if (!validators[name](document)) {
    throw new Error(`${name}: ${ajv.errorsText(validators[name].errors)}: ${JSON.stringify(document)}`);
  }
  return document;
};
const fail = (why) => {
  throw new Error(why);
};

const nc = await connect({ servers: url });
const ask = async (endpoint, body) => {
  const reply = await nc.request(`deliberation.${endpoint}`, JSON.stringify(body), { timeout: 10_000 });
  const code = reply.headers?.get("Nats-Service-Error-Code");
  if (code) return { error: Number(code), why: reply.headers.get("Nats-Service-Error") };
  return check(`service.${endpoint}.reply`, reply.json());
};
const until = async (id, wanted, seconds = 120) => {
  const giveUp = Date.now() + seconds * 1000;
  for (;;) {
    const status = await ask("get", check("service.get.request", { deliberation_id: id }));
    if (status.status === wanted) return status;
    if (Date.now() > giveUp) fail(`${id} is still ${status.status}, not ${wanted}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
};

try {
  const client = new Svcm(nc).client();
  const pings = [];
  for await (const ping of await client.ping("deliberation")) pings.push(ping);
  const infos = [];
  for await (const info of await client.info("deliberation")) infos.push(info);
  const subjects = infos.flatMap((info) => info.endpoints.map((endpoint) => endpoint.subject)).sort();
  if (pings.length < 1) fail("no deliberation service answered $SRV.PING");
  if (subjects.join() !== "deliberation.cancel,deliberation.get,deliberation.submit") fail(`endpoints ${subjects}`);

  const request = check("service.submit.request", { task: "Write a function that adds two numbers", roles: ["DEV", "QA"] });
  const accepted = await ask("submit", request);
  if (accepted.status !== "accepted") fail(`submit answered ${JSON.stringify(accepted)}`);
  const done = await until(accepted.deliberation_id, "completed");
  if (done.result?.deliberation_id !== accepted.deliberation_id || !done.flow_run_id) fail("no result or flow run");

  const refused = await ask("submit", { task: "" });
  if (refused.error !== 400) fail(`an empty task answered ${JSON.stringify(refused)}`);
  const unknown = await ask("get", { deliberation_id: "never-submitted" });
  if (unknown.error !== 404) fail(`an unknown id answered ${JSON.stringify(unknown)}`);

  const second = await ask("submit", { task: "Hold this one", roles: ["DATA"] });
  await until(second.deliberation_id, "running");
  await ask("cancel", check("service.cancel.request", { deliberation_id: second.deliberation_id }));
  const cancelled = await until(second.deliberation_id, "cancelled", 60);

  const stats = [];
  for await (const stat of await client.stats("deliberation")) stats.push(stat);
  const submits = stats.flatMap((s) => s.endpoints).find((e) => e.name === "submit")?.num_requests ?? 0;
  console.log(
    JSON.stringify({
      services: pings.length,
      completed: done.deliberation_id,
      winner: done.result.winner?.agent_id ?? null,
      cancelled: cancelled.result?.status,
      submits,
    }),
  );
} catch (error) {
  console.error(`node client: ${error.message}`);
  process.exitCode = 1;
} finally {
  await nc.close();
}
