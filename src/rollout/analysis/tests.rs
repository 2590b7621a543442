use super::*;
use crate::rollout::telemetry::{BUCKETS, bucket};

fn close(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance * b.abs().max(1e-300)
}

/// `requests` requests, `errors` of them errors, all of them `ms` long.
fn counts(requests: u64, errors: u64, ms: f64) -> Counts {
    let mut latency = vec![0; BUCKETS];
    latency[bucket((ms * 1000.0) as u64)] = requests;
    Counts {
        requests,
        errors,
        latency,
    }
}

fn plan() -> Settings {
    Settings {
        max_error_rate: 0.05,
        ..Settings::default()
    }
}

#[test]
fn z_test_worked_example_from_the_docs() {
    // Canary 30 errors in 1000 (3%), stable 90 in 9000 (1%): pooled 0.012,
    // se = sqrt(0.012 * 0.988 * (1/1000 + 1/9000)) = 0.0036295, z = 5.510.
    let (z, p) = two_proportion_z(30, 1000, 90, 9000);
    assert!(close(z, 5.510_387_7, 1e-6), "{z}");
    assert!(close(p, 1.790_2e-8, 1e-3), "{p}");
    // Slightly noisier but within chance: 0.8% against 0.6%: z = 0.764, p = 0.222.
    let (z, p) = two_proportion_z(8, 1000, 54, 9000);
    assert!(close(z, 0.764_374, 1e-5), "{z}");
    assert!(close(p, 0.222_322, 1e-4), "{p}");
    // No errors anywhere: nothing to see.
    assert_eq!(two_proportion_z(0, 100, 0, 100), (0.0, 0.5));
}

#[test]
fn normal_tail_matches_tables() {
    assert!(close(normal_upper_tail(0.0), 0.5, 1e-7));
    assert!(close(normal_upper_tail(1.959_964), 0.025, 1e-5));
    assert!(close(normal_upper_tail(2.326_348), 0.01, 1e-5));
    assert!(close(normal_upper_tail(-2.326_348), 0.99, 1e-6));
}

#[test]
fn fisher_worked_example_from_the_docs() {
    // Canary 3 errors in 20, stable 2 in 200: P(canary has >= 3 of the 5
    // errors) = sum over i = 3..5 of C(5,i) C(215,20-i) / C(220,20) = 0.00577.
    assert!(close(fisher_one_sided(3, 20, 2, 200), 0.005_769_683, 1e-6));
    assert!(close(fisher_one_sided(1, 20, 2, 200), 0.249_717_23, 1e-6));
    // Counts above the exact-sum range of ln_factorial (Stirling's series).
    assert!(close(
        fisher_one_sided(4, 300, 2, 1700),
        0.005_803_014,
        1e-6
    ));
    assert!(close(
        fisher_one_sided(400, 1000, 300, 1000),
        1.685_85e-6,
        1e-4
    ));
    // The canary has none of the errors: certain under the null.
    assert!(close(fisher_one_sided(0, 20, 3, 200), 1.0, 1e-9));
}

#[test]
fn small_counts_use_fisher_and_large_ones_the_z_test() {
    assert_eq!(error_rate_test(3, 20, 2, 200).name, "fisher");
    // Inconsistent counts are clamped, never a panic.
    assert!(error_rate_test(30, 20, 300, 200).p_value <= 1.0);
    let t = error_rate_test(30, 1000, 90, 9000);
    assert_eq!(t.name, "z");
    assert!(t.statistic.is_some());
}

#[test]
fn too_few_canary_requests_hold() {
    let a = judge(&plan(), &counts(50, 0, 3.0), &counts(5000, 0, 3.0));
    assert_eq!(a.verdict, Verdict::Hold);
    assert_eq!(a.reason, "not_enough_evidence");
    assert!(a.why.contains("50 canary requests"), "{}", a.why);
    // A p99 of a few requests is noise: latency waits for min_requests.
    let a = judge(&plan(), &counts(150, 0, 800.0), &counts(15_000, 0, 3.0));
    assert_eq!(
        (a.verdict, a.reason),
        (Verdict::Hold, "not_enough_evidence")
    );
    assert_eq!(a.p99_ratio, None);
}

