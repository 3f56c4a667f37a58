//! The results tables lm-eval prints after a run (`lm_eval.utils.make_table`, rendered by
//! pytablewriter 1.2's Markdown writer), character for character, from the results JSON.

use std::collections::{BTreeMap, BTreeSet};

use indexmap::IndexMap;
use serde_json::Value;

use super::task::value_text;
use crate::contract::results::{ResultsFile, Scores};

/// The "Tasks" table, then the "Groups" table when there are groups, as `lm-eval run` prints them.
pub fn render(results: &ResultsFile) -> String {
    let mut out = make_table(results, &results.results, "Tasks");
    if !results.groups.is_empty() {
        out.push('\n');
        out.push_str(&make_table(results, &results.groups, "Groups"));
    }
    out
}

/// `make_table(result_dict, column)`: one row per metric and filter of each task (or group), in
/// the order of the group tree, with subtasks indented.
fn make_table(results: &ResultsFile, entries: &IndexMap<String, Scores>, first: &str) -> String {
    let (depths, keys) = hierarchy(&results.group_subtasks, entries.keys().cloned().collect());
    let mut rows: Vec<[String; 9]> = Vec::new();
    for key in keys {
        let Some(entry) = entries.get(&key) else {
            continue;
        };
        let mut name = entry.alias.clone().unwrap_or_else(|| key.clone());
        let depth = depths.get(&key).copied().unwrap_or(0);
        if depth > 0 {
            name = format!("{}- {name}", " ".repeat(depth));
        }
        let mut version = results
            .versions
            .get(&key)
            .map(value_text)
            .unwrap_or_else(|| "    N/A".to_owned());
        let shots = results
            .n_shot
            .get(&key)
            .map(value_text)
            .unwrap_or_else(|| " ".to_owned());
        // Python sorts the (key, value) items: by "metric,filter".
        let metrics: BTreeMap<&String, &Value> = entry.metrics.iter().collect();
        for (metric_filter, value) in &metrics {
            let (metric, filter) = metric_filter.split_once(',').unwrap_or((metric_filter, ""));
            if metric.ends_with("_stderr") {
                continue;
            }
            let arrow = match results.higher_is_better(&key, metric) {
                Some(true) => "↑",
                Some(false) => "↓",
                None => "",
            };
            let shown = match value {
                Value::Number(n) if n.is_f64() => format!("{:.4}", n.as_f64().unwrap_or(f64::NAN)),
                other => value_text(other),
            };
            let (plus_minus, stderr) = match entry.stderr(metric, filter) {
                Some(Value::String(s)) if s == "N/A" => ("±", "   N/A".to_owned()),
                Some(se) => ("±", format!("{:.4}", se.as_f64().unwrap_or(f64::NAN))),
                None => ("", String::new()),
            };
            rows.push([
                name.clone(),
                version.clone(),
                filter.to_owned(),
                shots.clone(),
                metric.to_owned(),
                arrow.to_owned(),
                shown,
                plus_minus.to_owned(),
                stderr,
            ]);
            name.clear();
            version.clear();
        }
    }
    let headers = [
        first, "Version", "Filter", "n-shot", "Metric", "", "Value", "", "Stderr",
    ];
    markdown(&headers, &rows)
}

/// lm-eval's `_build_hierarchy_info`: depth of each name in the group tree, and the display order
/// (roots sorted, children sorted under their parent, then the names in no tree, sorted).
fn hierarchy(
    group_subtasks: &IndexMap<String, Vec<String>>,
    available: BTreeSet<String>,
) -> (BTreeMap<String, usize>, Vec<String>) {
    let children = |name: &str| -> Vec<String> {
        let mut c: Vec<String> = group_subtasks.get(name).cloned().unwrap_or_default();
        c.sort();
        c
    };
    fn visit(
        name: &str,
        depth: usize,
        children: &dyn Fn(&str) -> Vec<String>,
        available: &BTreeSet<String>,
        depths: &mut BTreeMap<String, usize>,
        ordered: &mut Vec<String>,
    ) {
        depths.insert(name.to_owned(), depth);
        if available.contains(name) {
            ordered.push(name.to_owned());
        }
        for child in children(name) {
            visit(&child, depth + 1, children, available, depths, ordered);
        }
    }
    let all_children: BTreeSet<String> = group_subtasks.keys().flat_map(|k| children(k)).collect();
    let (mut depths, mut ordered) = (BTreeMap::new(), Vec::new());
    for name in group_subtasks.keys() {
        if !all_children.contains(name) {
            visit(name, 0, &children, &available, &mut depths, &mut ordered);
        }
    }
    for key in &available {
        if !depths.contains_key(key) {
            ordered.push(key.clone());
        }
    }
    (depths, ordered)
}

