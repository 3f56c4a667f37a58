//! Python's `str()` and `repr()` of template values (MiniJinja [`Value`]s holding what Jinja2
//! would hold: None, bools, ints, floats, strings, lists, tuples, dicts): what Jinja2 prints for
//! `{{ value }}`, for lm-eval's task templates and transformers' chat templates alike.

use std::fmt::Write as _;

use minijinja::Value;
use minijinja::value::ValueKind;

use super::repr as pyrepr;

/// Python's `str(value)`.
pub fn py_str(value: &Value) -> String {
    match value.as_str() {
        Some(s) if value.kind() == ValueKind::String => s.to_owned(),
        _ => {
            let mut out = String::new();
            py_repr_into(value, &mut out);
            out
        }
    }
}

/// What Jinja2 prints for `{{ value }}`: Python's `str()`, and nothing for an undefined value
/// (Jinja2's default `Undefined`, and what a strict environment lets through: an `if` expression
/// without `else`). A MiniJinja formatter.
pub fn write_printed(out: &mut minijinja::Output, value: &Value) -> Result<(), minijinja::Error> {
    if value.is_undefined() {
        return Ok(());
    }
    out.write_str(&py_str(value)).map_err(minijinja::Error::from)
}

/// Python's `repr(value)`.
pub fn py_repr(value: &Value) -> String {
    let mut out = String::new();
    py_repr_into(value, &mut out);
    out
}

fn py_repr_into(value: &Value, out: &mut String) {
    match value.kind() {
        // `repr()` of Jinja2's undefined, as a list shows it (`[Undefined]`).
        ValueKind::Undefined => out.push_str("Undefined"),
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number if value.is_integer() => {
            let _ = write!(out, "{value}");
        }
        ValueKind::Number => match f64::try_from(value.clone()) {
            Ok(x) => out.push_str(&pyrepr::repr_float(x)),
            Err(_) => {
                let _ = write!(out, "{value}");
            }
        },
        ValueKind::String => out.push_str(&pyrepr::repr_str(value.as_str().unwrap_or_default())),
        ValueKind::Seq => {
            let tuple = value.is_tuple();
            out.push(if tuple { '(' } else { '[' });
            let mut n = 0;
            if let Ok(items) = value.try_iter() {
                for (i, item) in items.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr_into(&item, out);
                    n += 1;
                }
            }
            if tuple && n == 1 {
                out.push(',');
            }
            out.push(if tuple { ')' } else { ']' });
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(keys) = value.try_iter() {
                for (i, key) in keys.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr_into(&key, out);
                    out.push_str(": ");
                    let item = value.get_item(&key).unwrap_or_default();
                    py_repr_into(&item, out);
                }
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{value}");
        }
    }
}
