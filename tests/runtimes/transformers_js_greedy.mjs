// Greedy generation in transformers.js (@huggingface/transformers 3.8, onnxruntime-node) from
// given token ids, for tests/it/package_transformers_js.rs.
//
// Reads a JSON request on stdin:
//   {"model": PACKAGE_DIR, "runs": [{"prompt_ids": [...], "max_new_tokens": N, "inputs": {"steer.coeff.0": 8.0}}]}
// and writes {"transformers_js": VERSION, "runs": [{"tokens": [...], "first_logits": [...]}]}: the new
// tokens, and the logits of the prompt's last position (the row the first token is chosen from).
// Only the runtime runs here; the test compares with the transformers goldens.
// NODE_PATH must reach the node_modules holding @huggingface/transformers (scripts/runtimes.sh).

import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.join(process.env.NODE_PATH ?? ".", "x.js"));
const { AutoModelForCausalLM, Tensor, env } = require("@huggingface/transformers");

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const request = JSON.parse(Buffer.concat(chunks).toString("utf8"));

// A local folder only: nothing is fetched.
env.allowRemoteModels = false;
env.localModelPath = path.dirname(path.resolve(request.model));
const model = await AutoModelForCausalLM.from_pretrained(path.basename(request.model), { device: "cpu" });

const runs = [];
for (const run of request.runs) {
  const n = run.prompt_ids.length;
  const input_ids = new Tensor("int64", BigInt64Array.from(run.prompt_ids.map(BigInt)), [1, n]);
  const attention_mask = new Tensor("int64", new BigInt64Array(n).fill(1n), [1, n]);
  const fed = Object.fromEntries(
    Object.entries(run.inputs).map(([name, value]) => [name, new Tensor("float32", Float32Array.of(value), [])]),
  );
  const output = await model.generate({
    input_ids,
    attention_mask,
    ...fed,
    max_new_tokens: run.max_new_tokens,
    min_new_tokens: run.max_new_tokens,
    do_sample: false,
  });
  const tokens = output.tolist()[0].slice(n).map(Number);
  const { logits } = await model({ input_ids, attention_mask, ...fed });
  const vocab = logits.dims[2];
  const first_logits = Array.from(logits.data.slice((n - 1) * vocab, n * vocab));
  runs.push({ tokens, first_logits });
}
process.stdout.write(JSON.stringify({ transformers_js: env.version, runs }));
