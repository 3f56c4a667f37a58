//! The integration tests, one binary with a module per area (as ripgrep does): one link of the
//! library and its dependencies instead of one per file. Run one area with
//! `cargo test --release --test it patch_trust`; `tests/fuzz/` is a binary of its own (it
//! installs a global allocator). Tests run from the package root, so fixture paths are relative
//! to it. Environment variables are process-wide: the tests that read the hub share one fake
//! cache (`common::fake_hub_cache`).
//!
//! Why one binary: on a 2-core machine, once the library is built, the 28 binaries this replaced
//! took 52-106 s to build and 57 s to run one after another; this one builds in 22-33 s and runs
//! in 25-30 s.

mod common;

mod compare;
mod compare_trust;
mod decoder_map;
mod demo_steering;
mod eval_cli;
mod eval_fan_out;
mod eval_lm_eval;
mod eval_rolling_gen;
mod eval_shard;
mod eval_sweep;
mod eval_table;
mod eval_tasks;
mod eval_trust;
mod eval_winogrande;
mod export_families;
mod export_gemma;
mod export_gpt2;
mod export_hub;
mod export_trust;
mod generate_chat;
mod generate_greedy;
mod generate_stop;
mod generate_trust;
mod graph_edit;
mod inspect_cli;
mod kv_cache;
mod model_io;
mod model_pairs;
mod package_genai;
mod package_llama_cpp;
mod package_transformers_js;
mod package_trust;
mod patch_families_foreign;
mod patch_steer;
mod patch_trust;
mod row_coefficients;
mod sae_loaders;
mod scoring;
mod session_cache;
mod steer_actions;
mod steer_plan;
mod steer_positions;
mod sweep_grid;
mod sweep_slurm;
mod task_index_trust;
mod tasks_installed;
mod web_page;
