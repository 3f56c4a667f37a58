//! Steering plans: CSV files that name SAE latents and coefficients.
//!
//! Two formats, told apart by the header (column order is free, names are case-insensitive):
//! - the seed format: `latent_idx,steering_coefficient,sae_release,sae_id,description` and the
//!   optional columns `action` (default `add`) and `threshold`, e.g.
//!   `12082, 240.0,gemma-scope-2b-pt-res-canonical,layer_20/width_16k/canonical,dogs`;
//! - lm-eval's `steered` format: `loader,action,sparse_model,hookpoint,feature_index,
//!   steering_coefficient,head_index,sae_id,description` (`loader`, `action`, `hookpoint`,
//!   `head_index`, `sae_id` and `description` may be left out; `loader` must be `sae_lens`), and
//!   also an optional `threshold`.
//!
//! Both formats also take the optional columns `positions` (which positions a row steers, default
//! `all`: [`PositionRule`]) and `normalize` (how its coefficient scales the direction, default
//! `none`: [`Normalize`]).
//!
//! Actions are [`SteerAction`]s. In lm-eval's format `clamp` keeps lm-eval's meaning (set the
//! projection on the decoder direction: [`SteerAction::ClampProjection`]), so existing lm-eval files
//! steer as lm-eval steers them; `clamp_feature` names the SAE-feature clamp in either format.
//!
//! Fields are trimmed, may be quoted (`"a, b"`, with `""` for a quote), and a UTF-8 BOM, CRLF line
//! ends and empty lines are accepted. Columns whose header is empty (a pandas index, a trailing
//! comma) are ignored. Every error names `file:line:column`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Result, anyhow, bail};

use super::rules::{Normalize, PositionRule};
use crate::hook::HookPoint;
use crate::sae::SaeSource;

/// What a row does at its hook `x`, with `f(x)` the row's SAE feature (the SAE's own encoder:
/// `act((x - b_dec if apply_b_dec_to_input) · W_enc[:, latent] + b_enc[latent])`, ReLU or JumpReLU).
/// Every row of a plan reads the hook's value before any row of that plan changed it, and the
/// changes of rows on one hook are summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SteerAction {
    /// Add `coefficient * W_dec[latent]` at every position.
    Add,
    /// Set the SAE feature to `coefficient` (SAELens: encode, set the latent, decode, keep the error
    /// term): add `(coefficient - f(x)) * W_dec[latent]`.
    Clamp,
    /// Add `coefficient * W_dec[latent]` only where the feature is active: `f(x) > threshold`
    /// (the row's `threshold` column, default 0).
    AddIfActive,
    /// lm-eval's `clamp`: set the projection of `x - b_dec` on the unit decoder direction
    /// `d = W_dec[latent] / |W_dec[latent]|` to `coefficient`: add `(coefficient - (x - b_dec)·d) * d`.
    ClampProjection,
}

impl SteerAction {
    pub const ALL: [SteerAction; 4] = [
        SteerAction::Add,
        SteerAction::Clamp,
        SteerAction::AddIfActive,
        SteerAction::ClampProjection,
    ];

