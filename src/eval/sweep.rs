//! `eval --sweep`: which coefficient input to sweep over which values, and the table of the
//! points (each point's full results are written like any evaluation's).

use std::str::FromStr;

use anyhow::{Result, bail};

use super::evaluator::SweepPoint;
use crate::contract::sweep::CoefficientInput;

/// `0,60,120` (the model's only coefficient input) or `steer.coeff.1=0,60,120`.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepSpec {
    pub input: Option<String>,
    pub values: Vec<f64>,
}

impl FromStr for SweepSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (input, list) = match s.split_once('=') {
            Some((name, list)) => (Some(name.trim().to_owned()), list),
            None => (None, s),
        };
        let values = list
            .split(',')
            .map(|v| match v.trim().parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(x),
                _ => bail!(
                    "'{}' is not a coefficient: --sweep takes numbers, e.g. 0,60,120,240",
                    crate::files::printable(v.trim(), 40)
                ),
            })
            .collect::<Result<Vec<_>>>()?;
        if values.is_empty() {
            bail!("--sweep needs at least one value, e.g. 0,60,120,240");
        }
        Ok(Self { input, values })
    }
}

impl SweepSpec {
    /// The coefficient input the sweep feeds, among the model's.
    pub fn resolve<'a>(&self, inputs: &'a [CoefficientInput]) -> Result<&'a CoefficientInput> {
        let listed = || {
            inputs
                .iter()
                .map(|c| {
                    format!(
                        "  {} (row {} of {}, latent {}, {} at {}, default {})",
                        c.input, c.row, c.patch, c.latent, c.action, c.hook, c.default
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        match (&self.input, inputs) {
            (_, []) => bail!(
                "the model has no coefficient inputs: patch it with `sae-onnx patch --sweepable` to sweep its steering coefficients"
            ),
            (None, [only]) => Ok(only),
            (None, _) => bail!(
                "the model has {} coefficient inputs; name one, e.g. --sweep {}=0,60,120:\n{}",
                inputs.len(),
                inputs[0].input,
                listed()
            ),
            (Some(name), _) => inputs.iter().find(|c| &c.input == name).ok_or_else(|| {
                anyhow::anyhow!(
                    "the model has no coefficient input '{name}'; it has:\n{}",
                    listed()
                )
            }),
        }
    }
}

/// One row per sweep point, one column per group (or per task when there are no groups) and
/// metric: `value ± stderr`.
pub fn table(input: &str, points: &[SweepPoint]) -> String {
    let Some(first) = points.first() else {
        return String::new();
    };
    let first = &first.outcome.results;
    let names: Vec<&String> = if first.groups.is_empty() {
        first.results.keys().collect()
    } else {
        first.groups.keys().collect()
    };
    let mut columns: Vec<(String, String)> = Vec::new();
    for name in names {
        if let Some(entry) = first.results.get(name) {
            for key in entry.metrics.keys() {
                if key.contains(',') && !key.contains("_stderr") {
                    columns.push((name.clone(), key.clone()));
                }
            }
        }
    }
    let mut out = format!("| {input} |");
    for (name, key) in &columns {
        out.push_str(&format!(" {name} {} |", key.trim_end_matches(",none")));
    }
    out.push_str(&format!("\n|---|{}\n", "---|".repeat(columns.len())));
    for point in points {
        out.push_str(&format!("| {} |", point.value));
        for (name, key) in &columns {
            let entry = point.outcome.results.results.get(name);
            let stderr_key = key.replacen(',', "_stderr,", 1);
            let cell = match (
                entry.and_then(|e| e.value(key)),
                entry.and_then(|e| e.value(&stderr_key)),
            ) {
                (Some(v), Some(se)) => format!("{v:.4} ± {se:.4}"),
                (Some(v), None) => format!("{v:.4}"),
                _ => "-".to_owned(),
            };
            out.push_str(&format!(" {cell} |"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_or_without_an_input_name() {
        assert_eq!(
            "0, 60,120.5".parse::<SweepSpec>().unwrap(),
            SweepSpec {
                input: None,
                values: vec![0.0, 60.0, 120.5]
            }
        );
        let named: SweepSpec = "steer.coeff.1=-8,8".parse().unwrap();
        assert_eq!(named.input.as_deref(), Some("steer.coeff.1"));
        assert_eq!(named.values, vec![-8.0, 8.0]);
        for bad in ["", "1,,2", "x", "nan", "steer.coeff.0="] {
            assert!(bad.parse::<SweepSpec>().is_err(), "{bad:?}");
        }
    }
}
