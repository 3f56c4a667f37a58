//! The plot's typeface: DejaVu Sans rasterized ahead of time at the two sizes the plot uses
//! (`font/dejavu_sans.bin`, 16 KB, made by `tests/fixtures/compare/make_font`), so drawing text
//! needs neither a TrueType renderer nor a font file at run time. Licence: `font/LICENSE-DejaVu`.

use std::sync::OnceLock;

const TABLE: &[u8] = include_bytes!("font/dejavu_sans.bin");

/// One glyph: its advance and its coverage bitmap, placed relative to the pen on the baseline.
#[derive(Debug)]
pub struct Glyph {
    pub advance: f32,
    pub left: i32,
    pub top: i32,
    pub width: usize,
    pub height: usize,
    pub coverage: &'static [u8],
}

/// The glyphs of one pixel size.
#[derive(Debug)]
pub struct Face {
    pub px: u16,
    glyphs: Vec<(char, Glyph)>,
}

impl Face {
    /// The glyph for `c`, or '?' for characters outside the table.
    pub fn glyph(&self, c: char) -> &Glyph {
        let find = |c: char| self.glyphs.iter().find(|(g, _)| *g == c).map(|(_, g)| g);
        find(c).or_else(|| find('?')).expect("the font table has '?'")
    }

    /// Width of `text` in pixels.
    pub fn width(&self, text: &str) -> f32 {
        text.chars().map(|c| self.glyph(c).advance).sum()
    }
}

/// The face closest in size to `px` (13 or 16).
pub fn face(px: u16) -> &'static Face {
    static FACES: OnceLock<Vec<Face>> = OnceLock::new();
    let faces = FACES.get_or_init(|| parse(TABLE).expect("the built-in font table is well formed"));
    faces
        .iter()
        .min_by_key(|f| f.px.abs_diff(px))
        .expect("the font table has faces")
}

fn parse(bytes: &'static [u8]) -> Option<Vec<Face>> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&'static [u8]> {
        let slice = bytes.get(at..at + n)?;
        at += n;
        Some(slice)
    };
    if take(4)? != b"SOF1" {
        return None;
    }
    let sizes = take(1)?[0];
    let mut faces = Vec::new();
    for _ in 0..sizes {
        let u16_at = |s: &[u8]| u16::from_le_bytes([s[0], s[1]]);
        let px = u16_at(take(2)?);
        // Ascent and descent: the plot places text by its baseline and does not need them.
        take(4)?;
        let count = u16_at(take(2)?);
        let mut glyphs = Vec::with_capacity(count.into());
        for _ in 0..count {
            let c = take(4)?;
            let c = char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))?;
            let advance = f32::from(u16_at(take(2)?)) / 64.0;
            let left = i32::from(u16_at(take(2)?) as i16);
            let top = i32::from(u16_at(take(2)?) as i16);
            let dims = take(2)?;
            let (width, height) = (usize::from(dims[0]), usize::from(dims[1]));
            let coverage = take(width * height)?;
            glyphs.push((
                c,
                Glyph {
                    advance,
                    left,
                    top,
                    width,
                    height,
                    coverage,
                },
            ));
        }
        faces.push(Face { px, glyphs });
    }
    Some(faces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_parses_with_both_sizes_and_the_symbols_we_print() {
        for px in [13, 16] {
            let f = face(px);
            assert_eq!(f.px, px);
            for c in "Aa0.,-+±αΔ−".chars() {
                assert!(f.glyphs.iter().any(|(g, _)| *g == c), "{c} at {px}px");
            }
            assert!(f.width("coefficient") > 50.0);
        }
    }
}
