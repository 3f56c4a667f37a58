//! Where and how strongly a row steers: the `positions` and `normalize` columns of a plan.
//!
//! Positions are counted per batch row in the row's own tokens (padding not counted): the running
//! sum of `attention_mask`, minus one, so the first real token (`<bos>`) is position 0 whether the
//! batch is padded left (generation) or right (scoring), and a decoding step's token is at the
//! past length of its row. This is the position transformers' `generate` gives each token.

use std::fmt;

use anyhow::{Result, bail};

/// Which positions of a sequence a row steers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum PositionRule {
    /// Every position (the default, and what lm-eval's `steered` model does).
    #[default]
    All,
    /// Not where the input token is one of the tokenizer's special tokens (transformers'
    /// `all_special_ids`: `<bos>`, `<eos>`, `<pad>`, `<unk>`, the additional special tokens).
    NoSpecial,
    /// Only positions before the row's prompt length (the `steer.prompt_length` input).
    Prompt,
    /// Only positions at or after the row's prompt length: the tokens the model produces.
    Generated,
    /// Positions `start..end` (`end` `None`: to the end), counted from 0.
    Range { start: u64, end: Option<u64> },
}

impl PositionRule {
    /// The rules by name, for messages.
    pub const KNOWN: &'static str =
        "all, no_special, prompt, generated, N:M (positions N to M-1), N: (N onwards)";

    /// Parses a `positions` field (case-insensitive, trimmed).
    pub fn parse(text: &str) -> Result<Self> {
        let t = text.trim().to_ascii_lowercase();
        Ok(match t.as_str() {
            "all" => PositionRule::All,
            "no_special" => PositionRule::NoSpecial,
            "prompt" => PositionRule::Prompt,
            "generated" => PositionRule::Generated,
            _ if t.contains(':') => parse_range(&t)?,
            _ => bail!(
                "unknown positions rule '{}'; known rules: {}",
                text.trim(),
                Self::KNOWN
            ),
        })
    }

    /// Whether the rule needs the prompt boundary (the `steer.prompt_length` input).
    pub fn reads_prompt_length(self) -> bool {
        matches!(self, PositionRule::Prompt | PositionRule::Generated)
    }
}

/// `N:M` or `N:`, positions counted from 0, `N < M`.
fn parse_range(t: &str) -> Result<PositionRule> {
    let (start, end) = t.split_once(':').expect("the caller checked for ':'");
    let bound = |s: &str, what: &str| -> Result<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            bail!(
                "malformed positions range '{t}': the {what} '{s}' is not a position (a non-negative integer); \
                 write N:M (positions N to M-1) or N: (N onwards)"
            );
        }
        let n: u64 = s
            .parse()
            .map_err(|_| anyhow::anyhow!("malformed positions range '{t}': the {what} '{s}' is too large"))?;
        if n > crate::contract::MAX_CONTEXT as u64 {
            bail!(
                "positions range '{t}': the {what} {n} is beyond any context ({} tokens at most)",
                crate::contract::MAX_CONTEXT
            );
        }
        Ok(n)
    };
    let start = bound(start, "start")?;
    let end = if end.trim().is_empty() {
        None
    } else {
        let end = bound(end, "end")?;
        if end <= start {
            bail!(
                "positions range '{t}' is empty: the end ({end}) must be past the start ({start}); the end is \
                 exclusive, so {start}:{} steers position {start} alone",
                start + 1
            );
        }
        Some(end)
    };
    Ok(PositionRule::Range { start, end })
}

impl fmt::Display for PositionRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PositionRule::All => f.write_str("all"),
            PositionRule::NoSpecial => f.write_str("no_special"),
            PositionRule::Prompt => f.write_str("prompt"),
            PositionRule::Generated => f.write_str("generated"),
            PositionRule::Range {
                start,
                end: Some(end),
            } => write!(f, "{start}:{end}"),
            PositionRule::Range { start, end: None } => write!(f, "{start}:"),
        }
    }
}

/// How a row's coefficient scales its decoder direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Normalize {
    /// `coefficient × W_dec[i]` (the default: SAELens' and lm-eval's).
    #[default]
    None,
    /// `coefficient × W_dec[i] / ‖W_dec[i]‖`.
    Unit,
    /// `coefficient × ‖x_t‖ × W_dec[i] / ‖W_dec[i]‖` at each position `t`: a strength relative to
    /// the residual stream's norm there.
    Residual,
}

impl Normalize {
    pub const KNOWN: &'static str = "none, unit, residual";

    pub fn name(self) -> &'static str {
        match self {
            Normalize::None => "none",
            Normalize::Unit => "unit",
            Normalize::Residual => "residual",
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        let t = text.trim().to_ascii_lowercase();
        [Normalize::None, Normalize::Unit, Normalize::Residual]
            .into_iter()
            .find(|n| n.name() == t)
            .ok_or_else(|| anyhow::anyhow!("unknown normalize '{}'; known: {}", text.trim(), Self::KNOWN))
    }
}

impl fmt::Display for Normalize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_print_back() {
        for text in ["all", "no_special", "prompt", "generated", "0:1", "3:10", "5:"] {
            assert_eq!(PositionRule::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(
            PositionRule::parse(" No_Special ").unwrap(),
            PositionRule::NoSpecial
        );
        assert_eq!(
            PositionRule::parse("2 : 4").unwrap(),
            PositionRule::Range {
                start: 2,
                end: Some(4)
            }
        );
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        let err = |t: &str| PositionRule::parse(t).unwrap_err().to_string();
        assert!(
            err("specials").contains("unknown positions rule 'specials'"),
            "{}",
            err("specials")
        );
        assert!(err("4:2").contains("is empty"), "{}", err("4:2"));
        assert!(err("3:3").contains("is empty"));
        assert!(
            err(":5").contains("the start '' is not a position"),
            "{}",
            err(":5")
        );
        assert!(err("1:x").contains("the end 'x'"));
        assert!(err("-1:").contains("the start '-1'"));
        assert!(err("1:2:3").contains("the end '2:3'"), "{}", err("1:2:3"));
        assert!(err("99999999999999999999:").contains("too large"));
        let n = Normalize::parse("l2").unwrap_err().to_string();
        assert!(
            n.contains("unknown normalize 'l2'") && n.contains("none, unit, residual"),
            "{n}"
        );
        assert_eq!(Normalize::parse(" UNIT").unwrap(), Normalize::Unit);
    }
}
