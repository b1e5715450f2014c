//! Message ids: 48 bits of milliseconds, a 16-bit counter, 64 random bits.
//!
//! Conversations are ordered by id on both sides, so ids must be time-ordered and, from one node,
//! strictly increasing even when the clock steps back or many are made in one millisecond; the
//! random tail keeps ids from different nodes apart. Time and randomness are passed in.

/// A 16-byte message id.
pub type MessageId = [u8; 16];

/// Makes strictly increasing ids for one node.
#[derive(Debug, Clone, Default)]
pub struct MessageIds {
    /// The (millisecond, counter) of the last id made.
    last: (u64, u16),
}

impl MessageIds {
    /// A generator that has made no id yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next id at `now_ms` (unix ms) with `random` as its tail. Greater than every id this
    /// generator made before: a clock that went back reuses the last millisecond with the next
    /// counter, and a counter that runs out moves to the next millisecond.
    pub fn next(&mut self, now_ms: u64, random: [u8; 8]) -> MessageId {
        let last = self.last;
        let (ms, counter) = if now_ms > last.0 {
            (now_ms, 0)
        } else if last.1 == u16::MAX {
            (last.0 + 1, 0)
        } else {
            (last.0, last.1 + 1)
        };
        self.last = (ms, counter);
        let mut id = [0u8; 16];
        id[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        id[6..8].copy_from_slice(&counter.to_be_bytes());
        id[8..].copy_from_slice(&random);
        id
    }
}

/// The millisecond an id says it was made at (its first 48 bits).
pub fn id_time_ms(id: &MessageId) -> u64 {
    let mut ms = [0u8; 8];
    ms[2..].copy_from_slice(&id[..6]);
    u64::from_be_bytes(ms)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn ids_carry_their_time_and_count_within_a_millisecond() {
        let mut ids = MessageIds::new();
        let a = ids.next(1_800_000_000_000, [0xff; 8]);
        let b = ids.next(1_800_000_000_000, [0; 8]);
        assert_eq!(id_time_ms(&a), 1_800_000_000_000);
        assert_eq!(&b[6..8], &[0, 1]);
        assert!(b > a, "the counter outranks the random tail");
        let back = ids.next(1_700_000_000_000, [0; 8]);
        assert!(back > b, "a clock that steps back still counts up");
        assert_eq!(id_time_ms(&back), 1_800_000_000_000);
    }

    #[test]
    fn a_full_counter_moves_to_the_next_millisecond() {
        let mut ids = MessageIds {
            last: (5, u16::MAX),
        };
        let id = ids.next(5, [0; 8]);
        assert_eq!(id_time_ms(&id), 6);
        assert_eq!(&id[6..8], &[0, 0]);
    }

    proptest! {
        /// Whatever the clock does, each id is greater than the one before.
        #[test]
        fn ids_strictly_increase(
            steps in proptest::collection::vec((0u64..1 << 47, any::<[u8; 8]>()), 1..300),
        ) {
            let mut ids = MessageIds::new();
            let mut previous: Option<MessageId> = None;
            for (now, random) in steps {
                let id = ids.next(now, random);
                prop_assert!(id_time_ms(&id) >= now, "an id is never older than the clock");
                if let Some(p) = previous {
                    prop_assert!(id > p);
                }
                previous = Some(id);
            }
        }
    }
}
