//! Metric-versus-coefficient charts as PNG files: plotters draws them into an RGB buffer, with
//! DejaVu Sans compiled into the binary (no system font or fontconfig at build or run time), and
//! png encodes them.

use std::path::Path;
use std::sync::Once;

use anyhow::{Context, Result, bail};

use plotters::coord::Shift;
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, register_font};

/// Width of every chart, in pixels.
pub const WIDTH: u32 = 960;
/// Height of one panel (one metric); a figure stacks its panels.
pub const PANEL_HEIGHT: u32 = 440;

/// One line of the chart: a task's metric at each x, with its standard error where known.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    /// `(x, y, stderr)`.
    pub points: Vec<(f64, f64, Option<f64>)>,
}

/// One chart: the series of one metric.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

#[derive(Debug, Clone)]
pub struct Figure {
    pub x_label: String,
    pub panels: Vec<Panel>,
}

const INK: RGBColor = RGBColor(34, 34, 34);
const GRID: RGBColor = RGBColor(228, 228, 228);
const FRAME: RGBColor = RGBColor(120, 120, 120);
/// matplotlib's tab10: distinct, and familiar to readers of ML papers.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The name plotters knows the embedded font by.
const FONT: &str = "DejaVu Sans";
/// DejaVu Sans 2.37, cut down to Latin, Greek and the punctuation and math signs labels use
/// (`font/subset.sh`); licence in `font/LICENSE-DejaVu`.
const DEJAVU_SANS: &[u8] = include_bytes!("font/DejaVuSans.ttf");

/// Label text at `px` pixels in the embedded font.
fn text_style(px: f64) -> TextStyle<'static> {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        assert!(
            register_font(FONT, FontStyle::Normal, DEJAVU_SANS).is_ok(),
            "the embedded font is a TrueType file"
        );
    });
    (FONT, px).into_font().color(&INK)
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type Chart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<Axis, Axis>>;
/// What drawing into the pixel buffer can fail with.
type DrawError = DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>;

/// An axis: its range, its ticks, and the number format of their labels; plotters' coordinate
/// for it, so that the mesh draws these ticks and labels them so.
#[derive(Clone)]
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    step: f64,
    max_abs: f64,
}

impl Axis {
    fn new(lo: f64, hi: f64, ticks: Vec<f64>) -> Self {
        let step = ticks.get(1).map_or(1.0, |t| t - ticks[0]);
        let max_abs = ticks.iter().fold(0.0f64, |m, t| m.max(t.abs()));
        let ticks = ticks
            .into_iter()
            .filter(|&t| t >= lo - 1e-9 && t <= hi + 1e-9)
            .collect();
        Self {
            lo,
            hi,
            ticks,
            step,
            max_abs,
        }
    }

    /// The x axis all panels share, so that they line up: the runs' coefficients, cut to the
    /// ticks' range where that is wider than the data.
    fn shared_x(fig: &Figure) -> Self {
        let xs: Vec<f64> = fig
            .panels
            .iter()
            .flat_map(|p| &p.series)
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .collect();
        let (min, max) = padded_range(&xs, 0.06);
        let (lo, hi, ticks) = nice_ticks(min, max, 6);
        Self::new(lo.max(min), hi.min(max), ticks)
    }

    /// A panel's y axis, with room for the error bars.
    fn of_panel(panel: &Panel) -> Self {
        let ys: Vec<f64> = panel
            .series
            .iter()
            .flat_map(|s| &s.points)
            .flat_map(|&(_, y, e)| {
                let e = e.unwrap_or(0.0);
                [y - e, y + e]
            })
            .collect();
        let (mut min, max) = padded_range(&ys, 0.08);
        // Scores that cannot be negative (accuracies, perplexities) get no negative axis.
        if min < 0.0 && ys.iter().all(|y| *y >= 0.0) {
            min = 0.0;
        }
        let (lo, hi, ticks) = nice_ticks(min, max, 6);
        Self::new(lo, hi, ticks)
    }
}

impl Ranged for Axis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        RangedCoordf64::from(self.lo..self.hi).map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Only the bold grid: no light lines between the ticks.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

impl ValueFormatter<f64> for Axis {
    fn format_ext(&self, value: &f64) -> String {
        tick_label(*value, self.step, self.max_abs)
    }
}

/// Draws the figure; returns its size and RGB pixels.
pub fn render(fig: &Figure) -> (u32, u32, Vec<u8>) {
    let height = PANEL_HEIGHT * fig.panels.len().max(1) as u32;
    let mut rgb = vec![255; WIDTH as usize * height as usize * 3];
    // Drawing fails only on a backend error or a missing font: a Vec has none, and the font is ours.
    draw_figure(fig, &mut rgb, height).expect("drawing into a pixel buffer cannot fail");
    (WIDTH, height, rgb)
}

