//! Python functions that lm-eval's own task YAMLs call with `!function`, ported so those tasks run
//! unchanged. Any other `!function` is refused: sae-onnx runs no Python.

use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use regex::Regex;
use serde_json::{Value, json};

/// `!function` names sae-onnx implements, as they appear in lm-eval 0.4.13's task YAMLs.
pub const WIKITEXT_DETOKENIZER: &str = "preprocess_wikitext.wikitext_detokenizer";
pub const WIKITEXT_PROCESS_RESULTS: &str = "preprocess_wikitext.process_results";
pub const WINOGRANDE_DOC_TO_TEXT: &str = "preprocess_winogrande.doc_to_text";
pub const WINOGRANDE_DOC_TO_TARGET: &str = "preprocess_winogrande.doc_to_target";
pub const WINOGRANDE_DOC_TO_CHOICE: &str = "preprocess_winogrande.doc_to_choice";

pub fn is_known(name: &str) -> bool {
    matches!(
        name,
        WIKITEXT_DETOKENIZER
            | WIKITEXT_PROCESS_RESULTS
            | WINOGRANDE_DOC_TO_TEXT
            | WINOGRANDE_DOC_TO_TARGET
            | WINOGRANDE_DOC_TO_CHOICE
    )
}

/// A `doc_to_*` builtin applied to a document, returning what the Python function returns: a
/// string, an int (winogrande's `doc_to_text`: the gold choice) or a list of strings.
pub fn apply(name: &str, doc: &Value) -> Result<Value> {
    match name {
        WIKITEXT_DETOKENIZER => Ok(json!(wikitext_detokenizer(page(doc)?))),
        WINOGRANDE_DOC_TO_TEXT => Ok(json!(winogrande_doc_to_text(doc)?)),
        WINOGRANDE_DOC_TO_TARGET => Ok(json!(winogrande_doc_to_target(doc)?)),
        WINOGRANDE_DOC_TO_CHOICE => Ok(json!(winogrande_doc_to_choice(doc)?)),
        other => bail!("`!function {other}` is not a document function sae-onnx implements"),
    }
}

/// The text whose words and bytes a rolling task's perplexities count: wikitext counts the page
/// before detokenization; otherwise the target itself.
pub fn counted_text<'a>(process_results: Option<&str>, doc: &'a Value, target: &'a str) -> Result<&'a str> {
    match process_results {
        None => Ok(target),
        Some(WIKITEXT_PROCESS_RESULTS) => page(doc),
        Some(other) => bail!("`process_results: !function {other}` is not implemented by sae-onnx"),
    }
}

fn page(doc: &Value) -> Result<&str> {
    match doc.get("page") {
        Some(Value::String(s)) => Ok(s),
        _ => bail!("the wikitext functions need a string column `page`"),
    }
}

fn str_column<'d>(doc: &'d Value, column: &str) -> Result<&'d str> {
    match doc.get(column) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => bail!("the winogrande functions need a string column `{column}`, not {other}"),
        None => bail!("the winogrande functions need a string column `{column}`"),
    }
}

/// The sentence and the byte offset of its first `_` (Python's `sentence.index("_")`, in
/// characters there; `_` is ASCII, so slicing at it is the same split).
fn blank(doc: &Value) -> Result<(&str, usize)> {
    let sentence = str_column(doc, "sentence")?;
    let idx = sentence
        .find('_')
        .with_context(|| format!("sentence {sentence:?} has no `_` (Python: ValueError)"))?;
    Ok((sentence, idx))
}

/// lm-eval's `preprocess_winogrande.doc_to_text`: the gold option's index, `{"1": 0, "2": 1}[answer]`.
pub fn winogrande_doc_to_text(doc: &Value) -> Result<i64> {
    match str_column(doc, "answer")? {
        "1" => Ok(0),
        "2" => Ok(1),
        other => bail!(
            "winogrande answer {other:?} is neither \"1\" nor \"2\" (Python: KeyError; the test split has no answers)"
        ),
    }
}

