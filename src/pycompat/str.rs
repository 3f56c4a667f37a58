//! Python's `str` methods and number parsing that lm-eval's task templates rely on, to the
//! character: `strip` with Python's whitespace, `split`/`rsplit` with `maxsplit`, `index`/`rindex`
//! by characters, `int(s, base)` and `float(s)`.

use super::unicode::is_space;

/// Python's `ValueError: empty separator` of `str.split("")`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmptySeparator;

impl std::fmt::Display for EmptySeparator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ValueError: empty separator")
    }
}

impl std::error::Error for EmptySeparator {}

/// Python's `int(s, base)` for an already stripped string (sign, `_` between digits, and a
/// `0x`/`0o`/`0b` prefix matching the base).
pub fn parse_int(s: &str, base: u32) -> Option<i128> {
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = body.to_ascii_lowercase();
    let body = match (base, lower.get(..2)) {
        (16, Some("0x")) | (8, Some("0o")) | (2, Some("0b")) => {
            body[2..].strip_prefix('_').unwrap_or(&body[2..])
        }
        _ => body,
    };
    if body.is_empty() || body.starts_with('_') || body.ends_with('_') || body.contains("__") {
        return None;
    }
    let digits: String = body.chars().filter(|c| *c != '_').collect();
    if !digits.chars().all(|c| c.is_digit(base)) {
        return None;
    }
    let v = i128::from_str_radix(&digits, base).ok()?;
    Some(if neg { -v } else { v })
}

/// Python's `float(s)` for an already stripped string.
pub fn parse_float(s: &str) -> Option<f64> {
    if s.is_empty() || s.starts_with('_') || s.ends_with('_') || s.contains("__") {
        return None;
    }
    let ok_underscores = s.char_indices().all(|(i, c)| {
        c != '_'
            || (s[..i].chars().next_back().is_some_and(|p| p.is_ascii_digit())
                && s[i + 1..].chars().next().is_some_and(|n| n.is_ascii_digit()))
    });
    if !ok_underscores {
        return None;
    }
    let t: String = s.chars().filter(|c| *c != '_').collect();
    let lower = t.to_ascii_lowercase();
    let unsigned = lower.trim_start_matches(['+', '-']);
    if matches!(unsigned, "inf" | "infinity" | "nan") {
        return lower.parse().ok();
    }
    if !unsigned
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | '+' | '-'))
    {
        return None;
    }
    t.parse().ok()
}

/// Python's `s.strip(chars)` / `lstrip` / `rstrip`.
pub fn strip<'a>(s: &'a str, chars: Option<&str>, left: bool, right: bool) -> &'a str {
    let strip = |c: char| match chars {
        None => is_space(c),
        Some(set) => set.contains(c),
    };
    let s = if left { s.trim_start_matches(strip) } else { s };
    if right { s.trim_end_matches(strip) } else { s }
}

/// Python's `s.split(sep, maxsplit)` (`rev` for `rsplit`).
pub fn split(s: &str, sep: Option<&str>, maxsplit: i64, rev: bool) -> Result<Vec<String>, EmptySeparator> {
    let limit = usize::try_from(maxsplit).ok();
    let Some(sep) = sep else {
        // Runs of whitespace; no empty strings; the unsplit rest keeps its far-side whitespace.
        let mut out = Vec::new();
        let mut rest = s;
        loop {
            rest = strip(rest, None, !rev, rev);
            if rest.is_empty() {
                break;
            }
            if limit == Some(out.len()) {
                out.push(rest.to_owned());
                break;
            }
            let found = if rev {
                rest.char_indices().rev().find(|(_, c)| is_space(*c))
            } else {
                rest.char_indices().find(|(_, c)| is_space(*c))
            };
            match found {
                None => {
                    out.push(rest.to_owned());
                    break;
                }
                Some((i, c)) if rev => {
                    out.push(rest[i + c.len_utf8()..].to_owned());
                    rest = &rest[..i];
                }
                Some((i, _)) => {
                    out.push(rest[..i].to_owned());
                    rest = &rest[i..];
                }
            }
        }
        if rev {
            out.reverse();
        }
        return Ok(out);
    };
    if sep.is_empty() {
        return Err(EmptySeparator);
    }
    let mut out: Vec<String> = match (limit, rev) {
        (None, false) => s.split(sep).map(str::to_owned).collect(),
        (None, true) => s.rsplit(sep).map(str::to_owned).collect(),
        (Some(n), false) => s.splitn(n + 1, sep).map(str::to_owned).collect(),
        (Some(n), true) => s.rsplitn(n + 1, sep).map(str::to_owned).collect(),
    };
    if rev {
        out.reverse();
    }
    Ok(out)
}

/// Python's slice-style bounds (`start`, `end` may be negative or past the end) over `len`.
pub fn bounds(len: usize, start: Option<i64>, end: Option<i64>) -> (usize, usize) {
    let fix = |i: i64| {
        if i < 0 {
            (len as i64 + i).max(0) as usize
        } else {
            (i as usize).min(len)
        }
    };
    (start.map_or(0, fix), end.map_or(len, fix))
}

/// Python's `str.index`/`rindex`: character index of `sub` in `s[start:end]`.
pub fn index(s: &str, sub: &str, start: Option<i64>, end: Option<i64>, rev: bool) -> Option<usize> {
    let offsets: Vec<usize> = s.char_indices().map(|(i, _)| i).chain([s.len()]).collect();
    let (a, b) = bounds(offsets.len() - 1, start, end);
    if a > b {
        return None;
    }
    let hay = &s[offsets[a]..offsets[b]];
    let found = if rev { hay.rfind(sub) } else { hay.find(sub) }?;
    Some(a + hay[..found].chars().count())
}
