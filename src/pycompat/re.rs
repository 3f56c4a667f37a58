//! Python's `re` module as lm-eval's tasks use it (`re.sub` in templates, patterns in filters and
//! `regexes_to_ignore`), on the `regex` crate: one translation of Python pattern syntax, and
//! Python's replacement templates.

use std::cell::RefCell;
use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use regex::Regex;

thread_local! {
    static REGEXES: RefCell<HashMap<String, Regex>> = RefCell::new(HashMap::new());
}

/// Compiled patterns kept per thread; past this many the cache starts over.
const CACHE_LIMIT: usize = 4096;

/// `re.compile(pattern)`: a Python pattern read by the `regex` crate after [`translate_pattern`]
/// (see [`sub`] for what it cannot read), compiled once per thread.
pub fn compile(pattern: &str) -> Result<Regex> {
    REGEXES.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(re) = cache.get(pattern) {
            return Ok(re.clone());
        }
        let re = Regex::new(&translate_pattern(pattern))
            .with_context(|| format!("pattern {pattern:?} is not supported by the regex crate"))?;
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(pattern.to_owned(), re.clone());
        Ok(re)
    })
}

/// `re.sub(pattern, repl, s, count=count)` on the `regex` crate.
///
/// The replacement is Python's template: `\1`..`\99`, `\g<1>`, `\g<name>`, `\0` and octal
/// escapes, `\n`-style escapes, other `\X` kept as is (ASCII letters are errors); unmatched
/// groups give ''. Empty matches follow Python 3.7+ (one is allowed right after a non-empty
/// match). The pattern is read by the `regex` crate after [`translate_pattern`]; it has no
/// look-around or backreferences (those patterns are errors), `$` matches only at the very end
/// (Python also matches before a final `\n`), a `{` that is not a repetition must be escaped,
/// `\w` is Unicode's word class (Python's is `str.isalnum()` plus `_`: they differ on combining
/// marks and on `No` numbers like `½`), `\S` inside a set still matches `\x1c`..`\x1f`, and
/// where an empty match must be skipped Python backtracks to a non-empty match at the same place
/// while this moves one character on (lazy `*?` patterns).
pub fn sub(s: &str, pattern: &str, repl: &str, count: i64) -> Result<String> {
    if count < 0 {
        return Ok(s.to_owned());
    }
    let re = compile(pattern)?;
    let template = parse_repl(repl, &re)?;
    let limit = usize::try_from(count).unwrap_or(usize::MAX);
    let mut out = String::with_capacity(s.len());
    let (mut last, mut pos, mut n, mut must_advance) = (0usize, 0usize, 0usize, false);
    while (limit == 0 || n < limit) && pos <= s.len() {
        let Some(caps) = re.captures_at(s, pos) else {
            break;
        };
        let m = caps.get(0).expect("group 0 always matches");
        if must_advance && m.start() == pos && m.end() == pos {
            // An empty match where the last one ended: look one character further.
            match s[pos..].chars().next() {
                Some(c) => {
                    pos += c.len_utf8();
                    must_advance = false;
                    continue;
                }
                None => break,
            }
        }
        out.push_str(&s[last..m.start()]);
        for piece in &template {
            match piece {
                ReplPiece::Literal(text) => out.push_str(text),
                ReplPiece::Group(i) => {
                    if let Some(g) = caps.get(*i) {
                        out.push_str(g.as_str());
                    }
                }
            }
        }
        last = m.end();
        n += 1;
        must_advance = m.start() == m.end();
        pos = m.end();
    }
    out.push_str(&s[last..]);
    Ok(out)
}