fn draw_figure(fig: &Figure, rgb: &mut [u8], height: u32) -> Result<(), DrawError> {
    let root = BitMapBackend::with_buffer(rgb, (WIDTH, height)).into_drawing_area();
    let x = Axis::shared_x(fig);
    let legend_width = legend_width(&root, fig)?;
    let areas = root.split_evenly((fig.panels.len().max(1), 1));
    for (panel, area) in fig.panels.iter().zip(&areas) {
        let (chart_area, legend_area) = area.split_horizontally(WIDTH - legend_width);
        let plot_top = draw_panel(&chart_area, panel, &x, &fig.x_label)?;
        draw_legend(&legend_area, &panel.series, plot_top)?;
    }
    root.present()
}

/// Width of the legend column: the longest label (up to 260 pixels), the swatch and margins.
fn legend_width(root: &Area, fig: &Figure) -> Result<u32, DrawError> {
    let style = text_style(13.0);
    let mut widest = 0;
    for series in fig.panels.iter().flat_map(|p| &p.series) {
        widest = widest.max(root.estimate_text_size(&series.label, &style)?.0);
    }
    Ok(widest.min(260) + 72)
}

/// One panel's chart: title, grid, ticks, frame, axis labels and the series; returns where the
/// plotting area starts, down from the panel's top.
fn draw_panel(area: &Area, panel: &Panel, x: &Axis, x_label: &str) -> Result<i32, DrawError> {
    let y = Axis::of_panel(panel);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, text_style(16.0))
        .margin_top(12)
        .margin_left(16)
        .margin_bottom(16)
        .x_label_area_size(48)
        .y_label_area_size(76)
        .build_cartesian_2d(x.clone(), y.clone())?;
    chart
        .configure_mesh()
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .axis_style(FRAME)
        .label_style(text_style(13.0))
        .axis_desc_style(text_style(16.0))
        .x_desc(x_label)
        .y_desc(&panel.y_label)
        .draw()?;
    // The mesh draws the left and bottom axes; the frame closes the box.
    chart.draw_series(std::iter::once(Rectangle::new(
        [(x.lo, y.lo), (x.hi, y.hi)],
        FRAME,
    )))?;
    let x_per_pixel = (x.hi - x.lo) / f64::from(chart.plotting_area().dim_in_pixel().0.max(1));
    let count = panel.series.len();
    for (k, series) in panel.series.iter().enumerate() {
        // Series sharing an x are nudged apart a few pixels so their error bars stay readable.
        let nudge = (k as f64 - (count as f64 - 1.0) / 2.0) * 5.0;
        draw_series(&mut chart, series, PALETTE[k % PALETTE.len()], nudge, x_per_pixel)?;
    }
    Ok(chart.plotting_area().get_pixel_range().1.start - area.get_base_pixel().1)
}

/// Error bars, then the line, then the markers on top; `nudge` pixels to the side.
fn draw_series(
    chart: &mut Chart,
    series: &Series,
    color: RGBColor,
    nudge: f64,
    x_per_pixel: f64,
) -> Result<(), DrawError> {
    let mut points: Vec<(f64, f64, Option<f64>)> = series
        .points
        .iter()
        .copied()
        .filter(|(x, y, _)| x.is_finite() && y.is_finite())
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let shift = |pixels: f64| {
        Some(pixels * x_per_pixel)
            .filter(|d| d.is_finite())
            .unwrap_or(0.0)
    };
    let (nudge, cap) = (shift(nudge), shift(5.0));
    let bars = points.iter().filter_map(|&(x, y, e)| {
        let e = e.filter(|e| e.is_finite() && *e > 0.0)?;
        let (lo, hi) = (y - e, y + e);
        (lo.is_finite() && hi.is_finite()).then_some((x + nudge, lo, hi))
    });
    let style = color.stroke_width(1);
    chart.draw_series(bars.flat_map(|(x, lo, hi)| {
        [
            vec![(x, lo), (x, hi)],
            vec![(x - cap, lo), (x + cap, lo)],
            vec![(x - cap, hi), (x + cap, hi)],
        ]
        .map(|path| PathElement::new(path, style))
    }))?;
    let line: Vec<(f64, f64)> = points.iter().map(|&(x, y, _)| (x + nudge, y)).collect();
    chart.draw_series(std::iter::once(PathElement::new(
        line.clone(),
        color.stroke_width(2),
    )))?;
    chart.draw_series(line.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
    Ok(())
}

/// The legend beside the chart: per series a swatch (line and marker) and its label.
fn draw_legend(area: &Area, series: &[Series], plot_top: i32) -> Result<(), DrawError> {
    let style = text_style(13.0).pos(Pos::new(HPos::Left, VPos::Center));
    for (k, s) in series.iter().enumerate() {
        let color = PALETTE[k % PALETTE.len()];
        let y = plot_top + 12 + 22 * k as i32;
        area.draw(&PathElement::new(vec![(18, y), (42, y)], color.stroke_width(2)))?;
        area.draw(&Circle::new((30, y), 4, color.filled()))?;
        area.draw(&Text::new(s.label.as_str(), (50, y), style.clone()))?;
    }
    Ok(())
}

/// Tick positions at 1, 2 or 5 × 10^k covering `[lo, hi]` with about `target` intervals; just
/// the two ends where the range is too wide for f64 steps (±1e308).
fn nice_ticks(lo: f64, hi: f64, target: usize) -> (f64, f64, Vec<f64>) {
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    if !span.is_finite() {
        return (lo, hi, vec![lo, hi]);
    }
    let raw = span / target as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let start = (lo / step).floor() * step;
    let end = (hi / step).ceil() * step;
    let count = ((end - start) / step).round();
    if !(0.0..=(4 * target) as f64).contains(&count) {
        return (lo, hi, vec![lo, hi]);
    }
    let count = count as usize;
    let ticks = (0..=count).map(|i| start + i as f64 * step).collect();
    (start, end, ticks)
}

/// A tick label with as many decimals as the step needs; scientific for very large or small values.
fn tick_label(v: f64, step: f64, max_abs: f64) -> String {
    if max_abs >= 1e5 || (max_abs > 0.0 && max_abs < 1e-3) {
        let s = format!("{v:.1e}");
        return if v == 0.0 { "0".into() } else { s };
    }
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let s = format!("{v:.decimals$}");
    // "-0.0" reads as a mistake on an axis.
    if s.trim_start_matches('-').chars().all(|c| c == '0' || c == '.') {
        s.trim_start_matches('-').to_owned()
    } else {
        s.replace('-', "−")
    }
}

/// `[min, max]` of finite values widened by `pad` of the span (or a unit around a single value).
fn padded_range(values: &[f64], pad: f64) -> (f64, f64) {
    let finite = values.iter().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
        let half = if lo == 0.0 { 0.5 } else { lo.abs() * 0.1 };
        return (lo - half, hi + half);
    }
    let p = (hi - lo) * pad;
    if !p.is_finite() {
        return (lo, hi);
    }
    (lo - p, hi + p)
}

