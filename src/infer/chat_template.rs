//! A model's own chat template (`tokenizer_config.json`'s `chat_template`), rendered as
//! transformers' `apply_chat_template(messages, add_generation_prompt=..., tokenize=False)`
//! renders it (transformers 4.57 `utils/chat_template_utils.py`, `_compile_jinja_template`):
//! - Jinja with `trim_blocks` and `lstrip_blocks`, a single trailing newline of the template
//!   dropped (Jinja2's default), loop controls (`break`/`continue`), lenient undefined values
//!   (printed as nothing);
//! - `{{ value }}` prints Python's `str(value)`: `True`, `None`, `['a', 1]`, `{'k': 'v'}`;
//! - globals `raise_exception(message)` (an error carrying the message) and
//!   `strftime_now(format)` (`datetime.now().strftime(format)`: the local time, naive);
//! - a `tojson` filter that writes what `json.dumps(x, ensure_ascii=False, indent=...,
//!   separators=..., sort_keys=...)` writes;
//! - variables `messages`, `add_generation_prompt`, `tools` and `documents` (none), and the
//!   special tokens of the config (`bos_token`, `eos_token`, ...), as strings;
//! - Python's `str` methods (`strip`, `startswith`, `split`, ...) through
//!   `minijinja_contrib::pycompat`.
//!
//! - transformers' `{% generation %}...{% endgeneration %}` block (it marks the assistant's tokens
//!   for `return_assistant_tokens_mask`), which renders its body: read as an `if true` block.
//!
//! The `chat_template` field is a string, or a list of `{"name", "template"}` of which
//! transformers uses the one named `default`. The text is then tokenized without adding special
//! tokens: a template writes its own BOS (`{{ bos_token }}`).
//!
//! The tests render the real templates of Gemma 2, Llama 3.3, Qwen 3 and Mistral, and
//! templates of single features, against what transformers renders
//! (`tests/fixtures/chat/make_chat.py`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::Kwargs;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Value};
use serde_json::Value as Json;

/// The work one render may do (a template is input from a file).
const FUEL: u64 = 10_000_000;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn user(content: &str) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// A chat template and the special tokens it is rendered with.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    /// Where it was read from, for messages.
    pub path: PathBuf,
    /// `(name, content)` of each special token the config names.
    special_tokens: Vec<(String, String)>,
}

impl ChatTemplate {
    /// The template of `tokenizer_config.json` at `path`; `None` when it has none.
    pub fn from_tokenizer_config(path: &Path) -> Result<Option<Self>> {
        let text = crate::files::read_text(path, "tokenizer configuration", 64 << 20)?;
        let config: Json =
            serde_json::from_str(&text).with_context(|| format!("'{}' is not valid JSON", path.display()))?;
        let source = match config.get("chat_template") {
            None | Some(Json::Null) => return Ok(None),
            Some(Json::String(s)) => s.clone(),
            Some(Json::Array(named)) => {
                let default = named
                    .iter()
                    .find(|t| t.get("name").and_then(Json::as_str) == Some("default"));
                match default.and_then(|t| t.get("template")).and_then(Json::as_str) {
                    Some(s) => s.to_owned(),
                    None => bail!(
                        "'{}': chat_template is a list of named templates without one named \"default\" \
                         (the one transformers uses when none is asked for)",
                        path.display()
                    ),
                }
            }
            Some(other) => bail!(
                "'{}': chat_template is {}, not a string or a list of named templates",
                path.display(),
                crate::files::printable(&other.to_string(), 60)
            ),
        };
        let special_tokens = crate::tokenizer::SPECIAL_TOKEN_ATTRIBUTES
            .iter()
            .filter_map(|&name| {
                let content = match config.get(name)? {
                    Json::String(s) => s.clone(),
                    Json::Object(o) => o.get("content")?.as_str()?.to_owned(),
                    _ => return None,
                };
                Some((name.to_owned(), content))
            })
            .collect();
        Ok(Some(Self {
            source,
            path: path.to_path_buf(),
            special_tokens,
        }))
    }

