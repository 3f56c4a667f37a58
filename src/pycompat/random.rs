//! Python's `random.Random`, bit for bit, for what lm-eval draws with it (the few-shot sampler's
//! `Random(1234).sample(docs, n)`).
//!
//! The generator is CPython's `_random.Random` (MT19937, seeded with `init_by_array` over the
//! 32-bit little-endian words of `abs(seed)`, `[0]` for 0), and the methods on top of it follow
//! CPython 3.11's `Lib/random.py` line by line: `_randbelow_with_getrandbits`, `sample` (with its
//! `setsize` rule choosing between the pool and the selected-set algorithms), `shuffle`,
//! `randrange`/`randint` (unit step) and `choice`. `tests/fixtures/python_compat/random.json`,
//! made by `make_random.py` beside it, holds CPython's outputs that the tests compare against.

use std::collections::HashSet;

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// `random.Random(seed)` of CPython 3.11.
#[derive(Clone)]
pub struct PyRandom {
    mt: [u32; N],
    index: usize,
}

impl std::fmt::Debug for PyRandom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyRandom")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl PyRandom {
    /// `random.Random(seed)` for a non-negative int seed.
    pub fn new(seed: u64) -> Self {
        let lo = seed as u32;
        let hi = (seed >> 32) as u32;
        let key: &[u32] = if hi == 0 { &[lo] } else { &[lo, hi] };
        Self::from_key(key)
    }

    /// `random.Random(seed)` for any int that fits in an i128; Python seeds with `abs(seed)`.
    pub fn from_i128(seed: i128) -> Self {
        let mut n = seed.unsigned_abs();
        let mut key = Vec::new();
        while n != 0 {
            key.push(n as u32);
            n >>= 32;
        }
        if key.is_empty() {
            key.push(0);
        }
        Self::from_key(&key)
    }

    /// MT19937 `init_by_array`, as `_randommodule.c` seeds from the words of an int
    /// (least significant first). An empty key is treated as `[0]`.
    pub fn from_key(key: &[u32]) -> Self {
        let key: &[u32] = if key.is_empty() { &[0] } else { key };
        let mut r = PyRandom { mt: [0; N], index: N };
        r.init_genrand(19_650_218);
        let mt = &mut r.mt;
        let (mut i, mut j) = (1usize, 0usize);
        let mut k = N.max(key.len());
        while k > 0 {
            mt[i] = (mt[i] ^ (mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
            k -= 1;
        }
        k = N - 1;
        while k > 0 {
            mt[i] =
                (mt[i] ^ (mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            k -= 1;
        }
        mt[0] = 0x8000_0000;
        r
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..N {
            self.mt[i] = 1_812_433_253u32
                .wrapping_mul(self.mt[i - 1] ^ (self.mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        self.index = N;
    }

    /// One 32-bit output of MT19937 (`genrand_uint32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            let mag01 = |y: u32| if y & 1 == 0 { 0 } else { MATRIX_A };
            let mt = &mut self.mt;
            for kk in 0..N - M {
                let y = (mt[kk] & UPPER_MASK) | (mt[kk + 1] & LOWER_MASK);
                mt[kk] = mt[kk + M] ^ (y >> 1) ^ mag01(y);
            }
            for kk in N - M..N - 1 {
                let y = (mt[kk] & UPPER_MASK) | (mt[kk + 1] & LOWER_MASK);
                mt[kk] = mt[kk + M - N] ^ (y >> 1) ^ mag01(y);
            }
            let y = (mt[N - 1] & UPPER_MASK) | (mt[0] & LOWER_MASK);
            mt[N - 1] = mt[M - 1] ^ (y >> 1) ^ mag01(y);
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// `random()`: a float in [0, 1) from 53 random bits, `(a*2**26 + b) / 2**53` with
    /// `a = u32 >> 5`, `b = u32 >> 6`.
    pub fn random(&mut self) -> f64 {
        let a = self.next_u32() >> 5;
        let b = self.next_u32() >> 6;
        (a as f64 * 67_108_864.0 + b as f64) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `getrandbits(k)` for `k <= 64`: 32-bit words filled least significant first, the last
    /// (most significant) one keeping its top bits.
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        assert!(k <= 64, "getrandbits supports k <= 64, got {k}");
        if k == 0 {
            return 0;
        }
        if k <= 32 {
            return u64::from(self.next_u32() >> (32 - k));
        }
        let lo = u64::from(self.next_u32());
        let hi = u64::from(self.next_u32() >> (64 - k));
        lo | (hi << 32)
    }

    /// `_randbelow(n)` (`_randbelow_with_getrandbits`): uniform in `[0, n)`, `n > 0`.
    pub fn randbelow(&mut self, n: u64) -> u64 {
        assert!(n > 0, "randbelow needs n > 0");
        let k = 64 - n.leading_zeros(); // n.bit_length()
        let mut r = self.getrandbits(k);
        while r >= n {
            r = self.getrandbits(k);
        }
        r
    }

    /// `randrange(start, stop)` (unit step): `start + _randbelow(stop - start)`.
    pub fn randrange(&mut self, start: i64, stop: i64) -> i64 {
        let width = i128::from(stop) - i128::from(start);
        assert!(
            width > 0,
            "empty range for randrange() ({start}, {stop}, {width})"
        );
        (i128::from(start) + i128::from(self.randbelow(width as u64))) as i64
    }

    /// `randint(a, b)`: uniform in `[a, b]`, both ends included.
    pub fn randint(&mut self, a: i64, b: i64) -> i64 {
        let width = i128::from(b) + 1 - i128::from(a);
        assert!(width > 0, "empty range for randint({a}, {b})");
        (i128::from(a) + i128::from(self.randbelow(width as u64))) as i64
    }

    /// `choice(seq)`; `None` where Python raises `IndexError` (empty sequence).
    pub fn choice<'a, T>(&mut self, seq: &'a [T]) -> Option<&'a T> {
        if seq.is_empty() {
            return None;
        }
        let i = self.randbelow(seq.len() as u64) as usize;
        Some(&seq[i])
    }

    /// `shuffle(x)` in place, as CPython 3.11: for `i` from `len-1` down to 1, swap `x[i]` with
    /// `x[_randbelow(i + 1)]`.
    pub fn shuffle<T>(&mut self, x: &mut [T]) {
        for i in (1..x.len()).rev() {
            let j = self.randbelow(i as u64 + 1) as usize;
            x.swap(i, j);
        }
    }

    /// `sample(population, k)` of CPython 3.11, in selection order. Panics where Python raises
    /// `ValueError` (`k > len(population)`); see [`PyRandom::try_sample`].
    pub fn sample<T: Clone>(&mut self, population: &[T], k: usize) -> Vec<T> {
        self.try_sample(population, k).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `sample(population, k)`, with Python's `ValueError` as an error.
    pub fn try_sample<T: Clone>(&mut self, population: &[T], k: usize) -> anyhow::Result<Vec<T>> {
        let n = population.len();
        if k > n {
            anyhow::bail!("Sample larger than population or is negative (k={k}, n={n})");
        }
        Ok(self
            .sample_indices(n, k)
            .into_iter()
            .map(|i| population[i].clone())
            .collect())
    }

    /// The indices `sample(range(n), k)` would pick, in selection order (`k <= n`).
    pub fn sample_indices(&mut self, n: usize, k: usize) -> Vec<usize> {
        assert!(k <= n, "Sample larger than population or is negative");
        let mut result = Vec::with_capacity(k);
        if n <= sample_setsize(k) {
            // Pool: non-selected at pool[0 .. n-i].
            let mut pool: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = self.randbelow((n - i) as u64) as usize;
                result.push(pool[j]);
                pool[j] = pool[n - i - 1];
            }
        } else {
            let mut selected = HashSet::with_capacity(k);
            for _ in 0..k {
                let mut j = self.randbelow(n as u64) as usize;
                while selected.contains(&j) {
                    j = self.randbelow(n as u64) as usize;
                }
                selected.insert(j);
                result.push(j);
            }
        }
        result
    }
}

/// `setsize` of CPython 3.11's `sample`: 21, plus `4 ** ceil(log(k * 3, 4))` when `k > 5`
/// (`math.log(x, 4)` is `log(x) / log(4)` in C doubles).
fn sample_setsize(k: usize) -> usize {
    let mut setsize = 21usize;
    if k > 5 {
        let e = ((k as f64 * 3.0).ln() / 4f64.ln()).ceil() as u32;
        setsize = setsize.saturating_add(4usize.saturating_pow(e));
    }
    setsize
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn fixture() -> Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/python_compat/random.json"
        );
        let text = std::fs::read_to_string(path).expect("read random.json");
        serde_json::from_str(&text).expect("parse random.json")
    }

    fn u64s(v: &Value) -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    }

    fn usizes(v: &Value) -> Vec<usize> {
        u64s(v).into_iter().map(|x| x as usize).collect()
    }

    fn seed_of(case: &Value) -> PyRandom {
        let seed = &case["seed"];
        let seed = seed.as_i64().map(i128::from);
        PyRandom::from_i128(seed.unwrap_or_else(|| case["seed"].as_u64().unwrap().into()))
    }

    #[test]
    fn mt19937_reference_output() {
        // The reference implementation's init_by_array({0x123, 0x234, 0x345, 0x456}) outputs.
        let mut r = PyRandom::from_key(&[0x123, 0x234, 0x345, 0x456]);
        let first: Vec<u32> = (0..5).map(|_| r.next_u32()).collect();
        assert_eq!(first, [1067595299, 955945823, 477289528, 4107218783, 4228976476]);
    }

    #[test]
    fn seeds_match_python() {
        let fx = fixture();
        for case in fx["streams"].as_array().unwrap() {
            let seed = &case["seed"];
            let mut r = seed_of(case);
            for (k, want) in [(32u32, "bits32"), (64, "bits64"), (7, "bits7"), (40, "bits40")] {
                let got: Vec<u64> = (0..case[want].as_array().unwrap().len())
                    .map(|_| r.getrandbits(k))
                    .collect();
                assert_eq!(got, u64s(&case[want]), "seed {seed} getrandbits({k})");
            }
            let want = u64s(&case["random"]);
            let got: Vec<u64> = (0..want.len()).map(|_| r.random().to_bits()).collect();
            assert_eq!(got, want, "seed {seed} random()");
            let got: Vec<u64> = [1u64, 2, 3, 5, 10, 100, 1000, 1 << 33, u64::MAX / 3]
                .iter()
                .map(|&n| r.randbelow(n))
                .collect();
            assert_eq!(got, u64s(&case["randbelow"]), "seed {seed} _randbelow");
            let got: Vec<i64> = (0..5).map(|_| r.randint(-3, 7)).collect();
            let want: Vec<i64> = case["randint"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect();
            assert_eq!(got, want, "seed {seed} randint(-3, 7)");
            let items: Vec<u64> = (0..17).collect();
            let got: Vec<u64> = (0..5).map(|_| *r.choice(&items).unwrap()).collect();
            assert_eq!(got, u64s(&case["choice"]), "seed {seed} choice");
        }
    }

    #[test]
    fn sample_matches_python() {
        let fx = fixture();
        let cases = fx["samples"].as_array().unwrap();
        assert!(cases.len() >= 20);
        for case in cases {
            let (n, k) = (
                case["n"].as_u64().unwrap() as usize,
                case["k"].as_u64().unwrap() as usize,
            );
            let mut r = seed_of(case);
            let population: Vec<usize> = (0..n).collect();
            let first = r.sample(&population, k);
            let second = r.sample(&population, k);
            assert_eq!(first, usizes(&case["first"]), "sample n={n} k={k} {case}");
            assert_eq!(second, usizes(&case["second"]), "second sample n={n} k={k}");
        }
    }

    #[test]
    fn shuffle_matches_python() {
        let fx = fixture();
        for case in fx["shuffles"].as_array().unwrap() {
            let n = case["n"].as_u64().unwrap() as usize;
            let mut r = seed_of(case);
            let mut x: Vec<usize> = (0..n).collect();
            r.shuffle(&mut x);
            assert_eq!(x, usizes(&case["result"]), "shuffle n={n}");
            // The state after shuffling is Python's too.
            assert_eq!(r.getrandbits(32), case["next"].as_u64().unwrap());
        }
    }

    #[test]
    fn setsize_matches_python() {
        let fx = fixture();
        for pair in fx["setsize"].as_array().unwrap() {
            let (k, want) = (pair[0].as_u64().unwrap(), pair[1].as_u64().unwrap());
            assert_eq!(sample_setsize(k as usize) as u64, want, "setsize k={k}");
        }
    }

    #[test]
    fn sample_errors_and_edges() {
        let mut r = PyRandom::new(1234);
        assert!(r.try_sample(&[1, 2, 3], 4).is_err());
        assert!(r.sample::<u8>(&[], 0).is_empty());
        assert_eq!(r.choice::<u8>(&[]), None);
        let mut one = [7];
        r.shuffle(&mut one);
        assert_eq!(one, [7]);
        assert_eq!(r.getrandbits(0), 0);
        assert_eq!(PyRandom::new(5).next_u32(), PyRandom::from_i128(-5).next_u32());
        assert_eq!(PyRandom::new(0).next_u32(), PyRandom::from_key(&[]).next_u32());
        for seed in [0u64, 1234, 1 << 32, (1 << 40) + 7, u64::MAX] {
            let mut a = PyRandom::new(seed);
            let mut b = PyRandom::from_i128(seed.into());
            assert_eq!(a.getrandbits(64), b.getrandbits(64), "seed {seed}");
        }
    }
}
