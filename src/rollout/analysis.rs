//! Rollout: the canary judged against stable over one window. Pure functions:
//! the figures of a window, the statistical tests and the verdict.
//!
//! - fewer than `min_requests` canary requests: only errors beyond chance
//!   abort (the canary's error rate above `max_error_rate` by an exact
//!   binomial test, or above stable's by the test below, at `confidence`);
//!   anything else is not enough evidence: hold. A failing canary is rolled
//!   back on its first window, however little traffic its step gets;
//! - absolute limits: the canary's error rate above `max_error_rate`, or its
//!   p99 above `max_p99_ms`, aborts;
//! - against stable: a one-sided two-proportion z-test (canary's error rate
//!   higher than stable's), or Fisher's exact test when an expected cell count
//!   is below 5, at `confidence`; and the canary's p99 above stable's times
//!   `max_p99_ratio` (with enough samples for a p99).

use serde::Serialize;

use super::plan::Settings;
use super::telemetry::{Counts, bucket_value_ms};

/// Latencies below this count as this in the p99 ratio: on loopback, or for a
/// very fast service, microsecond jitter would otherwise double a ratio.
pub const P99_RATIO_FLOOR_MS: f64 = 5.0;

/// The p99 ratio is judged only when both versions have at least this many
/// requests in the window: from fewer, a "p99" is the window's worst request
/// or two, which one slow connect or a scheduling pause decides.
pub const P99_RATIO_MIN_SAMPLES: u64 = 100;

/// Below this expected count in any cell of the 2x2 table, Fisher's exact
/// test is used instead of the z-test's normal approximation.
pub const FISHER_BELOW_EXPECTED: f64 = 5.0;

/// One version's figures over a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    /// Requests answered (the error rate's denominator).
    pub requests: u64,
    /// Requests dropped before any answer, their client gone: latency
    /// samples (evidence for `min_requests` and the p99), in no error rate.
    pub abandoned: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Figures {
    /// Latency samples: requests answered and abandoned ones. A canary its
    /// clients give up on (slower than their timeouts) has only abandoned
    /// requests; they are the evidence its p99 is judged on.
    pub fn samples(&self) -> u64 {
        self.requests + self.abandoned
    }

    pub fn of(counts: &Counts) -> Figures {
        let samples: u64 = counts.latency.iter().sum();
        Figures {
            requests: counts.requests,
            abandoned: samples.saturating_sub(counts.requests),
            errors: counts.errors,
            error_rate: rate(counts.errors, counts.requests),
            p50_ms: quantile_ms(&counts.latency, 0.50),
            p99_ms: quantile_ms(&counts.latency, 0.99),
        }
    }
}

/// What the analysis concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Good enough for the next step.
    Pass,
    /// Not enough evidence: the step holds.
    Hold,
    /// Worse than allowed: roll back.
    Abort,
}

/// Why: a short machine-readable reason (metric label) and a sentence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    pub canary: Figures,
    pub stable: Figures,
    pub verdict: Verdict,
    /// Metric label: ok, not_enough_evidence, max_error_rate, max_p99_ms,
    /// error_rate_vs_stable, p99_ratio.
    pub reason: &'static str,
    pub why: String,
    /// `z` or `fisher`, when the error rates were compared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<&'static str>,
    /// The z statistic (z-test only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statistic: Option<f64>,
    /// One-sided p-value of "the canary's error rate is higher than stable's".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
    /// Canary p99 / stable p99 (each at least [`P99_RATIO_FLOOR_MS`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ratio: Option<f64>,
}

fn rate(errors: u64, requests: u64) -> f64 {
    if requests == 0 {
        0.0
    } else {
        errors as f64 / requests as f64
    }
}

/// The `q` quantile of a latency histogram (bucket counts), in ms: the
/// midpoint of the bucket holding the sample of rank ceil(q * n).
pub fn quantile_ms(latency: &[u64], q: f64) -> f64 {
    let total: u64 = latency.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, &c) in latency.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return bucket_value_ms(i);
        }
    }
    bucket_value_ms(latency.len().saturating_sub(1))
}

