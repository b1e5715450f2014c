//! Exit codes, as documented in README.md and relied on by scripts and tests.

use std::fmt;

/// Anything else went wrong.
pub(crate) const FAILURE: u8 = 1;
/// The command line or an argument was invalid.
pub(crate) const USAGE: u8 = 2;
/// What was asked for does not exist (an unclaimed name, an unknown contact).
pub(crate) const NOT_FOUND: u8 = 3;
/// The request conflicts with existing state (a name held by another key, a changed key).
pub(crate) const CONFLICT: u8 = 4;
/// No node is running for this home.
pub(crate) const NO_NODE: u8 = 5;

/// An error that knows its exit code. Anything else that reaches `main` exits with [`FAILURE`].
#[derive(Debug)]
pub(crate) struct CliError {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl CliError {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}
