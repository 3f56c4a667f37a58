//! Command-line interface: clap commands turned into validated calls into the library.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::eval::options::BatchSize;
use crate::export::{self, ExportOptions, Ops};
use crate::inspect;
use crate::onnx::DataType;

/// Export Gemma models to ONNX, steer them with SAE features, and measure what steering does.
#[derive(Debug, Parser)]
#[command(name = "sae-onnx", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// ONNX Runtime library (libonnxruntime.so.1.31.x) or the folder holding it. Default: the
    /// ORT_DYLIB_PATH variable, a copy beside this executable, the installed Python onnxruntime
    /// or onnxruntime-gpu package, then the copy fetched by scripts/fetch-ort.sh.
    #[arg(long, global = true, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,

    /// More detail on stderr (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// No progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

const EXAMPLES: &str = "Examples:
  sae-onnx export google/gemma-2-2b -o gemma-2-2b.onnx
  sae-onnx patch --csv dog_steer.csv -o steered.onnx
  sae-onnx eval steered.onnx --task mmlu --device cuda:0
  sae-onnx saes gemma-scope-2b res layer_20
  sae-onnx inspect model.onnx            what a model holds: I/O, opsets, weights, metadata
  sae-onnx inspect model.onnx --json     the same as JSON, for scripts";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Export a Gemma, Llama, Mistral, Qwen 2/3 or GPT-2 checkpoint (Hugging Face id or local
    /// folder) to ONNX: pure Rust, no torch.
    /// Weights stream into `OUT.data` beside the model; residual-stream tensors carry their
    /// TransformerLens hook names (blocks.L.hook_resid_post, ...) so `patch` can find them.
    Export(ExportArgs),
    /// Steer a model: add `coefficient × W_dec[latent]` of SAE features (from a steer.csv) to the
    /// residual stream, as constant Adds in an ordinary ONNX graph that records its provenance.
    Patch(PatchArgs),
    /// Generate text from a model (steered or not): greedy by default, streamed as it is produced;
    /// `--compare BASE.onnx` shows the base model's continuation beside it.
    Generate(GenerateArgs),
    /// List the SAE releases sae-onnx knows (Gemma Scope, Gemma Scope 2, ...), filtered by words.
    Saes(SaesArgs),
    /// Score an ONNX model on lm-evaluation-harness tasks (same prompts, tokenization, metrics and
    /// output files as lm-eval 0.4.13), via ONNX Runtime on the CPU or a GPU.
    Eval(EvalArgs),
    /// Show what an ONNX model holds: IR and opsets, inputs and outputs, weights, external data
    /// files, metadata, and the hook points and steering it carries.
    Inspect(InspectArgs),
    /// Make a model ready for another runtime: onnxruntime-genai (a folder `og.Model(OUT)` opens)
    /// or transformers.js (a folder `from_pretrained` loads), with its config, weights and tokenizer.
    Package(PackageArgs),
    /// Compare eval results (the first is the baseline): scores, differences and paired
    /// significance tests on the same documents; `--plot` draws a coefficient sweep.
    Compare(CompareArgs),
    /// Combine the outputs of `eval --shard 0/N` .. `--shard N-1/N` into the results and samples
    /// files of the unsharded run: every metric re-aggregated from the per-document values.
    Merge(MergeArgs),
    /// Run a steering study described in one GRID.yaml (models, steer.csv plans with their
    /// coefficients, tasks, eval options, output folder) as work units, each worker of a Slurm
    /// job array or Kubernetes Indexed Job its share; `--status` and `--report` when done.
    Sweep(SweepArgs),
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  sae-onnx sweep grid.yaml --worker 0/1                  everything, in this process
  sbatch --array=0-7 --wrap 'sae-onnx sweep grid.yaml --worker auto'   (Slurm: 8 workers)
  sae-onnx sweep grid.yaml --status                      done / missing units
  sae-onnx sweep grid.yaml --report                      table, paired tests, plots

GRID.yaml (paths relative to it; an unknown key is an error, with its line):
  model: base.onnx                 # or models: [a.onnx, b.onnx]
  plans:
    - name: dog                    # letters, digits, - _ .
      csv: dog_steer.csv           # one `patch --sweepable` per plan, made once beside the model
      coefficients: [0, 60, 120]   # 0 is the baseline of the paired tests
      # input: steer.coeff.1       # which coefficient, if the plan has several rows
  tasks: [mmlu, wmdp]              # tasks, groups, tags or task YAMLs
  eval: {num_fewshot: 5, limit: 100, batch_size: 16, device: cuda, seed: 1234, log_samples: true,
         max_length: 2048, include_path: [tasks/]}
  shards: 4                        # optional: each run's documents in 4 units (eval --shard)
  workers: 8                       # optional: the worker count of a Kubernetes Indexed Job
  output: study/

