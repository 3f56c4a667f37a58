//! lm-eval's Jinja environment on MiniJinja: what `lm_eval.utils.apply_template(template, doc)`
//! renders for a task's `doc_to_text`, `doc_to_target` and `doc_to_choice` strings.
//!
//! lm-eval 0.4.13 renders with `jinja2.Environment(undefined=StrictUndefined,
//! keep_trailing_newline=True)` plus a `regex_replace` filter (`re.sub`), over the doc's fields.
//! This module sets MiniJinja up the same way:
//! - strict undefined: printing, testing or iterating an unknown name is an error naming it
//!   (`x is defined` works);
//! - the trailing newline of a template is kept; `\r\n`/`\r` in a template read as `\n`, as
//!   Jinja2's lexer normalizes them;
//! - `{{ value }}` prints what Python's `str(value)` gives: `True`/`False`/`None`, floats as
//!   Python's `repr` (`0.1`, `1e-05`, `1e+16`), lists as `['a', "it's", 3]`, tuples as `(1,)`,
//!   dicts as `{'a': 1}` (doc key order kept), so that lm-eval's `ast.literal_eval` of a rendered
//!   `doc_to_choice` reads it back; the `string`, `join` and `trim` filters use the same `str()`;
//! - Python's `str` methods that task templates call: `strip`/`lstrip`/`rstrip` (Python
//!   whitespace, or a set of characters), `split`/`rsplit` (whitespace runs or a separator,
//!   `maxsplit`), `index`/`rindex`, `isdigit`, and `list.index` (Python `==`, so `True == 1`),
//!   on top of `minijinja_contrib::pycompat` for the rest (`lower`, `upper`, `replace`,
//!   `startswith`, `capitalize`, `join`, `format`, `dict.items`, ...);
//! - `int` follows Jinja2's `do_int` (`int(s)`, then `int(float(s))`, else the default);
//! - `regex_replace(s, pattern, repl, count=0)` is `re.sub` on the `regex` crate, see
//!   [`crate::pycompat::re::sub`] for what it cannot do.
//!
//! Known differences from Jinja2, none met by lm-eval 0.4.13's task templates (all 1723 that
//! render on a made-up doc are compared in `task_templates.json.gz`): `~`, `+` and filters other
//! than the above stringify with MiniJinja's own `Display`, which is Python's `str()` except for
//! floats outside `1e-4..1e16` (printed positionally), NaN, and non-printable characters inside
//! lists; `x.items` on a dict with a key `items` gives the key (Jinja2 gives the method); the
//! `%` string operator and Python methods beyond the ones above and pycompat's are missing;
//! `capitalize`/`title` use upper case where Python uses title case (`ǅ`-style digraphs only).
//! The tests compare against `tests/fixtures/python_compat/templates.json` and
//! `task_templates.json.gz`, made by `make_templates.py` and `make_task_templates.py` with
//! lm-eval's own `apply_template`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;

use anyhow::{Result, bail};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, ValueKind, from_args};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, UndefinedBehavior, Value};

use crate::pycompat::re as pyre;
use crate::pycompat::str as pystr;
use crate::pycompat::unicode;
pub use crate::pycompat::value::{py_repr, py_str};

/// The work one render may do: about one unit per instruction or per 64 bytes created, so
/// at most ~640 MB and a few seconds.
const FUEL: u64 = 10_000_000;

/// How many compiled templates (and regexes) the per-thread cache keeps before starting over.
const CACHE_LIMIT: usize = 4096;

/// Renders `template` over `doc` as `lm_eval.utils.apply_template(template, doc)` does: the
/// doc's keys are the template's variables. `doc` must be a JSON object.
pub fn render(template: &str, doc: &serde_json::Value) -> Result<String> {
    let serde_json::Value::Object(fields) = doc else {
        bail!("a template renders over a JSON object, got {doc}");
    };
    let ctx = Value::from_pairs(fields.iter().map(|(k, v)| (k.as_str(), to_value(v))));
    RENDERER.with(|r| r.borrow_mut().render(template, ctx))
}

/// A JSON value as the Python value `datasets` gives lm-eval: ints stay ints, floats floats,
/// objects keep their key order.
pub fn to_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => Value::from(items.iter().map(to_value).collect::<Vec<_>>()),
        serde_json::Value::Object(map) => {
            Value::from_pairs(map.iter().map(|(k, v)| (k.as_str(), to_value(v))))
        }
    }
}

