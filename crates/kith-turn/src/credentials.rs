//! Short-lived TURN credentials in the TURN REST API scheme (draft-uberti-behave-turn-rest-00).
//!
//! The relay and whoever mints credentials share one secret; nothing is stored per user:
//! - username = `"<expiry unix seconds>:<user>"`;
//! - password = `base64(HMAC-SHA1(secret, username))`.
//!
//! The server recomputes the password from the username it is sent, so a username whose expiry
//! was edited no longer matches its password.
//! Browsers take these as `RTCIceServer { username, credential }`, and coturn's
//! `use-auth-secret` / `static-auth-secret` checks the same scheme.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::hmac;

/// The longest lifetime the server accepts by default: a username whose expiry is further ahead
/// than this is refused, so a leaked credential (or a relay's clock far behind the minter's)
/// cannot stay usable for weeks.
/// 24 hours also covers the longest call: TURN refreshes re-check the username, so an allocation
/// ends at the first refresh after its credential expired.
pub const MAX_CREDENTIAL_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// A username/password pair for one user, valid until `expires_at_unix_secs`.
///
/// Minted by the relay's node for a registered user and handed to that user's web app, which
/// puts it in its `RTCIceServer` entry. `Debug` does not print the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `"<expiry unix seconds>:<user>"`, the TURN `USERNAME`.
    pub username: String,
    /// `base64(HMAC-SHA1(secret, username))`, the TURN password (the browser's `credential`).
    pub password: String,
    /// When the server stops accepting `username`, in seconds since the Unix epoch.
    pub expires_at_unix_secs: u64,
}

impl Credentials {
    /// Mints credentials for `user` that expire `ttl` after `now_unix_secs`.
    ///
    /// Pure (time is passed in) so it can be tested and called from any task.
    /// `user` is only a label for logs and for `turn`'s per-user bookkeeping: keep it short (a peer
    /// id fits) since the whole username must stay under STUN's 513-byte limit.
    /// A `ttl` above the server's `max_credential_ttl` ([`MAX_CREDENTIAL_TTL`] by default) gives
    /// credentials that server refuses.
    pub fn mint(secret: &[u8], user: &str, ttl: Duration, now_unix_secs: u64) -> Credentials {
        let expires_at_unix_secs = now_unix_secs.saturating_add(ttl.as_secs());
        let username = format!("{expires_at_unix_secs}:{user}");
        let password = password_for(secret, &username);
        Credentials {
            username,
            password,
            expires_at_unix_secs,
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("expires_at_unix_secs", &self.expires_at_unix_secs)
            .finish()
    }
}

/// The TURN REST API password of `username`: `base64(HMAC-SHA1(secret, username))`.
///
/// SHA-1 is what the scheme (and every browser and coturn) uses; as an HMAC it is still sound.
pub(crate) fn password_for(secret: &[u8], username: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    BASE64.encode(hmac::sign(&key, username.as_bytes()).as_ref())
}

/// Why a username was refused before its password was even looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The username does not start with `<expiry unix seconds>` (optionally followed by `:user`).
    #[error("TURN username {username:?} does not start with an expiry in unix seconds")]
    Malformed {
        /// The username as received.
        username: String,
    },
    /// The expiry has passed: the client must fetch fresh credentials.
    #[error("TURN credentials expired at {expired_at} (now {now}); fetch fresh ones")]
    Expired {
        /// The expiry in the username, unix seconds.
        expired_at: u64,
        /// The server's clock, unix seconds.
        now: u64,
    },
    /// The expiry is further ahead than the server allows (a too-long TTL, or clocks far apart).
    #[error(
        "TURN credentials expire at {expires_at}, more than {max_ttl_secs} s after now ({now}); \
         mint them with a shorter TTL or check the clocks"
    )]
    TooFarAhead {
        /// The expiry in the username, unix seconds.
        expires_at: u64,
        /// The server's clock, unix seconds.
        now: u64,
        /// The longest lifetime the server accepts, seconds.
        max_ttl_secs: u64,
    },
}

/// Checks the expiry of a TURN REST API `username` against `now_unix_secs` and returns it.
///
/// Accepted: `now < expiry <= now + max_ttl`. The expiry is everything before the first `:` (or
/// the whole username when it has none, as coturn allows). This says nothing about the password:
/// the TURN server checks that through `MESSAGE-INTEGRITY`.
pub fn check_username(
    username: &str,
    now_unix_secs: u64,
    max_ttl: Duration,
) -> Result<u64, CredentialError> {
    let expiry = username
        .split_once(':')
        .map_or(username, |(expiry, _)| expiry);
    // `u64::from_str` accepts a leading `+`; the scheme is digits only.
    if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CredentialError::Malformed {
            username: username.to_owned(),
        });
    }
    let expires_at: u64 = expiry.parse().map_err(|_| CredentialError::Malformed {
        username: username.to_owned(),
    })?;
    if expires_at <= now_unix_secs {
        return Err(CredentialError::Expired {
            expired_at: expires_at,
            now: now_unix_secs,
        });
    }
    let max_ttl_secs = max_ttl.as_secs();
    if expires_at - now_unix_secs > max_ttl_secs {
        return Err(CredentialError::TooFarAhead {
            expires_at,
            now: now_unix_secs,
            max_ttl_secs,
        });
    }
    Ok(expires_at)
}

#[cfg(test)]
mod tests;
