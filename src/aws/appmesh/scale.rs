//! Scaling gateway weights to App Mesh's integer percentages.

use std::cmp::Reverse;
use std::collections::BTreeMap;

/// Scales `weights` to integers from 0 to 100 that sum to 100; see [`scale_to`].
pub fn scale_to_percent(weights: &BTreeMap<String, u32>) -> BTreeMap<String, u32> {
    scale_to(weights, 100)
}

/// Scales `weights` to integers that sum to `total` (what the route has left
/// once the targets the gateway does not manage are counted).
///
/// Largest-remainder rounding: every version gets the floor of its exact
/// share, and the points still missing go to the largest remainders (ties to
/// the version whose name sorts first, so the result is deterministic). A
/// version with a non-zero weight never gets 0: it gets 1, taken from the
/// version with the largest percentage. When every weight is 0 (or the map is
/// empty) every version gets 0 and the sum is 0.
///
/// `to` must be at least the number of non-zero weights for each of them to
/// get 1; below that the versions left over get 0. The route sync refuses
/// such a route before scaling (see [`super::targets::apply_weights`]).
pub fn scale_to(weights: &BTreeMap<String, u32>, to: u32) -> BTreeMap<String, u32> {
    let to = u64::from(to);
    let total: u64 = weights.values().map(|&w| u64::from(w)).sum();
    if total == 0 || to == 0 {
        return weights.keys().map(|k| (k.clone(), 0)).collect();
    }
    // Exact share = w * to / total = floor + remainder / total.
    let mut percent: BTreeMap<String, u32> = BTreeMap::new();
    let mut remainders: Vec<(&str, u64)> = Vec::with_capacity(weights.len());
    let mut assigned: u64 = 0;
    for (name, &w) in weights {
        let scaled = u64::from(w) * to;
        let floor = scaled / total;
        assigned += floor;
        // floor <= to <= u32::MAX, so the cast cannot truncate.
        percent.insert(name.clone(), floor as u32);
        remainders.push((name.as_str(), scaled % total));
    }
    let missing = to.saturating_sub(assigned);
    // Stable sort: equal remainders keep name order.
    remainders.sort_by_key(|&(_, rem)| Reverse(rem));
    for (name, _) in remainders.iter().take(missing as usize) {
        if let Some(p) = percent.get_mut(*name) {
            *p += 1;
        }
    }
    // A non-zero weight never rounds to 0.
    let starved: Vec<String> = weights
        .iter()
        .filter(|&(name, &w)| w > 0 && percent.get(name) == Some(&0))
        .map(|(name, _)| name.clone())
        .collect();
    for name in starved {
        // The largest percentage; the first name among equals.
        let donor = percent
            .iter()
            .filter(|&(_, &p)| p > 1)
            .max_by_key(|&(n, &p)| (p, Reverse(n.clone())))
            .map(|(n, _)| n.clone());
        let Some(donor) = donor else {
            // More non-zero versions than points: they cannot all get one.
            break;
        };
        if let Some(p) = percent.get_mut(&donor) {
            *p -= 1;
        }
        if let Some(p) = percent.get_mut(&name) {
            *p = 1;
        }
    }
    percent
}

#[cfg(test)]
mod tests {
    use rand::RngExt;

    use super::*;

