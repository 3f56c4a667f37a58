//! Paired significance tests on the documents two runs both scored: the exact McNemar test for
//! 0/1 metrics and a seeded paired bootstrap for the rest.
//!
//! The definitions are those of `tests/fixtures/compare/make_golden.py`, which computes the golden
//! numbers with scipy and Python's `random`; the bootstrap draws its resamples with
//! [`PyRandom`] so that it takes the very same documents as the script and matches it exactly.

use crate::pycompat::random::PyRandom;

/// How a metric's per-document values become the task's number (lm-eval's aggregation functions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    /// `mean`: acc, acc_norm, exact_match, ...
    Mean,
    /// `perplexity`: `exp(-mean)` of per-document log-likelihoods.
    Perplexity,
    /// `weighted_perplexity`: `exp(-Σll / Σweight)` (word_perplexity, byte_perplexity).
    WeightedPerplexity,
    /// `bits_per_byte`: `-(Σll / Σbytes) / ln 2`.
    BitsPerByte,
}

impl Aggregation {
    /// lm-eval's name for an aggregation we can recompute on a resample; `None` for the others
    /// (f1, mcc, bleu, ... need more than one number per document).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "mean" => Some(Self::Mean),
            "perplexity" => Some(Self::Perplexity),
            "weighted_perplexity" => Some(Self::WeightedPerplexity),
            "bits_per_byte" => Some(Self::BitsPerByte),
            _ => None,
        }
    }

    /// The aggregation lm-eval's metric registry gives a metric whose task config names none.
    pub fn default_name(metric: &str) -> &'static str {
        match metric {
            "word_perplexity" | "byte_perplexity" => "weighted_perplexity",
            "bits_per_byte" => "bits_per_byte",
            "perplexity" => "perplexity",
            _ => "mean",
        }
    }

    /// Whether per-document values are `[loglikelihood, weight]` pairs.
    pub fn weighted(self) -> bool {
        matches!(self, Self::WeightedPerplexity | Self::BitsPerByte)
    }

    /// The aggregate over the documents `idx` (repeats allowed), sums accumulated left to right
    /// as Python's `sum` and the golden script do, so resampled statistics agree to the bit.
    pub fn over(self, values: &[(f64, f64)], idx: impl ExactSizeIterator<Item = usize>) -> f64 {
        let n = idx.len() as f64;
        let (mut sa, mut sb) = (0.0, 0.0);
        for i in idx {
            sa += values[i].0;
            sb += values[i].1;
        }
        match self {
            Self::Mean => sa / n,
            Self::Perplexity => (-(sa / n)).exp(),
            Self::WeightedPerplexity => (-(sa / sb)).exp(),
            Self::BitsPerByte => -(sa / sb) / 2f64.ln(),
        }
    }
}

/// Exact McNemar test: two-sided binomial test (p = 1/2) on the discordant documents, those only
/// A got right (`a_only`) and those only B got right (`b_only`). 1 when no document changed.
pub fn mcnemar_exact(a_only: u64, b_only: u64) -> f64 {
    let n = a_only + b_only;
    let k = a_only.min(b_only);
    if n == 0 || 2 * k == n {
        return 1.0;
    }
    // Binomial(n, 1/2) is symmetric: scipy.stats.binomtest's two-sided p-value (the outcomes no
    // more likely than k) is P(X <= k) + P(X >= n - k) = 2 P(X <= k).
    (2.0 * binom_half_cdf(k, n)).min(1.0)
}