/// A PNG file of 8-bit RGB pixels.
pub fn encode_png(width: u32, height: u32, rgb: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // Unfiltered rows: a chart is mostly flat colour and compresses well without filters.
    encoder.set_filter(png::Filter::NoFilter);
    let mut writer = encoder.write_header().expect("writing to a Vec cannot fail");
    writer
        .write_image_data(rgb)
        .expect("the buffer holds width x height RGB pixels");
    writer.finish().expect("writing to a Vec cannot fail");
    out
}

/// CRC-32 as PNG chunks carry it, for checking a written file.
pub use crc32fast::hash as crc32;

/// Renders `fig` and writes it to `path` as a PNG, atomically (a temporary file beside it,
/// renamed); the caller has checked the path with `files::check_output`.
pub fn write_png(path: &Path, fig: &Figure) -> Result<(u32, u32)> {
    let (w, h, rgb) = render(fig);
    let bytes = encode_png(w, h, &rgb);
    if path.file_name().is_none() {
        bail!("--plot '{}' is not a file name", path.display());
    }
    let dir = crate::files::parent_dir(path);
    if !dir.is_dir() {
        bail!(
            "cannot write the plot '{}': the folder '{}' does not exist",
            path.display(),
            dir.display()
        );
    }
    crate::files::write_atomic(path, &bytes)
        .with_context(|| format!("cannot write the plot '{}'", path.display()))?;
    Ok((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_of_iend_is_the_known_constant() {
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
    }

    #[test]
    fn ticks_are_round_numbers() {
        let (lo, hi, t) = nice_ticks(0.27, 0.41, 6);
        assert!(lo <= 0.27 && hi >= 0.41);
        assert!((t[1] - t[0] - 0.05).abs() < 1e-12, "{t:?}");
        let (_, _, t) = nice_ticks(0.0, 120.0, 6);
        assert_eq!(t, [0.0, 20.0, 40.0, 60.0, 80.0, 100.0, 120.0]);
        assert_eq!(tick_label(0.3, 0.02, 0.4), "0.30");
        assert_eq!(tick_label(-0.0, 0.02, 0.4), "0.00");
        assert_eq!(tick_label(-20.0, 10.0, 40.0), "−20");
    }

    #[test]
    fn any_x_and_y_values_render_in_bounded_time() {
        let wild = [
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            1e308,
            -1e308,
            1e-308,
            0.0,
            1.0,
        ];
        for &a in &wild {
            for &b in &wild {
                let fig = Figure {
                    x_label: "x".into(),
                    panels: vec![Panel {
                        title: "t".into(),
                        y_label: "y".into(),
                        series: vec![Series {
                            label: "s".into(),
                            points: vec![(a, b, Some(b)), (b, a, None), (1.0, 0.5, Some(0.1))],
                        }],
                    }],
                };
                let (w, h, rgb) = render(&fig);
                assert_eq!(rgb.len(), (w * h * 3) as usize);
            }
        }
    }
}