    /// The name in the seed format (and in the patched model's provenance).
    pub fn name(self) -> &'static str {
        match self {
            SteerAction::Add => "add",
            SteerAction::Clamp => "clamp",
            SteerAction::AddIfActive => "add_if_active",
            SteerAction::ClampProjection => "clamp_projection",
        }
    }

    /// Whether the row needs its SAE's encoder (the feature's activation).
    pub fn reads_feature(self) -> bool {
        matches!(self, SteerAction::Clamp | SteerAction::AddIfActive)
    }

    /// Parses an `action` field as the plan's format means it: lm-eval's `clamp` is its
    /// projection clamp, ours the SAE-feature clamp; `clamp_feature` is the latter in both.
    pub fn parse(text: &str, format: PlanFormat) -> Result<Self> {
        let t = text.trim().to_ascii_lowercase();
        match (t.as_str(), format) {
            ("clamp", PlanFormat::LmEval) => return Ok(SteerAction::ClampProjection),
            ("clamp_feature", _) => return Ok(SteerAction::Clamp),
            _ => {}
        }
        Self::ALL.into_iter().find(|a| a.name() == t).ok_or_else(|| {
            let known = match format {
                PlanFormat::Seed => "add, clamp, add_if_active, clamp_projection (clamp_feature is clamp)",
                PlanFormat::LmEval => {
                    "add, clamp (lm-eval's: clamp_projection), add_if_active, clamp_projection, \
                     clamp_feature (the SAE-feature clamp)"
                }
            };
            anyhow!("unknown action '{}'; known actions: {known}", text.trim())
        })
    }
}

impl FromStr for SteerAction {
    type Err = anyhow::Error;
    /// The seed format's meaning (`clamp` is the SAE-feature clamp).
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s, PlanFormat::Seed)
    }
}

impl fmt::Display for SteerAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which CSV format a plan was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanFormat {
    /// `latent_idx,steering_coefficient,sae_release,sae_id,description[,action][,threshold]`
    Seed,
    /// lm-eval `steered`: `loader,action,sparse_model,hookpoint,feature_index,...`
    LmEval,
}

/// A steering plan is a few lines; the bound makes `--csv /dev/zero` an error, not an
/// out-of-memory kill.
const PLAN_MAX_BYTES: u64 = 64 << 20;

/// A position in the plan file (1-based line and character column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// The fields of a row, for [`SteeringPlan::location`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanField {
    Action,
    Latent,
    Coefficient,
    Sae,
    SaeId,
    Hook,
    HeadIndex,
    Description,
    Threshold,
    Positions,
    Normalize,
}

/// Where each field of a row starts (`None`: the column is absent or the field empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RowPositions {
    pub action: Option<Pos>,
    pub latent: Pos,
    pub coefficient: Pos,
    pub sae: Pos,
    pub sae_id: Option<Pos>,
    pub hook: Option<Pos>,
    pub head_index: Option<Pos>,
    pub description: Option<Pos>,
    pub threshold: Option<Pos>,
    pub steer_at: Option<Pos>,
    pub normalize: Option<Pos>,
}

/// One row of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct SteerRow {
    /// The line the row starts on (1-based).
    pub line: usize,
    pub action: SteerAction,
    pub latent: usize,
    pub coefficient: f64,
    /// `sae_release` / `sparse_model`: a registry release, a Hugging Face repo id or a folder.
    pub sae: SaeSource,
    /// The SAE within the source (may be empty for a folder that holds one SAE).
    pub sae_id: String,
    /// lm-eval `hookpoint`, when given (otherwise the SAE's own hook applies).
    pub hook: Option<HookPoint>,
    pub head_index: Option<usize>,
    pub description: String,
    /// `add_if_active`: the activation the feature must exceed (`None`: 0).
    pub threshold: Option<f64>,
    /// The `positions` column: where the row steers.
    pub steer_at: PositionRule,
    pub normalize: Normalize,
    pub positions: RowPositions,
}

/// A parsed plan.
#[derive(Debug, Clone, PartialEq)]
pub struct SteeringPlan {
    pub source_path: PathBuf,
    pub format: PlanFormat,
    pub rows: Vec<SteerRow>,
}

impl SteeringPlan {
    /// Reads and parses a plan file. Relative SAE folders are looked up in the current directory,
    /// then next to the plan.
    pub fn from_csv_file(path: &Path) -> Result<Self> {
        let text = crate::files::read_text(path, "steering plan", PLAN_MAX_BYTES)?;
        Self::parse_csv(&text, path)
    }

