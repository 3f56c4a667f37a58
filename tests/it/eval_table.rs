//! The results tables `eval` prints are lm-eval's (`make_table`, pytablewriter's Markdown), to the
//! character: every `table.txt` that lm-eval 0.4.13 printed for the goldens under tests/fixtures
//! (its first line, the model arguments, aside) against our rendering of the same results JSON.

use crate::common;

use sae_onnx::contract::results::ResultsFile;

#[test]
fn tables_match_what_lm_eval_printed() {
    let mut checked = 0;
    for suite in ["lm_eval", "lm_eval_gen"] {
        let out = common::fixture(&format!("{suite}/out"));
        for run in std::fs::read_dir(&out).unwrap() {
            let dir = run.unwrap().path();
            let (table, results) = (dir.join("table.txt"), dir.join("results.json"));
            if !table.exists() {
                continue;
            }
            let printed = std::fs::read_to_string(&table).unwrap();
            let expected: Vec<&str> = printed.lines().skip(1).collect();
            let file: ResultsFile =
                serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
            let ours = sae_onnx::eval::table::render(&file);
            let ours: Vec<&str> = ours.lines().collect();
            let trim = |lines: Vec<&str>| -> Vec<String> {
                let mut v: Vec<String> = lines.iter().map(|l| l.trim_end().to_owned()).collect();
                while v.last().is_some_and(String::is_empty) {
                    v.pop();
                }
                v
            };
            assert_eq!(trim(ours), trim(expected), "{}", dir.display());
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} tables found");
}
