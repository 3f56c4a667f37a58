//! Metric-versus-coefficient charts as PNG files, drawn by a small antialiased rasterizer (lines,
//! discs, text from the pre-rasterized font) and encoded with flate2, which the crate already has:
//! no plotting or image crate, no font file at run time.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::font::{self, Face};

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

type Rgb = [u8; 3];
const WHITE: Rgb = [255, 255, 255];
const INK: Rgb = [34, 34, 34];
const GRID: Rgb = [228, 228, 228];
const FRAME: Rgb = [120, 120, 120];
/// matplotlib's tab10: distinct, and familiar to readers of ML papers.
const PALETTE: [Rgb; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// An RGB image being drawn on; coordinates are pixels, y down, pixel centres at +0.5.
struct Canvas {
    w: usize,
    h: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    fn new(w: u32, h: u32) -> Self {
        let (w, h) = (w as usize, h as usize);
        Self {
            w,
            h,
            rgb: WHITE.repeat(w * h),
        }
    }

    fn blend(&mut self, x: i64, y: i64, color: Rgb, alpha: f32) {
        if x < 0 || y < 0 || x as usize >= self.w || y as usize >= self.h || alpha <= 0.0 {
            return;
        }
        let alpha = alpha.min(1.0);
        let at = (y as usize * self.w + x as usize) * 3;
        for (dst, src) in self.rgb[at..at + 3].iter_mut().zip(color) {
            *dst = (f32::from(*dst) * (1.0 - alpha) + f32::from(src) * alpha).round() as u8;
        }
    }

    /// The pixel range `[lo, hi]` of a shape, cut to the canvas along an axis of `n` pixels:
    /// `None` for a shape off the canvas or at a non-finite place, so a wild coordinate costs
    /// nothing instead of a loop over 2^63 pixels.
    fn span(lo: f64, hi: f64, n: usize) -> Option<(i64, i64)> {
        if !lo.is_finite() || !hi.is_finite() {
            return None;
        }
        let (lo, hi) = (lo.floor().max(0.0), hi.ceil().min(n as f64 - 1.0));
        (lo <= hi).then_some((lo as i64, hi as i64))
    }

    /// A segment of the given width, antialiased by each pixel's distance to it.
    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), width: f64, color: Rgb) {
        let r = width / 2.0 + 1.0;
        let (dx, dy) = (x1 - x0, y1 - y0);
        let len2 = dx * dx + dy * dy;
        let Some((xa, xb)) = Self::span(x0.min(x1) - r, x0.max(x1) + r, self.w) else {
            return;
        };
        let Some((ya, yb)) = Self::span(y0.min(y1) - r, y0.max(y1) + r, self.h) else {
            return;
        };
        for y in ya..=yb {
            for x in xa..=xb {
                let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
                let t = if len2 == 0.0 {
                    0.0
                } else {
                    (((px - x0) * dx + (py - y0) * dy) / len2).clamp(0.0, 1.0)
                };
                let d = ((px - x0 - t * dx).powi(2) + (py - y0 - t * dy).powi(2)).sqrt();
                self.blend(x, y, color, (width / 2.0 + 0.5 - d).clamp(0.0, 1.0) as f32);
            }
        }
    }

    fn disc(&mut self, (cx, cy): (f64, f64), radius: f64, color: Rgb) {
        let reach = radius + 1.0;
        let Some((xa, xb)) = Self::span(cx - reach, cx + reach, self.w) else {
            return;
        };
        let Some((ya, yb)) = Self::span(cy - reach, cy + reach, self.h) else {
            return;
        };
        for y in ya..=yb {
            for x in xa..=xb {
                let d = ((x as f64 + 0.5 - cx).powi(2) + (y as f64 + 0.5 - cy).powi(2)).sqrt();
                self.blend(x, y, color, (radius + 0.5 - d).clamp(0.0, 1.0) as f32);
            }
        }
    }

    /// `text` with its baseline at `y`, starting at `x`; `up` turns it 90° to read bottom to top
    /// (then `(x, y)` is where the baseline starts, and the text runs towards smaller y).
    fn text(&mut self, face: &Face, x: f64, y: f64, text: &str, color: Rgb, up: bool) {
        let mut pen = 0.0f64;
        for c in text.chars() {
            let g = face.glyph(c);
            let origin = pen.round() as i64;
            for gy in 0..g.height {
                for gx in 0..g.width {
                    let cov = g.coverage[gy * g.width + gx];
                    if cov == 0 {
                        continue;
                    }
                    // Offset along the text and across it (down from the baseline).
                    let along = origin + i64::from(g.left) + gx as i64;
                    let across = i64::from(g.top) + gy as i64;
                    let (px, py) = if up {
                        (x.round() as i64 + across, y.round() as i64 - along)
                    } else {
                        (x.round() as i64 + along, y.round() as i64 + across)
                    };
                    self.blend(px, py, color, f32::from(cov) / 255.0);
                }
            }
            pen += f64::from(g.advance);
        }
    }
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

