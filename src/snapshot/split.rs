//! The weight table and the choice of a version for one request.
//!
//! Requests without a sticky key map a 64-bit position `p` (uniform over
//! `u64`) onto the cumulative weights, canaries first in config order and the
//! stable version last. The position is a golden-ratio (Weyl) sequence
//! `n * 2^64/phi` over a per-thread request counter. It is a low-discrepancy
//! sequence: after N requests each version's count is within O(log N) of its
//! exact share, where a random draw strays by O(sqrt N) (at 1/1000 over 20,000
//! requests: about ±2 instead of ±4.5 standard deviation). The counter is per
//! thread so that no cache line is shared between cores on the hot path.
//!
//! Requests with a sticky key choose by weighted rendezvous hashing: each
//! version with weight scores the key, `w / -ln(u)` with `u` in (0, 1) a hash
//! of the key's xxh3 hash (a fixed, unseeded hash, so every replica and every
//! restart agrees) and the version's name, and the highest score wins. A
//! version wins with probability `w / total` (the least of independent
//! exponential draws of rates `w`), and a user moves only when a weight change
//! makes another version beat the one it had: raising a version's weight only
//! moves users onto it, lowering it (to 0, say) only moves its own users away,
//! spread over the others by weight; the versions' order and which one is
//! stable play no part. (Ranges of one line would move the users of every
//! version after the changed one.)

use std::cell::Cell;

/// 2^64 / golden ratio: the Weyl sequence step with the best spread.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Cumulative weights and the sticky choice's seeds, precomputed when a
/// snapshot is built.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitTable {
    /// `(cumulative upper bound, version index)`, canaries first, stable last;
    /// versions at weight 0 are left out.
    bounds: Vec<(u64, usize)>,
    total: u64,
    /// `(the version's name hashed, 1 / its weight, its index)` for the
    /// sticky choice; versions at weight 0 are left out.
    rendezvous: Vec<(u64, f64, usize)>,
}

impl SplitTable {
    /// Builds the table; `weights[i]` is the weight of the version named
    /// `names[i]`. The caller guarantees that the total is 1..=1,000,000.
    pub fn new(weights: &[u32], stable: usize, names: &[String]) -> SplitTable {
        let mut bounds = Vec::with_capacity(weights.len());
        let mut total = 0u64;
        let order = (0..weights.len())
            .filter(|&i| i != stable)
            .chain(std::iter::once(stable));
        for i in order {
            let w = u64::from(weights.get(i).copied().unwrap_or(0));
            if w > 0 {
                total += w;
                bounds.push((total, i));
            }
        }
        let rendezvous = weights
            .iter()
            .zip(names)
            .enumerate()
            .filter(|(_, (w, _))| **w > 0)
            .map(|(i, (&w, name))| {
                (
                    xxhash_rust::xxh3::xxh3_64(name.as_bytes()),
                    1.0 / f64::from(w),
                    i,
                )
            })
            .collect();
        SplitTable {
            bounds,
            total,
            rendezvous,
        }
    }

    /// The version index for a sticky key, given its [`sticky_hash`]
    /// (weighted rendezvous hashing: see the module's documentation). A pure
    /// function of the key and the versions' names and weights.
    #[inline]
    pub fn sticky(&self, hash: u64) -> Option<usize> {
        // The highest `w / -ln(u)` is the highest `ln(u) / w` (both <= 0 ...
        // the one nearest 0): a multiplication by the precomputed `1 / w`.
        let mut best: Option<(f64, usize)> = None;
        for &(seed, inverse_weight, i) in &self.rendezvous {
            // 53 bits of a mixed hash, as a float in (0, 1): never 0 or 1.
            let bits = mix(hash ^ seed) >> 11;
            let u = (bits as f64 + 0.5) * (1.0 / (1u64 << 53) as f64);
            let score = u.ln() * inverse_weight;
            if best.is_none_or(|(b, _)| score > b) {
                best = Some((score, i));
            }
        }
        best.map(|(_, i)| i)
    }

    /// The version index at position `p`.
    #[inline]
    pub fn at(&self, p: u64) -> Option<usize> {
        let scaled = ((u128::from(p) * u128::from(self.total)) >> 64) as u64;
        self.bounds
            .iter()
            .find(|(bound, _)| scaled < *bound)
            .map(|&(_, i)| i)
    }

    /// The sum of the weights.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// A 64-bit finalizer (SplitMix64's): every input bit moves every output
/// bit, so the key's hash and a version's give independent draws.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The hash of a sticky key: xxh3, fixed and unseeded, so every replica and
/// every restart agrees.
#[inline]
pub fn sticky_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// [`sticky_hash`] of `parts` joined with `separator`, without joining them
/// (no allocation): the same hash as the joined text's.
#[cold]
pub fn sticky_hash_joined<'a>(parts: impl Iterator<Item = &'a [u8]>, separator: &[u8]) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
    for (i, part) in parts.enumerate() {
        if i > 0 {
            hasher.update(separator);
        }
        hasher.update(part);
    }
    hasher.digest()
}

thread_local! {
    static SEQUENCE: Cell<u64> = Cell::new(rand::random::<u64>());
}