/// `P(X <= k)` for `X ~ Binomial(n, 1/2)`, `k < n/2`: each term by Loader's saddle-point formula
/// (accurate to a few ulps even for large n, where products of ratios or log-gamma differences lose
/// digits), summed with compensation from the largest term down until the rest cannot matter.
/// Not statrs: its `Binomial::cdf` (0.19, through the regularized incomplete beta) is off by 3e-13
/// relative at n = 100 and 1.2e-11 at n = 10,000, where this stays within the tests' 4e-15.
fn binom_half_cdf(k: u64, n: u64) -> f64 {
    let (mut sum, mut comp) = (0.0f64, 0.0f64);
    for x in (0..=k).rev() {
        let term = dbinom_half(x, n);
        // Neumaier summation.
        let t = sum + term;
        comp += if sum.abs() >= term.abs() {
            (sum - t) + term
        } else {
            (term - t) + sum
        };
        sum = t;
        if term < sum * 1e-18 {
            break;
        }
    }
    sum + comp
}

/// `P(X = x)` for `X ~ Binomial(n, 1/2)` (Loader 2000, "Fast and accurate computation of binomial
/// probabilities", as R's `dbinom_raw`).
fn dbinom_half(x: u64, n: u64) -> f64 {
    let nf = n as f64;
    if x == 0 || x == n {
        // 2^-n exactly (until it underflows to 0).
        return 0.5f64.powi(i32::try_from(n).unwrap_or(i32::MAX));
    }
    let (xf, yf) = (x as f64, (n - x) as f64);
    let half = nf * 0.5;
    let lc = stirlerr(nf) - stirlerr(xf) - stirlerr(yf) - bd0(xf, half) - bd0(yf, half);
    let lf = (2.0 * std::f64::consts::PI).ln() + xf.ln() + (-xf / nf).ln_1p();
    (lc - 0.5 * lf).exp()
}

/// `ln(n!) - ln(sqrt(2πn) (n/e)^n)`, the error of Stirling's formula, for integer `n >= 1`.
fn stirlerr(n: f64) -> f64 {
    // ln Γ(n+1) - (n+1/2) ln n + n - ln √(2π), to double precision (mpmath), n = 0..=15.
    const TABLE: [f64; 16] = [
        0.0,
        0.08106146679532726,
        0.0413406959554093,
        0.02767792568499834,
        0.020790672103765093,
        0.016644691189821193,
        0.013876128823070748,
        0.01189670994589177,
        0.010411265261972096,
        0.009255462182712733,
        0.00833056343336287,
        0.007573675487951841,
        0.00694284010720953,
        0.006408994188004207,
        0.0059513701127588475,
        0.005554733551962801,
    ];
    const S0: f64 = 1.0 / 12.0;
    const S1: f64 = 1.0 / 360.0;
    const S2: f64 = 1.0 / 1260.0;
    const S3: f64 = 1.0 / 1680.0;
    const S4: f64 = 1.0 / 1188.0;
    if n <= 15.0 {
        return TABLE[n as usize];
    }
    let nn = n * n;
    if n > 500.0 {
        (S0 - S1 / nn) / n
    } else if n > 80.0 {
        (S0 - (S1 - S2 / nn) / nn) / n
    } else if n > 35.0 {
        (S0 - (S1 - (S2 - S3 / nn) / nn) / nn) / n
    } else {
        (S0 - (S1 - (S2 - (S3 - S4 / nn) / nn) / nn) / nn) / n
    }
}

/// `x ln(x/np) + np - x`, the deviance term, without cancellation when `x ≈ np`.
fn bd0(x: f64, np: f64) -> f64 {
    if (x - np).abs() < 0.1 * (x + np) {
        let mut v = (x - np) / (x + np);
        let mut s = (x - np) * v;
        let mut ej = 2.0 * x * v;
        v *= v;
        for j in 1..1000 {
            ej *= v;
            let s1 = s + ej / f64::from(2 * j + 1);
            if s1 == s {
                return s1;
            }
            s = s1;
        }
        return s;
    }
    x * (x / np).ln() + np - x
}

/// What the paired bootstrap found for `stat(B) - stat(A)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bootstrap {
    /// The difference on all documents.
    pub observed: f64,
    /// Lower and upper ends of the `1 - alpha` percentile interval of the resampled differences.
    pub ci: (f64, f64),
    /// Two-sided: how often a resampled difference lies at least `|observed|` from `observed`,
    /// i.e. the bootstrap distribution shifted to the null of no difference.
    pub p_value: f64,
}

