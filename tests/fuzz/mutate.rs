//! Seeded mutations of seed files: the byte-level ones a corrupted download or a truncated copy
//! makes, and token-level ones for text formats (numbers at the edges of their types, path
//! escapes, template syntax, control characters), which reach deeper than random bytes.

/// splitmix64: small, seedable, and the same sequence on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Values that sit on the edges parsers get wrong.
const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "-1",
    "1",
    "2",
    "255",
    "256",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "-2147483649",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551616",
    "1e45",
    "-1e45",
    "1e308",
    "1e309",
    "3.4028236e38",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "Infinity",
    "0.0",
    "1e-50",
    "0x10",
    "1_000",
    "",
];

const TOKENS: &[&str] = &[
    "../../../../etc/passwd",
    "/etc/passwd",
    "..",
    ".",
    "",
    "\0",
    "\u{1b}[31m",
    "\r\n",
    "\"",
    "'",
    ",",
    ";",
    "\\",
    "{{",
    "}}",
    "{%",
    "%}",
    "{{ x }}",
    "{% for i in range(999999999) %}x{% endfor %}",
    "!function",
    "!function utils.x",
    "include:",
    "null",
    "true",
    "[]",
    "{}",
    "[[[[[[[[",
    "]]]]",
    "{\"a\":",
    "- ",
    ": ",
    "&a",
    "*a",
    "<<: *a",
    "\u{feff}",
    "\u{fffd}",
    "日本語",
];

/// One to four stacked mutations of `seed`; `donors` are other seeds to splice from. `text`
/// adds token-level mutations. The result is capped at `max_len` bytes.
pub fn mutate(
    seed: &[u8],
    donors: &[Vec<u8>],
    rng: &mut Rng,
    text: bool,
    hot: usize,
    max_len: usize,
) -> Vec<u8> {
    let mut data = seed.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let kinds = if text { 11 } else { 8 };
        match rng.below(kinds) {
            0 => flip_bit(&mut data, rng, hot),
            1 => set_byte(&mut data, rng, hot),
            2 => delete_span(&mut data, rng),
            3 => duplicate_span(&mut data, rng),
            4 => insert_random(&mut data, rng, hot),
            5 => truncate(&mut data, rng),
            6 => splice(&mut data, donors, rng),
            7 => overwrite_integer(&mut data, rng, hot),
            8 => replace_number(&mut data, rng),
            9 => insert_token(&mut data, rng),
            _ => repeat_line(&mut data, rng),
        }
    }
    data.truncate(max_len);
    data
}

/// A position, biased towards the first `hot` bytes (a binary format's header) when given.
fn position(len: usize, rng: &mut Rng, hot: usize) -> usize {
    if len == 0 {
        return 0;
    }
    if hot > 0 && rng.below(4) != 0 {
        rng.below(hot.min(len))
    } else {
        rng.below(len)
    }
}

fn flip_bit(data: &mut [u8], rng: &mut Rng, hot: usize) {
    if !data.is_empty() {
        let i = position(data.len(), rng, hot);
        data[i] ^= 1 << rng.below(8);
    }
}

fn set_byte(data: &mut [u8], rng: &mut Rng, hot: usize) {
    const BYTES: &[u8] = &[
        0, 1, 0x7f, 0x80, 0xff, b'\n', b',', b'"', b'{', b'}', b'[', b'.', b'/', b'-', b'9',
    ];
    if !data.is_empty() {
        let i = position(data.len(), rng, hot);
        data[i] = *rng.pick(BYTES);
    }
}

fn span(len: usize, rng: &mut Rng) -> (usize, usize) {
    let start = rng.below(len.max(1));
    let n = 1 + rng.below((len - start).clamp(1, 64));
    (start, (start + n).min(len))
}

fn delete_span(data: &mut Vec<u8>, rng: &mut Rng) {
    if !data.is_empty() {
        let (a, b) = span(data.len(), rng);
        data.drain(a..b);
    }
}