    /// Parses plan text; `source_path` names it in errors, and its folder is where relative SAE
    /// folders are looked up after the current directory.
    pub fn parse_csv(text: &str, source_path: &Path) -> Result<Self> {
        let at = |p: Pos, msg: String| anyhow!("{}:{}:{}: {msg}", source_path.display(), p.line, p.col);
        let records = lex(text).map_err(|(p, msg)| at(p, msg))?;
        let Some((header, records)) = records.split_first() else {
            bail!(
                "{}: the steering plan is empty (expected a header line)",
                source_path.display()
            );
        };
        let layout = Layout::from_header(header).map_err(|(p, msg)| at(p, msg))?;
        let base_dir = source_path.parent().filter(|d| !d.as_os_str().is_empty());
        let mut rows = Vec::with_capacity(records.len());
        for record in records {
            rows.push(layout.row(record, base_dir).map_err(|(p, msg)| at(p, msg))?);
        }
        if rows.is_empty() {
            bail!(
                "{}: the steering plan has a header but no rows",
                source_path.display()
            );
        }
        Ok(Self {
            source_path: source_path.to_owned(),
            format: layout.format,
            rows,
        })
    }

    /// `file:line:col` of a field of `row` (the row's line when the field is absent).
    pub fn location(&self, row: &SteerRow, field: PlanField) -> String {
        let p = &row.positions;
        let pos = match field {
            PlanField::Action => p.action,
            PlanField::Latent => Some(p.latent),
            PlanField::Coefficient => Some(p.coefficient),
            PlanField::Sae => Some(p.sae),
            PlanField::SaeId => p.sae_id,
            PlanField::Hook => p.hook,
            PlanField::HeadIndex => p.head_index,
            PlanField::Description => p.description,
            PlanField::Threshold => p.threshold,
            PlanField::Positions => p.steer_at,
            PlanField::Normalize => p.normalize,
        }
        .unwrap_or(Pos {
            line: row.line,
            col: 1,
        });
        format!("{}:{}:{}", self.source_path.display(), pos.line, pos.col)
    }
}

// ------------------------------------------------------------------------------------------------
// CSV

type PlanError = (Pos, String);

#[derive(Debug, Clone)]
struct Field {
    text: String,
    pos: Pos,
}

#[derive(Debug, Clone)]
struct Record {
    pos: Pos,
    fields: Vec<Field>,
}

/// Splits CSV text into records of trimmed fields (RFC 4180 quoting), skipping blank lines.
fn lex(text: &str) -> Result<Vec<Record>, PlanError> {
    let mut chars = text.strip_prefix('\u{feff}').unwrap_or(text).chars().peekable();
    let (mut line, mut col) = (1usize, 1usize);
    let mut records = Vec::new();
    while chars.peek().is_some() {
        let start = Pos { line, col };
        let mut fields = Vec::new();
        let mut any_quoted = false;
        loop {
            while matches!(chars.peek(), Some(' ' | '\t')) {
                chars.next();
                col += 1;
            }
            let pos = Pos { line, col };
            let mut s = String::new();
            if chars.peek() == Some(&'"') {
                any_quoted = true;
                chars.next();
                col += 1;
                loop {
                    match chars.next() {
                        None => return Err((pos, "unterminated quoted field (a \" is never closed)".into())),
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            col += 2;
                            s.push('"');
                        }
                        Some('"') => {
                            col += 1;
                            break;
                        }
                        Some('\n') => {
                            s.push('\n');
                            line += 1;
                            col = 1;
                        }
                        Some(c) => {
                            refuse_control(c, Pos { line, col })?;
                            s.push(c);
                            col += 1;
                        }
                    }
                }
                while matches!(chars.peek(), Some(' ' | '\t')) {
                    chars.next();
                    col += 1;
                }
                if let Some(&c) = chars.peek()
                    && !matches!(c, ',' | '\n' | '\r')
                {
                    return Err((
                        Pos { line, col },
                        format!(
                            "unexpected '{c}' after a closing quote (quote the whole field, and write a \" inside it as \"\")"
                        ),
                    ));
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if matches!(c, ',' | '\n' | '\r') {
                        break;
                    }
                    refuse_control(c, Pos { line, col })?;
                    s.push(c);
                    chars.next();
                    col += 1;
                }
                s.truncate(s.trim_end().len());
            }
            fields.push(Field { text: s, pos });
            match chars.next() {
                Some(',') => col += 1,
                Some('\r') => {
                    if chars.peek() == Some(&'\n') {
                        chars.next();
                    }
                    line += 1;
                    col = 1;
                    break;
                }
                Some('\n') => {
                    line += 1;
                    col = 1;
                    break;
                }
                _ => break,
            }
        }
        if any_quoted || fields.iter().any(|f| !f.text.is_empty()) {
            records.push(Record { pos: start, fields });
        }
    }
    Ok(records)
}