/// The next position of this thread's low-discrepancy sequence.
#[inline]
pub fn next_position() -> u64 {
    SEQUENCE.with(|n| {
        let next = n.get().wrapping_add(1);
        n.set(next);
        next.wrapping_mul(GOLDEN)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("v{i}")).collect()
    }

    fn table(weights: &[u32], stable: usize) -> SplitTable {
        SplitTable::new(weights, stable, &names(weights.len()))
    }

    fn count(table: &SplitTable, n: u64, start: u64) -> Vec<u64> {
        let mut counts = vec![0u64; 10];
        for k in (0..n).map(|i| start.wrapping_add(i)) {
            if let Some(i) = table.at(k.wrapping_mul(GOLDEN)) {
                counts[i] += 1;
            }
        }
        counts
    }

    /// Each of `USERS` users' sticky version under `table`.
    fn users(table: &SplitTable) -> Vec<Option<usize>> {
        (0..USERS)
            .map(|u| table.sticky(sticky_hash(format!("user-{u}").as_bytes())))
            .collect()
    }

    const USERS: u32 = 20_000;

    #[test]
    fn weyl_sequence_is_accurate_at_small_weights() {
        let t = table(&[99, 1], 0);
        for start in [0, 12345, u64::MAX - 5000] {
            let c = count(&t, 10_000, start);
            assert!((95..=105).contains(&c[1]), "1/100 gave {}", c[1]);
        }
        let t = table(&[999, 1], 0);
        let c = count(&t, 20_000, 777);
        assert!((17..=23).contains(&c[1]), "1/1000 gave {}", c[1]);
        let t = table(&[999_999, 1], 0);
        let c = count(&t, 3_000_000, 1);
        assert!((1..=5).contains(&c[1]), "1/1e6 gave {}", c[1]);
    }

    #[test]
    fn zero_weight_is_never_chosen() {
        let t = table(&[0, 5, 0], 1);
        assert!(
            count(&t, 1000, 0)
                .iter()
                .enumerate()
                .all(|(i, &c)| i == 1 || c == 0)
        );
        assert!(users(&t).iter().all(|&v| v == Some(1)));
    }

    /// Sticky users split by weight: 60/30/10 and 999/1 within a few
    /// standard deviations of 20,000 draws.
    #[test]
    fn sticky_users_split_by_weight() {
        let count_of =
            |t: &SplitTable, i: usize| users(t).iter().filter(|&&v| v == Some(i)).count();
        let t = table(&[60, 30, 10], 0);
        for (i, share) in [(0, 0.6), (1, 0.3), (2, 0.1)] {
            let expected = share * f64::from(USERS);
            let sd = (expected * (1.0 - share)).sqrt();
            let got = count_of(&t, i) as f64;
            assert!(
                (got - expected).abs() < 4.0 * sd,
                "v{}: {got} of {USERS}",
                i + 1
            );
        }
        let got = count_of(&table(&[999, 1], 0), 1);
        assert!((5..=40).contains(&got), "1/1000 gave {got} of {USERS}");
    }

    #[test]
    fn raising_the_canary_only_moves_stable_users() {
        let before = users(&table(&[95, 5], 0));
        let after = users(&table(&[80, 20], 0));
        let mut moved_to_canary = 0;
        for (b, a) in before.iter().zip(&after) {
            if *b == Some(1) {
                assert_eq!(*a, Some(1), "a canary user left the canary");
            }
            if *b == Some(0) && *a == Some(1) {
                moved_to_canary += 1;
            }
        }
        // 15% of users move, give or take the hash's spread.
        assert!(
            (2_700..=3_300).contains(&moved_to_canary),
            "{moved_to_canary}"
        );
    }

    /// With two canaries, one set to 0 moves only its own users (spread over
    /// the others by weight), and another's change moves no one between the
    /// two that kept theirs.
    #[test]
    fn a_weight_change_moves_only_the_users_it_must() {
        let start = users(&table(&[60, 30, 10], 0));
        let v2_off = users(&table(&[60, 0, 10], 0));
        for (b, a) in start.iter().zip(&v2_off) {
            if *b != Some(1) {
                assert_eq!(a, b, "a user of a version whose weight stayed moved");
            }
        }
        let moved_to_v3 = start
            .iter()
            .zip(&v2_off)
            .filter(|(b, a)| **b == Some(1) && **a == Some(2))
            .count();
        // v2's 30% go 6:1 to v1 and v3: about 857 of 20,000 to v3.
        assert!((650..=1_100).contains(&moved_to_v3), "{moved_to_v3}");
        let v3_up = users(&table(&[60, 30, 20], 0));
        for (b, a) in start.iter().zip(&v3_up) {
            if *b == Some(2) {
                assert_eq!(*a, Some(2), "a v3 user left v3 as it grew");
            } else {
                assert!(*a == *b || *a == Some(2), "a user moved between v1 and v2");
            }
        }
    }

    /// Which version is stable, and the versions' order, play no part in a
    /// sticky user's version: the names and weights decide.
    #[test]
    fn stable_and_order_do_not_move_sticky_users() {
        let one = users(&table(&[50, 50], 0));
        assert_eq!(one, users(&table(&[50, 50], 1)));
        let names = ["v2".to_string(), "v1".to_string()];
        let swapped = SplitTable::new(&[50, 50], 0, &names);
        let swapped: Vec<_> = users(&swapped)
            .into_iter()
            .map(|v| v.map(|i| 1 - i))
            .collect();
        assert_eq!(one, swapped);
    }

    #[test]
    fn a_joined_key_is_where_its_joined_text_is() {
        // Lengths across xxh3's size classes and its streaming buffer.
        for len in [0, 1, 3, 8, 16, 17, 100, 128, 129, 240, 241, 255, 1024, 5000] {
            let first: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            for rest in [
                &[][..],
                &[&b"theme=dark"[..]][..],
                &[&b"x"[..], &b""[..]][..],
            ] {
                let parts = std::iter::once(&first[..]).chain(rest.iter().copied());
                let joined = parts.clone().collect::<Vec<_>>().join(&b"; "[..]);
                assert_eq!(
                    sticky_hash_joined(parts, b"; "),
                    sticky_hash(&joined),
                    "{len} {rest:?}"
                );
            }
        }
    }
}
