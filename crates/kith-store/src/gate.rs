//! The write gate: keeps sled transactions and flushes apart, so a flush never stalls readers.
//!
//! sled 0.34 has one process-wide reader-writer lock (`concurrency_control`). Every read and
//! every flush takes it shared; every transaction and batch takes it exclusive. A flush holds it
//! for the whole disk sync (5–100 ms on a busy disk). A transaction that arrives meanwhile waits
//! for the exclusive lock, and the lock then holds back every new reader behind that waiting
//! writer: every sled call in the process, on every tokio worker, stops until the sync is done.
//! Measured: an API call that reads nothing from disk took 92 ms, an ack waited 130 ms.
//!
//! The gate orders the two kinds of work in phases, first come first served: any number of
//! flushes may run together, or any number of transactions, never both. A transaction that
//! finds a flush running waits *here*, off sled's lock, so readers go on. On a tokio
//! multi-threaded runtime that wait uses `block_in_place`, so the worker's other tasks move to
//! another thread instead of stalling behind it.
//!
//! sled's own background flusher would bypass the gate, so [`crate::Store`] turns it off and
//! runs its periodic flush through the gate instead.

use std::{
    collections::VecDeque,
    sync::{Condvar, Mutex, MutexGuard},
};

/// What a holder of the gate does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Transaction,
    Flush,
}

#[derive(Debug, Default)]
struct State {
    /// What the current holders do (meaningless while `active` is 0).
    phase: Option<Kind>,
    /// Holders inside the gate.
    active: usize,
    /// Waiters in arrival order, by ticket.
    queue: VecDeque<(u64, Kind)>,
    next_ticket: u64,
}

impl State {
    fn compatible(&self, kind: Kind) -> bool {
        self.active == 0 || self.phase == Some(kind)
    }
}

/// The process-wide gate (sled's lock is process-wide too: two stores in one process, as in the
/// multi-node tests and benchmarks, stall each other the same way).
static GATE: Gate = Gate {
    state: Mutex::new(State {
        phase: None,
        active: 0,
        queue: VecDeque::new(),
        next_ticket: 0,
    }),
    turn: Condvar::new(),
};

struct Gate {
    state: Mutex<State>,
    turn: Condvar,
}

/// Inside the gate until dropped.
#[must_use]
pub(crate) struct Pass {
    _private: (),
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut state = GATE.lock();
        state.active = state.active.saturating_sub(1);
        if state.active == 0 {
            state.phase = None;
        }
        drop(state);
        GATE.turn.notify_all();
    }
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a few counters that every holder leaves consistent; a panic elsewhere
        // while the mutex was held cannot leave it half-written.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn try_enter(state: &mut State, kind: Kind) -> bool {
        if state.queue.is_empty() && state.compatible(kind) {
            state.phase = Some(kind);
            state.active += 1;
            true
        } else {
            false
        }
    }

    fn enter(&self, kind: Kind) -> Pass {
        let mut state = self.lock();
        if Self::try_enter(&mut state, kind) {
            return Pass { _private: () };
        }
        let ticket = state.next_ticket;
        state.next_ticket = state.next_ticket.wrapping_add(1);
        state.queue.push_back((ticket, kind));
        drop(state);
        let wait = || {
            let mut state = self.lock();
            // Bounded by the holders ahead, each of which leaves after one transaction or flush.
            loop {
                if state.queue.front().map(|(t, _)| *t) == Some(ticket) && state.compatible(kind) {
                    state.queue.pop_front();
                    state.phase = Some(kind);
                    state.active += 1;
                    drop(state);
                    // The next waiter may be of the same kind and join this phase.
                    self.turn.notify_all();
                    return;
                }
                state = self
                    .turn
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        };
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
            _ => wait(),
        }
        Pass { _private: () }
    }
}

/// Runs a sled transaction (or batch) inside the gate: it waits for running flushes first.
pub(crate) fn transaction<R>(write: impl FnOnce() -> R) -> R {
    let _pass = GATE.enter(Kind::Transaction);
    write()
}

/// Enters the gate for a flush; call from a thread that may block (tokio's blocking pool, or
/// synchronous code), never from an async task.
pub(crate) fn flush() -> Pass {
    GATE.enter(Kind::Flush)
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        time::Duration,
    };

    use super::*;

    /// Counts holders of each kind at once; panics (in the test) if both are ever inside.
    #[derive(Default)]
    struct Inside {
        transactions: AtomicUsize,
        flushes: AtomicUsize,
        both_seen: AtomicUsize,
        flushes_together: AtomicUsize,
    }

    #[test]
    fn transactions_and_flushes_never_overlap_and_flushes_share() {
        // Flushes meeting inside the gate is a matter of timing (other tests in this process use
        // the same gate), so up to three rounds are run for it; no round may ever see both kinds
        // inside at once.
        for round in 1..=3 {
            let inside = gate_round();
            assert_eq!(inside.both_seen.load(Ordering::SeqCst), 0);
            if inside.flushes_together.load(Ordering::SeqCst) > 0 {
                return;
            }
            assert!(
                round < 3,
                "flushes from different threads must be able to run together"
            );
        }
    }

    /// Four threads flushing and four running transactions, 200 times each, through the gate.
    fn gate_round() -> Arc<Inside> {
        let inside = Arc::new(Inside::default());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let inside = inside.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        if t % 2 == 0 {
                            let _pass = flush();
                            let now = inside.flushes.fetch_add(1, Ordering::SeqCst) + 1;
                            if now > 1 {
                                inside.flushes_together.fetch_add(1, Ordering::SeqCst);
                            }
                            if inside.transactions.load(Ordering::SeqCst) > 0 {
                                inside.both_seen.fetch_add(1, Ordering::SeqCst);
                            }
                            std::thread::sleep(Duration::from_micros(200));
                            inside.flushes.fetch_sub(1, Ordering::SeqCst);
                        } else {
                            transaction(|| {
                                inside.transactions.fetch_add(1, Ordering::SeqCst);
                                if inside.flushes.load(Ordering::SeqCst) > 0 {
                                    inside.both_seen.fetch_add(1, Ordering::SeqCst);
                                }
                                std::thread::sleep(Duration::from_micros(20));
                                inside.transactions.fetch_sub(1, Ordering::SeqCst);
                            });
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        inside
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_behind_a_flush_does_not_stall_the_other_tasks_of_its_worker() {
        let flushing = std::thread::spawn(|| {
            let _pass = flush();
            std::thread::sleep(Duration::from_millis(1500));
        });
        // Let the flush get in first.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let ticks = Arc::new(AtomicUsize::new(0));
        let ticker = {
            let ticks = ticks.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    ticks.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        let writers: Vec<_> = (0..4)
            .map(|_| tokio::spawn(async { transaction(|| ()) }))
            .collect();
        // The ticker keeps running while every worker's writer waits for the flush.
        tokio::time::timeout(Duration::from_secs(5), ticker)
            .await
            .unwrap()
            .unwrap();
        assert!(
            !flushing.is_finished(),
            "the ticker had to wait for the flush: the writers stalled their workers"
        );
        for writer in writers {
            writer.await.unwrap();
        }
        flushing.join().unwrap();
        assert_eq!(ticks.load(Ordering::SeqCst), 20);
    }
}
