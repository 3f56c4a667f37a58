//! Python functions that lm-eval's own task YAMLs call with `!function`, ported so those tasks run
//! unchanged. Any other `!function` is refused: sae-onnx runs no Python.

use std::sync::OnceLock;

use anyhow::{Result, bail};
use regex::Regex;
use serde_json::Value;

/// `!function` names sae-onnx implements, as they appear in lm-eval 0.4.13's task YAMLs.
pub const WIKITEXT_DETOKENIZER: &str = "preprocess_wikitext.wikitext_detokenizer";
pub const WIKITEXT_PROCESS_RESULTS: &str = "preprocess_wikitext.process_results";

pub fn is_known(name: &str) -> bool {
    matches!(name, WIKITEXT_DETOKENIZER | WIKITEXT_PROCESS_RESULTS)
}

/// A `doc_to_*` builtin applied to a document.
pub fn apply(name: &str, doc: &Value) -> Result<String> {
    match name {
        WIKITEXT_DETOKENIZER => Ok(wikitext_detokenizer(page(doc)?)),
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
}