/// Judges `canary` against `stable` over the same window.
pub fn judge(plan: &Settings, canary: &Counts, stable: &Counts) -> Analysis {
    let (c, s) = (Figures::of(canary), Figures::of(stable));
    let mut a = Analysis {
        canary: c.clone(),
        stable: s.clone(),
        verdict: Verdict::Pass,
        reason: "ok",
        why: String::new(),
        test: None,
        statistic: None,
        p_value: None,
        p99_ratio: None,
    };
    let verdict = |a: &mut Analysis, v, reason, why: String| {
        a.verdict = v;
        a.reason = reason;
        a.why = why;
    };
    let alpha = 1.0 - plan.confidence;
    if c.requests > 0 && s.requests > 0 {
        let test = error_rate_test(c.errors, c.requests, s.errors, s.requests);
        a.test = Some(test.name);
        a.statistic = test.statistic;
        a.p_value = Some(test.p_value);
    }
    let worse_than_stable = |a: &mut Analysis, p: f64| {
        let why = format!(
            "canary error rate {:.4} is higher than stable's {:.4} beyond chance ({} test, p = {:.3e} < {:.3})",
            c.error_rate,
            s.error_rate,
            a.test.unwrap_or("z"),
            p,
            alpha
        );
        verdict(a, Verdict::Abort, "error_rate_vs_stable", why);
    };
    // At least one: a window in which the canary served nothing is no
    // evidence (a plan saved with 0 by an older gateway still runs).
    if c.samples() < plan.min_requests.max(1) {
        // Few requests: a rate or a p99 of a handful is noise, so only errors
        // beyond chance abort; a canary failing every request must not serve
        // on until it has failed `min_requests` of them.
        let above_limit = binomial_upper_tail(c.errors, c.requests, plan.max_error_rate);
        if above_limit < alpha {
            verdict(
                &mut a,
                Verdict::Abort,
                "max_error_rate",
                format!(
                    "canary error rate {:.4} ({} of {}) is above max_error_rate {} beyond chance \
                     (exact binomial test, p = {:.3e} < {:.3}), before min_requests {}",
                    c.error_rate,
                    c.errors,
                    c.requests,
                    plan.max_error_rate,
                    above_limit,
                    alpha,
                    plan.min_requests
                ),
            );
        } else if let Some(p) = a.p_value.filter(|p| *p < alpha) {
            worse_than_stable(&mut a, p);
        } else {
            verdict(
                &mut a,
                Verdict::Hold,
                "not_enough_evidence",
                format!(
                    "not enough evidence: {} canary requests in the window, min_requests is {}",
                    c.samples(),
                    plan.min_requests
                ),
            );
        }
        return a;
    }
    if c.samples() >= P99_RATIO_MIN_SAMPLES && s.samples() >= P99_RATIO_MIN_SAMPLES {
        let ratio = c.p99_ms.max(P99_RATIO_FLOOR_MS) / s.p99_ms.max(P99_RATIO_FLOOR_MS);
        a.p99_ratio = Some(ratio);
    }
    if c.error_rate > plan.max_error_rate {
        verdict(
            &mut a,
            Verdict::Abort,
            "max_error_rate",
            format!(
                "canary error rate {:.4} ({} of {}) is above max_error_rate {}",
                c.error_rate, c.errors, c.requests, plan.max_error_rate
            ),
        );
    } else if c.p99_ms > plan.max_p99_ms {
        verdict(
            &mut a,
            Verdict::Abort,
            "max_p99_ms",
            format!(
                "canary p99 {:.1} ms is above max_p99_ms {}",
                c.p99_ms, plan.max_p99_ms
            ),
        );
    } else if let Some(p) = a.p_value.filter(|p| *p < alpha) {
        worse_than_stable(&mut a, p);
    } else if let Some(r) = a.p99_ratio.filter(|r| *r > plan.max_p99_ratio) {
        verdict(
            &mut a,
            Verdict::Abort,
            "p99_ratio",
            format!(
                "canary p99 {} is {r:.2}x stable's {}, above max_p99_ratio {}",
                ratio_figure(c.p99_ms),
                ratio_figure(s.p99_ms),
                plan.max_p99_ratio
            ),
        );
    } else {
        a.why = if s.requests == 0 {
            "within the absolute limits (no stable traffic to compare with)".into()
        } else {
            "within the limits and not worse than stable beyond chance".into()
        };
        if s.requests > 0 && a.p99_ratio.is_none() {
            // Said, so that a plan whose min_requests is below it knows the
            // ratio was not looked at.
            a.why.push_str(&format!(
                "; the p99 ratio is not judged below {P99_RATIO_MIN_SAMPLES} samples of each version"
            ));
        }
    }
    a
}

/// A p99 as the ratio took it: `62.5 ms`, or `1.0 ms, taken as the 5 ms
/// floor` below [`P99_RATIO_FLOOR_MS`].
fn ratio_figure(p99_ms: f64) -> String {
    if p99_ms < P99_RATIO_FLOOR_MS {
        format!("{p99_ms:.1} ms, taken as the {P99_RATIO_FLOOR_MS} ms floor")
    } else {
        format!("{p99_ms:.1} ms")
    }
}

/// A test of "the canary's error rate is higher than stable's".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TestResult {
    pub name: &'static str,
    pub statistic: Option<f64>,
    pub p_value: f64,
}