/// Python pattern syntax read the way the `regex` crate spells it: `\Z` is `\z`; `\s`/`\S`
/// take in `\x1c`..`\x1f` (Python's `str.isspace`, beyond Unicode's White_Space); inside a
/// set, `[`, `&` and `~` are literal characters (the regex crate reads nested sets and set
/// operations there).
fn translate_pattern(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    let chars: Vec<char> = pattern.chars().collect();
    let mut in_class = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '\\' => match chars.get(i) {
                Some(&d) => {
                    i += 1;
                    match (d, in_class) {
                        ('Z', false) => out.push_str("\\z"),
                        ('s', false) => out.push_str("[\\s\\x1c-\\x1f]"),
                        ('s', true) => out.push_str("\\s\\x1c-\\x1f"),
                        ('S', false) => out.push_str("[^\\s\\x1c-\\x1f]"),
                        _ => {
                            out.push('\\');
                            out.push(d);
                        }
                    }
                }
                None => out.push('\\'),
            },
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                if chars.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                // A `]` right at the start is a literal member, in both dialects.
                if chars.get(i) == Some(&']') {
                    out.push_str("\\]");
                    i += 1;
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            '[' | '&' | '~' if in_class => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

enum ReplPiece {
    Literal(String),
    Group(usize),
}

/// Python's `re._parser.parse_template`.
fn parse_repl(repl: &str, re: &Regex) -> Result<Vec<ReplPiece>> {
    let groups = re.captures_len() - 1;
    let chars: Vec<char> = repl.chars().collect();
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let add_group = |pieces: &mut Vec<ReplPiece>, lit: &mut String, idx: usize| -> Result<()> {
        if idx > groups {
            bail!("invalid group reference {idx} in replacement {repl:?}");
        }
        if !lit.is_empty() {
            pieces.push(ReplPiece::Literal(std::mem::take(lit)));
        }
        pieces.push(ReplPiece::Group(idx));
        Ok(())
    };
    let octal = |c: Option<&char>| c.is_some_and(|c| ('0'..='7').contains(c));
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        if c != '\\' {
            lit.push(c);
            continue;
        }
        let Some(&e) = chars.get(i) else {
            bail!("bad escape (end of pattern) in replacement {repl:?}");
        };
        i += 1;
        match e {
            'g' => {
                if chars.get(i) != Some(&'<') {
                    bail!("missing < in replacement {repl:?}");
                }
                let close = chars[i..]
                    .iter()
                    .position(|&c| c == '>')
                    .with_context(|| format!("missing >, unterminated name in {repl:?}"))?;
                let name: String = chars[i + 1..i + close].iter().collect();
                i += close + 1;
                let idx = if let Ok(idx) = name.parse::<usize>() {
                    idx
                } else if let Some(idx) = re.capture_names().position(|n| n == Some(name.as_str())) {
                    idx
                } else {
                    bail!("unknown group name {name:?} in replacement {repl:?}");
                };
                add_group(&mut pieces, &mut lit, idx)?;
            }
            '0' => {
                let mut v = 0u32;
                for _ in 0..2 {
                    if octal(chars.get(i)) {
                        v = v * 8 + chars[i].to_digit(8).unwrap();
                        i += 1;
                    } else {
                        break;
                    }
                }
                lit.push(char::from_u32(v & 0xff).expect("a byte is a char"));
            }
            '1'..='9' => {
                let mut digits = e.to_string();
                if chars.get(i).is_some_and(|c| c.is_ascii_digit()) {
                    digits.push(chars[i]);
                    i += 1;
                    let all_octal = digits.chars().all(|c| ('0'..='7').contains(&c));
                    if all_octal && octal(chars.get(i)) {
                        digits.push(chars[i]);
                        i += 1;
                        let v = u32::from_str_radix(&digits, 8).expect("octal digits");
                        if v > 0o377 {
                            bail!("octal escape value \\{digits} outside of range 0-0o377");
                        }
                        lit.push(char::from_u32(v).expect("a byte is a char"));
                        continue;
                    }
                }
                add_group(&mut pieces, &mut lit, digits.parse().expect("digits"))?;
            }
            'a' => lit.push('\x07'),
            'b' => lit.push('\x08'),
            'f' => lit.push('\x0c'),
            'n' => lit.push('\n'),
            'r' => lit.push('\r'),
            't' => lit.push('\t'),
            'v' => lit.push('\x0b'),
            '\\' => lit.push('\\'),
            e if e.is_ascii_alphabetic() => bail!("bad escape \\{e} in replacement {repl:?}"),
            e => {
                lit.push('\\');
                lit.push(e);
            }
        }
    }
    if !lit.is_empty() {
        pieces.push(ReplPiece::Literal(lit));
    }
    Ok(pieces)
}
