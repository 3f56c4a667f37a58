//! A model's own chat template (`tokenizer_config.json`'s `chat_template`), rendered as
//! transformers' `apply_chat_template(messages, add_generation_prompt=True, tokenize=False)`
//! renders it (transformers 4.57 `utils/chat_template_utils.py`):
//! - Jinja with `trim_blocks` and `lstrip_blocks`, a single trailing newline of the template
//!   dropped (Jinja2's default), loop controls (`break`/`continue`), lenient undefined values;
//! - globals `raise_exception(message)` (an error carrying the message) and
//!   `strftime_now(format)` (the local time, as `datetime.now().strftime`);
//! - a `tojson` filter that writes what `json.dumps(x, ensure_ascii=False, indent=...)` writes;
//! - variables `messages`, `add_generation_prompt`, `tools` and `documents` (none), and the
//!   special tokens of the config (`bos_token`, `eos_token`, ...), as strings;
//! - Python's `str` methods (`strip`, `startswith`, `split`, ...) through
//!   `minijinja_contrib::pycompat`.
//!
//! The `chat_template` field is a string, or a list of `{"name", "template"}` of which
//! transformers uses the one named `default`. The text is then tokenized without adding special
//! tokens: a template writes its own BOS (`{{ bos_token }}`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::Kwargs;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Value};
use serde_json::Value as Json;

/// The work one render may do (a template is input from a file).
const FUEL: u64 = 10_000_000;

/// transformers' special-token attributes that a template sees as variables.
const SPECIAL_TOKENS: &[&str] = &[
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

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
        let special_tokens = SPECIAL_TOKENS
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

    /// The config's special token `name` (`eos_token`), if it names one.
    pub fn special_token(&self, name: &str) -> Option<&str> {
        self.special_tokens
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.as_str())
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
        let template = env
            .template_from_str(&self.source)
            .map_err(|e| render_error(&self.path, &e))?;
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| Value::from_iter([("role", m.role.as_str()), ("content", m.content.as_str())]))
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
            .render(Value::from_iter(vars))
            .map_err(|e| render_error(&self.path, &e))
    }
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
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |message: String| -> Result<Value, Error> {
        Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("{RAISED}{message}"),
        ))
    });
    env.add_function("strftime_now", |format: String| -> Result<Value, Error> {
        use std::fmt::Write as _;
        let mut out = String::new();
        write!(out, "{}", jiff::ZonedDateTime::now().strftime(&format)).map_err(|_| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("strftime_now cannot format {format:?}"),
            )
        })?;
        Ok(Value::from(out))
    });
    env.add_filter("tojson", tojson);
    env
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent, separators=separators,
/// sort_keys=sort_keys)`.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
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
    Ok(Value::from(out))
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
        Json::Object(map) => Value::from_iter(map.iter().map(|(k, x)| (k.as_str(), from_json(x)))),
    }
}

/// A template value as JSON, for `tojson`.
fn to_json(v: &Value) -> Result<Json, Error> {
    use minijinja::value::ValueKind;
    Ok(match v.kind() {
        ValueKind::Undefined | ValueKind::None => Json::Null,
        ValueKind::Bool => Json::Bool(v.is_true()),
        ValueKind::Number => {
            if let Some(i) = v.as_i64() {
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
