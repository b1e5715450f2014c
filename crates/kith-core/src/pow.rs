//! Proof of work for name claims.
//!
//! `blake3("kith/pow/v1" ‖ len(name) ‖ name ‖ len(peer) ‖ peer ‖ created_at_ms ‖ nonce)` must start
//! with `difficulty` zero bits. It binds the work to one name, one key and one claim time, so it
//! cannot be reused for another name or by another key, while renewals (same `created_at_ms`)
//! reuse it. Expected cost is `2^difficulty` hashes.

use std::ops::ControlFlow;

/// The main network's difficulty: about one second on one core in a release build (measured in
/// BENCHMARKS.md, `names.pow`).
pub const DEFAULT_DIFFICULTY: u8 = 22;

/// The hash the nonce is judged by.
pub fn hash(name: &str, peer_id: &[u8], created_at_ms: u64, nonce: u64) -> [u8; 32] {
    let mut hasher = prefix(name, peer_id, created_at_ms);
    hasher.update(&nonce.to_be_bytes());
    *hasher.finalize().as_bytes()
}

fn prefix(name: &str, peer_id: &[u8], created_at_ms: u64) -> blake3::Hasher {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"kith/pow/v1");
    hasher.update(&(name.len() as u64).to_be_bytes());
    hasher.update(name.as_bytes());
    hasher.update(&(peer_id.len() as u64).to_be_bytes());
    hasher.update(peer_id);
    hasher.update(&created_at_ms.to_be_bytes());
    hasher
}

/// Number of leading zero bits of a hash.
pub fn leading_zero_bits(hash: &[u8; 32]) -> u32 {
    let mut bits = 0;
    for byte in hash {
        if *byte == 0 {
            bits += 8;
        } else {
            bits += byte.leading_zeros();
            break;
        }
    }
    bits
}

/// Whether `nonce` is a valid proof for the claim at `difficulty`.
pub fn verify(name: &str, peer_id: &[u8], created_at_ms: u64, nonce: u64, difficulty: u8) -> bool {
    leading_zero_bits(&hash(name, peer_id, created_at_ms, nonce)) >= u32::from(difficulty)
}

/// How often [`solve`] reports progress, in attempts.
pub const PROGRESS_EVERY: u64 = 1 << 16;

/// Searches nonces from 0 upwards. Every [`PROGRESS_EVERY`] attempts it calls `progress` with the
/// number of attempts so far; returning `ControlFlow::Break` cancels the search (`None`).
pub fn solve(
    name: &str,
    peer_id: &[u8],
    created_at_ms: u64,
    difficulty: u8,
    mut progress: impl FnMut(u64) -> ControlFlow<()>,
) -> Option<u64> {
    let base = prefix(name, peer_id, created_at_ms);
    let needed = u32::from(difficulty);
    let mut nonce: u64 = 0;
    loop {
        let mut hasher = base.clone();
        hasher.update(&nonce.to_be_bytes());
        if leading_zero_bits(hasher.finalize().as_bytes()) >= needed {
            return Some(nonce);
        }
        nonce = nonce.checked_add(1)?;
        if nonce.is_multiple_of(PROGRESS_EVERY) && progress(nonce).is_break() {
            return None;
        }
    }
}

/// Expected attempts at a difficulty, for progress bars.
pub fn expected_attempts(difficulty: u8) -> u64 {
    1u64.checked_shl(u32::from(difficulty)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_solved_nonce_verifies_and_is_bound_to_its_inputs() {
        let nonce = solve("alice", b"peer", 7, 12, |_| ControlFlow::Continue(())).unwrap();
        assert!(verify("alice", b"peer", 7, nonce, 12));
        // Another name, key or claim time needs its own work (deterministic inputs, checked).
        assert!(!verify("alicf", b"peer", 7, nonce, 12));
        assert!(!verify("alice", b"peeR", 7, nonce, 12));
        assert!(!verify("alice", b"peer", 8, nonce, 12));
    }

    #[test]
    fn difficulty_zero_accepts_anything() {
        assert!(verify("x", b"", 0, 123, 0));
        assert_eq!(
            solve("x", b"", 0, 0, |_| ControlFlow::Continue(())),
            Some(0)
        );
    }

    #[test]
    fn solving_can_be_cancelled() {
        let mut calls = 0;
        let result = solve("alice", b"peer", 1, 64, |_| {
            calls += 1;
            if calls == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(result, None);
        assert_eq!(calls, 2);
    }

    #[test]
    fn leading_zero_bits_counts_across_bytes() {
        let mut h = [0u8; 32];
        h[2] = 0b0001_0000;
        assert_eq!(leading_zero_bits(&h), 19);
        assert_eq!(leading_zero_bits(&[0u8; 32]), 256);
        assert_eq!(leading_zero_bits(&[0xff; 32]), 0);
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        // ("ab", "c") and ("a", "bc") must not hash alike.
        assert_ne!(hash("ab", b"c", 0, 0), hash("a", b"bc", 0, 0));
    }
}
