//! Python's `repr()` of the values a template prints: strings (quotes and escapes as CPython
//! picks them) and floats (the shortest digits that read back, in Python's layout), checked
//! against CPython by `tests/fixtures/python_compat/literals.json`.

use super::unicode::is_printable;

/// Python's `repr(s)` of a `str`: single quotes unless the text has a `'` and no `"`; `\\`, the
/// quote, `\t`, `\n`, `\r` escaped; other non-printable characters (`str.isprintable`) as
/// `\xNN`, `\uNNNN` or `\UNNNNNNNN`.
pub fn repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if (c as u32) < 0x7f || is_printable(c) => out.push(c),
            c => {
                let cp = c as u32;
                if cp <= 0xff {
                    out.push_str(&format!("\\x{cp:02x}"));
                } else if cp <= 0xffff {
                    out.push_str(&format!("\\u{cp:04x}"));
                } else {
                    out.push_str(&format!("\\U{cp:08x}"));
                }
            }
        }
    }
    out.push(quote);
    out
}

/// Python's `repr(x)` (= `str(x)`) of a float: the shortest digits that round-trip, positional
/// when the decimal exponent is in `-4..16` (with `.0` for integral values), else
/// `d.ddde+XX` with at least two exponent digits; `inf`, `-inf`, `nan`.
pub fn repr_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits, as Python's repr does.
    let sci = format!("{x:e}");
    let (sign, sci) = match sci.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", sci.as_str()),
    };
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an int");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let decpt = exp + 1; // x = 0.DIGITS * 10**decpt
    let mut out = String::from(sign);
    if decpt <= -4 || decpt > 16 {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = decpt - 1;
        out.push_str(&format!("e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs()));
    } else if decpt <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-decpt) as usize));
        out.push_str(&digits);
    } else {
        let decpt = decpt as usize;
        if digits.len() <= decpt {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', decpt - digits.len()));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..decpt]);
            out.push('.');
            out.push_str(&digits[decpt..]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pycompat::literal::{PyLiteral, literal_eval};

    #[test]
    fn repr_matches_python() {
        let fx = crate::pycompat::literals_fixture();
        for pair in fx["repr_str"].as_array().unwrap() {
            let (s, want) = (pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
            assert_eq!(repr_str(s), want, "repr of {s:?}");
            // And literal_eval reads the repr back.
            assert_eq!(literal_eval(want).unwrap(), PyLiteral::Str(s.into()));
        }
        for pair in fx["repr_float"].as_array().unwrap() {
            let want = pair[1].as_str().unwrap();
            let x = f64::from_bits(pair[0].as_u64().unwrap());
            assert_eq!(repr_float(x), want, "repr of {x:e}");
        }
    }
}
