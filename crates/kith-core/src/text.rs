//! What a text message may be: not blank, at most [`MAX_TEXT_BYTES`] of UTF-8. Direct and group
//! messages apply the same rule when sending; receivers refuse what breaks it.

/// Longest text message, in bytes of UTF-8 (well under a frame, with room for the envelope).
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// Why a text cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TextError {
    /// Empty or only white space.
    #[error("the message is empty")]
    Empty,
    /// Over [`MAX_TEXT_BYTES`].
    #[error("the message is {0} bytes; the limit is {MAX_TEXT_BYTES}")]
    TooLong(usize),
}

/// Checks a text before it is sent.
pub fn check_text(text: &str) -> Result<(), TextError> {
    if text.trim().is_empty() {
        return Err(TextError::Empty);
    }
    if text.len() > MAX_TEXT_BYTES {
        return Err(TextError::TooLong(text.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_and_oversized_texts_are_refused_with_their_size() {
        assert_eq!(check_text(""), Err(TextError::Empty));
        assert_eq!(check_text(" \n\t"), Err(TextError::Empty));
        assert_eq!(check_text("hi"), Ok(()));
        assert_eq!(check_text(&"é".repeat(MAX_TEXT_BYTES / 2)), Ok(()));
        let long = "x".repeat(MAX_TEXT_BYTES + 1);
        assert_eq!(
            check_text(&long),
            Err(TextError::TooLong(MAX_TEXT_BYTES + 1))
        );
        assert_eq!(
            TextError::TooLong(70_000).to_string(),
            "the message is 70000 bytes; the limit is 65536"
        );
    }
}
