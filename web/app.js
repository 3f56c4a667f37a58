// The page: loads a transformers.js package (`sae-onnx package … --format transformers.js`) named
// by ?model=PATH (a folder under this page), and greedily continues a prompt twice, base and
// steered, one token of each in turn so that both columns stream together.
//
// Base column: for a sweepable package (inputs steer.coeff.N, listed with their steer.csv
// values in config.json's sae_onnx.coefficient_inputs) it is the same model with every
// coefficient at 0, one download and one session; sliders set the steered column's values.
// A package without coefficient inputs needs ?base=PATH, a package of the unsteered model.
//
// Decoding calls the model's forward step by step, not generate(): generate() drops inputs it
// does not know (the coefficients), and one session cannot run two generate() calls at once.
// The runtime comes from ./node_modules (npm, pinned in package.json): no CDN.

import {
  AutoModelForCausalLM,
  AutoTokenizer,
  Tensor,
  env,
} from "./node_modules/@huggingface/transformers/dist/transformers.min.js";

env.allowRemoteModels = false;
env.allowLocalModels = true;
env.useBrowserCache = false; // a re-packaged folder at the same path must not be served stale
env.backends.onnx.wasm.wasmPaths = new URL("./node_modules/@huggingface/transformers/dist/", import.meta.url).href;
// Several threads need a cross-origin-isolated page, which a plain static server does not give.
env.backends.onnx.wasm.numThreads = 1;

const COEFFICIENT_PREFIX = "steer.coeff.";
const $ = (id) => document.getElementById(id);

/** Sets the page state the test (and assistive tech via #status) follows. */
function setState(state, message) {
  document.body.dataset.state = state;
  $("status").textContent = message;
}

