//! Pairing two runs' documents for one row, and the paired test on them: McNemar for 0/1
//! metrics, the bootstrap for the rest.

use std::collections::BTreeSet;

use anyhow::{Result, bail};
use serde_json::Value;

use super::stats::{self, Aggregation};
use super::{CompareOptions, Run, Test, load};

/// The test of one row: `Ok(Ok((n, test)))`, `Ok(Err(why there is none))`, or an error where the
/// runs scored different documents.
pub(super) fn paired_test(
    a: &Run,
    b: &Run,
    task: &str,
    metric: &str,
    filter: &str,
    options: &CompareOptions,
) -> Result<std::result::Result<(usize, Test), String>> {
    let leaves = a.leaves(task);
    let agg_name = a.aggregation(&leaves[0], metric);
    let Some(agg) = Aggregation::from_name(&agg_name) else {
        return Ok(Err(format!("no paired test for the '{agg_name}' aggregation")));
    };
    if leaves.len() > 1 && agg != Aggregation::Mean {
        return Ok(Err(format!("a group's {agg_name} is not pooled over documents")));
    }
    let (mut xa, mut xb) = (Vec::new(), Vec::new());
    for leaf in &leaves {
        let (Some(sa), Some(sb)) = (a.samples.get(leaf), b.samples.get(leaf)) else {
            let which = if a.samples.contains_key(leaf) {
                &b.path
            } else {
                &a.path
            };
            return Ok(Err(format!(
                "no samples of {leaf} beside {}: evaluate with --log-samples",
                which.display()
            )));
        };
        let da = documents(sa, metric, filter, agg)?;
        let db = documents(sb, metric, filter, agg)?;
        same_documents(leaf, filter, sa, &da, sb, &db)?;
        xa.extend(da.iter().map(|d| d.value));
        xb.extend(db.iter().map(|d| d.value));
    }
    if xa.is_empty() {
        return Ok(Err(format!("the samples hold no {metric} values")));
    }
    Ok(Ok((xa.len(), test(agg, &xa, &xb, options))))
}

/// The test on paired values `(value, weight)`: McNemar where every value is 0 or 1 and the
/// aggregation is the mean, the bootstrap otherwise.
fn test(agg: Aggregation, xa: &[(f64, f64)], xb: &[(f64, f64)], options: &CompareOptions) -> Test {
    let binary = agg == Aggregation::Mean && xa.iter().chain(xb).all(|v| v.0 == 0.0 || v.0 == 1.0);
    if binary {
        let lost = xa
            .iter()
            .zip(xb)
            .filter(|(x, y)| x.0 == 1.0 && y.0 == 0.0)
            .count() as u64;
        let gained = xa
            .iter()
            .zip(xb)
            .filter(|(x, y)| x.0 == 0.0 && y.0 == 1.0)
            .count() as u64;
        Test::Mcnemar {
            lost,
            gained,
            p_value: stats::mcnemar_exact(lost, gained),
        }
    } else {
        let r = stats::paired_bootstrap(agg, xa, xb, options.resamples, options.seed, options.alpha);
        Test::Bootstrap {
            resamples: options.resamples,
            seed: options.seed,
            ci_level: 1.0 - options.alpha,
            ci_low: r.ci.0,
            ci_high: r.ci.1,
            p_value: r.p_value,
        }
    }
}

/// One document's score in one run.
struct Doc {
    id: i64,
    /// Index into the task's sample lines.
    line: usize,
    /// `(value, weight)`; the weight only for weighted aggregations.
    value: (f64, f64),
}

/// A task's documents for one metric and filter, sorted by doc_id.
fn documents(samples: &load::TaskSamples, metric: &str, filter: &str, agg: Aggregation) -> Result<Vec<Doc>> {
    let mut out = Vec::new();
    for (i, line) in samples.lines.iter().enumerate() {
        if line.filter != filter {
            continue;
        }
        let Some((_, v)) = line.metrics.iter().find(|(m, _)| m == metric) else {
            continue;
        };
        let value = match (v, agg.weighted()) {
            (Value::Bool(b), false) => (f64::from(u8::from(*b)), 0.0),
            (Value::Number(x), false) => (x.as_f64().unwrap_or(f64::NAN), 0.0),
            (Value::Array(pair), true) if pair.len() == 2 && pair.iter().all(Value::is_number) => (
                pair[0].as_f64().unwrap_or(f64::NAN),
                pair[1].as_f64().unwrap_or(f64::NAN),
            ),
            _ => bail!(
                "{}:{}: {metric} is {v}, expected {}",
                samples.path.display(),
                line.line,
                if agg.weighted() {
                    "a [loglikelihood, weight] pair"
                } else {
                    "a number"
                }
            ),
        };
        out.push(Doc {
            id: line.doc_id,
            line: i,
            value,
        });
    }
    out.sort_by_key(|d| d.id);
    Ok(out)
}

/// Refuses to pair documents that differ: a paired test is only meaningful on the same questions.
fn same_documents(
    task: &str,
    filter: &str,
    sa: &load::TaskSamples,
    da: &[Doc],
    sb: &load::TaskSamples,
    db: &[Doc],
) -> Result<()> {
    let advice = "a paired test needs both runs to score the same documents: evaluate the same task \
                  version with the same --limit (and the same dataset revision)";
    let ids_a: BTreeSet<i64> = da.iter().map(|d| d.id).collect();
    let ids_b: BTreeSet<i64> = db.iter().map(|d| d.id).collect();
    if let Some(id) = ids_a.difference(&ids_b).next() {
        bail!(
            "task {task}: document {id} is in {} ({} documents) but not in {} ({} documents); {advice}",
            sa.path.display(),
            da.len(),
            sb.path.display(),
            db.len()
        );
    }
    if let Some(id) = ids_b.difference(&ids_a).next() {
        bail!(
            "task {task}: document {id} is in {} ({} documents) but not in {} ({} documents); {advice}",
            sb.path.display(),
            db.len(),
            sa.path.display(),
            da.len()
        );
    }
    if da.len() != db.len() {
        bail!(
            "task {task} (filter {filter}): {} has {} sample lines and {} has {}; {advice}",
            sa.path.display(),
            da.len(),
            sb.path.display(),
            db.len()
        );
    }
    for (x, y) in da.iter().zip(db) {
        let (la, lb) = (&sa.lines[x.line], &sb.lines[y.line]);
        if la.identity != lb.identity {
            let short = |s: &str| s.chars().take(16).collect::<String>();
            bail!(
                "task {task}: document {} differs: doc_hash {}… at {}:{} but {}… at {}:{}; {advice}",
                x.id,
                short(&la.identity),
                sa.path.display(),
                la.line,
                short(&lb.identity),
                sb.path.display(),
                lb.line
            );
        }
    }
    Ok(())
}