/// A cell as pytablewriter reads it: a number (an integer or a real) or text.
fn number(cell: &str) -> Option<f64> {
    let t = cell.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("nan") || t.eq_ignore_ascii_case("inf") {
        return None;
    }
    t.parse::<f64>().ok().filter(|x| x.is_finite())
}

/// Digits after the point in the shortest form of `x` (0 for integral values), as typepy counts.
fn decimals(x: f64) -> usize {
    let shown = format!("{x}");
    shown.split_once('.').map_or(0, |(_, fraction)| fraction.len())
}

/// pytablewriter's Markdown table: headers centred; a column whose cells are all numbers (blank
/// cells aside) is right-aligned, its numbers printed with the most decimals any of them needs;
/// in a column that mixes text and numbers, numbers keep that treatment cell by cell unless the
/// column starts with text, when every cell is printed as given; every column is at least three
/// characters wide.
fn markdown(headers: &[&str], rows: &[[String; 9]]) -> String {
    let columns = headers.len();
    let mut cells: Vec<Vec<(String, bool)>> = vec![Vec::new(); rows.len()];
    let mut numeric_column = vec![true; columns];
    for c in 0..columns {
        let values: Vec<&str> = rows.iter().map(|r| r[c].as_str()).collect();
        let nonblank: Vec<&str> = values.iter().copied().filter(|v| !v.trim().is_empty()).collect();
        let all_numbers = nonblank.iter().all(|v| number(v).is_some());
        let starts_with_text = nonblank.first().is_some_and(|v| number(v).is_none());
        numeric_column[c] = all_numbers && !nonblank.is_empty();
        let places = nonblank
            .iter()
            .filter_map(|v| number(v))
            .map(decimals)
            .max()
            .unwrap_or(0);
        for (r, value) in values.iter().enumerate() {
            let cell = match number(value) {
                Some(x) if !starts_with_text => (format!("{x:.places$}"), true),
                _ if value.trim().is_empty() && numeric_column[c] => (String::new(), true),
                _ => ((*value).to_owned(), false),
            };
            cells[r].push(cell);
        }
    }
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            cells
                .iter()
                .map(|row| row[c].0.chars().count())
                .chain([headers[c].chars().count(), 3])
                .max()
                .unwrap_or(3)
        })
        .collect();
    let mut out = String::new();
    out.push('|');
    for (c, header) in headers.iter().enumerate() {
        let pad = widths[c] - header.chars().count();
        out.push_str(&format!(
            "{}{header}{}|",
            " ".repeat(pad / 2),
            " ".repeat(pad - pad / 2)
        ));
    }
    out.push_str("\n|");
    for c in 0..columns {
        if numeric_column[c] {
            out.push_str(&format!("{}:|", "-".repeat(widths[c] - 1)));
        } else {
            out.push_str(&format!("{}|", "-".repeat(widths[c])));
        }
    }
    out.push('\n');
    for row in &cells {
        out.push('|');
        for (c, (text, right)) in row.iter().enumerate() {
            let pad = widths[c] - text.chars().count();
            if *right {
                out.push_str(&format!("{}{text}|", " ".repeat(pad)));
            } else {
                out.push_str(&format!("{text}{}|", " ".repeat(pad)));
            }
        }
        out.push('\n');
    }
    out
}