/** A package path relative to the page -> the (localModelPath, id) pair from_pretrained wants. */
function modelLocation(path) {
  const url = new URL(path.replace(/\/*$/, "/"), location.href);
  const parts = url.pathname.split("/").filter(Boolean);
  const id = decodeURIComponent(parts.pop());
  return { root: `/${parts.join("/")}${parts.length ? "/" : ""}`, id };
}

async function load(path) {
  const { root, id } = modelLocation(path);
  env.localModelPath = root;
  const tokenizer = await AutoTokenizer.from_pretrained(id);
  const model = await AutoModelForCausalLM.from_pretrained(id, { device: "wasm" });
  const csvValues = model.config.sae_onnx?.coefficient_inputs ?? {};
  const coefficients = model.sessions.model.inputNames
    .filter((name) => name.startsWith(COEFFICIENT_PREFIX))
    .map((name) => ({ name, value: Number(csvValues[name] ?? 1) }));
  return { tokenizer, model, coefficients };
}

/** One slider and one number box per coefficient input, kept in step; returns the values' reader. */
function coefficientControls(coefficients) {
  const box = $("coefficients");
  box.hidden = coefficients.length === 0;
  const readers = coefficients.map(({ name, value }, i) => {
    const span = Math.abs(value) * 2 || 100;
    const row = document.createElement("div");
    row.className = "coefficient";
    row.innerHTML = `<label for="coeff-${i}"></label>
      <input id="coeff-${i}" type="range" min="${-span}" max="${span}" step="${span / 100}" value="${value}">
      <input id="coeff-${i}-value" type="number" step="any" value="${value}" aria-label="">`;
    row.querySelector("label").textContent = `${name} (steer.csv: ${value})`;
    const [slider, number] = row.querySelectorAll("input");
    number.setAttribute("aria-label", `${name} value`);
    slider.addEventListener("input", () => (number.value = slider.value));
    number.addEventListener("input", () => (slider.value = number.value));
    box.append(row);
    return () => [name, Number(number.value)];
  });
  return () => Object.fromEntries(readers.map((read) => read()));
}

const scalar = (value) => new Tensor("float32", Float32Array.of(value), []);
const feedsOf = (values) => Object.fromEntries(Object.entries(values).map(([k, v]) => [k, scalar(v)]));

function argmaxLastRow(logits) {
  const [, length, vocab] = logits.dims;
  const row = logits.data.subarray((length - 1) * vocab, length * vocab);
  let best = 0;
  for (let i = 1; i < vocab; i++) if (row[i] > row[best]) best = i; // first maximum, as torch.argmax
  return best;
}

/**
 * Greedy decoding of every lane in lockstep: one forward step per lane per round, each lane with
 * its own KV cache, until max_new_tokens or the lane's end-of-sequence token.
 * A lane is { model, feeds, show(ids) }; `stopped()` ends the rounds early.
 */
async function decode(lanes, promptIds, maxNew, eos, stopped) {
  const states = lanes.map((lane) => ({ lane, ids: [], past: null, done: false }));
  for (let step = 0; step < maxNew && !stopped(); step++) {
    for (const s of states.filter((s) => !s.done)) {
      const fresh = s.past ? s.ids.slice(-1) : promptIds;
      const total = promptIds.length + s.ids.length;
      const outputs = await s.lane.model({
        input_ids: new Tensor("int64", BigInt64Array.from(fresh.map(BigInt)), [1, fresh.length]),
        attention_mask: new Tensor("int64", new BigInt64Array(total).fill(1n), [1, total]),
        past_key_values: s.past,
        ...s.lane.feeds,
      });
      s.past = s.lane.model.getPastKeyValues(outputs, s.past);
      const next = argmaxLastRow(outputs.logits);
      s.ids.push(next);
      s.done = eos.includes(next);
      s.lane.show(s.ids);
    }
    if (states.every((s) => s.done)) break;
  }
}

async function main() {
  const params = new URLSearchParams(location.search);
  const modelPath = params.get("model");
  if (!modelPath) {
    setState("error", "No model: open this page as index.html?model=PATH (a transformers.js package folder under it).");
    return;
  }
  $("model").value = modelPath;
  setState("loading", `Loading ${modelPath} …`);
  const steered = await load(modelPath);
  const base = params.get("base") ? await load(params.get("base")) : null;
  if (!base && steered.coefficients.length === 0) {
    throw new Error("this package has no coefficient inputs: add &base=PATH, a package of the unsteered model");
  }
  const readCoefficients = coefficientControls(steered.coefficients);
  const { tokenizer, model } = steered;
  const eos = [model.generation_config?.eos_token_id ?? model.config.eos_token_id].flat().filter((t) => t != null);
  $("base-title").textContent = base ? `Base (${params.get("base")})` : "Base (coefficients 0)";

  let stop = false;
  $("stop").addEventListener("click", () => (stop = true));
  $("controls").addEventListener("submit", async (event) => {
    event.preventDefault();
    const values = readCoefficients();
    const zeros = Object.fromEntries(Object.keys(values).map((k) => [k, 0]));
    const show = (id) => (ids) => ($(id).textContent = tokenizer.decode(ids, { skip_special_tokens: true }));
    const lanes = [
      { model: base?.model ?? model, feeds: base ? {} : feedsOf(zeros), show: show("base-text") },
      { model, feeds: feedsOf(values), show: show("steered-text") },
    ];
    $("steered-title").textContent = Object.keys(values).length
      ? `Steered (${Object.entries(values).map(([k, v]) => `${k} = ${v}`).join(", ")})`
      : "Steered";
    $("base-text").textContent = $("steered-text").textContent = "";
    const promptIds = tokenizer.encode($("prompt").value); // with <bos>, as transformers' tokenizer
    stop = false;
    $("generate").disabled = true;
    $("stop").disabled = false;
    setState("generating", "Generating…");
    const start = performance.now();
    try {
      await decode(lanes, promptIds, Number($("max-new-tokens").value), eos, () => stop);
      const seconds = ((performance.now() - start) / 1000).toFixed(2);
      setState("done", `${stop ? "Stopped" : "Done"} in ${seconds} s (greedy, WASM).`);
    } catch (error) {
      setState("error", `Generation failed: ${error.message ?? error}`);
    } finally {
      $("generate").disabled = false;
      $("stop").disabled = true;
    }
  });
  $("generate").disabled = false;
  setState("ready", `Ready: ${modelPath}${steered.coefficients.length ? " (sweepable)" : ""}.`);
}

main().catch((error) => setState("error", `Cannot load the model: ${error.message ?? error}`));