    /// The conversation as the template writes it. `extra` are further variables (transformers'
    /// `**kwargs` of `apply_chat_template`, e.g. Llama 3's `date_string`).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        extra: &[(&str, Json)],
    ) -> Result<String> {
        let env = environment();
        let source = generation_blocks_as_ifs(&self.source);
        let template = env
            .template_from_str(&source)
            .map_err(|e| render_error(&self.path, &e))?;
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| Value::from_pairs([("role", m.role.as_str()), ("content", m.content.as_str())]))
            .collect();
        let mut vars: Vec<(String, Value)> = vec![
            ("messages".into(), Value::from(messages)),
            ("tools".into(), Value::from(())),
            ("documents".into(), Value::from(())),
            ("add_generation_prompt".into(), Value::from(add_generation_prompt)),
        ];
        vars.extend(
            self.special_tokens
                .iter()
                .map(|(n, c)| (n.clone(), Value::from(c.as_str()))),
        );
        vars.extend(extra.iter().map(|(n, v)| ((*n).to_owned(), from_json(v))));
        template
            .render(Value::from_pairs(vars))
            .map_err(|e| render_error(&self.path, &e))
    }
}

/// `{% generation %}` and `{% endgeneration %}` (with their whitespace control) as `{% if true %}`
/// and `{% endif %}`: the same text, the same lines, in a syntax MiniJinja knows.
fn generation_blocks_as_ifs(source: &str) -> std::borrow::Cow<'_, str> {
    static TAG: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"\{%([-+]?)\s*(end)?generation\s*([-+]?)%\}").expect("valid pattern")
    });
    TAG.replace_all(source, |c: &regex::Captures<'_>| {
        let tag = if c.get(2).is_some() { "endif" } else { "if true" };
        format!("{{%{} {tag} {}%}}", &c[1], &c[3])
    })
}

fn render_error(path: &Path, e: &Error) -> anyhow::Error {
    if e.kind() == ErrorKind::InvalidOperation
        && let Some(detail) = e.detail()
        && let Some(message) = detail.strip_prefix(RAISED)
    {
        return anyhow::anyhow!(
            "the chat template of '{}' refuses the conversation: {message}",
            path.display()
        );
    }
    let line = e.line().map(|l| format!(" (line {l})")).unwrap_or_default();
    anyhow::anyhow!("the chat template of '{}' fails{line}: {e}", path.display())
}

/// Marks the errors `raise_exception` makes.
const RAISED: &str = "raise_exception: ";

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_debug(true);
    env.set_fuel(Some(FUEL));
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("default delimiters"),
    );
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_formatter(|out, _state, value| crate::pycompat::value::write_printed(out, value));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |message: String| -> Result<Value, Error> {
        Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("{RAISED}{message}"),
        ))
    });
    env.add_function("strftime_now", |format: String| -> Result<Value, Error> {
        strftime(jiff::ZonedDateTime::now().datetime(), &format).map(Value::from)
    });
    env.add_filter("tojson", tojson);
    env
}

/// Python's `datetime.strftime(format)` of a naive `time` (what `strftime_now` formats).
fn strftime(time: jiff::civil::DateTime, format: &str) -> Result<String, Error> {
    use std::fmt::Write as _;
    let mut out = String::new();
    write!(out, "{}", time.strftime(format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now cannot format {format:?}"),
        )
    })?;
    Ok(out)
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
/// separators=separators, sort_keys=sort_keys)`, `ensure_ascii` false unless given.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let json = to_json(&value)?;
    let (item, key) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be two strings",
            ));
        }
        // json.dumps: (', ', ': '), or (',', ': ') with an indent.
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let mut out = String::new();
    python_json(
        &json,
        &Style {
            indent,
            item: &item,
            key: &key,
            sort_keys: sort_keys.unwrap_or(false),
        },
        0,
        &mut out,
    );
    if ensure_ascii == Some(true) {
        out = escape_non_ascii(&out);
    }
    Ok(Value::from(out))
}

/// `ensure_ascii`: every character past ASCII as `\uXXXX` (UTF-16 units, as Python writes them).
/// Only strings hold such characters, so escaping the written JSON is escaping its strings.
fn escape_non_ascii(json: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            for unit in c.encode_utf16(&mut [0; 2]) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        }
    }
    out
}

