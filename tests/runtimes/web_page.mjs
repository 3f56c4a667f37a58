// web/index.html in a real headless Chromium (the system's, driven by playwright-core), for
// tests/it/web_page.rs. Serves web/ with the runtime (node_modules) and a package under it from
// 127.0.0.1 on a free port, loads the page with a sweepable package, types the prompt, generates
// with the package's coefficients, then with the first coefficient at 0; then loads it with a
// steered package and a base package (?model=…&base=…) and generates once more. Reports what
// the page showed each time.
//
// Reads a JSON request on stdin:
//   {"web": DIR, "node_modules": DIR, "packages": {"sweep": DIR, "fixed": DIR, "base": DIR},
//    "chromium": EXE, "prompt": TEXT, "max_new_tokens": N, "screenshot": PNG}
// (each package served as models/NAME) and writes {"transformers_js", "playwright", "chromium",
// "coefficients": [names], "steered", "zero", "pair"}, each {"base", "steered"}: the columns' text.
// The server, the browser and its profile folder go whatever happens; only 127.0.0.1 is used.

import { createRequire } from "node:module";
import { createServer } from "node:http";
import { mkdtemp, rm, readFile, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const request = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const require = createRequire(path.join(path.resolve(request.node_modules), "x.js"));
const { chromium } = require("playwright-core");

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript",
  ".mjs": "text/javascript",
  ".css": "text/css",
  ".json": "application/json",
  ".wasm": "application/wasm",
};
// URL prefix -> folder, the first match wins (so "/" comes last).
const MOUNTS = [
  ["/node_modules/", request.node_modules],
  ...Object.entries(request.packages).map(([name, dir]) => [`/models/${name}/`, dir]),
  ["/", request.web],
];

/** The file a URL path names, or null when it is outside every mount. */
function fileFor(urlPath) {
  for (const [prefix, dir] of MOUNTS) {
    if (!urlPath.startsWith(prefix)) continue;
    const root = path.resolve(dir);
    const file = path.resolve(root, "." + decodeURIComponent(urlPath.slice(prefix.length - 1)));
    return file === root || file.startsWith(root + path.sep) ? file : null;
  }
  return null;
}

const server = createServer(async (req, res) => {
  const urlPath = new URL(req.url, "http://127.0.0.1").pathname;
  let file = fileFor(urlPath.endsWith("/") ? urlPath + "index.html" : urlPath);
  try {
    if (!file || !(await stat(file)).isFile()) throw new Error("not a file");
    const body = await readFile(file);
    res.writeHead(200, { "Content-Type": TYPES[path.extname(file)] ?? "application/octet-stream" });
    res.end(body);
  } catch {
    res.writeHead(404).end();
  }
});

const profile = await mkdtemp(path.join(tmpdir(), "sae-onnx-chromium-"));
let context;
try {
  await new Promise((resolve, reject) => server.listen(0, "127.0.0.1", resolve).on("error", reject));
  const origin = `http://127.0.0.1:${server.address().port}`;
  // Flags that keep Chromium off the network on a closed machine (no sync, updates, QUIC).
  context = await chromium.launchPersistentContext(profile, {
    executablePath: request.chromium,
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
    viewport: { width: 960, height: 640 },
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()}`));
  page.on("request", (r) => {
    if (!r.url().startsWith(origin)) problems.push(`request outside 127.0.0.1: ${r.url()}`);
  });

  /** Waits until the page is in `state` (or failed), returns nothing, throws with its status. */
  const waitFor = async (state) => {
    await page.waitForFunction(
      (s) => [s, "error"].includes(document.body.dataset.state), state, { timeout: 120_000 });
    const now = await page.evaluate(() => document.body.dataset.state);
    if (now !== state) throw new Error(`page: ${await page.textContent("#status")}; ${problems.join("; ")}`);
  };
  const columns = async () => ({
    base: await page.textContent("#base-text"),
    steered: await page.textContent("#steered-text"),
  });

  /** Loads the page, sets the prompt and length, generates, returns the columns. */
  const generate = async () => {
    await page.getByLabel("Prompt").fill(request.prompt);
    await page.getByLabel("New tokens").fill(String(request.max_new_tokens));
    await page.getByRole("button", { name: "Generate" }).click();
    await waitFor("done");
    return columns();
  };

  await page.goto(`${origin}/?model=models/sweep`);
  await waitFor("ready");
  const coefficients = await page.$$eval("#coefficients input[type=number]", (xs) => xs.map((x) => x.getAttribute("aria-label")));
  const steered = await generate();
  await page.screenshot({ path: request.screenshot });

  // The coefficient to 0 in its number box (the slider follows), then Generate by keyboard.
  await page.locator("#coeff-0-value").fill("0");
  await page.getByRole("button", { name: "Generate" }).press("Enter");
  await waitFor("done");
  const zero = await columns();
  const sliderValue = await page.inputValue("#coeff-0");

  // A steered package without coefficient inputs, beside a package of its base model.
  await page.goto(`${origin}/?model=models/fixed&base=models/base`);
  await waitFor("ready");
  const pair = await generate();

  if (problems.length) throw new Error(problems.join("; "));
  process.stdout.write(JSON.stringify({
    transformers_js: await page.evaluate(async () =>
      (await import("./node_modules/@huggingface/transformers/dist/transformers.min.js")).env.version),
    playwright: require("playwright-core/package.json").version,
    chromium: context.browser()?.version() ?? null,
    coefficients,
    slider_after_zero: sliderValue,
    steered,
    zero,
    pair,
  }));
} finally {
  await context?.close();
  await new Promise((resolve) => server.close(resolve));
  await rm(profile, { recursive: true, force: true });
}
