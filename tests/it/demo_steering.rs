//! The bundled demo shows steering: its steer.csv changes the demo model's greedy continuation of
//! the prompt `scripts/demo.sh` and the web page use (with a smaller coefficient this random model
//! continued "the the the ..." both ways). Steered generation itself is checked against
//! transformers in generate_greedy.rs.

use sae_onnx::export::{self, ExportOptions};
use sae_onnx::infer::generate::{GenerateOptions, Generator};
use sae_onnx::steer::patch::{PatchOptions, patch};
use sae_onnx::tokenizer::Tokenizer;

#[test]
fn the_demo_steer_csv_changes_the_demo_continuation() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("demo.onnx");
    let options = ExportOptions {
        kv_cache: true,
        ..Default::default()
    };
    export::export("models/tiny-gemma2", &base, &options).unwrap();
    let steered = tmp.path().join("demo.steered.onnx");
    patch(&PatchOptions {
        csv: "models/tiny-gemma2/steer.csv".into(),
        output: steered.clone(),
        model: Some(base.display().to_string()),
        replace: false,
        progress: false,
    })
    .unwrap();
    let tokenizer = Tokenizer::from_file("models/tiny-gemma2/tokenizer.json".as_ref()).unwrap();
    let prompt = tokenizer.encode("The dog sees the", true).unwrap();
    let options = GenerateOptions {
        max_new_tokens: 12,
        ..Default::default()
    };
    let continuation = |model: &std::path::Path| {
        let mut generator = Generator::open(model, &options).unwrap();
        generator.generate(&prompt, &options, |_| {}).unwrap().tokens
    };
    let (plain, steered) = (continuation(&base), continuation(&steered));
    assert_ne!(plain[0], steered[0], "first new token");
    let text = tokenizer.decode(&steered).unwrap();
    assert!(!text.contains("the the"), "steered: {text:?}");
}