#[test]
fn a_canary_failing_every_request_aborts_below_min_requests() {
    // The defaults (min_requests 200, max_error_rate 1%), a 1% step at
    // 5,000 requests a minute over two tasks: each task's first window has
    // 25 canary requests, all 500s, next to stable's 2 errors in 2,475.
    let defaults = Settings::default();
    let a = judge(&defaults, &counts(25, 25, 3.0), &counts(2475, 2, 3.0));
    assert_eq!((a.verdict, a.reason), (Verdict::Abort, "max_error_rate"));
    assert!(a.why.contains("beyond chance"), "{}", a.why);
    assert_eq!(a.test, Some("fisher"));
    assert!(a.p_value.is_some_and(|p| p < 1e-40), "{:?}", a.p_value);
    // Failing beyond chance next to stable, within a loose absolute limit.
    let loose = Settings {
        max_error_rate: 0.5,
        ..Settings::default()
    };
    let a = judge(&loose, &counts(25, 3, 3.0), &counts(2475, 2, 3.0));
    assert_eq!(
        (a.verdict, a.reason),
        (Verdict::Abort, "error_rate_vs_stable"),
        "{}",
        a.why
    );
    // One error in two requests is no evidence of a rate above 1% (p =
    // 0.0199), nor, next to a stable failing 2%, of a worse canary.
    let a = judge(&defaults, &counts(2, 1, 3.0), &counts(2475, 50, 3.0));
    assert_eq!(
        (a.verdict, a.reason),
        (Verdict::Hold, "not_enough_evidence")
    );
    // From min_requests on, the raw rate is judged as before.
    let a = judge(&defaults, &counts(200, 3, 3.0), &counts(20_000, 300, 3.0));
    assert_eq!((a.verdict, a.reason), (Verdict::Abort, "max_error_rate"));
}

#[test]
fn binomial_tail_is_exact() {
    assert!(close(binomial_upper_tail(25, 25, 0.01), 1e-50, 1e-9));
    assert!(close(binomial_upper_tail(1, 2, 0.01), 0.0199, 1e-9));
    assert!(close(binomial_upper_tail(2, 25, 0.01), 0.025_759_105, 1e-7));
    assert!(close(
        binomial_upper_tail(5, 150, 0.01),
        0.017_987_495,
        1e-7
    ));
    assert!(close(
        binomial_upper_tail(20, 1000, 0.01),
        0.003_288_360,
        1e-6
    ));
    assert!(close(
        binomial_upper_tail(15, 1000, 0.01),
        0.082_412_320,
        1e-6
    ));
    // At or below the mode: the complement of the lower tail.
    assert!(close(
        binomial_upper_tail(5, 1000, 0.01),
        0.971_313_600,
        1e-6
    ));
    assert!(close(
        binomial_upper_tail(600, 50_000, 0.01),
        7.012_055e-6,
        1e-5
    ));
    assert!(close(binomial_upper_tail(2, 2, 0.05), 0.0025, 1e-9));
    // No errors, or a limit of 100%: nothing beyond chance; a limit of 0:
    // any error is; more errors than requests are clamped.
    assert_eq!(binomial_upper_tail(0, 10, 0.01), 1.0);
    assert_eq!(binomial_upper_tail(3, 10, 1.0), 1.0);
    assert_eq!(binomial_upper_tail(1, 10, 0.0), 0.0);
    assert!(close(
        binomial_upper_tail(30, 20, 0.5),
        0.5f64.powi(20),
        1e-9
    ));
}

#[test]
fn absolute_limits_abort() {
    let a = judge(&plan(), &counts(1000, 200, 3.0), &counts(9000, 1800, 3.0));
    assert_eq!((a.verdict, a.reason), (Verdict::Abort, "max_error_rate"));
    let a = judge(&plan(), &counts(1000, 0, 800.0), &counts(9000, 0, 700.0));
    assert_eq!((a.verdict, a.reason), (Verdict::Abort, "max_p99_ms"));
}

#[test]
fn worse_than_stable_beyond_chance_aborts() {
    let a = judge(&plan(), &counts(1000, 30, 3.0), &counts(9000, 90, 3.0));
    assert_eq!(
        (a.verdict, a.reason),
        (Verdict::Abort, "error_rate_vs_stable")
    );
    assert_eq!(a.test, Some("z"));
    assert!(a.p_value.is_some_and(|p| p < 0.01));
}

#[test]
fn noisier_within_chance_passes() {
    let a = judge(&plan(), &counts(1000, 8, 3.0), &counts(9000, 54, 3.0));
    assert_eq!(a.verdict, Verdict::Pass, "{}", a.why);
    assert!(a.p_value.is_some_and(|p| p > 0.2));
}