/// lm-eval's `preprocess_winogrande.doc_to_target`: the sentence after the first `_`, stripped
/// (Python's `str.strip()`: its whitespace, `\x1c`..`\x1f` included).
pub fn winogrande_doc_to_target(doc: &Value) -> Result<String> {
    let (sentence, idx) = blank(doc)?;
    Ok(sentence[idx + 1..]
        .trim_matches(crate::pycompat::unicode::is_space)
        .to_owned())
}

/// lm-eval's `preprocess_winogrande.doc_to_choice`: the sentence up to the first `_`, followed by
/// each option (each choice is a context of its own: lm-eval's multiple-input mode).
pub fn winogrande_doc_to_choice(doc: &Value) -> Result<Vec<String>> {
    let (sentence, idx) = blank(doc)?;
    ["option1", "option2"]
        .iter()
        .map(|column| Ok(format!("{}{}", &sentence[..idx], str_column(doc, column)?)))
        .collect()
}

/// lm-eval's `wikitext_detokenizer`, rule for rule and in the same order.
pub fn wikitext_detokenizer(page: &str) -> String {
    static RULES: OnceLock<[(Regex, &str); 6]> = OnceLock::new();
    let rules = RULES.get_or_init(|| {
        let re = |p: &str| Regex::new(p).expect("valid regex");
        [
            (re(r"/' [0-9]/"), "/'[0-9]/"),
            (re(r"\(\s*([^\)]*?)\s*\)"), "(${1})"),
            (re(r"\[\s*([^\]]*?)\s*\]"), "[${1}]"),
            (re(r"\{\s*([^}]*?)\s*\}"), "{${1}}"),
            (re(r#""\s*([^"]*?)\s*""#), "\"${1}\""),
            (re(r"'\s*([^']*?)\s*'"), "'${1}'"),
        ]
    });
    let mut s = page.replace("s '", "s'");
    s = rules[0].0.replace_all(&s, rules[0].1).into_owned();
    for (from, to) in [(" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", ".")] {
        s = s.replace(from, to);
    }
    for (from, to) in [
        (" : ", ": "),
        (" ; ", "; "),
        (" . ", ". "),
        (" ! ", "! "),
        (" ? ", "? "),
        (" , ", ", "),
    ] {
        s = s.replace(from, to);
    }
    for (re, to) in &rules[1..] {
        s = re.replace_all(&s, *to).into_owned();
    }
    for (from, to) in [("= = = =", "===="), ("= = =", "==="), ("= =", "==")] {
        s = s.replace(from, to);
    }
    s.replace(" \u{b0} ", "\u{b0}")
        .replace(" \n", "\n")
        .replace("\n ", "\n")
        .replace(" N ", " 1 ")
        .replace(" 's", "'s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detokenizes_like_lm_eval() {
        // preprocess_wikitext.wikitext_detokenizer({"page": ...}) in lm-eval 0.4.13.
        let input = " = = Tom 's car = = \n In 1 @,@ 000 @.@ 5 ( see [ note ] ) , it was \" big \" . ";
        assert_eq!(
            wikitext_detokenizer(input),
            " == Tom's car ==\nIn 1,000.5 (see [note]), it was \"big\". "
        );
    }

    /// lm-eval's preprocess_winogrande functions on tricky documents
    /// (tests/fixtures/lm_eval_winogrande/out/functions.json, written by lm-eval's own module).
    #[test]
    fn winogrande_functions_match_lm_eval() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/lm_eval_winogrande/out/functions.json"
        );
        let cases: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(cases.len() >= 10);
        for case in &cases {
            let doc = &case["doc"];
            for name in ["doc_to_text", "doc_to_target", "doc_to_choice"] {
                let ours = apply(&format!("preprocess_winogrande.{name}"), doc);
                match (&ours, case[name].get("value")) {
                    (Ok(value), Some(expected)) => assert_eq!(value, expected, "{name}({doc})"),
                    (Err(_), None) => {}
                    _ => panic!("{name}({doc}): ours {ours:?}, lm-eval {}", case[name]),
                }
            }
        }
    }
}
