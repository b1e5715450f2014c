//! The shared harness: real kith nodes on 127.0.0.1, each with its own temporary home. It lives in
//! the `kith-testkit` crate (so kith-bench starts its nodes the same way); this module re-exports
//! it, so every test file imports `crate::harness::...` as before.

pub(crate) use kith_testkit::*;

/// The wall clock in unix milliseconds, as nodes stamp what they store.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