#[test]
fn slower_beyond_the_ratio_aborts_and_fast_jitter_does_not() {
    let a = judge(&plan(), &counts(1000, 0, 60.0), &counts(9000, 0, 20.0));
    assert_eq!((a.verdict, a.reason), (Verdict::Abort, "p99_ratio"));
    assert!(a.p99_ratio.is_some_and(|r| r > 2.8 && r < 3.2));
    assert!(!a.why.contains("floor"), "{}", a.why);
    // Stable under the floor: the text names the figure the ratio used.
    let a = judge(&plan(), &counts(1000, 0, 60.0), &counts(9000, 0, 1.0));
    assert_eq!((a.verdict, a.reason), (Verdict::Abort, "p99_ratio"));
    assert!(
        a.why
            .contains("x stable's 1.0 ms, taken as the 5 ms floor,"),
        "{}",
        a.why
    );
    // 0.4 ms against 0.1 ms: both under the floor, ratio 1.
    let a = judge(&plan(), &counts(1000, 0, 0.4), &counts(9000, 0, 0.1));
    assert_eq!(a.verdict, Verdict::Pass, "{}", a.why);
    // Too few samples for a p99: the ratio is not judged.
    let few = Settings {
        min_requests: 50,
        ..plan()
    };
    let a = judge(&few, &counts(99, 0, 60.0), &counts(9000, 0, 20.0));
    assert_eq!((a.verdict, a.p99_ratio), (Verdict::Pass, None), "{}", a.why);
}

/// A window in which the canary served nothing never passes, whatever
/// the plan says (`min_requests` 0 is refused now, but a rollout saved
/// with it by an older gateway still runs).
#[test]
fn a_window_without_canary_requests_holds_even_at_min_requests_0() {
    let zero = Settings {
        min_requests: 0,
        ..plan()
    };
    let a = judge(&zero, &Counts::default(), &Counts::default());
    assert_eq!(
        (a.verdict, a.reason),
        (Verdict::Hold, "not_enough_evidence")
    );
    let a = judge(&zero, &counts(1, 0, 3.0), &Counts::default());
    assert_eq!(a.verdict, Verdict::Pass, "{}", a.why);
}

#[test]
fn without_stable_traffic_only_the_absolute_limits_count() {
    let a = judge(&plan(), &counts(1000, 10, 3.0), &Counts::default());
    assert_eq!(a.verdict, Verdict::Pass, "{}", a.why);
    assert_eq!(a.p_value, None);
}

#[test]
fn quantiles_come_from_the_buckets() {
    let mut latency = vec![0; BUCKETS];
    latency[bucket(1_000)] = 98;
    latency[bucket(100_000)] = 2;
    assert!(close(quantile_ms(&latency, 0.5), 1.0, 0.07));
    assert!(close(quantile_ms(&latency, 0.99), 100.0, 0.07));
    assert_eq!(quantile_ms(&[0; 4], 0.99), 0.0);
}

/// A canary slower than its clients' timeouts: every request is dropped
/// before any answer (abandoned), none is answered. Those are evidence: at
/// min_requests the p99 of their waits is judged, and the canary aborts
/// instead of holding for want of answered requests.
#[test]
fn a_canary_its_clients_give_up_on_aborts_on_its_p99() {
    let defaults = Settings::default();
    let abandoned = |n: u64, ms: f64| Counts {
        requests: 0,
        ..counts(n, 0, ms)
    };
    let stable = counts(20_000, 0, 3.0);
    let a = judge(
        &defaults,
        &abandoned(defaults.min_requests, 2_000.0),
        &stable,
    );
    assert_eq!(
        (a.verdict, a.reason),
        (Verdict::Abort, "max_p99_ms"),
        "{a:?}"
    );
    assert_eq!(
        (a.canary.requests, a.canary.abandoned),
        (0, defaults.min_requests)
    );
    // Fewer than min_requests of them: a p99 of a handful is noise.
    let a = judge(
        &defaults,
        &abandoned(defaults.min_requests - 1, 2_000.0),
        &stable,
    );
    assert_eq!(
        (a.verdict, a.reason),
        (Verdict::Hold, "not_enough_evidence")
    );
    // Abandoned requests are no errors: the error rate is of answered ones.
    let mixed = Counts {
        requests: 300,
        ..counts(400, 0, 3.0)
    };
    let a = judge(&defaults, &mixed, &stable);
    assert_eq!(
        (a.canary.requests, a.canary.abandoned, a.canary.error_rate),
        (300, 100, 0.0)
    );
    assert_eq!(a.verdict, Verdict::Pass, "{a:?}");
}

/// A pass without the p99 ratio (fewer than 100 samples of a version, with
/// a plan whose min_requests is below that) says the ratio was not judged.
#[test]
fn a_pass_without_the_p99_ratio_says_so() {
    let few = Settings {
        min_requests: 20,
        ..Settings::default()
    };
    let a = judge(&few, &counts(50, 0, 3.0), &counts(5_000, 0, 3.0));
    assert_eq!((a.verdict, a.p99_ratio), (Verdict::Pass, None));
    assert!(
        a.why.contains("p99 ratio is not judged below 100"),
        "{}",
        a.why
    );
    let a = judge(&few, &counts(500, 0, 3.0), &counts(5_000, 0, 3.0));
    assert_eq!(a.verdict, Verdict::Pass);
    assert!(
        a.p99_ratio.is_some() && !a.why.contains("not judged"),
        "{}",
        a.why
    );
}
