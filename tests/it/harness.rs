//! The shared harness: real kith nodes on 127.0.0.1, each with its own temporary home. It lives in
//! the `kith-testkit` crate (so kith-bench starts its nodes the same way); this module re-exports
//! it, so every test file imports `crate::harness::...` as before.

pub(crate) use kith_testkit::*;