/// A JSON value as the Python value `json.loads` gives a template.
fn from_json(v: &Json) -> Value {
    match v {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::from(i),
            (_, Some(u)) => Value::from(u),
            _ => Value::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => Value::from(items.iter().map(from_json).collect::<Vec<_>>()),
        Json::Object(map) => Value::from_pairs(map.iter().map(|(k, x)| (k.as_str(), from_json(x)))),
    }
}

/// A template value as JSON, for `tojson`.
fn to_json(v: &Value) -> Result<Json, Error> {
    use minijinja::value::ValueKind;
    Ok(match v.kind() {
        ValueKind::Undefined | ValueKind::None => Json::Null,
        ValueKind::Bool => Json::Bool(v.is_true()),
        ValueKind::Number => {
            if let Some(i) = v.as_i64().filter(|_| v.is_integer()) {
                Json::from(i)
            } else {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number)
            }
        }
        ValueKind::String => Json::String(v.as_str().unwrap_or_default().to_owned()),
        ValueKind::Seq | ValueKind::Iterable => {
            Json::Array(v.try_iter()?.map(|x| to_json(&x)).collect::<Result<_, _>>()?)
        }
        ValueKind::Map => {
            let mut map = serde_json::Map::new();
            for key in v.try_iter()? {
                let value = v.get_item(&key)?;
                map.insert(key.to_string(), to_json(&value)?);
            }
            Json::Object(map)
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson cannot write a {} value", v.kind()),
            ));
        }
    })
}

struct Style<'a> {
    indent: Option<usize>,
    item: &'a str,
    key: &'a str,
    sort_keys: bool,
}