Units are model × plan × coefficient × task (× shard), with ids <model>/<plan>/c<coef>/<task>
[/shard<K>of<N>]; worker K of N runs units K, K+N, ... in the order task, model, plan,
coefficient, shard, so each task's units spread evenly over the workers. Each unit is written to a
temporary folder and renamed into output/units/<id>/ when complete: a rerun skips finished units
and redoes only what was lost; a lock (output/units/<id>.lock, refreshed every 30 s, stale after
5 minutes) keeps two workers off one unit, and the rename keeps a unit whole even if two run it.
--report writes output/report/results.csv and results.json (one row per plan × coefficient × task
× metric with stderr, and compare's paired test against the plan's coefficient 0) and one
plot_<model>_<plan>_<task>.png per plan and task.")]
pub struct SweepArgs {
    /// The grid file.
    #[arg(value_name = "GRID.yaml")]
    pub grid: PathBuf,
    /// Which worker this process is: K/N (0 <= K < N), or `auto`: from Slurm
    /// ($SLURM_ARRAY_TASK_ID, $SLURM_ARRAY_TASK_COUNT or _MAX) or a Kubernetes Indexed Job
    /// ($JOB_COMPLETION_INDEX, the count from --workers or the grid's `workers`).
    #[arg(long, value_name = "K/N|auto", conflicts_with_all = ["status", "report"])]
    pub worker: Option<crate::sweep::units::WorkerSpec>,
    /// The worker count under a Kubernetes Indexed Job (its `completions`), for --worker auto;
    /// overrides the grid's `workers`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub workers: Option<u32>,
    /// List the units done and missing (and who runs the missing ones), then exit.
    #[arg(long, conflicts_with = "report")]
    pub status: bool,
    /// Merge, tabulate, test and plot a finished grid under <output>/report/.
    #[arg(long)]
    pub report: bool,
    /// Significance level of the paired tests.
    #[arg(long, default_value_t = 0.05, value_parser = parse_alpha)]
    pub alpha: f64,
    /// Bootstrap resamples of the paired tests of non-0/1 metrics.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub resamples: u32,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  sae-onnx eval model.onnx --task mmlu --shard 0/4 --output-path shards/0 --log-samples   (one per GPU or node)
  ...
  sae-onnx eval model.onnx --task mmlu --shard 3/4 --output-path shards/3 --log-samples
  sae-onnx merge shards/0 shards/1 shards/2 shards/3 --output-path runs/mmlu
  sae-onnx merge shards/* --output-path runs/mmlu

Each DIR is a shard's --output-path (its record shard_<K>_of_<N>_<date>.json is found in it or up
to three folders down, so a sweep's sweep_<input>_<value>/ points merge into the same names under
OUT). The merged files equal the unsharded run's except for timestamps and durations. A set with
a shard missing or repeated, or shards of different runs (model, steering, tasks, task versions,
--limit, --num-fewshot, --seed, N) is refused before anything is written, naming the files and
what differs.")]
pub struct MergeArgs {
    /// The shards' output folders: all N shards of the run, each once.
    #[arg(value_name = "DIR", required = true, num_args = 1..)]
    pub dirs: Vec<PathBuf>,
    /// Folder (or .json file) for the merged results_<date>.json and samples, as `eval` writes them.
    #[arg(long)]
    pub output_path: PathBuf,
    /// Replace an existing --output-path .json file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  sae-onnx eval base.onnx    --task mmlu --output-path runs/base --log-samples
  sae-onnx eval steered.onnx --task mmlu --output-path runs/steered --log-samples
  sae-onnx compare runs/base runs/steered              is the steered score really different?
  sae-onnx compare runs/c0 runs/c60 runs/c120 --plot sweep.png --x-values 0,60,120
  sae-onnx compare base/results_2026-01-01T10-00-00.json steered/ --json > comparison.json

Each RESULTS is a results_<date>.json, or the folder holding one (directly or one level down, as
--output-path DIR leaves it), with the samples_<task>_<date>.jsonl of --log-samples beside it;
lm-eval's own --output_path folders work too. Documents are matched by doc_id and doc_hash: runs
that scored different documents (another --limit, task version or dataset) are refused.

Tests, per task, group (pooling its subtasks' documents) and metric:
  0/1 metrics (acc, acc_norm, exact_match): exact McNemar test, the two-sided binomial test on the
    documents only one run got right ('gained': right only in B, 'lost': right only in A).
  others (perplexities): paired bootstrap: --resamples draws of the documents with replacement
    (seeded, reproducible), the (1-α) percentile interval of the difference and a two-sided p-value.

The x of each run for --plot: --x-values, else `sae_onnx.sweep.value` in its results JSON, else
the coefficient of the one steering row (the model's provenance under `steering`) that differs
between the runs; an unsteered run counts as 0.")]
pub struct CompareArgs {
    /// Results files or folders; the first is the baseline, each other one is compared with it.
    #[arg(value_name = "RESULTS", required = true, num_args = 2..)]
    pub results: Vec<PathBuf>,
    /// Print the comparison as JSON (every number the table shows, unrounded).
    #[arg(long)]
    pub json: bool,
    /// Draw each top-level task's metrics against the steering coefficient into this PNG (960
    /// pixels wide, 440 per metric), with ±stderr error bars.
    #[arg(long, value_name = "OUT.png")]
    pub plot: Option<PathBuf>,
    /// Replace an existing --plot file (never one of the results or samples files compared).
    #[arg(long)]
    pub force: bool,
    /// The steering coefficient of each RESULTS, in order (e.g. 0,60,120), where the results do
    /// not record it.
    #[arg(long, value_delimiter = ',', value_name = "X,X,...", value_parser = parse_x_value)]
    pub x_values: Option<Vec<f64>>,
    /// Only these tasks or groups (with a group's subtasks); comma-separated or repeated.
    #[arg(long = "task", value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Only these metrics (acc, acc_norm, exact_match, word_perplexity, ...).
    #[arg(long = "metric", value_delimiter = ',')]
    pub metrics: Vec<String>,
    /// Significance level.
    #[arg(long, default_value_t = 0.05, value_parser = parse_alpha)]
    pub alpha: f64,
    /// Bootstrap resamples.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub resamples: u32,
    /// Bootstrap seed (Python's random.Random(seed) draws the same resamples).
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
}

fn parse_temperature(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        _ => Err(format!(
            "'{s}' is not a temperature: give a finite number ≥ 0 (0 is greedy), e.g. 0.7"
        )),
    }
}

fn parse_top_p(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(p) if p > 0.0 && p <= 1.0 => Ok(p),
        _ => Err(format!(
            "'{s}' is not a top-p: give a probability above 0 and at most 1, e.g. 0.9"
        )),
    }
}

fn parse_x_value(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(format!(
            "'{s}' is not a steering coefficient: give a finite number per run, e.g. 0,60,120"
        )),
    }
}

fn parse_alpha(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(a) if a > 0.0 && a < 1.0 => Ok(a),
        _ => Err(format!(
            "'{s}' is not a significance level: use a number between 0 and 1, e.g. 0.05"
        )),
    }
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  sae-onnx export google/gemma-2-2b -o gemma-2-2b.onnx
  sae-onnx export models/tiny-gemma2 -o tiny.onnx --dtype f32
  HF_HUB_OFFLINE=1 sae-onnx export google/gemma-2-2b -o g.onnx   (from the local HF cache only)")]
pub struct ExportArgs {
    /// Hugging Face model id (org/name, fetched into the HF cache; HF_TOKEN for gated models) or
    /// a folder with config.json and *.safetensors.
    pub model: String,
    /// The .onnx file to write (its weights go to OUT.data beside it).
    #[arg(short, long, value_name = "OUT.onnx")]
    pub output: PathBuf,
    /// Weight and activation type. Norms, softmax and logits are float32 regardless, as in
    /// transformers. f16/bf16 need a GPU execution provider: ONNX Runtime's CPU kernels are f32.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
    /// Operators the graph may use: `ort`, ONNX Runtime's fused RMSNorm (f32; f16/bf16 for Gemma
    /// only: the other families multiply the norm weight after the cast) and, in f32,
    /// fused attention (com.microsoft GroupQueryAttention), faster on ONNX Runtime's CPU and CUDA
    /// providers; `portable`, standard ONNX operators only, for any runtime. Same model, same
    /// hooks. Default: `ort` for f32 and bf16, `portable` for f16.
    #[arg(long, value_enum)]
    pub ops: Option<OpsArg>,
    /// Export the decoding graph for `generate`: `past_key_values.{L}.key/value` in,
    /// `present.{L}.key/value` out. It carries the same hooks, so one steer.csv patches both.
    #[arg(long)]
    pub kv_cache: bool,
    /// Branch, tag or commit of a hub model.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Replace OUT.onnx if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OpsArg {
    Portable,
    Ort,
}

impl From<OpsArg> for Ops {
    fn from(o: OpsArg) -> Self {
        match o {
            OpsArg::Portable => Ops::Portable,
            OpsArg::Ort => Ops::Ort,
        }
    }
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  sae-onnx export google/gemma-2-2b -o gemma.kv.onnx --kv-cache
  sae-onnx patch --csv dog_steer.csv --model gemma.kv.onnx -o dogs.kv.onnx
  sae-onnx package dogs.kv.onnx --format genai -o dogs-genai
  python -c 'import onnxruntime_genai as og; m = og.Model(\"dogs-genai\")'

  sae-onnx patch --csv dog_steer.csv --model gemma.kv.onnx -o sweep.kv.onnx --sweepable
  sae-onnx package sweep.kv.onnx --format genai -o sweep-genai     (feed steer.coeff.0 each run)
  sae-onnx package sweep.kv.onnx --format genai -o fixed-genai --coefficients fixed

  sae-onnx package dogs.kv.onnx --format transformers.js -o dogs-js
  node -e 'const t = require(\"@huggingface/transformers\"); t.env.localModelPath = \".\";
           t.AutoModelForCausalLM.from_pretrained(\"dogs-js\")'

  sae-onnx package dogs.onnx --format llama.cpp -o dogs.gguf
  llama-cli -m gemma-2-2b.gguf --control-vector dogs.gguf   (a GGUF from llama.cpp's convert_hf_to_gguf.py)
  sae-onnx package gemma.onnx --format llama.cpp --csv dog_steer.csv -o dogs.gguf

genai and transformers.js take decoding graphs only (`export --kv-cache`).
genai: the folder holds model.onnx + model.onnx.data
(hard links to the model's data file when on the same filesystem), genai_config.json (from the
checkpoint's config.json and generation_config.json) and the tokenizer files. With the default
--coefficients inputs, feed each coefficient as a float32 scalar with
Generator.set_model_input(\"steer.coeff.0\", array) before append_tokens, and keep the array alive
until generation ends (genai reads it on every step, it does not copy it).
transformers.js: config.json (the checkpoint's, with a transformers.js_config section naming the
file and its data), generation_config.json, the tokenizer files, onnx/model.onnx and its data as
onnx/model.onnx_data. Its generate() drops coefficient inputs: feed them to the model's forward
call step by step (web/app.js does), or package with --coefficients fixed.
llama.cpp: one control-vector GGUF file (any graph, full-sequence or decoding): the steering
recorded in MODEL, or --csv's, as float32 `direction.L` vectors that llama.cpp adds to decoder
layer L's output (blocks.L.hook_resid_post) at every position. Only that is expressible: `add`
rows (normalize none or unit) with fixed coefficients at blocks.L.hook_resid_post, L >= 1,
positions all; other steering, and sweepable models (use --csv), are refused.")]
pub struct PackageArgs {
    /// The model to package (`export --kv-cache`, steered or not).
    pub model: PathBuf,
    /// The runtime to package for.
    #[arg(long, value_enum)]
    pub format: PackageFormat,
    /// The package folder, or file for llama.cpp (written under a temporary name beside it, then
    /// renamed into place).
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    /// llama.cpp only: package this steer.csv's vectors instead of the steering recorded in the
    /// model (the model then gives the architecture, layer count and width).
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// The checkpoint folder with config.json, generation_config.json and the tokenizer files.
    /// Default: where the model's metadata says it was exported from.
    #[arg(long, value_name = "DIR")]
    pub checkpoint: Option<PathBuf>,
    /// A --sweepable model's coefficients: `inputs` keeps each as a graph input the caller must
    /// feed (runtimes do not feed ONNX default values), `fixed` makes them constants at the
    /// steer.csv values. Ignored for other models.
    #[arg(long, value_enum, default_value_t = CoefficientsArg::Inputs)]
    pub coefficients: CoefficientsArg,
    /// Replace OUT if it exists (never a folder holding one of the inputs).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PackageFormat {
    /// onnxruntime-genai (Python, C#, C++): `og.Model(OUT)`.
    Genai,
    /// transformers.js 3.8 (Node, browser): `AutoModelForCausalLM.from_pretrained(OUT)`.
    #[value(name = "transformers.js")]
    TransformersJs,
    /// llama.cpp: a control vector, `llama-cli --control-vector OUT`.
    #[value(name = "llama.cpp")]
    LlamaCpp,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CoefficientsArg {
    Inputs,
    Fixed,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "steer.csv formats (chosen by the header; spaces around fields are fine):
  latent_idx,steering_coefficient,sae_release,sae_id,description
  12082, 240.0,gemma-scope-2b-pt-res-canonical,layer_20/width_16k/canonical,dogs

  loader,action,sparse_model,hookpoint,feature_index,steering_coefficient,head_index,sae_id,description
  sae_lens,add,gemma-scope-2b-pt-res-canonical,layers.20,12082,240.0,,layer_20/width_16k/canonical,dogs

sae_release / sparse_model: a release (see `sae-onnx saes`), a Hugging Face repo id, or a local folder.

Actions (optional column `action`, default add; optional `threshold` for add_if_active): add,
clamp (set the SAE feature to the coefficient), add_if_active, clamp_projection (lm-eval's clamp;
in lm-eval's format `clamp` keeps that meaning and `clamp_feature` is the SAE clamp). All rows on a
hook read its unsteered value and their changes add up. See the README, steer.csv actions.

Where and how strongly (optional columns, both formats):
  positions  all (default: every position, <bos> included, as lm-eval steers), no_special (not
             where the token is one of the tokenizer's special tokens), prompt, generated (the
             prompt boundary is the graph input steer.prompt_length, which eval and generate feed;
             unfed, everything is prompt), N:M or N: (positions counted from 0 = <bos>)
  normalize  none (default: coefficient x W_dec[i]), unit (W_dec[i] made unit length), residual
             (coefficient x |x_t| x the unit direction: relative to the residual norm there);
             not on clamp / clamp_projection rows, which set a value
  e.g. latent_idx,steering_coefficient,sae_release,sae_id,description,positions,normalize
       12082,0.5,gemma-scope-2b-pt-res-canonical,layer_20/width_16k/canonical,dogs,generated,residual

Examples:
  sae-onnx patch --csv dog_steer.csv -o steered.onnx                  (base model from the SAE release)
  sae-onnx patch --csv dog_steer.csv --model gemma-2-2b.onnx -o gemma-2-2b.dogs.onnx
  sae-onnx patch --csv more.csv --model steered.onnx -o steered2.onnx  (stacks; --replace swaps)
  sae-onnx patch --csv dog_steer.csv --model gemma-2-2b.onnx -o sweep.onnx --sweepable"
)]
pub struct PatchArgs {
    /// The steering plan.
    #[arg(long, value_name = "STEER.csv")]
    pub csv: PathBuf,
    /// Where to write the steered model. Beside the base model it shares the weights file.
    #[arg(short, long, value_name = "OUT.onnx")]
    pub output: PathBuf,
    /// Base model: an .onnx file, or a Hugging Face id / checkpoint folder (exported once into
    /// the cache). Default: the base model of the plan's SAE release (gemma-scope-2b-* -> google/gemma-2-2b).
    #[arg(long)]
    pub model: Option<String>,
    /// Remove steering already in the model instead of stacking on it.
    #[arg(long)]
    pub replace: bool,
    /// Make each row's coefficient a graph input `steer.coeff.<k>` (k = row index in the plan)
    /// whose default is the CSV value: feed it to sweep coefficients without re-patching.
    #[arg(long)]
    pub sweepable: bool,
    /// Replace OUT.onnx if it exists (never an input of the patch: the CSV, the base model and
    /// its data, the SAE files).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  sae-onnx generate steered.onnx --prompt 'My favourite animal is'
  sae-onnx generate steered.onnx --compare gemma-2-2b.onnx --prompt 'Tell me a story' --chat
  sae-onnx generate model.onnx --prompts prompts.txt --temperature 0.7 --top-p 0.9 --seed 1

Decoding graphs (`export --kv-cache`) run one token per step; full-sequence graphs recompute the
sequence at each step (slower, same tokens).")]
pub struct GenerateArgs {
    /// The .onnx model.
    pub model: PathBuf,
    /// A prompt (repeatable).
    #[arg(long, required_unless_present = "prompts")]
    pub prompt: Vec<String>,
    /// A file with one prompt per line.
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// At most this many new tokens per prompt.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 (default) is greedy.
    #[arg(long, default_value_t = 0.0, value_parser = parse_temperature)]
    pub temperature: f32,
    /// Sample only among the k most likely tokens.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub top_k: Option<u64>,
    /// Sample only within the smallest set of tokens whose probability reaches p (0 < p ≤ 1).
    #[arg(long, value_parser = parse_top_p)]
    pub top_p: Option<f32>,
    /// Seed of the sampler (the same seed gives the same text).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when this text appears (repeatable); it is not printed.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Wrap each prompt in the model's chat template from tokenizer_config.json (a user turn, then the
    /// model's turn), as transformers' apply_chat_template renders it; Gemma tokenizers without
    /// one get Gemma's turn markers.
    #[arg(long)]
    pub chat: bool,
    /// Start each prompt with the tokenizer's BOS token where its encoding does not (GPT-2's adds
    /// none), as SAEs trained with TransformerLens's prepend_bos saw their text; `patch` warns when
    /// an SAE needs it.
    #[arg(long)]
    pub prepend_bos: bool,
    /// Also generate with this (unsteered) model and show both.
    #[arg(long, value_name = "BASE.onnx")]
    pub compare: Option<PathBuf>,
    /// tokenizer.json, a folder with one, or a Hugging Face id (default: from the model's metadata).
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// On CUDA, let float32 matrix products use TF32 tensor cores: several times faster, about
    /// 1e-3 relative error (lm-eval's float32 runs do not use it). bf16/f16 models need no flag.
    #[arg(long)]
    pub tf32: bool,
    /// Save ONNX Runtime's optimised graph under <cache root>/ort-optimized/ on the first open
    /// of a model and load it on later opens (seconds saved per open on big models). Each entry
    /// holds a copy of the model's weights, so this is opt-in; SAE_ONNX_SESSION_CACHE=1 turns it
    /// on too. Delete the folder to reclaim the space.
    #[arg(long)]
    pub session_cache: bool,
}

#[derive(Debug, clap::Args)]
pub struct SaesArgs {
    /// Words that must all appear (release, id, path, repo, model, hook or Neuronpedia id).
    pub filter: Vec<String>,
    /// At most this many SAEs (0: all).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  sae-onnx eval steered.onnx --task mmlu_abstract_algebra
  sae-onnx eval steered.onnx --task mmlu --num-fewshot 5 --device cuda:0 --output-path results/ --log-samples
  sae-onnx eval model.onnx --task my_task.yaml --limit 100 --cache run.cache.jsonl
  sae-onnx eval steered.onnx --task mmlu --sweep 0,60,120,240 --output-path sweep/ --log-samples
  sae-onnx compare sweep/sweep_*/ --plot sweep.png
  sae-onnx eval model.onnx --list-tasks")]
pub struct EvalArgs {
    /// The .onnx model (exported by sae-onnx, or a foreign causal LM with a `logits` output).
    #[arg(required_unless_present = "list_tasks")]
    pub model: Option<PathBuf>,
    /// Tasks, groups or tags (comma-separated or repeated), or paths to lm-eval task YAMLs.
    #[arg(
        long = "task",
        visible_alias = "tasks",
        value_delimiter = ',',
        required_unless_present = "list_tasks"
    )]
    pub tasks: Vec<String>,
    /// Few-shot examples per question (default: the task's own setting, else 0).
    #[arg(long)]
    pub num_fewshot: Option<usize>,
    /// Evaluate only the first N documents of each task (or a fraction if below 1).
    #[arg(long, value_parser = parse_limit, allow_hyphen_values = true)]
    pub limit: Option<f64>,
    /// Sequences per forward pass, or `auto`: the largest (up to 64) whose forward at the longest
    /// request's length runs, halving from 64 on failure (e.g. out of GPU memory).
    #[arg(long, default_value = "16", value_parser = parse_batch_size)]
    pub batch_size: BatchSize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// On CUDA, let float32 matrix products use TF32 tensor cores: several times faster, about
    /// 1e-3 relative error (lm-eval's float32 runs do not use it). bf16/f16 models need no flag.
    #[arg(long)]
    pub tf32: bool,
    /// Save ONNX Runtime's optimised graph under <cache root>/ort-optimized/ on the first open
    /// of a model and load it on later opens (seconds saved per open on big models). Each entry
    /// holds a copy of the model's weights, so this is opt-in; SAE_ONNX_SESSION_CACHE=1 turns it
    /// on too. Delete the folder to reclaim the space.
    #[arg(long)]
    pub session_cache: bool,
    /// Folder (or .json file) for results_<date>.json and samples, as lm-eval writes them.
    #[arg(long)]
    pub output_path: Option<PathBuf>,
    /// Replace an existing --output-path .json file.
    #[arg(long)]
    pub force: bool,
    /// Also write samples_<task>_<date>.jsonl with every document's prompts and scores.
    #[arg(long)]
    pub log_samples: bool,
    /// tokenizer.json, a folder with one, or a Hugging Face id (default: from the model's metadata).
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Few-shot sampling seed (lm-eval's fewshot_random_seed).
    #[arg(long, default_value_t = crate::eval::task::FEWSHOT_SEED)]
    pub seed: u64,
    /// Answered requests go here as they finish; rerunning with the same file resumes. A file
    /// written for another model, tokenizer, coefficient, device or context length is refused,
    /// and so is a file that is not a sae-onnx cache.
    #[arg(long, value_name = "FILE")]
    pub cache: Option<PathBuf>,
    /// More folders of task YAMLs.
    #[arg(long, value_parser = task_folder)]
    pub include_path: Vec<PathBuf>,
    /// Context length in tokens (default: the model's max_position_embeddings).
    #[arg(long, value_parser = parse_max_length)]
    pub max_length: Option<usize>,
    /// List the tasks, groups and tags available and exit.
    #[arg(long)]
    pub list_tasks: bool,
    /// Evaluate a `patch --sweepable` model once per coefficient, in one session: `0,60,120,240`
    /// (its only coefficient input) or `steer.coeff.1=0,60,120` (one of several). Each value's
    /// results go to <output-path>/sweep_<input>_<value>/; a table of all values is printed last.
    #[arg(long, value_name = "[INPUT=]VALUES", allow_hyphen_values = true)]
    pub sweep: Option<crate::eval::sweep::SweepSpec>,
    /// With --sweep, score each value in a pass of its own. By default the loglikelihood
    /// requests are fanned out: each batch runs what does not depend on the swept coefficient
    /// (the layers below its hook) once and the layers above once per value, with the same
    /// scores; on a decoding graph (--kv-cache) a shared few-shot prefix's cache below the hook is
    /// computed once for all values. generate_until tasks always run one pass a value.
    #[arg(long, requires = "sweep")]
    pub no_fan_out: bool,
    /// Score only the K-th (from 0) of N slices of every task's documents (document i belongs to
    /// shard i % N, lm-eval's split across ranks; few-shot examples stay the unsharded run's),
    /// e.g. `--shard $SLURM_ARRAY_TASK_ID/8`. Needs --output-path: besides results and samples,
    /// a shard writes shard_<K>_of_<N>_<date>.json, what `sae-onnx merge` needs to rebuild the
    /// unsharded run exactly. Default: every document.
    #[arg(long, value_name = "K/N", requires = "output_path")]
    pub shard: Option<crate::eval::shard::Shard>,
}

