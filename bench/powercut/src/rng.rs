//! A tiny deterministic generator for the cut's decisions: SplitMix64, spelled out here so that a
//! seed replays the same cut whatever version of a random-number crate is in the lock file.

/// SplitMix64 (Steele, Lea and Flood 2014).
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A number in `0..=n`.
    pub fn up_to(&mut self, n: u64) -> u64 {
        match n.checked_add(1) {
            Some(m) => self.below(m),
            None => self.next_u64(),
        }
    }
}

/// FNV-1a, 64 bits: a stable hash for seeding and for the state digest.
#[derive(Clone, Debug)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    /// A length-prefixed string, so that ("ab","c") and ("a","bc") differ.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// The generator for one named part of a cut (a file, the namespace): a pure function of both.
pub fn stream(seed: u64, name: &str) -> SplitMix64 {
    let mut h = Fnv::default();
    h.u64(seed).str(name);
    let mut g = SplitMix64::new(h.finish());
    // One step so that nearby seeds spread out.
    g.next_u64();
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // First outputs for seed 1234567 from the reference implementation.
        let mut g = SplitMix64::new(1234567);
        assert_eq!(g.next_u64(), 6457827717110365317);
        assert_eq!(g.next_u64(), 3203168211198807973);
    }

    #[test]
    fn below_stays_in_range() {
        let mut g = SplitMix64::new(7);
        for n in [1u64, 2, 3, 10, 4096] {
            for _ in 0..1000 {
                assert!(g.below(n) < n);
            }
        }
        assert_eq!(g.below(0), 0);
        assert!(g.up_to(0) == 0);
    }

    #[test]
    fn streams_differ_by_name_and_seed() {
        assert_ne!(stream(1, "a").next_u64(), stream(1, "b").next_u64());
        assert_ne!(stream(1, "a").next_u64(), stream(2, "a").next_u64());
        assert_eq!(stream(9, "x").next_u64(), stream(9, "x").next_u64());
    }
}