/// NUL bytes and terminal escapes have no place in a plan (a binary file, or text pasted from
/// a terminal); refusing them here also keeps them out of every later message that echoes a field.
fn refuse_control(c: char, pos: Pos) -> Result<(), PlanError> {
    if c.is_control() && !matches!(c, '\t' | '\r' | '\n') {
        return Err((
            pos,
            format!(
                "control character '{}' in the steering plan (a binary file, or terminal escape codes?); \
                 a plan is plain CSV text",
                c.escape_default()
            ),
        ));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// columns

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Col {
    Latent,
    Coefficient,
    Sae,
    SaeId,
    Description,
    Action,
    Loader,
    Hook,
    HeadIndex,
    Threshold,
    Positions,
    Normalize,
}

const SEED_COLUMNS: &[(&str, Col, bool)] = &[
    ("latent_idx", Col::Latent, true),
    ("steering_coefficient", Col::Coefficient, true),
    ("sae_release", Col::Sae, true),
    ("sae_id", Col::SaeId, true),
    ("description", Col::Description, false),
    ("action", Col::Action, false),
    ("threshold", Col::Threshold, false),
    ("positions", Col::Positions, false),
    ("normalize", Col::Normalize, false),
];

const LM_EVAL_COLUMNS: &[(&str, Col, bool)] = &[
    ("loader", Col::Loader, false),
    ("action", Col::Action, false),
    ("sparse_model", Col::Sae, true),
    ("hookpoint", Col::Hook, false),
    ("feature_index", Col::Latent, true),
    ("steering_coefficient", Col::Coefficient, true),
    ("head_index", Col::HeadIndex, false),
    ("sae_id", Col::SaeId, false),
    ("description", Col::Description, false),
    ("threshold", Col::Threshold, false),
    ("positions", Col::Positions, false),
    ("normalize", Col::Normalize, false),
];

fn column_list(columns: &[(&str, Col, bool)]) -> String {
    columns
        .iter()
        .map(|(n, _, req)| if *req { (*n).to_owned() } else { format!("[{n}]") })
        .collect::<Vec<_>>()
        .join(",")
}

/// Which field index holds which column.
struct Layout {
    format: PlanFormat,
    /// (field index, column, header name)
    columns: Vec<(usize, Col, &'static str)>,
    header_len: usize,
}

impl Layout {
    fn from_header(header: &Record) -> Result<Self, PlanError> {
        let names: Vec<String> = header
            .fields
            .iter()
            .map(|f| f.text.trim().to_ascii_lowercase())
            .collect();
        let has = |n: &str| names.iter().any(|x| x == n);
        let (format, spec) = if has("latent_idx") {
            (PlanFormat::Seed, SEED_COLUMNS)
        } else if has("feature_index") || has("sparse_model") {
            (PlanFormat::LmEval, LM_EVAL_COLUMNS)
        } else {
            let shown: Vec<&str> = header.fields.iter().map(|f| f.text.as_str()).collect();
            return Err((
                header.pos,
                format!(
                    "unrecognised header '{}': expected the seed format ({}) or the lm-eval `steered` format ({})",
                    shown.join(","),
                    column_list(SEED_COLUMNS),
                    column_list(LM_EVAL_COLUMNS)
                ),
            ));
        };
        let mut columns: Vec<(usize, Col, &'static str)> = Vec::new();
        for (i, (name, field)) in names.iter().zip(&header.fields).enumerate() {
            if name.is_empty() {
                continue;
            }
            let Some(&(known, col, _)) = spec.iter().find(|(n, _, _)| n == name) else {
                let near = crate::sae::registry::nearest(name, spec.iter().map(|(n, _, _)| *n), 1);
                let hint = near
                    .first()
                    .map(|n| format!(" (did you mean '{n}'?)"))
                    .unwrap_or_default();
                return Err((
                    field.pos,
                    format!(
                        "unknown column '{}'{hint}; this format's columns are {}",
                        field.text,
                        column_list(spec)
                    ),
                ));
            };
            if columns.iter().any(|c| c.1 == col) {
                return Err((field.pos, format!("column '{known}' appears twice")));
            }
            columns.push((i, col, known));
        }
        if let Some((missing, _, _)) = spec
            .iter()
            .find(|(_, col, req)| *req && !columns.iter().any(|c| c.1 == *col))
        {
            return Err((
                header.pos,
                format!(
                    "the header has no '{missing}' column; expected {}",
                    column_list(spec)
                ),
            ));
        }
        Ok(Self {
            format,
            columns,
            header_len: header.fields.len(),
        })
    }

    fn field<'r>(&self, record: &'r Record, col: Col) -> Option<(&'static str, &'r Field)> {
        let &(i, _, name) = self.columns.iter().find(|c| c.1 == col)?;
        record.fields.get(i).map(|f| (name, f))
    }

    /// A non-empty field of a required column.
    fn required<'r>(&self, record: &'r Record, col: Col) -> Result<(&'static str, &'r Field), PlanError> {
        let &(_, _, name) = self
            .columns
            .iter()
            .find(|c| c.1 == col)
            .expect("required columns are present");
        match self.field(record, col) {
            Some((n, f)) if !f.text.is_empty() => Ok((n, f)),
            Some((n, f)) => Err((f.pos, format!("{n} is empty"))),
            None => Err((end_of(record), format!("the row has no {name} field"))),
        }
    }

    /// A non-empty field of an optional column.
    fn optional<'r>(&self, record: &'r Record, col: Col) -> Option<(&'static str, &'r Field)> {
        self.field(record, col).filter(|(_, f)| !f.text.is_empty())
    }

    fn row(&self, record: &Record, base_dir: Option<&Path>) -> Result<SteerRow, PlanError> {
        if let Some(extra) = record
            .fields
            .iter()
            .skip(self.header_len)
            .find(|f| !f.text.is_empty())
        {
            return Err((
                extra.pos,
                format!(
                    "the row has {} fields but the header has {} (quote fields that contain commas: \"a, b\")",
                    record.fields.len(),
                    self.header_len
                ),
            ));
        }
        let (name, f) = self.required(record, Col::Latent)?;
        let latent = f.text.parse::<usize>().map_err(|_| {
            (
                f.pos,
                format!(
                    "{name} '{}' is not a latent index (a non-negative integer)",
                    f.text
                ),
            )
        })?;
        let latent_pos = f.pos;
        let (name, f) = self.required(record, Col::Coefficient)?;
        let coefficient = float32(name, f)?;
        let coefficient_pos = f.pos;
        if let Some((_, f)) = self.optional(record, Col::Loader)
            && f.text != "sae_lens"
        {
            return Err((
                f.pos,
                format!(
                    "loader '{}' is not supported; known loaders: sae_lens (SAEs are read as SAELens reads them)",
                    f.text
                ),
            ));
        }
        let action = match self.optional(record, Col::Action) {
            Some((_, f)) => (
                SteerAction::parse(&f.text, self.format).map_err(|e| (f.pos, e.to_string()))?,
                Some(f.pos),
            ),
            None => (SteerAction::Add, None),
        };
        let threshold = match self.optional(record, Col::Threshold) {
            Some((name, f)) => Some((threshold(name, f, action.0)?, f.pos)),
            None => None,
        };
        let steer_at = match self.optional(record, Col::Positions) {
            Some((name, f)) => Some((
                PositionRule::parse(&f.text).map_err(|e| (f.pos, format!("{name}: {e:#}")))?,
                f.pos,
            )),
            None => None,
        };
        let normalize = match self.optional(record, Col::Normalize) {
            Some((name, f)) => Some((normalize(name, f, action.0)?, f.pos)),
            None => None,
        };
        let (name, f) = self.required(record, Col::Sae)?;
        let sae = SaeSource::classify(&f.text, base_dir).map_err(|e| (f.pos, format!("{name}: {e:#}")))?;
        let sae_pos = f.pos;
        let sae_id = self.optional(record, Col::SaeId);
        let hook = match self.optional(record, Col::Hook) {
            Some((name, f)) => Some((
                HookPoint::parse(&f.text).map_err(|e| (f.pos, format!("{name}: {e:#}")))?,
                f.pos,
            )),
            None => None,
        };
        let head_index = match self.optional(record, Col::HeadIndex) {
            Some((name, f)) => Some((
                f.text.parse::<usize>().map_err(|_| {
                    (
                        f.pos,
                        format!("{name} '{}' is not a head index (a non-negative integer)", f.text),
                    )
                })?,
                f.pos,
            )),
            None => None,
        };
        let description = self.optional(record, Col::Description);
        Ok(SteerRow {
            line: record.pos.line,
            action: action.0,
            latent,
            coefficient,
            sae,
            sae_id: sae_id.map(|(_, f)| f.text.clone()).unwrap_or_default(),
            hook: hook.map(|h| h.0),
            head_index: head_index.map(|h| h.0),
            description: description.map(|(_, f)| f.text.clone()).unwrap_or_default(),
            threshold: threshold.map(|t| t.0),
            steer_at: steer_at.map(|p| p.0).unwrap_or_default(),
            normalize: normalize.map(|n| n.0).unwrap_or_default(),
            positions: RowPositions {
                action: action.1,
                latent: latent_pos,
                coefficient: coefficient_pos,
                sae: sae_pos,
                sae_id: sae_id.map(|(_, f)| f.pos),
                hook: hook.map(|h| h.1),
                head_index: head_index.map(|h| h.1),
                description: description.map(|(_, f)| f.pos),
                threshold: threshold.map(|t| t.1),
                steer_at: steer_at.map(|p| p.1),
                normalize: normalize.map(|n| n.1),
            },
        })
    }
}

/// A `threshold` field: a finite activation level >= 0, on an `add_if_active` row only (the other
/// actions have no use for it, and silently ignoring it would hide a mistake).
fn threshold(name: &str, f: &Field, action: SteerAction) -> Result<f64, PlanError> {
    let value = float32(name, f)?;
    if action != SteerAction::AddIfActive {
        return Err((
            f.pos,
            format!(
                "{name} applies to add_if_active rows only (this row's action is {action}); leave it empty"
            ),
        ));
    }
    if value < 0.0 {
        // SAE features are never negative, so a negative level would make the row a plain `add`.
        return Err((
            f.pos,
            format!(
                "{name} '{}' is negative; features are never below 0, so the row would add everywhere (use add)",
                f.text
            ),
        ));
    }
    Ok(value)
}

/// A `normalize` field. The clamps set a value rather than add a multiple of a direction (`clamp`
/// sets the feature, `clamp_projection` the projection on the unit direction), so a scale for
/// their coefficient means nothing; accepting one silently would hide the mistake.
fn normalize(name: &str, f: &Field, action: SteerAction) -> Result<Normalize, PlanError> {
    let value = Normalize::parse(&f.text).map_err(|e| (f.pos, format!("{name}: {e:#}")))?;
    if value != Normalize::None && matches!(action, SteerAction::Clamp | SteerAction::ClampProjection) {
        return Err((
            f.pos,
            format!(
                "{name} '{value}' has no meaning on a {action} row, which sets a value instead of adding a \
                 scaled direction; use it with add or add_if_active, or leave it empty"
            ),
        ));
    }
    Ok(value)
}

/// A number the graph can hold: steering runs in float32, so a value beyond its range would
/// become an infinite vector (and NaN would poison every logit).
fn float32(name: &str, f: &Field) -> Result<f64, PlanError> {
    let value = f
        .text
        .parse::<f64>()
        .ok()
        .filter(|c| c.is_finite())
        .ok_or_else(|| (f.pos, format!("{name} '{}' is not a finite number", f.text)))?;
    if value.abs() > f64::from(f32::MAX) {
        return Err((
            f.pos,
            format!(
                "{name} '{}' is beyond float32's range (±{:e}), in which steering is computed",
                f.text,
                f32::MAX
            ),
        ));
    }
    Ok(value)
}

/// Just past the last field of a record, for "missing field" errors.
fn end_of(record: &Record) -> Pos {
    record.fields.last().map_or(record.pos, |f| Pos {
        line: f.pos.line,
        col: f.pos.col + f.text.chars().count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str) -> Vec<Vec<String>> {
        lex(text)
            .unwrap()
            .into_iter()
            .map(|r| r.fields.into_iter().map(|f| f.text).collect())
            .collect()
    }

    #[test]
    fn lexer_handles_quotes_whitespace_bom_and_line_ends() {
        assert_eq!(
            texts("\u{feff}a, b ,\"c, d\"\r\n\n  \r\n1,\"say \"\"hi\"\"\" ,\"multi\nline\"\n"),
            vec![vec!["a", "b", "c, d"], vec!["1", "say \"hi\"", "multi\nline"]]
        );
        assert_eq!(texts("x\n,,\ny"), vec![vec!["x"], vec!["y"]]);
        let err = lex("a,\"b\nc").unwrap_err();
        assert_eq!((err.0.line, err.0.col), (1, 3));
        let err = lex("a,\"b\" c\n").unwrap_err();
        assert_eq!((err.0.line, err.0.col), (1, 7));
        assert!(err.1.contains("closing quote"));
    }

    #[test]
    fn positions_are_character_columns() {
        let r = lex("ab,\"é\",  x\n").unwrap();
        let cols: Vec<usize> = r[0].fields.iter().map(|f| f.pos.col).collect();
        assert_eq!(cols, vec![1, 4, 10]);
    }

    #[test]
    fn actions_parse_and_unknown_ones_list_the_known() {
        assert_eq!(" Clamp ".parse::<SteerAction>().unwrap(), SteerAction::Clamp);
        let lm = |t| SteerAction::parse(t, PlanFormat::LmEval).unwrap();
        assert_eq!(
            lm("clamp"),
            SteerAction::ClampProjection,
            "lm-eval's clamp keeps its meaning"
        );
        assert_eq!(lm("clamp_feature"), SteerAction::Clamp);
        assert_eq!(lm("add_if_active"), SteerAction::AddIfActive);
        for a in SteerAction::ALL {
            assert_eq!(a.name().parse::<SteerAction>().unwrap(), a);
        }
        let err = "ablate".parse::<SteerAction>().unwrap_err().to_string();
        assert!(
            err.contains("unknown action 'ablate'")
                && err.contains("add, clamp, add_if_active, clamp_projection"),
            "{err}"
        );
    }
}