fn python_json(v: &Json, style: &Style<'_>, level: usize, out: &mut String) {
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = style.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    // With an indent, json.dumps ends each item with the separator stripped of trailing spaces.
    let item_sep = if style.indent.is_some() {
        style.item.trim_end()
    } else {
        style.item
    };
    match v {
        Json::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                python_json(x, style, level + 1, out);
            }
            newline(out, level);
            out.push(']');
        }
        Json::Object(map) if !map.is_empty() => {
            let mut entries: Vec<(&String, &Json)> = map.iter().collect();
            if style.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, x)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                out.push_str(&Json::String(k.clone()).to_string());
                out.push_str(style.key);
                python_json(x, style, level + 1, out);
            }
            newline(out, level);
            out.push('}');
        }
        Json::Array(_) => out.push_str("[]"),
        Json::Object(_) => out.push_str("{}"),
        Json::Number(n) if n.is_f64() => {
            out.push_str(&crate::pycompat::repr::repr_float(n.as_f64().unwrap_or(f64::NAN)))
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    /// What transformers rendered (`tests/fixtures/chat/make_chat.py`).
    fn golden() -> Json {
        let path = format!("{FIXTURES}/chat/golden.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("read golden.json"))
            .expect("parse golden.json")
    }

    fn template(source: String, name: &str, special_tokens: &Json) -> ChatTemplate {
        let special_tokens = special_tokens
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().expect("token string").to_owned()))
            .collect();
        ChatTemplate {
            source,
            path: PathBuf::from(name),
            special_tokens,
        }
    }

    fn extra(kwargs: &Json) -> Vec<(&str, Json)> {
        kwargs
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect()
    }

    #[test]
    fn real_templates_render_as_transformers_apply_chat_template() {
        let golden = golden();
        let tokenizer = crate::tokenizer::Tokenizer::from_file(Path::new(&format!(
            "{FIXTURES}/tokenizer/tokenizer.json"
        )))
        .unwrap();
        let (mut rendered, mut refused) = (0, 0);
        for case in golden["cases"].as_array().unwrap() {
            let name = case["template"].as_str().unwrap();
            let source = std::fs::read_to_string(format!("{FIXTURES}/chat/templates/{name}")).unwrap();
            let chat = template(source, name, &case["special_tokens"]);
            let messages: Vec<Message> = case["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| Message {
                    role: m["role"].as_str().unwrap().into(),
                    content: m["content"].as_str().unwrap().into(),
                })
                .collect();
            let prompt = case["add_generation_prompt"].as_bool().unwrap();
            let what = format!("{name} {} add_generation_prompt={prompt}", case["conversation"]);
            let result = chat.render(&messages, prompt, &extra(&case["kwargs"]));
            match case["error"].as_str() {
                Some(message) => {
                    let error = result.expect_err(&what).to_string();
                    assert_eq!(
                        error,
                        format!("the chat template of '{name}' refuses the conversation: {message}"),
                        "{what}"
                    );
                    refused += 1;
                }
                None => {
                    let text = result.unwrap_or_else(|e| panic!("{what}: {e:#}"));
                    assert_eq!(text, case["text"].as_str().unwrap(), "{what}");
                    let ids: Vec<u64> = tokenizer
                        .encode(&text, false)
                        .unwrap()
                        .into_iter()
                        .map(u64::from)
                        .collect();
                    let expected: Vec<u64> = case["ids"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|i| i.as_u64().unwrap())
                        .collect();
                    assert_eq!(ids, expected, "{what}");
                    rendered += 1;
                }
            }
        }
        assert!(
            rendered >= 20 && refused >= 6,
            "{rendered} rendered, {refused} refused"
        );
    }

    #[test]
    fn template_features_render_as_transformers_environment() {
        let golden = golden();
        let features = golden["features"].as_array().unwrap();
        assert!(features.len() >= 20);
        for feature in features {
            let name = feature["name"].as_str().unwrap();
            let chat = template(feature["template"].as_str().unwrap().into(), name, &Json::Null);
            let result = chat.render(&[], false, &extra(&feature["vars"]));
            match feature["error"].as_str() {
                Some(message) => assert_eq!(
                    result.expect_err(name).to_string(),
                    format!("the chat template of '{name}' refuses the conversation: {message}")
                ),
                None => assert_eq!(
                    result.unwrap_or_else(|e| panic!("{name}: {e:#}")),
                    feature["text"].as_str().unwrap(),
                    "{name}"
                ),
            }
        }
    }

    #[test]
    fn strftime_formats_as_python_datetime() {
        let golden = golden();
        let time: jiff::civil::DateTime = golden["dates"]["time"].as_str().unwrap().parse().unwrap();
        let formats = golden["dates"]["formats"].as_object().unwrap();
        assert!(formats.len() >= 5);
        for (format, expected) in formats {
            assert_eq!(
                strftime(time, format).unwrap(),
                expected.as_str().unwrap(),
                "{format}"
            );
        }
    }

    fn config(json: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer_config.json");
        std::fs::write(&path, json).unwrap();
        (dir, path)
    }

    #[test]
    fn the_config_names_the_template_and_its_special_tokens() {
        let (_dir, path) = config(
            r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ bos_token }}D{{ eos_token }}"}],
                "bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>"}"#,
        );
        let chat = ChatTemplate::from_tokenizer_config(&path).unwrap().unwrap();
        assert_eq!(chat.render(&[], true, &[]).unwrap(), "<s>D</s>");
    }

    #[test]
    fn a_config_without_a_usable_template_says_so() {
        let (_dir, path) = config(r#"{"bos_token": "<s>"}"#);
        assert!(ChatTemplate::from_tokenizer_config(&path).unwrap().is_none());
        let (_dir, path) = config(r#"{"chat_template": [{"name": "tool_use", "template": "T"}]}"#);
        let error = ChatTemplate::from_tokenizer_config(&path)
            .unwrap_err()
            .to_string();
        assert!(error.contains("without one named \"default\""), "{error}");
        let (_dir, path) = config(r#"{"chat_template": 3}"#);
        let error = ChatTemplate::from_tokenizer_config(&path)
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a string or a list"), "{error}");
    }

    #[test]
    fn a_broken_template_is_an_error_naming_its_file_and_line() {
        let chat = template("ok\n{% if %}".into(), "tokenizer_config.json", &Json::Null);
        let error = chat.render(&[], true, &[]).unwrap_err().to_string();
        assert!(
            error.starts_with("the chat template of 'tokenizer_config.json' fails (line 2)"),
            "{error}"
        );
        let endless = template(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}".into(),
            "t",
            &Json::Null,
        );
        assert!(endless.render(&[], true, &[]).is_err());
    }
}
