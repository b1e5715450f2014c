use std::fmt;

use unicode_normalization::UnicodeNormalization as _;
use unicode_security::{GeneralSecurityProfile as _, MixedScript as _};

/// Shortest allowed name, in characters after normalization.
pub const MIN_LEN: usize = 3;
/// Longest allowed name, in characters after normalization.
pub const MAX_LEN: usize = 32;
/// How many independent DHT keys every claim is stored under ([`Name::replica_key`]).
///
/// Kademlia puts a key's records at the peers whose ids are closest to it, and ids cost nothing:
/// an attacker who generates ids next to one key becomes that key's closest holders. With the
/// claim under five unrelated keys, a resolver asks all five and follows an owner only when it
/// wins a majority of them ([`crate::select::decide`]), so the attacker has to take three keys'
/// neighbourhoods at once. Every node of a network must use the same value.
pub const REPLICAS: usize = 5;

/// A valid, normalized name. The only way to get one is [`Name::parse`], so holding a `Name`
/// proves it follows every rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

/// Why a name was refused, worded for the person who typed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Fewer than 3 characters.
    #[error("name '{0}' is too short: names have {MIN_LEN} to {MAX_LEN} characters")]
    TooShort(String),
    /// More than 32 characters.
    #[error("name '{0}' is too long: names have {MIN_LEN} to {MAX_LEN} characters")]
    TooLong(String),
    /// A character that is not a letter, a digit, `-` or `_`.
    #[error(
        "name '{name}' contains {ch:?} (U+{code:04X}): names use letters and digits of one script, '-' and '_'"
    )]
    BadCharacter {
        /// The name as typed.
        name: String,
        /// The offending character.
        ch: char,
        /// Its code point.
        code: u32,
    },
    /// Letters from more than one script (e.g. Latin and Cyrillic).
    #[error("name '{0}' mixes letters of different scripts; use letters of one script only")]
    MixedScripts(String),
    /// Looks like an ASCII name and could impersonate it.
    #[error(
        "name '{name}' looks like the name '{looks_like}' and could be used to impersonate it; choose another"
    )]
    ConfusableWithAscii {
        /// The name as typed.
        name: String,
        /// The ASCII name it can be mistaken for.
        looks_like: String,
    },
}

impl Name {
    /// Normalizes and validates a name: NFKC, case fold, NFKC again (so `Jürgen`, `jürgen` and
    /// `JÜRGEN` are one name), then the character, length, script and confusable rules.
    pub fn parse(input: &str) -> Result<Self, NameError> {
        let trimmed = input.trim();
        let nfkc: String = trimmed.nfkc().collect();
        let folded = caseless::default_case_fold_str(&nfkc);
        let normalized: String = folded.nfkc().collect();

        let len = normalized.chars().count();
        if len < MIN_LEN {
            return Err(NameError::TooShort(trimmed.to_owned()));
        }
        if len > MAX_LEN {
            return Err(NameError::TooLong(trimmed.to_owned()));
        }
        for ch in normalized.chars() {
            let allowed = ch == '-'
                || ch == '_'
                || ((ch.is_alphanumeric() || is_combining_mark(ch)) && ch.identifier_allowed());
            if !allowed {
                return Err(NameError::BadCharacter {
                    name: trimmed.to_owned(),
                    ch,
                    code: u32::from(ch),
                });
            }
        }
        if !normalized.is_single_script() {
            return Err(NameError::MixedScripts(trimmed.to_owned()));
        }
        if !normalized.is_ascii() {
            let skeleton: String = unicode_security::skeleton(&normalized).collect();
            if skeleton.is_ascii() {
                return Err(NameError::ConfusableWithAscii {
                    name: trimmed.to_owned(),
                    looks_like: skeleton,
                });
            }
        }
        Ok(Self(normalized))
    }

    /// The normalized form, as stored in records.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name's first replica key, `blake3("kith/name/v1/" ‖ name)`: where claims lived before
    /// replicas existed, and the key tests and tools look at when one key is enough.
    pub fn dht_key(&self) -> Vec<u8> {
        self.replica_key(0)
    }

    /// The DHT key of replica `replica` (see [`REPLICAS`]). Replica 0 is
    /// `blake3("kith/name/v1/" ‖ name)`; replica `i ≥ 1` is `blake3("kith/name/v1/" ‖ i ‖ "/" ‖
    /// name)` with `i` in decimal. Names never contain `/`, so no replica key of one name is a key
    /// of another name. The keys are unrelated points of the key space: Sybils ground next to one
    /// of them are nowhere near the others.
    pub fn replica_key(&self, replica: usize) -> Vec<u8> {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"kith/name/v1/");
        if replica > 0 {
            hasher.update(replica.to_string().as_bytes());
            hasher.update(b"/");
        }
        hasher.update(self.0.as_bytes());
        hasher.finalize().as_bytes().to_vec()
    }

    /// Every replica key of the name, replica 0 first.
    pub fn replica_keys(&self) -> Vec<Vec<u8>> {
        (0..REPLICAS).map(|i| self.replica_key(i)).collect()
    }

    /// Which replica `key` is for this name, if it is one of its replica keys: holders accept a
    /// claim only under one of its own name's keys.
    pub fn replica_of(&self, key: &[u8]) -> Option<usize> {
        (0..REPLICAS).find(|i| self.replica_key(*i) == key)
    }
}

/// Combining marks survive NFKC in scripts without precomposed forms (e.g. Devanagari vowel signs)
/// and are part of letters there.
fn is_combining_mark(ch: char) -> bool {
    unicode_normalization::char::is_combining_mark(ch)
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests;
