//! How far our clock is from our peers' clocks.
//!
//! Names refuse claims signed too far in the future and mailboxes refuse registrations with stale
//! timestamps, so a node whose clock is off fails in ways a person cannot see. Peers put their
//! clock reading into the answers they send anyway (direct-message acks, mailbox answers); each
//! answer gives one NTP-style sample: the peer's reading minus the midpoint of our request's send
//! and answer times, good to within half the round trip. [`ClockSkew`] keeps the latest sample
//! per peer and judges by the median over peers, so one peer with a wrong clock does not make
//! ours look wrong.

use std::collections::HashMap;

/// Samples whose round trip took longer than this say too little (and are skipped).
pub const MAX_SAMPLE_RTT_MS: u64 = 5_000;
/// Samples older than this are forgotten.
pub const SAMPLE_TTL_MS: u64 = 3_600_000;
/// Peers remembered at once (the oldest sample goes first).
pub const MAX_PEERS: usize = 64;

/// One peer's latest reading against ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkewSample {
    /// Peer clock minus ours, in milliseconds (positive: the peer is ahead of us).
    pub skew_ms: i64,
    /// The round trip the sample came from (its uncertainty is half of it).
    pub rtt_ms: u64,
    /// When we took it, on our clock.
    pub at_ms: u64,
}

/// The estimate `kith doctor` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkewEstimate {
    /// Median over peers of (peer clock − ours); positive means our clock is behind theirs.
    pub median_ms: i64,
    /// How many peers the median is over.
    pub peers: usize,
}

/// Latest clock sample per peer (peers by their id bytes).
#[derive(Debug, Clone, Default)]
pub struct ClockSkew {
    samples: HashMap<Vec<u8>, SkewSample>,
}

impl ClockSkew {
    /// Records an answer from `peer`: we sent at `sent_ms` and got the answer at `received_ms`
    /// (both on our clock), and the peer's clock read `peer_now_ms` while answering. A zero
    /// reading (a peer that does not report its clock), a negative round trip or a slow one is
    /// ignored. Returns the sample when it was kept.
    pub fn record(
        &mut self,
        peer: &[u8],
        sent_ms: u64,
        received_ms: u64,
        peer_now_ms: u64,
    ) -> Option<SkewSample> {
        if peer_now_ms == 0 || received_ms < sent_ms {
            return None;
        }
        let rtt_ms = received_ms - sent_ms;
        if rtt_ms > MAX_SAMPLE_RTT_MS {
            return None;
        }
        let midpoint = sent_ms + rtt_ms / 2;
        let skew_ms = i64::try_from(i128::from(peer_now_ms) - i128::from(midpoint)).ok()?;
        let sample = SkewSample {
            skew_ms,
            rtt_ms,
            at_ms: received_ms,
        };
        if self.samples.len() >= MAX_PEERS && !self.samples.contains_key(peer) {
            let oldest = self
                .samples
                .iter()
                .min_by_key(|(_, s)| s.at_ms)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.samples.remove(&oldest);
            }
        }
        self.samples.insert(peer.to_vec(), sample);
        Some(sample)
    }

    /// The median skew over peers sampled in the last hour before `now_ms`; `None` when no peer
    /// told us its clock yet.
    pub fn estimate(&self, now_ms: u64) -> Option<SkewEstimate> {
        let mut skews: Vec<i64> = self
            .samples
            .values()
            .filter(|s| now_ms.saturating_sub(s.at_ms) <= SAMPLE_TTL_MS)
            .map(|s| s.skew_ms)
            .collect();
        if skews.is_empty() {
            return None;
        }
        skews.sort_unstable();
        let n = skews.len();
        let median_ms = if n % 2 == 1 {
            skews[n / 2]
        } else {
            // Average of the two middle ones, without overflow.
            skews[n / 2 - 1] / 2 + skews[n / 2] / 2 + (skews[n / 2 - 1] % 2 + skews[n / 2] % 2) / 2
        };
        Some(SkewEstimate {
            median_ms,
            peers: n,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_peer_ahead_by_a_minute_is_seen_ahead_within_half_the_round_trip() {
        let mut c = ClockSkew::default();
        // Sent at 1000, answered at 1040 on our clock; the peer read 61_020 (60 s ahead).
        let s = c.record(b"p", 1_000, 1_040, 61_020).unwrap();
        assert_eq!(s.rtt_ms, 40);
        assert_eq!(s.skew_ms, 60_000);
        let e = c.estimate(1_040).unwrap();
        assert_eq!(e.median_ms, 60_000);
        assert_eq!(e.peers, 1);
    }

    #[test]
    fn unusable_answers_are_ignored() {
        let mut c = ClockSkew::default();
        assert_eq!(c.record(b"p", 1_000, 1_040, 0), None, "no reading");
        assert_eq!(
            c.record(b"p", 1_000, 900, 5_000),
            None,
            "answer before send"
        );
        assert_eq!(
            c.record(b"p", 1_000, 1_000 + MAX_SAMPLE_RTT_MS + 1, 5_000),
            None,
            "too slow to say anything"
        );
        assert_eq!(c.estimate(2_000), None);
    }

    #[test]
    fn one_wrong_peer_does_not_move_the_median() {
        let mut c = ClockSkew::default();
        c.record(b"a", 10_000, 10_010, 10_005);
        c.record(b"b", 10_000, 10_010, 10_006);
        c.record(b"liar", 10_000, 10_010, 99_000_000);
        let e = c.estimate(10_010).unwrap();
        assert_eq!(e.peers, 3);
        assert_eq!(e.median_ms, 1);
    }

    #[test]
    fn the_latest_sample_of_a_peer_replaces_its_earlier_one_and_old_ones_expire() {
        let mut c = ClockSkew::default();
        c.record(b"a", 0, 10, 100_005);
        c.record(b"a", 1_000, 1_010, 1_005);
        assert_eq!(c.estimate(1_010).unwrap().median_ms, 0);
        assert_eq!(c.estimate(1_010 + SAMPLE_TTL_MS + 1), None);
    }

    #[test]
    fn at_most_max_peers_are_kept_and_the_oldest_goes() {
        let mut c = ClockSkew::default();
        for i in 0..(MAX_PEERS as u64 + 10) {
            c.record(&i.to_be_bytes(), i, i + 1, i + 1);
        }
        assert_eq!(c.samples.len(), MAX_PEERS);
        assert!(!c.samples.contains_key(0u64.to_be_bytes().as_slice()));
    }

    proptest! {
        /// Whatever the samples, the median lies between the smallest and the largest skew.
        #[test]
        fn the_median_lies_within_the_samples(
            skews in proptest::collection::vec(-1_000_000_000i64..1_000_000_000, 1..40)
        ) {
            let mut c = ClockSkew::default();
            let base = 2_000_000_000u64;
            for (i, skew) in skews.iter().enumerate() {
                let peer_now = u64::try_from(i64::try_from(base).unwrap() + 5 + skew).unwrap();
                c.record(&(i as u64).to_be_bytes(), base, base + 10, peer_now);
            }
            let e = c.estimate(base + 10).unwrap();
            let (lo, hi) = (*skews.iter().min().unwrap(), *skews.iter().max().unwrap());
            prop_assert!(e.median_ms >= lo && e.median_ms <= hi, "{} not in [{lo}, {hi}]", e.median_ms);
            prop_assert_eq!(e.peers, skews.len());
        }
    }
}