/// The z-test, or Fisher's exact test when an expected count of the 2x2
/// table is below [`FISHER_BELOW_EXPECTED`].
pub fn error_rate_test(
    canary_errors: u64,
    canary_requests: u64,
    stable_errors: u64,
    stable_requests: u64,
) -> TestResult {
    // Never more errors than requests (counters read a moment apart).
    let canary_errors = canary_errors.min(canary_requests);
    let stable_errors = stable_errors.min(stable_requests);
    let n = (canary_requests + stable_requests) as f64;
    let errors = (canary_errors + stable_errors) as f64;
    let smallest_expected = [canary_requests, stable_requests]
        .iter()
        .flat_map(|&r| {
            let r = r as f64;
            [r * errors / n, r * (n - errors) / n]
        })
        .fold(f64::INFINITY, f64::min);
    if smallest_expected < FISHER_BELOW_EXPECTED {
        TestResult {
            name: "fisher",
            statistic: None,
            p_value: fisher_one_sided(
                canary_errors,
                canary_requests,
                stable_errors,
                stable_requests,
            ),
        }
    } else {
        let (z, p) = two_proportion_z(
            canary_errors,
            canary_requests,
            stable_errors,
            stable_requests,
        );
        TestResult {
            name: "z",
            statistic: Some(z),
            p_value: p,
        }
    }
}

/// One-sided two-proportion z-test with the pooled proportion: returns z and
/// P(Z >= z). Equal rates (or no errors at all) give z = 0, p = 0.5.
pub fn two_proportion_z(x1: u64, n1: u64, x2: u64, n2: u64) -> (f64, f64) {
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let pooled = (x1 + x2) as f64 / (n1f + n2f);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f)).sqrt();
    if se.is_nan() || se <= 0.0 {
        return (0.0, 0.5);
    }
    let z = (x1 as f64 / n1f - x2 as f64 / n2f) / se;
    (z, normal_upper_tail(z))
}

/// P(Z >= z) for a standard normal Z.
pub fn normal_upper_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function (Numerical Recipes' Chebyshev fit,
/// relative error below 1.2e-7 everywhere).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// Fisher's exact test, one-sided: the probability, with the margins of the
/// 2x2 table fixed, that the canary has at least `x1` of the errors
/// (hypergeometric upper tail).
pub fn fisher_one_sided(x1: u64, n1: u64, x2: u64, n2: u64) -> f64 {
    let n = n1 + n2;
    let k = x1 + x2;
    let hi = k.min(n1);
    let ln_denominator = ln_choose(n, n1);
    let mut p = 0.0;
    for i in x1..=hi {
        // i errors among the canary's n1, k - i among stable's n2.
        if k - i > n2 {
            continue;
        }
        p += (ln_choose(k, i) + ln_choose(n - k, n1 - i) - ln_denominator).exp();
    }
    p.min(1.0)
}

/// P(X >= x) for X ~ Binomial(n, p): the one-sided exact test of "the error
/// rate is at most `p`" after `x` errors in `n` requests. Below `1 -
/// confidence` exactly when the Clopper-Pearson lower confidence bound of the
/// rate is above `p`: 25 errors in 25 requests against 1% gives 1e-50, 1 in 2
/// gives 0.0199 (not beyond chance at 99%).
pub fn binomial_upper_tail(x: u64, n: u64, p: f64) -> f64 {
    let x = x.min(n);
    if x == 0 || p >= 1.0 || p.is_nan() {
        return 1.0;
    }
    if p <= 0.0 {
        return 0.0;
    }
    let (ln_p, ln_q) = (p.ln(), (-p).ln_1p());
    let term = |i: u64| (ln_choose(n, i) + i as f64 * ln_p + (n - i) as f64 * ln_q).exp();
    // The terms grow up to the mode and shrink after it: each sum below
    // starts at its largest term and stops once the rest cannot matter.
    let mode = ((n as f64 + 1.0) * p).floor() as u64;
    let sum = |range: &mut dyn Iterator<Item = u64>| {
        let mut sum = 0.0;
        for i in range {
            let t = term(i);
            sum += t;
            if t <= sum * 1e-17 {
                break;
            }
        }
        sum
    };
    if x > mode {
        sum(&mut (x..=n)).min(1.0)
    } else {
        (1.0 - sum(&mut (0..x).rev())).clamp(0.0, 1.0)
    }
}

fn ln_choose(n: u64, k: u64) -> f64 {
    ln_factorial(n) - ln_factorial(k) - ln_factorial(n - k)
}

/// ln(n!), exact sums below 256, Stirling's series above (error < 1e-12).
fn ln_factorial(n: u64) -> f64 {
    if n < 256 {
        return (2..=n).map(|i| (i as f64).ln()).sum();
    }
    let x = n as f64;
    x * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI * x).ln() + 1.0 / (12.0 * x)
        - 1.0 / (360.0 * x * x * x)
}

#[cfg(test)]
mod tests;