    fn w(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn sum(m: &BTreeMap<String, u32>) -> u32 {
        m.values().sum()
    }

    #[test]
    fn exact_shares_are_kept() {
        assert_eq!(
            scale_to_percent(&w(&[("a", 90), ("b", 10)])),
            w(&[("a", 90), ("b", 10)])
        );
        assert_eq!(
            scale_to_percent(&w(&[("a", 9), ("b", 1)])),
            w(&[("a", 90), ("b", 10)])
        );
        assert_eq!(scale_to_percent(&w(&[("a", 1)])), w(&[("a", 100)]));
        assert_eq!(
            scale_to_percent(&w(&[("a", 5), ("b", 0)])),
            w(&[("a", 100), ("b", 0)])
        );
    }

    #[test]
    fn tiny_canary_gets_one_percent() {
        assert_eq!(
            scale_to_percent(&w(&[("stable", 999_999), ("canary", 1)])),
            w(&[("stable", 99), ("canary", 1)])
        );
        assert_eq!(
            scale_to_percent(&w(&[("stable", u32::MAX), ("canary", 1)])),
            w(&[("stable", 99), ("canary", 1)])
        );
        // Two tiny ones.
        assert_eq!(
            scale_to_percent(&w(&[("a", 1_000_000), ("b", 1), ("c", 1)])),
            w(&[("a", 98), ("b", 1), ("c", 1)])
        );
    }

    #[test]
    fn largest_remainder_decides() {
        // 2/3 = 66.67, 1/3 = 33.33.
        assert_eq!(
            scale_to_percent(&w(&[("a", 2), ("b", 1)])),
            w(&[("a", 67), ("b", 33)])
        );
        // 0.5% -> 1 by remainder (not by the floor rule): 99.5 / 0.5.
        assert_eq!(
            scale_to_percent(&w(&[("a", 199), ("b", 1)])),
            w(&[("a", 99), ("b", 1)])
        );
        // 12.5 / 37.5 / 50: both .5 remainders tie; the first name wins.
        assert_eq!(
            scale_to_percent(&w(&[("a", 1), ("b", 3), ("c", 4)])),
            w(&[("a", 13), ("b", 37), ("c", 50)])
        );
    }

    #[test]
    fn ties_are_deterministic_by_name() {
        assert_eq!(
            scale_to_percent(&w(&[("c", 1), ("a", 1), ("b", 1)])),
            w(&[("a", 34), ("b", 33), ("c", 33)])
        );
        let six = w(&[("a", 1), ("b", 1), ("c", 1), ("d", 1), ("e", 1), ("f", 1)]);
        // 16.67 each: 16 * 6 = 96, four extra points to a..d.
        assert_eq!(
            scale_to_percent(&six),
            w(&[
                ("a", 17),
                ("b", 17),
                ("c", 17),
                ("d", 17),
                ("e", 16),
                ("f", 16)
            ])
        );
        for _ in 0..10 {
            assert_eq!(scale_to_percent(&six), scale_to_percent(&six.clone()));
        }
    }

    #[test]
    fn donor_is_the_largest_and_first_among_equals() {
        // b and c tie at 50 after rounding; the tiny one takes from b.
        let out = scale_to_percent(&w(&[("a", 1), ("b", 500_000), ("c", 500_000)]));
        assert_eq!(out, w(&[("a", 1), ("b", 49), ("c", 50)]));
    }

    #[test]
    fn scales_into_what_remains() {
        assert_eq!(
            scale_to(&w(&[("a", 90), ("b", 10)]), 80),
            w(&[("a", 72), ("b", 8)])
        );
        // Exactly one point per non-zero version: each keeps 1 (foreign
        // targets at 98 of a route, a 99:1 split).
        assert_eq!(
            scale_to(&w(&[("a", 1), ("b", 1)]), 2),
            w(&[("a", 1), ("b", 1)])
        );
        assert_eq!(
            scale_to(&w(&[("stable", 99), ("canary", 1)]), 2),
            w(&[("stable", 1), ("canary", 1)])
        );
        assert_eq!(
            scale_to(&w(&[("stable", 99), ("canary", 1), ("off", 0)]), 2),
            w(&[("stable", 1), ("canary", 1), ("off", 0)])
        );
        // Fewer points than non-zero versions (a non-zero canary would get
        // 0) never reaches scale_to: the route sync refuses it, see
        // targets::a_remainder_too_small_for_every_non_zero_version_is_refused.
        assert_eq!(scale_to(&w(&[("a", 5)]), 0), w(&[("a", 0)]));
    }

    #[test]
    fn all_zero_and_empty_do_not_panic() {
        assert_eq!(
            scale_to_percent(&w(&[("a", 0), ("b", 0)])),
            w(&[("a", 0), ("b", 0)])
        );
        assert!(scale_to_percent(&BTreeMap::new()).is_empty());
    }

    #[test]
    fn more_than_a_hundred_versions_do_not_panic() {
        let many: BTreeMap<String, u32> = (0..150).map(|i| (format!("v{i:03}"), 1)).collect();
        let out = scale_to_percent(&many);
        assert_eq!(sum(&out), 100);
        assert!(out.values().all(|&p| p <= 1));
    }

    #[test]
    fn random_inputs_sum_to_100_and_keep_non_zero_versions() {
        let mut rng = rand::rng();
        for _ in 0..5000 {
            let n = rng.random_range(1..=10);
            let weights: BTreeMap<String, u32> = (0..n)
                .map(|i| {
                    let w = match rng.random_range(0..4) {
                        0 => 0,
                        1 => rng.random_range(1..=10),
                        2 => rng.random_range(1..=1_000_000),
                        _ => rng.random_range(1..=u32::MAX),
                    };
                    (format!("v{i}"), w)
                })
                .collect();
            let out = scale_to_percent(&weights);
            assert_eq!(out.len(), weights.len());
            if weights.values().all(|&x| x == 0) {
                assert_eq!(sum(&out), 0);
                continue;
            }
            assert_eq!(sum(&out), 100, "{weights:?} -> {out:?}");
            for (name, &wt) in &weights {
                let p = out[name];
                assert!(p <= 100);
                assert_eq!(wt == 0, p == 0, "{weights:?} -> {out:?}");
            }
            // Never off by more than the forced 1-point moves from the exact share.
            let total: f64 = weights.values().map(|&x| f64::from(x)).sum();
            let nonzero = weights.values().filter(|&&x| x > 0).count() as f64;
            for (name, &wt) in &weights {
                let exact = f64::from(wt) * 100.0 / total;
                assert!(
                    (f64::from(out[name]) - exact).abs() < 1.0 + nonzero,
                    "{weights:?} -> {out:?}"
                );
            }
        }
    }
}