fn parse_limit(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!(
            "'{s}' is not a limit: give a number of documents (e.g. 100) or a fraction above 0 and below 1 (e.g. 0.1)"
        )),
    }
}

fn parse_max_length(s: &str) -> Result<usize, String> {
    use crate::contract::MAX_CONTEXT;
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_CONTEXT).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{s}' is not a context length: give a number of tokens from 1 to {MAX_CONTEXT}"
        )),
    }
}

/// `--include-path` is checked when parsed, before any model is opened.
fn task_folder(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    let shown = crate::files::printable(s, 500);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_dir() => Ok(path),
        Ok(_) => Err(format!(
            "'{shown}' is a file, not a folder of task YAMLs (pass a task file with --task)"
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("task folder '{shown}' does not exist"))
        }
        Err(e) => Err(format!("cannot read task folder '{shown}': {e}")),
    }
}

fn parse_batch_size(s: &str) -> Result<BatchSize, String> {
    match s {
        "auto" => Ok(BatchSize::Auto),
        n => match n.parse::<usize>() {
            Ok(n) if n > 0 => Ok(BatchSize::Fixed(n)),
            _ => Err(format!(
                "'{s}' is not a batch size: use a positive number or `auto`"
            )),
        },
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

impl From<Dtype> for DataType {
    fn from(d: Dtype) -> Self {
        match d {
            Dtype::F32 => DataType::Float,
            Dtype::F16 => DataType::Float16,
            Dtype::Bf16 => DataType::Bfloat16,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The .onnx file.
    pub model: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl Cli {
    pub fn init_logging(&self) {
        let level = match self.verbose {
            0 => tracing::Level::WARN,
            1 => tracing::Level::DEBUG,
            _ => tracing::Level::TRACE,
        };
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(std::io::stderr)
            .with_target(false)
            .without_time()
            .init();
    }

    /// Whether to draw progress bars: on a terminal, unless --quiet.
    pub fn show_progress(&self) -> bool {
        !self.quiet && std::io::stderr().is_terminal()
    }

    pub fn run(&self) -> Result<()> {
        // One Hub per command: every download it makes (model, tokenizer, SAE, dataset) draws
        // its bar, or none, the same way.
        let hub = || crate::hub::Hub::from_env().with_progress(self.show_progress());
        match &self.command {
            Command::Export(args) => self.export(args, hub()),
            Command::Eval(args) => self.eval(args, hub()),
            Command::Generate(args) => self.generate(args, hub()),
            Command::Patch(args) => self.patch(args, hub()),
            Command::Saes(args) => list_saes(args),
            Command::Compare(args) => self.compare(args),
            Command::Merge(args) => merge_shards(args),
            Command::Sweep(args) => self.sweep(args),
            Command::Inspect(args) => inspect_model(args),
            Command::Package(args) => package(args, hub()),
        }
    }

    fn patch(&self, args: &PatchArgs, hub: crate::hub::Hub) -> Result<()> {
        let report = crate::steer::patch::patch_in(
            &hub,
            &crate::steer::patch::PatchOptions {
                csv: args.csv.clone(),
                output: args.output.clone(),
                model: args.model.clone(),
                replace: args.replace,
                progress: self.show_progress(),
            },
            &crate::steer::patch::PatchOutput {
                sweepable: args.sweepable,
                force: args.force,
            },
        )?;
        for warning in &report.warnings {
            eprintln!("warning: {warning}");
        }
        if report.splice.removed > 0 {
            eprintln!("removed {} earlier steering Add(s)", report.splice.removed);
        }
        for steered in &report.splice.hooks {
            let (hook, tensor, norm) = (steered.hook, &steered.tensor, steered.norm);
            if norm > 0.0 {
                eprintln!("  {hook}: +vector (norm {norm:.3}) at {tensor}");
            }
            if let Some(computed) = report.splice.computed.iter().find(|c| c.hook == hook) {
                eprintln!("  {hook}: {} at {tensor}", computed.terms);
            }
        }
        if !report.splice.coefficient_inputs.is_empty() {
            eprintln!(
                "  coefficient inputs: {}",
                report.splice.coefficient_inputs.join(", ")
            );
        }
        let weights = if !report.save.shared.is_empty() {
            "weights shared with the base model".to_owned()
        } else if !report.save.linked.is_empty() {
            "weights hard-linked".to_owned()
        } else if !report.save.copied.is_empty() {
            "weights copied (different filesystem)".to_owned()
        } else {
            "weights inline".to_owned()
        };
        eprintln!(
            "steered {} -> {} ({weights}) in {:.2}s",
            report.base.display(),
            args.output.display(),
            report.seconds
        );
        Ok(())
    }

    fn export(&self, args: &ExportArgs, hub: crate::hub::Hub) -> Result<()> {
        let options = ExportOptions {
            dtype: args.dtype.into(),
            ops: args.ops.map(Ops::from),
            revision: args.revision.clone(),
            kv_cache: args.kv_cache,
            force: args.force,
            progress: self.show_progress(),
            hub,
        };
        let report = export::export(&args.model, &args.output, &options)?;
        let data = report.save.data_file.as_ref().map_or(0, |(_, n)| *n);
        eprintln!(
            "exported {} ({} layers, {:.1}M parameters, {} nodes) to {} + {:.1} MiB of weights in {:.1}s",
            report.architecture.hf_name(),
            report.layers,
            report.parameters as f64 / 1e6,
            report.nodes,
            args.output.display(),
            data as f64 / (1 << 20) as f64,
            report.seconds
        );
        Ok(())
    }

    fn eval(&self, args: &EvalArgs, hub: crate::hub::Hub) -> Result<()> {
        use crate::eval::evaluator;
        use crate::eval::options::EvalOptions;
        use crate::eval::task_index::TaskIndex;
        if args.list_tasks {
            let mut dirs = vec![crate::eval::bundled::tasks_dir()?];
            dirs.extend(args.include_path.iter().cloned());
            let index = TaskIndex::scan(&dirs)?;
            for (name, entry) in &index.entries {
                let kind = match entry {
                    crate::eval::task_index::Entry::Task { .. } => "task",
                    crate::eval::task_index::Entry::Group { .. } => "group",
                };
                println!("{kind:<6} {name}");
            }
            for (tag, tasks) in &index.tags {
                println!("tag    {tag} ({} tasks)", tasks.len());
            }
            for broken in &index.broken {
                eprintln!(
                    "warning: skipped '{}': {}",
                    crate::files::printable(&broken.path.display().to_string(), 500),
                    broken.error
                );
            }
            return Ok(());
        }
        let model = args.model.as_ref().expect("clap requires a model");
        let options = EvalOptions {
            tasks: args.tasks.clone(),
            num_fewshot: args.num_fewshot,
            limit: args.limit,
            batch_size: args.batch_size,
            session: crate::infer::runtime::SessionOptions {
                device: args.device.parse()?,
                ort_lib: self.ort_lib.clone(),
                intra_threads: None,
                tf32: args.tf32,
                cache_dir: crate::infer::session_cache::dir_if_enabled(args.session_cache),
                threads_sleep: false,
            },
            output_path: args.output_path.clone(),
            log_samples: args.log_samples,
            tokenizer: args.tokenizer.clone(),
            fewshot_seed: args.seed,
            cache: args.cache.clone(),
            include_paths: args.include_path.clone(),
            max_length: args.max_length,
            progress: self.show_progress(),
            force: args.force,
            shard: args.shard,
            fan_out: !args.no_fan_out,
            hub,
        };
        if let Some(spec) = &args.sweep {
            let loaded = crate::onnx::Model::load(model)?;
            let inputs = crate::contract::sweep::coefficient_inputs(&loaded.proto)?;
            let input = spec.resolve(&inputs)?.clone();
            drop(loaded);
            let points = evaluator::evaluate_sweep(model, &options, &input, &spec.values)?;
            for point in &points {
                if let Some(path) = &point.outcome.results_path {
                    eprintln!(
                        "{}={}: results written to {}",
                        input.input,
                        point.value,
                        path.display()
                    );
                }
            }
            return print_or_closed(&crate::eval::sweep::table(&input.input, &points));
        }
        let outcome = evaluator::evaluate(model, &options)?;
        print_or_closed(&outcome.table)?;
        let rate = outcome.stats.requests as f64 / outcome.seconds.max(1e-9);
        let shared = match outcome.stats.shared_prefix_tokens {
            0 => String::new(),
            n => format!(", {n} of them from shared-prefix caches"),
        };
        eprintln!(
            "{} requests in {} forwards ({} tokens{shared}) in {:.1}s (opening the model {:.1}s, scoring {:.2}s): \
             {rate:.1} requests/s",
            outcome.stats.requests,
            outcome.stats.forwards,
            outcome.stats.tokens,
            outcome.seconds,
            outcome.session_seconds,
            outcome.scoring_seconds
        );
        if let Some(path) = outcome.results_path {
            eprintln!("results written to {}", path.display());
        }
        let shareable = outcome.stats.shareable_prefix_tokens;
        if shareable * 4 > outcome.stats.tokens {
            eprintln!(
                "hint: {shareable} of the {} tokens are prefixes shared by several requests (few-shot examples); \
                 a decoding graph (`sae-onnx export --kv-cache`, patched the same way) computes each once",
                outcome.stats.tokens
            );
        }
        Ok(())
    }

    fn sweep(&self, args: &SweepArgs) -> Result<()> {
        use crate::sweep::{grid::Grid, report, run, units};
        let grid = Grid::load(&args.grid)?;
        let all = units::expand(&grid);
        if args.status {
            let status = report::status(&grid);
            for id in &status.done {
                println!("done     {id}");
            }
            for (id, holder) in &status.missing {
                match holder {
                    Some(h) => println!("running  {id}  ({h})"),
                    None => println!("missing  {id}"),
                }
            }
            eprintln!("{} of {} units done", status.done.len(), all.len());
            return Ok(());
        }
        if args.report {
            let options = crate::compare::CompareOptions {
                alpha: args.alpha,
                resamples: args.resamples as usize,
                ..Default::default()
            };
            let files = report::report(&grid, &options)?;
            eprintln!(
                "{} rows: {} and {}; {} plots in {}",
                files.rows.len(),
                files.csv.display(),
                files.json.display(),
                files.plots.len(),
                crate::files::parent_dir(&files.csv).display()
            );
            return Ok(());
        }
        let Some(spec) = &args.worker else {
            anyhow::bail!("sweep: give --worker K/N (or auto), --status or --report");
        };
        let workers = args.workers.map(|n| n as usize).or(grid.workers);
        let (worker, from) = units::resolve_worker(spec, workers, &|name| std::env::var(name).ok())?;
        let mine = worker.assigned(&all).len();
        eprintln!("sweep: worker {worker} ({from}): {mine} of {} units", all.len());
        let done = run::run_worker(&grid, worker, self.ort_lib.clone(), self.show_progress())?;
        for (id, holder) in &done.held {
            eprintln!("sweep: {id} is being run by {holder}; left to it");
        }
        for id in &done.lost_race {
            eprintln!("sweep: {id} was finished by another worker too; its copy was kept");
        }
        eprintln!(
            "sweep: worker {worker}: {} units run, {} already done, {} held by others",
            done.ran.len(),
            done.already_done.len(),
            done.held.len()
        );
        Ok(())
    }

    fn compare(&self, args: &CompareArgs) -> Result<()> {
        use crate::compare::{self, CompareOptions, Run};
        let options = CompareOptions {
            resamples: args.resamples as usize,
            seed: args.seed,
            alpha: args.alpha,
            tasks: args.tasks.clone(),
            metrics: args.metrics.clone(),
        };
        let runs = args
            .results
            .iter()
            .map(|p| Run::load(p))
            .collect::<Result<Vec<_>>>()?;
        // Checked before any work, so a bad --plot path costs nothing and destroys nothing.
        if let Some(plot) = &args.plot {
            let mut inputs = crate::files::Inputs::new();
            for run in &runs {
                inputs.add(&run.path);
                for samples in run.samples.values() {
                    inputs.add(&samples.path);
                }
            }
            crate::files::check_output(plot, &inputs, args.force).context("--plot")?;
        }
        let sweep = compare::sweep_values(&runs, args.x_values.as_deref())?;
        let report = compare::compare(&runs, &sweep.x, &options)?;
        // The figure is made before anything is printed, so a plot error leaves no half output.
        let figure = match &args.plot {
            Some(_) => Some(compare::sweep_figure(&runs, &sweep, &options)?),
            None => None,
        };
        if args.json {
            print_or_closed(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
        } else {
            print_or_closed(&report.render())?;
        }
        if let (Some(path), Some(figure)) = (&args.plot, figure) {
            let (w, h) = compare::plot::write_png(path, &figure)?;
            eprintln!("plot written to {} ({w}x{h})", path.display());
        }
        Ok(())
    }

    fn generate(&self, args: &GenerateArgs, hub: crate::hub::Hub) -> Result<()> {
        use crate::infer::generate::{GenerateOptions, Generator};
        // The library loads while the model's graph and tokenizer are read.
        crate::infer::runtime::init_in_background(self.ort_lib.as_deref());
        let prompts = read_prompts(args)?;
        let options = GenerateOptions {
            max_new_tokens: args.max_new_tokens,
            temperature: args.temperature,
            top_k: args.top_k.map(|k| usize::try_from(k).unwrap_or(usize::MAX)),
            top_p: args.top_p,
            seed: args.seed,
            stop: args.stop.clone(),
            chat: args.chat,
            prepend_bos: args.prepend_bos,
            session: crate::infer::runtime::SessionOptions {
                device: args.device.parse()?,
                ort_lib: self.ort_lib.clone(),
                intra_threads: None,
                tf32: args.tf32,
                cache_dir: crate::infer::session_cache::dir_if_enabled(args.session_cache),
                threads_sleep: false,
            },
            tokenizer: args.tokenizer.clone(),
            hub,
        };
        let mut steered = Generator::open(&args.model, &options)?;
        let mut base = match &args.compare {
            Some(path) => Some(Generator::open(path, &options)?),
            None => None,
        };
        if self.verbose > 0 {
            // What the model is fed, so that a chat template's output or BOS can be checked.
            for prompt in &prompts {
                let (text, _) = steered.prompt_text(prompt, args.chat)?;
                let ids = steered.encode_prompt(prompt, args.chat)?;
                eprintln!("[prompt of {} tokens {ids:?}: {text:?}]", ids.len());
            }
        }
        if base.is_none() && prompts.len() > 1 {
            return self.print_batch(&mut steered, &prompts, &options);
        }
        for prompt in &prompts {
            let ids = steered.encode_prompt(prompt, args.chat)?;
            match &mut base {
                Some(base) => print_beside_base(args, prompt, &ids, base, &mut steered, &options)?,
                // Without a base model to compare, several prompts went as one batch above.
                None => self.print_streamed(prompt, &ids, &mut steered, &options)?,
            }
        }
        Ok(())
    }

    /// Several prompts: one batch (left-padded on decoding graphs), printed when done.
    fn print_batch(
        &self,
        steered: &mut crate::infer::generate::Generator,
        prompts: &[String],
        options: &crate::infer::generate::GenerateOptions,
    ) -> Result<()> {
        let mut out = std::io::stdout();
        let ids = prompts
            .iter()
            .map(|p| steered.encode_prompt(p, options.chat))
            .collect::<Result<Vec<_>>>()?;
        let generations = steered.generate_batch(&ids, options)?;
        for (prompt, g) in prompts.iter().zip(&generations) {
            writeln!(out, "{prompt}{}\n", g.text)?;
            note_context_stop(g, steered.context);
            if self.verbose > 0 {
                eprintln!("[{} new tokens; stopped: {}]", g.tokens.len(), g.finish);
            }
        }
        if self.verbose > 0
            && let Some(g) = generations.first()
        {
            let tokens: usize = generations.iter().map(|g| g.tokens.len()).sum();
            eprintln!(
                "[batch of {}: {tokens} new tokens in {:.3}s: {:.1} tokens/s]",
                generations.len(),
                g.seconds,
                tokens as f64 / g.seconds.max(1e-9)
            );
        }
        Ok(())
    }

    /// One prompt and its continuation, streamed as it is produced.
    fn print_streamed(
        &self,
        prompt: &str,
        ids: &[u32],
        steered: &mut crate::infer::generate::Generator,
        options: &crate::infer::generate::GenerateOptions,
    ) -> Result<()> {
        let mut out = std::io::stdout();
        write!(out, "{prompt}")?;
        let g = steered.generate(ids, options, stream_to(&mut out))?;
        writeln!(out)?;
        note_context_stop(&g, steered.context);
        if self.verbose > 0 {
            eprintln!(
                "[{} new tokens in {:.3}s: {:.1} tokens/s after a {}-token prompt; stopped: {}]",
                g.tokens.len(),
                g.seconds,
                g.tokens.len() as f64 / g.seconds.max(1e-9),
                g.prompt_tokens.len(),
                g.finish
            );
        }
        Ok(())
    }
}

/// A prompt's continuation by the base model (`--compare`), then by the steered one, streamed,
/// and how many of their first tokens agree.
fn print_beside_base(
    args: &GenerateArgs,
    prompt: &str,
    ids: &[u32],
    base: &mut crate::infer::generate::Generator,
    steered: &mut crate::infer::generate::Generator,
    options: &crate::infer::generate::GenerateOptions,
) -> Result<()> {
    let mut out = std::io::stdout();
    writeln!(out, "=== {prompt}")?;
    write!(
        out,
        "--- base ({}):\n{prompt}",
        args.compare
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    )?;
    let b = base.generate(ids, options, stream_to(&mut out))?;
    note_context_stop(&b, base.context);
    write!(out, "\n--- {}:\n{prompt}", args.model.display())?;
    let s = steered.generate(ids, options, stream_to(&mut out))?;
    note_context_stop(&s, steered.context);
    let same = b.tokens.iter().zip(&s.tokens).take_while(|(x, y)| x == y).count();
    writeln!(
        out,
        "\n(identical for the first {same} of {} / {} tokens)",
        b.tokens.len(),
        s.tokens.len()
    )?;
    Ok(())
}

/// Writes each piece of generated text to `out` as it comes. A failed write does not stop the
/// generation: the next `writeln!` reports it.
fn stream_to(out: &mut std::io::Stdout) -> impl FnMut(&str) + '_ {
    |t| {
        let _ = write!(out, "{t}");
        let _ = out.flush();
    }
}

/// The prompts: each `--prompt`, then the non-blank lines of `--prompts FILE`.
fn read_prompts(args: &GenerateArgs) -> Result<Vec<String>> {
    let mut prompts = args.prompt.clone();
    if let Some(file) = &args.prompts {
        let text = crate::files::read_text(file, "prompts file", PROMPTS_MAX_BYTES)?;
        prompts.extend(text.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned));
    }
    Ok(prompts)
}

/// `saes`: the registry's releases matching the filter words, as a table.
fn merge_shards(args: &MergeArgs) -> Result<()> {
    use crate::eval::merge::{self, MergeOptions};
    let runs = merge::merge(&MergeOptions {
        dirs: args.dirs.clone(),
        output_path: args.output_path.clone(),
        force: args.force,
    })?;
    for run in &runs {
        if let Some(sweep) = &run.sweep {
            println!("{}={}:", sweep.input, sweep.value);
        }
        print_or_closed(&run.table)?;
        eprintln!(
            "{} shards merged: results written to {}",
            run.shards,
            run.results_path.display()
        );
    }
    Ok(())
}

fn list_saes(args: &SaesArgs) -> Result<()> {
    let found = crate::sae::registry().search(&args.filter.join(" "));
    let shown = if args.limit == 0 {
        found.len()
    } else {
        args.limit.min(found.len())
    };
    println!(
        "{:<44} {:<40} {:<28} {:>7} {:>8}",
        "RELEASE", "SAE ID", "HOOK", "D_IN", "D_SAE"
    );
    for entry in &found[..shown] {
        println!(
            "{:<44} {:<40} {:<28} {:>7} {:>8}",
            entry.release.release,
            entry.sae.id,
            entry.sae.hook,
            entry.sae.d_in,
            entry.sae.d_sae.map_or_else(|| "-".to_owned(), |d| d.to_string())
        );
    }
    if shown < found.len() {
        eprintln!(
            "... {} more (use --limit 0 for all, or more filter words)",
            found.len() - shown
        );
    }
    Ok(())
}

/// `package` for genai and transformers.js: the folder, its files and what the caller must feed.
fn package(args: &PackageArgs, hub: crate::hub::Hub) -> Result<()> {
    use crate::package::{Coefficients, Format, PackageOptions, graph::Placement};
    let format = match args.format {
        PackageFormat::Genai => Format::Genai,
        PackageFormat::TransformersJs => Format::TransformersJs,
        PackageFormat::LlamaCpp => return package_control_vector(args, hub),
    };
    if args.csv.is_some() {
        bail!(
            "--csv is for --format llama.cpp; for --format {} patch the CSV into the model first (`sae-onnx patch`)",
            format.name()
        );
    }
    let report = crate::package::package(
        &hub,
        &PackageOptions {
            model: args.model.clone(),
            format,
            output: args.output.clone(),
            checkpoint: args.checkpoint.clone(),
            coefficients: match args.coefficients {
                CoefficientsArg::Inputs => Coefficients::Inputs,
                CoefficientsArg::Fixed => Coefficients::Fixed,
            },
            force: args.force,
        },
    )?;
    for (file, bytes) in &report.files {
        eprintln!("  {file:<28} {:>10}", inspect::human_bytes(*bytes));
    }
    let weights = match report.weights {
        Placement::Linked => "weights hard-linked",
        Placement::Copied => "weights copied (different filesystem)",
        Placement::Inline => "weights inline",
    };
    eprintln!(
        "packaged {} -> {} ({weights}) in {:.2}s",
        args.model.display(),
        report.output.display(),
        report.seconds
    );
    for (input, default) in &report.coefficient_inputs {
        eprintln!("  feed {input} (float32 scalar; the steer.csv value is {default}) on every run");
    }
    if let PackageFormat::TransformersJs = args.format {
        print_transformers_js_usage(&args.output, !report.coefficient_inputs.is_empty());
    }
    Ok(())
}

/// How to load a transformers.js package in Node, and how to show it in the web page (web/ of
/// the sources), which the page finds by a path under its own folder.
fn print_transformers_js_usage(output: &Path, sweepable: bool) {
    let parent = crate::files::parent_dir(output).display().to_string();
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let absolute = std::path::absolute(output).unwrap_or_else(|_| output.to_path_buf());
    eprintln!(
        "load it in Node: env.localModelPath = \"{parent}/\"; await AutoModelForCausalLM.from_pretrained(\"{name}\")"
    );
    let base = if sweepable {
        "the base column is coefficient 0, a slider sets the steered one"
    } else {
        "no coefficient inputs: add &base=models/BASE (a package of the unsteered model) for the base column"
    };
    eprintln!(
        "show it in a browser, base and steered side by side, with web/ of the sae-onnx sources ({base}):\n  \
         cd web && npm install && mkdir -p models && ln -sfn '{}' models/{name} && python3 -m http.server 8000 --bind 127.0.0.1\n  \
         then open http://127.0.0.1:8000/?model=models/{name}",
        absolute.display()
    );
}

/// `package --format llama.cpp`: one control-vector file.
fn package_control_vector(args: &PackageArgs, hub: crate::hub::Hub) -> Result<()> {
    if args.checkpoint.is_some() {
        bail!(
            "--checkpoint is not read by --format llama.cpp: a control vector holds no tokenizer or config"
        );
    }
    let report = crate::package::control_vector::control_vector(
        &hub,
        &crate::package::control_vector::ControlVectorOptions {
            model: args.model.clone(),
            csv: args.csv.clone(),
            output: args.output.clone(),
            force: args.force,
        },
    )?;
    for (layer, norm) in &report.norms {
        eprintln!("  direction.{layer:<4} (blocks.{layer}.hook_resid_post)  norm {norm:.4}");
    }
    eprintln!(
        "packaged {} -> {} (llama.cpp control vector, model_hint {}, layer_count {}, {}) in {:.2}s\n\
         use it with: llama-cli -m MODEL.gguf --control-vector {}",
        args.model.display(),
        report.output.display(),
        report.model_hint,
        report.layer_count,
        inspect::human_bytes(report.bytes),
        report.seconds,
        report.output.display()
    );
    Ok(())
}

fn inspect_model(args: &InspectArgs) -> Result<()> {
    let report = inspect::inspect(&args.model)?;
    if args.json {
        print_or_closed(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        print_or_closed(&report.to_string())?;
    }
    Ok(())
}

/// A prompts file is text a person wrote; the bound makes `--prompts /dev/zero` an error, not an
/// out-of-memory kill.
const PROMPTS_MAX_BYTES: u64 = 64 << 20;

/// Says when a generation ended at the model's context rather than at --max-new-tokens, which
/// would otherwise look like a complete answer.
fn note_context_stop(g: &crate::infer::generate::Generation, context: usize) {
    if g.finish == "context" {
        eprintln!(
            "[stopped after {} new tokens: the model's context of {context} tokens (max_position_embeddings) is full]",
            g.tokens.len()
        );
    }
}

/// Writes to stdout; a reader that went away (`inspect m.onnx | head`) is not an error.
fn print_or_closed(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