fn duplicate_span(data: &mut Vec<u8>, rng: &mut Rng) {
    if data.is_empty() {
        return;
    }
    let (a, b) = span(data.len(), rng);
    let piece = data[a..b].to_vec();
    let most = if rng.below(8) == 0 { 2000 } else { 3 };
    let times = 1 + rng.below(most);
    let at = rng.below(data.len() + 1);
    let repeated: Vec<u8> = piece.iter().copied().cycle().take(piece.len() * times).collect();
    data.splice(at..at, repeated);
}

fn insert_random(data: &mut Vec<u8>, rng: &mut Rng, hot: usize) {
    let at = position(data.len() + 1, rng, hot);
    let n = 1 + rng.below(16);
    let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
    data.splice(at..at, bytes);
}

fn truncate(data: &mut Vec<u8>, rng: &mut Rng) {
    let keep = rng.below(data.len() + 1);
    data.truncate(keep);
}

fn splice(data: &mut Vec<u8>, donors: &[Vec<u8>], rng: &mut Rng) {
    let donor = rng.pick(donors);
    if donor.is_empty() || data.is_empty() {
        return;
    }
    let (a, b) = span(donor.len(), rng);
    let at = rng.below(data.len());
    let end = (at + (b - a)).min(data.len());
    data.splice(at..end, donor[a..b].iter().copied());
}

/// Overwrites 1, 2, 4 or 8 bytes with an edge value of that width (lengths, offsets, counts).
fn overwrite_integer(data: &mut [u8], rng: &mut Rng, hot: usize) {
    let width = *rng.pick(&[1usize, 2, 4, 8]);
    if data.len() < width {
        return;
    }
    let i = position(data.len() - width + 1, rng, hot);
    let value: u64 = *rng.pick(&[
        0,
        1,
        u64::MAX,
        u64::MAX / 2,
        1 << 31,
        1 << 32,
        1 << 40,
        0x7fff_ffff,
        4096,
    ]);
    data[i..i + width].copy_from_slice(&value.to_le_bytes()[..width]);
}

/// Replaces one run of digits (with sign, point, exponent) by an edge number.
fn replace_number(data: &mut Vec<u8>, rng: &mut Rng) {
    let starts: Vec<usize> = (0..data.len())
        .filter(|&i| data[i].is_ascii_digit() && (i == 0 || !data[i - 1].is_ascii_digit()))
        .collect();
    if starts.is_empty() {
        return insert_token(data, rng);
    }
    let start = *rng.pick(&starts);
    let end = (start..data.len())
        .find(|&i| !(data[i].is_ascii_digit() || b".eE+-".contains(&data[i])))
        .unwrap_or(data.len());
    let start = if start > 0 && data[start - 1] == b'-' {
        start - 1
    } else {
        start
    };
    data.splice(start..end, rng.pick(NUMBERS).bytes());
}

fn insert_token(data: &mut Vec<u8>, rng: &mut Rng) {
    let token = rng.pick(TOKENS).as_bytes();
    let at = rng.below(data.len() + 1);
    if rng.below(2) == 0 && at < data.len() {
        // Replace the word or field at that point rather than inserting beside it.
        let end = (at..data.len())
            .find(|&i| b" ,\n:\"'".contains(&data[i]))
            .unwrap_or(data.len());
        data.splice(at..end, token.iter().copied());
    } else {
        data.splice(at..at, token.iter().copied());
    }
}

fn repeat_line(data: &mut Vec<u8>, rng: &mut Rng) {
    let lines: Vec<(usize, usize)> = {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, &b) in data.iter().enumerate() {
            if b == b'\n' {
                out.push((start, i + 1));
                start = i + 1;
            }
        }
        if start < data.len() {
            out.push((start, data.len()));
        }
        out
    };
    if lines.is_empty() {
        return;
    }
    let (a, b) = *rng.pick(&lines);
    let line = data[a..b].to_vec();
    match rng.below(3) {
        0 => {
            data.drain(a..b);
        }
        1 => {
            let times = 1 + rng.below(50);
            let copies: Vec<u8> = line.iter().copied().cycle().take(line.len() * times).collect();
            data.splice(b..b, copies);
        }
        _ => {
            let (c, d) = *rng.pick(&lines);
            if c >= b {
                let other = data[c..d].to_vec();
                data.splice(c..d, line);
                data.splice(a..b, other);
            }
        }
    }
}
