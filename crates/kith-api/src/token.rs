/// The bearer token that guards the local API: 32 random bytes, hex-encoded.
///
/// Other users on the machine can reach `127.0.0.1`; only someone who can read the home
/// directory's `api.token` (mode 0600) can drive the node.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

/// Why a token could not be made or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The operating system's random source failed.
    #[error("no randomness available for the API token: {0}")]
    Random(String),
    /// The stored token is not 64 hex characters.
    #[error(
        "the API token is malformed (expected 64 hex characters); delete api.token and restart the node"
    )]
    Malformed,
}

impl ApiToken {
    /// A fresh random token.
    pub fn generate() -> Result<Self, TokenError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
        Ok(Self(hex::encode(bytes)))
    }

    /// Parses a stored token (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(text.to_ascii_lowercase()))
        } else {
            Err(TokenError::Malformed)
        }
    }

    /// The token's text, for writing to `api.token` or an `Authorization` header.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Compares in time independent of where the first difference is.
    pub(crate) fn matches(&self, presented: &str) -> bool {
        let a = self.0.as_bytes();
        let b = presented.as_bytes();
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.write_str("ApiToken(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_differ() {
        let a = ApiToken::generate().unwrap();
        let b = ApiToken::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(ApiToken::parse(&format!("{}\n", a.as_str())).unwrap(), a);
    }

    #[test]
    fn malformed_tokens_are_refused() {
        assert!(ApiToken::parse("").is_err());
        assert!(ApiToken::parse("xyz").is_err());
        assert!(ApiToken::parse(&"g".repeat(64)).is_err());
    }

    #[test]
    fn matching_requires_the_exact_token() {
        let t = ApiToken::generate().unwrap();
        assert!(t.matches(t.as_str()));
        assert!(!t.matches(""));
        assert!(!t.matches(&t.as_str()[1..]));
        let mut wrong = t.as_str().to_owned();
        wrong.replace_range(63..64, if wrong.ends_with('0') { "1" } else { "0" });
        assert!(!t.matches(&wrong));
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let t = ApiToken::generate().unwrap();
        assert!(!format!("{t:?}").contains(t.as_str()));
    }
}