thread_local! {
    static RENDERER: RefCell<Renderer> = RefCell::new(Renderer::new());
}

/// The environment and its compiled templates, keyed by source.
struct Renderer {
    env: Environment<'static>,
    names: HashMap<String, String>,
}

impl Renderer {
    fn new() -> Self {
        Renderer {
            env: environment(),
            names: HashMap::new(),
        }
    }

    fn render(&mut self, template: &str, ctx: Value) -> Result<String> {
        let name = match self.names.get(template) {
            Some(name) => name.clone(),
            None => {
                if self.names.len() >= CACHE_LIMIT {
                    self.env.clear_templates();
                    self.names.clear();
                }
                let name = format!("template#{}", self.names.len());
                // Jinja2's lexer reads "\r\n" and "\r" as "\n" (newline_sequence).
                let source = template.replace("\r\n", "\n").replace('\r', "\n");
                self.env
                    .add_template_owned(name.clone(), source)
                    .map_err(|e| describe(e, template))?;
                self.names.insert(template.to_owned(), name.clone());
                name
            }
        };
        let tmpl = self.env.get_template(&name).expect("template was added");
        tmpl.render(ctx).map_err(|e| describe(e, template))
    }
}

fn describe(err: Error, template: &str) -> anyhow::Error {
    let mut msg = format!(
        "jinja template \"{}\": {}",
        crate::files::printable(template, 200),
        err.kind()
    );
    if let Some(detail) = err.detail() {
        let _ = write!(msg, ": {detail}");
    }
    if let Some(line) = err.line() {
        let _ = write!(msg, " (line {line})");
    }
    anyhow::Error::msg(msg)
}

/// lm-eval's `env`: StrictUndefined, keep_trailing_newline, no autoescape, `regex_replace`.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // Release builds turn minijinja's debug info off, and with it the name of an undefined
    // variable in the error: users need that name to fix their task file.
    env.set_debug(true);
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // A task file is untrusted input: a loop over huge ranges, or a string multiplied up,
    // must end in an error, not a hang or an out-of-memory kill. lm-eval's templates use a few
    // thousand units on the longest documents; see `hostile_templates_end_in_errors`.
    env.set_fuel(Some(FUEL));
    env.set_syntax(
        SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
            .expect("default delimiters"),
    );
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_formatter(|out, _state, value| crate::pycompat::value::write_printed(out, value));
    env.set_unknown_method_callback(py_method);
    env.add_filter("regex_replace", regex_replace_filter);
    env.add_filter("string", string_filter);
    env.add_filter("join", join_filter);
    env.add_filter("trim", trim_filter);
    env.add_filter("int", int_filter);
    env
}

fn op_error(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into())
}

/// Fails on an undefined value, as `str()`, `int()` or iteration of Jinja2's `StrictUndefined`
/// does. The error comes from an attribute lookup on the value itself, which carries where the
/// value came from, so that the message names the undefined variable.
fn defined(value: &Value) -> Result<&Value, Error> {
    if value.is_undefined() {
        return Err(value
            .get_attr("__str__")
            .err()
            .unwrap_or_else(|| Error::from(ErrorKind::UndefinedError)));
    }
    Ok(value)
}

/// Python's `a == b` for template values: numbers (and bools, which are ints) by value.
fn py_eq(a: &Value, b: &Value) -> bool {
    let num = |v: &Value| match v.kind() {
        ValueKind::Bool => Some(Value::from(i64::from(v.is_true()))),
        ValueKind::Number => Some(v.clone()),
        _ => None,
    };
    match (num(a), num(b)) {
        (Some(x), Some(y)) => x == y,
        (None, None) => a == b,
        _ => false,
    }
}

fn string_filter(value: &Value) -> Result<Value, Error> {
    Ok(Value::from(py_str(defined(value)?)))
}

