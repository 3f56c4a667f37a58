//! The text report: one table per run against the baseline, and a note on the method.

use std::fmt::Write as _;

use super::{Comparison, Report, Row, Test};

const HEADER: [&str; 10] = [
    "Task",
    "Metric",
    "Filter",
    "n",
    "A",
    "B",
    "Δ (B−A)",
    "Paired test",
    "p",
    "",
];
/// The columns of numbers, right-aligned; words are left-aligned.
const NUMERIC: [&str; 5] = ["n", "A", "B", "Δ (B−A)", "p"];

impl Report {
    /// The tables a person reads: one per run against the baseline.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.comparisons {
            out.push_str(&self.comparison_table(c));
        }
        out.push_str(&wrap(&self.method_note(), 100));
        out
    }

    /// One run against the baseline: both paths, a row per task and metric, and the tasks only
    /// one of them has.
    fn comparison_table(&self, c: &Comparison) -> String {
        let mut out = String::new();
        let x_note = |x: Option<f64>| x.map(|x| format!("  (x = {x})")).unwrap_or_default();
        let _ = writeln!(
            out,
            "A (baseline): {}{}",
            self.baseline.path.display(),
            x_note(self.baseline.x)
        );
        let _ = writeln!(out, "B:            {}{}", c.run.path.display(), x_note(c.run.x));
        let mut table = vec![HEADER.map(str::to_owned).to_vec()];
        table.extend(c.rows.iter().map(|r| row_cells(r, self.alpha)));
        if c.rows.iter().all(|r| r.filter == "none") {
            for row in &mut table {
                row.remove(2);
            }
        }
        out.push_str(&aligned(&table));
        if !c.only_in_baseline.is_empty() {
            let _ = writeln!(out, "only in A: {}", c.only_in_baseline.join(", "));
        }
        if !c.only_in_run.is_empty() {
            let _ = writeln!(out, "only in B: {}", c.only_in_run.join(", "));
        }
        let _ = writeln!(out);
        out
    }

    /// What the tests are, under the tables.
    fn method_note(&self) -> String {
        let tested = self
            .comparisons
            .iter()
            .flat_map(|c| &c.rows)
            .filter(|r| r.test.is_some())
            .count();
        format!(
            "Paired tests on the documents both runs scored (matched by doc_id and doc_hash; a group pools \
             its subtasks). 0/1 metrics: exact McNemar test, two-sided binomial on the documents that \
             changed (gained: right only in B, lost: right only in A). Other metrics: paired bootstrap, {} \
             resamples of the documents (seed {}), {:.0}% percentile interval of Δ. p-values are per row, \
             not corrected for the {tested} rows tested.",
            self.resamples,
            self.seed,
            (1.0 - self.alpha) * 100.0
        )
    }
}

/// A row's cells, in `HEADER` order.
fn row_cells(r: &Row, alpha: f64) -> Vec<String> {
    let (test, p, verdict) = match (&r.test, &r.note) {
        (Some(t), _) => (test_text(t), p_text(t.p_value()), verdict(r, t.p_value(), alpha)),
        (None, note) => ("-".to_owned(), "-".to_owned(), note.clone().unwrap_or_default()),
    };
    vec![
        // Subtasks indented under their group, as lm-eval's table shows them.
        match r.depth {
            0 => r.task.clone(),
            d => format!("{}- {}", " ".repeat(2 * d - 1), r.task),
        },
        r.metric.clone(),
        r.filter.clone(),
        r.n.map_or("-".to_owned(), |n| n.to_string()),
        number(r.a),
        number(r.b),
        signed(r.delta),
        test,
        p,
        verdict,
    ]
}

fn test_text(t: &Test) -> String {
    match t {
        Test::Mcnemar { lost, gained, .. } => format!("McNemar: {gained} gained, {lost} lost"),
        Test::Bootstrap {
            ci_level,
            ci_low,
            ci_high,
            ..
        } => format!(
            "bootstrap {:.0}% CI [{}, {}]",
            ci_level * 100.0,
            signed(*ci_low),
            signed(*ci_high)
        ),
    }
}

/// Whether B differs from A at `alpha`, and which way, in the metric's sense where it has one.
fn verdict(r: &Row, p: f64, alpha: f64) -> String {
    if p >= alpha {
        return format!("not significant at α={alpha}");
    }
    let up = r.delta > 0.0;
    let which = match r.higher_is_better {
        Some(h) if h == up => "B better",
        Some(_) => "B worse",
        None if up => "B higher",
        None => "B lower",
    };
    format!("significant at α={alpha} ({which})")
}

/// The table's lines, its columns padded to their widest cell; the first row is the header.
fn aligned(table: &[Vec<String>]) -> String {
    let cols = table[0].len();
    let widths: Vec<usize> = (0..cols)
        .map(|i| table.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in table {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let pad = widths[i] - cell.chars().count();
            if NUMERIC.contains(&table[0][i].as_str()) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if i + 1 < cols {
                    line.push_str(&" ".repeat(pad));
                }
            }
            if i + 1 < cols {
                line.push_str("  ");
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// A score for the table: 4 decimals, or scientific where that would hide it.
fn number(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e5 || v.abs() < 1e-3) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

fn signed(v: f64) -> String {
    let s = number(v);
    if v >= 0.0 { format!("+{s}") } else { s }
}

/// `text` broken into lines of at most `width` characters, at spaces.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = 0;
    for word in text.split_whitespace() {
        let len = word.chars().count();
        if line > 0 && line + 1 + len > width {
            out.push('\n');
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += len;
    }
    out.push('\n');
    out
}

fn p_text(p: f64) -> String {
    if p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}
