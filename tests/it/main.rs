//! multi-node tests