/// Jinja2's `join(value, d='', attribute=None)`: `d.join(str(x) for x in value)`.
fn join_filter(
    value: &Value,
    d: Option<String>,
    attribute: Option<Value>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let d = match kwargs.get::<Option<String>>("d")? {
        Some(d) => d,
        None => d.unwrap_or_default(),
    };
    let attribute = match kwargs.get::<Option<Value>>("attribute")? {
        Some(a) => Some(a),
        None => attribute,
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    for (i, item) in defined(value)?.try_iter()?.enumerate() {
        if i > 0 {
            out.push_str(&d);
        }
        let item = match &attribute {
            Some(attr) => item_attribute(&item, attr)?,
            None => item,
        };
        out.push_str(&py_str(defined(&item)?));
    }
    Ok(Value::from(out))
}

/// Jinja2's attribute getter: `a.b.c` paths, integer parts as indices.
fn item_attribute(item: &Value, attr: &Value) -> Result<Value, Error> {
    if let Some(path) = attr.as_str() {
        let mut cur = item.clone();
        for part in path.split('.') {
            cur = match part.parse::<i64>() {
                Ok(i) => cur.get_item(&Value::from(i))?,
                Err(_) => cur.get_attr(part)?,
            };
        }
        Ok(cur)
    } else {
        item.get_item(attr)
    }
}

/// Jinja2's `trim(value, chars=None)`: `str(value).strip(chars)`.
fn trim_filter(value: &Value, chars: Option<String>) -> Result<Value, Error> {
    let text = py_str(defined(value)?);
    Ok(Value::from(pystr::strip(&text, chars.as_deref(), true, true)))
}

/// Jinja2's `int(value, default=0, base=10)`: `int(value)`, else `int(float(value))`, else the
/// default.
fn int_filter(value: &Value, default: Option<Value>, base: Option<u32>) -> Result<Value, Error> {
    defined(value)?;
    let default = default.unwrap_or(Value::from(0));
    let base = base.unwrap_or(10);
    let from_float = |x: f64| -> Result<Value, Error> {
        if x.is_nan() {
            Ok(default.clone())
        } else if x.is_infinite() {
            Err(op_error("cannot convert float infinity to integer"))
        } else {
            Ok(Value::from(x.trunc() as i128))
        }
    };
    match value.kind() {
        ValueKind::Bool => Ok(Value::from(i64::from(value.is_true()))),
        ValueKind::Number if value.is_integer() => Ok(value.clone()),
        ValueKind::Number => from_float(f64::try_from(value.clone()).unwrap_or(f64::NAN)),
        ValueKind::String => {
            let s = pystr::strip(value.as_str().unwrap_or_default(), None, true, true);
            if let Some(i) = pystr::parse_int(s, base) {
                return Ok(Value::from(i));
            }
            match pystr::parse_float(s) {
                Some(x) => from_float(x),
                None => Ok(default),
            }
        }
        _ => Ok(default),
    }
}

/// Python `str` and `list` methods the task templates call, then `pycompat`'s.
fn py_method(state: &mut State, value: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    if let Some(s) = value.as_str().filter(|_| value.kind() == ValueKind::String) {
        match method {
            "strip" | "lstrip" | "rstrip" => {
                let (chars,): (Option<Value>,) = from_args(args)?;
                let chars = match &chars {
                    Some(c) if c.is_none() => None,
                    Some(c) => Some(c.as_str().ok_or_else(|| {
                        op_error(format!("{method} arg must be None or str, not {}", c.kind()))
                    })?),
                    None => None,
                };
                let (l, r) = (method != "rstrip", method != "lstrip");
                return Ok(Value::from(pystr::strip(s, chars, l, r)));
            }
            "split" | "rsplit" => {
                let (sep, maxsplit, kwargs): (Option<Value>, Option<i64>, Kwargs) = from_args(args)?;
                let sep = kwargs.get::<Option<Value>>("sep")?.or(sep);
                let maxsplit = kwargs.get::<Option<i64>>("maxsplit")?.or(maxsplit);
                kwargs.assert_all_used()?;
                let sep = match &sep {
                    Some(v) if v.is_none() => None,
                    Some(v) => Some(
                        v.as_str()
                            .ok_or_else(|| op_error(format!("must be str or None, not {}", v.kind())))?,
                    ),
                    None => None,
                };
                let parts = pystr::split(s, sep, maxsplit.unwrap_or(-1), method == "rsplit")
                    .map_err(|e| op_error(e.to_string()))?;
                return Ok(Value::from(parts));
            }
            "index" | "rindex" | "find" | "rfind" => {
                let (sub, start, end): (&str, Option<i64>, Option<i64>) = from_args(args)?;
                let rev = method.starts_with('r');
                return match pystr::index(s, sub, start, end, rev) {
                    Some(i) => Ok(Value::from(i)),
                    None if method.ends_with("find") => Ok(Value::from(-1)),
                    None => Err(op_error("ValueError: substring not found")),
                };
            }
            "isdigit" => {
                let () = from_args(args)?;
                return Ok(Value::from(unicode::isdigit(s)));
            }
            "isspace" => {
                let () = from_args(args)?;
                return Ok(Value::from(!s.is_empty() && s.chars().all(unicode::is_space)));
            }
            _ => {}
        }
    } else if value.kind() == ValueKind::Seq && method == "index" {
        let (x, start, end): (Value, Option<i64>, Option<i64>) = from_args(args)?;
        let items: Vec<Value> = value.try_iter()?.collect();
        let (a, b) = pystr::bounds(items.len(), start, end);
        return (a..b.max(a))
            .find(|&i| py_eq(&items[i], &x))
            .map(Value::from)
            .ok_or_else(|| op_error(format!("ValueError: {} is not in list", py_repr(&x))));
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

fn regex_replace_filter(
    string: &Value,
    pattern: String,
    repl: String,
    count: Option<i64>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let count = kwargs.get::<Option<i64>>("count")?.or(count).unwrap_or(0);
    kwargs.assert_all_used()?;
    let s = match defined(string)?.as_str() {
        Some(s) if string.kind() == ValueKind::String => s,
        _ => {
            return Err(op_error(format!(
                "regex_replace: expected string or bytes-like object, got {}",
                string.kind()
            )));
        }
    };
    pyre::sub(s, &pattern, &repl, count)
        .map(Value::from)
        .map_err(|e| op_error(format!("regex_replace: {e:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture() -> serde_json::Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/python_compat/templates.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).expect("read templates.json"))
            .expect("parse templates.json")
    }

    #[test]
    fn templates_match_jinja2() {
        let fx = fixture();
        let docs = fx["docs"].as_array().unwrap();
        let cases = fx["cases"].as_array().unwrap();
        assert!(cases.len() >= 60, "{} cases", cases.len());
        let mut failures = Vec::new();
        for case in cases {
            let template = case["template"].as_str().unwrap();
            let doc = &docs[case["doc"].as_u64().unwrap() as usize];
            let got = render(template, doc);
            match (case.get("output"), got) {
                (Some(want), Ok(got)) if want.as_str() == Some(got.as_str()) => {}
                (None, Err(_)) => {}
                (want, got) => failures.push(format!(
                    "{template:?} on doc {}: jinja2 {:?}, here {got:?}",
                    case["doc"],
                    want.cloned().unwrap_or_else(|| case["error"].clone())
                )),
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn lm_eval_task_templates_match_jinja2() {
        use std::io::Read as _;
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/python_compat/task_templates.json.gz"
        );
        let mut text = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(path).expect("open task_templates"))
            .read_to_string(&mut text)
            .expect("gunzip task_templates");
        let fx: serde_json::Value = serde_json::from_str(&text).expect("parse task_templates");
        let cases = fx["cases"].as_array().unwrap();
        assert!(cases.len() > 1500, "{} cases", cases.len());
        let mut failures = Vec::new();
        for case in cases {
            let template = case["template"].as_str().unwrap();
            let want = case["output"].as_str().unwrap();
            match render(template, &case["doc"]) {
                Ok(got) if got == want => {}
                got => failures.push(format!("{template:?}: jinja2 {want:?}, here {got:?}")),
            }
        }
        assert!(
            failures.is_empty(),
            "{} differ:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn re_sub_matches_python() {
        let fx = fixture();
        for case in fx["re_sub"].as_array().unwrap() {
            let (pattern, repl, s) = (
                case["pattern"].as_str().unwrap(),
                case["repl"].as_str().unwrap(),
                case["string"].as_str().unwrap(),
            );
            let count = case["count"].as_i64().unwrap();
            let got = crate::pycompat::re::sub(s, pattern, repl, count);
            if case.get("unsupported_here").is_some() {
                assert!(got.is_err(), "{pattern:?} is unsupported, yet gave {got:?}");
                continue;
            }
            match case.get("output") {
                Some(want) => assert_eq!(
                    got.unwrap_or_else(|e| panic!("{pattern:?} {repl:?}: {e:#}")),
                    want.as_str().unwrap(),
                    "re.sub({pattern:?}, {repl:?}, {s:?}, count={count})"
                ),
                None => assert!(got.is_err(), "{pattern:?} {repl:?} should fail: {got:?}"),
            }
        }
    }

    #[test]
    fn undefined_names_are_named() {
        let doc = json!({"question": "q", "choices": {"label": ["A"]}});
        let err = render("{{ question }} {{ missing }}", &doc)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing"), "{err}");
        let err = render("{{ choices.nope }}", &doc).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
        let err = render("{% if absent %}x{% endif %}", &doc)
            .unwrap_err()
            .to_string();
        assert!(err.contains("absent"), "{err}");
        assert_eq!(render("{{ absent is defined }}", &doc).unwrap(), "False");
        for filter in ["string", "join", "trim", "int", "regex_replace('a', 'b')"] {
            let err = render(&format!("{{{{ absent | {filter} }}}}"), &doc)
                .unwrap_err()
                .to_string();
            assert!(err.contains("`absent` is undefined"), "{filter}: {err}");
        }
        assert!(render("{{ question", &doc).is_err());
        assert!(render("x", &json!([1])).is_err());
    }

    #[test]
    fn rendered_lists_read_back_with_literal_eval() {
        let doc = json!({"choices": ["it's", "say \"hi\"", "back\\slash", "new\nline", "é\u{200b}"]});
        let text = render("{{ choices }}", &doc).unwrap();
        let back = crate::pycompat::literal::literal_eval(&text)
            .unwrap()
            .to_json()
            .unwrap();
        assert_eq!(back, doc["choices"]);
    }

    /// Hostile task templates: each must fail with an error, quickly and without exhausting
    /// memory or the stack, and the template in the message is printable.
    #[test]
    fn hostile_templates_end_in_errors() {
        let doc = json!({"text": "a".repeat(1000)});
        let deep_parens = format!("{{{{ {}1{} }}}}", "(".repeat(100_000), ")".repeat(100_000));
        let deep_lists = format!("{{{{ {}1{} }}}}", "[".repeat(100_000), "]".repeat(100_000));
        let deep_ifs = "{% if true %}".repeat(10_000) + &"{% endif %}".repeat(10_000);
        let cases = [
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            "{{ 'x' * 10000000000 }}",
            "{{ text * 100000000 }}",
            "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% else %}{{ s | length }}{% endif %}{% endmacro %}{{ d(text, 40) }}",
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
            "{{ range(1000000000) | list }}",
            "{{ text | regex_replace('(' * 100000, '') }}",
            "{{ text | regex_replace('(?:a{1000}){1000}', '') }}",
            &deep_parens,
            &deep_lists,
            &deep_ifs,
        ];
        for template in cases {
            let start = std::time::Instant::now();
            let result = render(template, &doc);
            let seconds = start.elapsed().as_secs_f64();
            let shown = crate::files::printable(template, 60);
            assert!(
                result.is_err(),
                "{shown}: rendered {} bytes",
                result.map(|r| r.len()).unwrap_or(0)
            );
            assert!(seconds < 10.0, "{shown}: {seconds:.1}s");
        }
        let err = render("{{ \u{0}\u{1b}[31m", &doc).unwrap_err().to_string();
        assert!(
            err.contains("\\u{0}\\u{1b}[31m") && !err.contains('\u{1b}'),
            "{err}"
        );
    }

    /// The fuel limit leaves room for real templates on long documents.
    #[test]
    fn long_documents_render_within_the_fuel() {
        let doc = json!({"text": "word ".repeat(2_000_000), "choices": vec!["c"; 10_000]});
        let out = render(
            "{{ text.strip() }}\n{% for c in choices %}{{ loop.index }}. {{ c }}\n{% endfor %}",
            &doc,
        )
        .unwrap();
        assert!(out.len() > 10_000_000);
    }

    #[test]
    fn cache_reuses_and_keeps_results() {
        let doc = json!({"a": 1});
        for _ in 0..3 {
            assert_eq!(render("{{ a + 1 }}\n", &doc).unwrap(), "2\n");
            assert_eq!(render("{{ a }}\r\n", &doc).unwrap(), "1\n");
        }
    }
}
