//! The weight table and the choice of a version for one request.
//!
//! Every choice maps a 64-bit position `p` (uniform over `u64`) onto the
//! cumulative weights. The canaries come first in config order and the stable
//! version last, so for a fixed position, raising a canary's weight only moves
//! positions from the stable version onto it, and lowering it moves exactly the
//! excess back: a sticky user on the canary stays there while the canary grows
//! (with one canary weighted; several sit side by side, and one's change
//! shifts the ranges of those after it).
//!
//! Where `p` comes from:
//! - sticky requests: `xxh3_64(key)`, a fixed, unseeded hash, so every replica and
//!   every restart agrees;
//! - other requests: a golden-ratio (Weyl) sequence `n * 2^64/phi` over a
//!   per-thread request counter. It is a low-discrepancy sequence: after N
//!   requests each version's count is within O(log N) of its exact share, where a
//!   random draw strays by O(sqrt N) (at 1/1000 over 20,000 requests: about ±2
//!   instead of ±4.5 standard deviation). The counter is per thread so that no
//!   cache line is shared between cores on the hot path.

use std::cell::Cell;

/// 2^64 / golden ratio: the Weyl sequence step with the best spread.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Cumulative weights, precomputed when a snapshot is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitTable {
    /// `(cumulative upper bound, version index)`, canaries first, stable last;
    /// versions at weight 0 are left out.
    bounds: Vec<(u64, usize)>,
    total: u64,
}

impl SplitTable {
    /// Builds the table; `weights[i]` is version `i`'s weight. The caller
    /// guarantees that the total is 1..=1,000,000.
    pub fn new(weights: &[u32], stable: usize) -> SplitTable {
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
        SplitTable { bounds, total }
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

/// The position of a sticky key: a pure function of the key.
#[inline]
pub fn sticky_position(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// [`sticky_position`] of `parts` joined with `separator`, without
/// joining them (no allocation): the same position as the joined text's.
#[cold]
pub fn sticky_position_joined<'a>(parts: impl Iterator<Item = &'a [u8]>, separator: &[u8]) -> u64 {
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

    fn count(table: &SplitTable, n: u64, start: u64) -> Vec<u64> {
        let mut counts = vec![0u64; 10];
        for k in (0..n).map(|i| start.wrapping_add(i)) {
            if let Some(i) = table.at(k.wrapping_mul(GOLDEN)) {
                counts[i] += 1;
            }
        }
        counts
    }

    #[test]
    fn weyl_sequence_is_accurate_at_small_weights() {
        let t = SplitTable::new(&[99, 1], 0);
        for start in [0, 12345, u64::MAX - 5000] {
            let c = count(&t, 10_000, start);
            assert!((95..=105).contains(&c[1]), "1/100 gave {}", c[1]);
        }
        let t = SplitTable::new(&[999, 1], 0);
        let c = count(&t, 20_000, 777);
        assert!((17..=23).contains(&c[1]), "1/1000 gave {}", c[1]);
        let t = SplitTable::new(&[999_999, 1], 0);
        let c = count(&t, 3_000_000, 1);
        assert!((1..=5).contains(&c[1]), "1/1e6 gave {}", c[1]);
    }

    #[test]
    fn zero_weight_is_never_chosen() {
        let t = SplitTable::new(&[0, 5, 0], 1);
        assert!(
            count(&t, 1000, 0)
                .iter()
                .enumerate()
                .all(|(i, &c)| i == 1 || c == 0)
        );
    }

    #[test]
    fn raising_the_canary_only_moves_stable_users() {
        let small = SplitTable::new(&[95, 5], 0);
        let large = SplitTable::new(&[80, 20], 0);
        let mut moved_to_canary = 0;
        for user in 0..20_000u32 {
            let p = sticky_position(format!("user-{user}").as_bytes());
            let (before, after) = (small.at(p), large.at(p));
            if before == Some(1) {
                assert_eq!(after, Some(1), "a canary user left the canary");
            }
            if before == Some(0) && after == Some(1) {
                moved_to_canary += 1;
            }
        }
        // 15% of users move, give or take the hash's spread.
        assert!(
            (2_700..=3_300).contains(&moved_to_canary),
            "{moved_to_canary}"
        );
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
                    sticky_position_joined(parts, b"; "),
                    sticky_position(&joined),
                    "{len} {rest:?}"
                );
            }
        }
    }
}