/// Paired bootstrap over documents: `resamples` times, draw `n` documents with replacement
/// (`random.Random(seed).randrange(n)`, the same draws for A and B) and take the difference of
/// the two aggregates. `a` and `b` hold each document's `(value, weight)` in the same order
/// (weight unused by mean-like aggregations).
pub fn paired_bootstrap(
    agg: Aggregation,
    a: &[(f64, f64)],
    b: &[(f64, f64)],
    resamples: usize,
    seed: u64,
    alpha: f64,
) -> Bootstrap {
    let n = a.len();
    debug_assert_eq!(n, b.len());
    let observed = agg.over(b, 0..n) - agg.over(a, 0..n);
    let mut rng = PyRandom::new(seed);
    let mut idx = vec![0usize; n];
    let mut deltas = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        for slot in idx.iter_mut() {
            *slot = rng.randbelow(n as u64) as usize;
        }
        deltas.push(agg.over(b, idx.iter().copied()) - agg.over(a, idx.iter().copied()));
    }
    let extreme = deltas
        .iter()
        .filter(|d| (*d - observed).abs() >= observed.abs())
        .count();
    let p_value = (1 + extreme) as f64 / (resamples + 1) as f64;
    deltas.sort_by(f64::total_cmp);
    let k = (resamples as f64 * alpha / 2.0) as usize;
    let ci = if resamples == 0 {
        (f64::NAN, f64::NAN)
    } else {
        (
            deltas[k.min(resamples - 1)],
            deltas[resamples - 1 - k.min(resamples - 1)],
        )
    };
    Bootstrap {
        observed,
        ci,
        p_value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_matches_scipy_binomtest() {
        // scipy.stats.binomtest(k, n, 0.5).pvalue
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        assert_eq!(mcnemar_exact(3, 3), 1.0);
        assert!((mcnemar_exact(0, 1) - 1.0).abs() < 1e-15);
        assert!((mcnemar_exact(0, 5) - 0.0625).abs() < 1e-15);
        // binomtest(2, 10).pvalue = 0.109375
        assert!((mcnemar_exact(2, 8) - 0.109375).abs() < 1e-15);
        // Large n, where summing ratio products or log-gamma differences would lose digits: the
        // exact value, float(Fraction(2 * sum(comb(n, i) for i in range(k + 1)), 2**n)). (scipy's
        // binomtest is off by up to 2e-14 relative here, e.g. 0.04658552770494645 for the fourth.)
        for (k, n, exact) in [
            (40, 100, 0.05688793364098079),
            (480, 1000, 0.21744829320414094),
            (4900, 10000, 0.04658552770494739),
            (6800, 14000, 0.0007452325248581519),
        ] {
            let p = mcnemar_exact(n - k, k);
            assert!(
                (p - exact).abs() <= 4e-15 * exact,
                "binomtest({k}, {n}): {p} vs {exact}"
            );
        }
        // scipy's underflows to 0.0; ours is tiny too.
        assert!(mcnemar_exact(10, 1990) < 1e-300);
    }

    #[test]
    fn loader_terms_sum_to_one() {
        for n in [1u64, 2, 7, 40, 101, 1000, 5001] {
            let total: f64 = (0..=n).map(|x| dbinom_half(x, n)).sum();
            assert!((total - 1.0).abs() < 1e-12, "n = {n}: {total}");
        }
    }

    #[test]
    fn bootstrap_of_identical_runs_has_p_one() {
        let a: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i % 3), 0.0)).collect();
        let r = paired_bootstrap(Aggregation::Mean, &a, &a, 200, 1, 0.05);
        assert_eq!(r.observed, 0.0);
        assert_eq!(r.p_value, 1.0);
        assert_eq!(r.ci, (0.0, 0.0));
    }
}