/// Draws the figure; returns its size and RGB pixels.
pub fn render(fig: &Figure) -> (u32, u32, Vec<u8>) {
    let height = PANEL_HEIGHT * fig.panels.len().max(1) as u32;
    let mut canvas = Canvas::new(WIDTH, height);
    let small = font::face(13);
    let big = font::face(16);
    // Legend width: the longest label, with room for the swatch.
    let legend_w = fig
        .panels
        .iter()
        .flat_map(|p| &p.series)
        .map(|s| small.width(&s.label) as f64)
        .fold(0.0, f64::max)
        .min(260.0)
        + 48.0;
    // The x range is shared by all panels, so they line up.
    let xs: Vec<f64> = fig
        .panels
        .iter()
        .flat_map(|p| &p.series)
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    let (xmin, xmax) = padded_range(&xs, 0.06);
    let (x_lo, x_hi, x_ticks) = nice_ticks(xmin, xmax, 6);
    let x_lo = x_lo.max(xmin);
    let x_hi = x_hi.min(xmax);
    for (i, panel) in fig.panels.iter().enumerate() {
        let top = (i as u32 * PANEL_HEIGHT) as f64;
        let (left, right) = (92.0, WIDTH as f64 - 24.0 - legend_w);
        let (plot_top, plot_bottom) = (top + 44.0, top + PANEL_HEIGHT as f64 - 64.0);
        let ys: Vec<f64> = panel
            .series
            .iter()
            .flat_map(|s| &s.points)
            .flat_map(|&(_, y, e)| {
                let e = e.unwrap_or(0.0);
                [y - e, y + e]
            })
            .collect();
        let (mut ymin, ymax) = padded_range(&ys, 0.08);
        // Scores that cannot be negative (accuracies, perplexities) get no negative axis.
        if ymin < 0.0 && ys.iter().all(|y| *y >= 0.0) {
            ymin = 0.0;
        }
        let (y_lo, y_hi, y_ticks) = nice_ticks(ymin, ymax, 6);
        let sx = |x: f64| left + (x - x_lo) / (x_hi - x_lo) * (right - left);
        let sy = |y: f64| plot_bottom - (y - y_lo) / (y_hi - y_lo) * (plot_bottom - plot_top);

        // Title, centred over the plot area.
        let tw = big.width(&panel.title) as f64;
        canvas.text(
            big,
            (left + right - tw) / 2.0,
            top + 28.0,
            &panel.title,
            INK,
            false,
        );

        // Grid and tick labels.
        let y_step = y_ticks.get(1).map_or(1.0, |t| t - y_ticks[0]);
        let y_abs = y_ticks.iter().fold(0.0f64, |m, t| m.max(t.abs()));
        for &t in &y_ticks {
            let y = sy(t).round() + 0.5;
            canvas.line((left, y), (right, y), 1.0, GRID);
            let label = tick_label(t, y_step, y_abs);
            let w = small.width(&label) as f64;
            canvas.text(small, left - 8.0 - w, y + 4.5, &label, INK, false);
        }
        let x_step = x_ticks.get(1).map_or(1.0, |t| t - x_ticks[0]);
        let x_abs = x_ticks.iter().fold(0.0f64, |m, t| m.max(t.abs()));
        for &t in x_ticks.iter().filter(|&&t| t >= x_lo - 1e-9 && t <= x_hi + 1e-9) {
            let x = sx(t).round() + 0.5;
            canvas.line((x, plot_top), (x, plot_bottom), 1.0, GRID);
            canvas.line((x, plot_bottom), (x, plot_bottom + 5.0), 1.0, FRAME);
            let label = tick_label(t, x_step, x_abs);
            let w = small.width(&label) as f64;
            canvas.text(small, x - w / 2.0, plot_bottom + 20.0, &label, INK, false);
        }
        // Frame.
        let (l, r, t, b) = (
            left.round() + 0.5,
            right.round() + 0.5,
            plot_top.round() + 0.5,
            plot_bottom.round() + 0.5,
        );
        for (p, q) in [
            ((l, t), (r, t)),
            ((l, b), (r, b)),
            ((l, t), (l, b)),
            ((r, t), (r, b)),
        ] {
            canvas.line(p, q, 1.0, FRAME);
        }
        // Axis labels.
        let xw = big.width(&fig.x_label) as f64;
        canvas.text(
            big,
            (left + right - xw) / 2.0,
            plot_bottom + 46.0,
            &fig.x_label,
            INK,
            false,
        );
        let yw = big.width(&panel.y_label) as f64;
        canvas.text(
            big,
            left - 76.0,
            (plot_top + plot_bottom + yw) / 2.0,
            &panel.y_label,
            INK,
            true,
        );

        // Series: error bars, then the line, then the markers on top. Series sharing an x are
        // nudged apart a few pixels so their error bars stay readable.
        let count = panel.series.len();
        for (k, s) in panel.series.iter().enumerate() {
            let color = PALETTE[k % PALETTE.len()];
            let nudge = (k as f64 - (count as f64 - 1.0) / 2.0) * 5.0;
            let mut pts: Vec<(f64, f64, Option<f64>)> = s.points.clone();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            for &(x, y, e) in &pts {
                if let Some(e) = e.filter(|e| e.is_finite() && *e > 0.0) {
                    let px = sx(x) + nudge;
                    let (ya, yb) = (sy(y - e), sy(y + e));
                    canvas.line((px, ya), (px, yb), 1.5, color);
                    canvas.line((px - 5.0, ya), (px + 5.0, ya), 1.5, color);
                    canvas.line((px - 5.0, yb), (px + 5.0, yb), 1.5, color);
                }
            }
            for w in pts.windows(2) {
                canvas.line(
                    (sx(w[0].0) + nudge, sy(w[0].1)),
                    (sx(w[1].0) + nudge, sy(w[1].1)),
                    2.0,
                    color,
                );
            }
            for &(x, y, _) in &pts {
                canvas.disc((sx(x) + nudge, sy(y)), 4.0, color);
            }
            // Legend entry.
            let ly = plot_top + 12.0 + k as f64 * 22.0;
            let lx = right + 18.0;
            canvas.line((lx, ly), (lx + 24.0, ly), 2.0, color);
            canvas.disc((lx + 12.0, ly), 4.0, color);
            canvas.text(small, lx + 32.0, ly + 4.5, &s.label, INK, false);
        }
    }
    (WIDTH, height, canvas.rgb)
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

/// A PNG file of 8-bit RGB pixels: signature, IHDR, one zlib IDAT (no filtering), IEND.
pub fn encode_png(width: u32, height: u32, rgb: &[u8]) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend(kind);
        out.extend(data);
        let crc = crc32(&out[start..]);
        out.extend(crc.to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit, truecolour, deflate, adaptive filtering, no interlace
    chunk(&mut out, b"IHDR", &ihdr);
    let row = width as usize * 3;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    for line in rgb.chunks(row) {
        // Filter type 0 (None) on every row: charts are mostly flat colour and compress well anyway.
        z.write_all(&[0])
            .and_then(|()| z.write_all(line))
            .expect("writing to a Vec cannot fail");
    }
    chunk(
        &mut out,
        b"IDAT",
        &z.finish().expect("writing to a Vec cannot fail"),
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

/// CRC-32 (ISO-HDLC, as PNG chunks use), bitwise: a chart has a few chunks.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

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
