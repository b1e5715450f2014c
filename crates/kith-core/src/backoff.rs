//! Retry schedules: how long to wait before attempt n+1 after n failures.
//!
//! One rule for every retry loop (the outbox's delivery, a file download, a relay looked up
//! again, the terminal chat's reconnect): the first pause, doubling per failure, capped. Pure,
//! so the service and its tests agree on the numbers without waiting for them.

use std::time::Duration;

/// A doubling backoff: `first`, `2 × first`, `4 × first`, … never more than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The pause after the first failure.
    pub first: Duration,
    /// The longest pause.
    pub max: Duration,
}

impl Backoff {
    /// The outbox's retry schedule: 0.5 s doubling to 5 min.
    pub const DELIVERY: Backoff =
        Backoff::new(Duration::from_millis(500), Duration::from_secs(300));

    /// Group control (invitations, member lists, Megolm keys) to a member we cannot reach: 0.5 s
    /// doubling to 30 s. A member usually comes back without connecting to us (it dials its
    /// bootstrap nodes and its own contacts), and until the control arrives it cannot read the
    /// group at all, so it is retried much sooner than a text, whose mailbox copy covers it.
    pub const GROUP_CONTROL: Backoff =
        Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

    /// A schedule from `first` doubling to `max`.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self { first, max }
    }

    /// The pause after `failures` failed attempts (0: the pause after the first failure is
    /// `first`; the count that matters is how many doublings). Never above `max`, never below
    /// `min(first, max)`, and never shorter for more failures.
    pub fn delay(&self, failures: u32) -> Duration {
        // 2^16 × first is past any cap kith uses; the shift stays in range for u32.
        let factor = 1u32 << failures.min(16);
        self.first.saturating_mul(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn group_control_is_retried_within_half_a_minute() {
        let b = Backoff::GROUP_CONTROL;
        assert_eq!(b.delay(0), Duration::from_millis(500));
        assert_eq!(b.delay(5), Duration::from_secs(16));
        assert_eq!(b.delay(6), Duration::from_secs(30));
        assert_eq!(b.delay(40), Duration::from_secs(30));
        assert!(b.max < Backoff::DELIVERY.max);
    }

    #[test]
    fn the_delivery_schedule_grows_and_is_capped() {
        let b = Backoff::DELIVERY;
        assert_eq!(b.delay(0), Duration::from_millis(500));
        assert_eq!(b.delay(1), Duration::from_secs(1));
        assert_eq!(b.delay(3), Duration::from_secs(4));
        assert_eq!(b.delay(9), Duration::from_secs(256));
        assert_eq!(b.delay(10), Duration::from_secs(300));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(300));
    }

    proptest! {
        #[test]
        fn never_shrinks_never_passes_the_cap(
            first_ms in 0u64..100_000,
            max_ms in 0u64..10_000_000,
            n in 0u32..64,
        ) {
            let b = Backoff::new(Duration::from_millis(first_ms), Duration::from_millis(max_ms));
            prop_assert!(b.delay(n) <= b.max);
            prop_assert!(b.delay(n) >= b.first.min(b.max));
            prop_assert!(b.delay(n + 1) >= b.delay(n));
            // Doubling until the cap: the next pause is at most twice this one.
            prop_assert!(b.delay(n + 1) <= b.delay(n).saturating_mul(2).max(b.first.min(b.max)));
        }
    }
}
