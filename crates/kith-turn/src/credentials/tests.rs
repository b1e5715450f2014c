//! Pure tests of minting and checking TURN REST API credentials.

use std::time::Duration;

use super::*;

const SECRET: &[u8; 32] = b"kith-turn-test-secret-0123456789";
const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn mint_matches_an_independent_hmac() {
    // Computed independently with Python:
    //   import hmac, hashlib, base64
    //   base64.b64encode(hmac.new(b'kith-turn-test-secret-0123456789',
    //                             b'1700003600:alice', hashlib.sha1).digest())
    //   -> b'UHWl6zRtJvgC5p/uWen3ZFS+B3c='
    let creds = Credentials::mint(SECRET, "alice", HOUR, 1_700_000_000);
    assert_eq!(creds.username, "1700003600:alice");
    assert_eq!(creds.password, "UHWl6zRtJvgC5p/uWen3ZFS+B3c=");
    assert_eq!(creds.expires_at_unix_secs, 1_700_003_600);
}

#[test]
fn long_term_key_matches_an_independent_md5() {
    // The key `turn` checks MESSAGE-INTEGRITY with (RFC 5389 §15.4), from Python:
    //   hashlib.md5(b'1700003600:alice:kith:UHWl6zRtJvgC5p/uWen3ZFS+B3c=').hexdigest()
    //   -> 'd9e021285a7ca5a9a755df21b97bd316'
    let creds = Credentials::mint(SECRET, "alice", HOUR, 1_700_000_000);
    let key = turn::auth::generate_auth_key(&creds.username, "kith", &creds.password);
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, "d9e021285a7ca5a9a755df21b97bd316");
}

#[test]
fn password_depends_on_secret_and_whole_username() {
    let a = Credentials::mint(SECRET, "alice", HOUR, 1_700_000_000);
    let other_secret = Credentials::mint(
        b"another secret, also 32 bytes!!!",
        "alice",
        HOUR,
        1_700_000_000,
    );
    let later = Credentials::mint(SECRET, "alice", HOUR, 1_700_000_001);
    let bob = Credentials::mint(SECRET, "bob", HOUR, 1_700_000_000);
    assert_ne!(a.password, other_secret.password);
    assert_ne!(a.password, later.password);
    assert_ne!(a.password, bob.password);
}

#[test]
fn debug_hides_the_password() {
    let creds = Credentials::mint(SECRET, "alice", HOUR, 1_700_000_000);
    let debug = format!("{creds:?}");
    assert!(debug.contains("1700003600:alice"), "{debug}");
    assert!(!debug.contains(&creds.password), "{debug}");
}

#[track_caller]
fn check(username: &str, now: u64, expect: Result<u64, CredentialError>) {
    assert_eq!(check_username(username, now, MAX_CREDENTIAL_TTL), expect);
}

#[test]
fn check_username_parses_the_expiry() {
    let now = 1_700_000_000;
    check("1700003600:alice", now, Ok(1_700_003_600));
    // Only the first `:` separates: the user part may hold more.
    check("1700003600:a:b", now, Ok(1_700_003_600));
    // A bare expiry is allowed, as in coturn.
    check("1700003600", now, Ok(1_700_003_600));
    // Exactly the maximum lifetime is still accepted.
    check("1700086400:alice", now, Ok(1_700_086_400));
}

#[test]
fn check_username_refuses_expired_and_too_far_ahead() {
    let now = 1_700_000_000;
    check(
        "1700000000:alice",
        now,
        Err(CredentialError::Expired {
            expired_at: 1_700_000_000,
            now,
        }),
    );
    check(
        "1699999999:alice",
        now,
        Err(CredentialError::Expired {
            expired_at: 1_699_999_999,
            now,
        }),
    );
    check(
        "1700086401:alice",
        now,
        Err(CredentialError::TooFarAhead {
            expires_at: 1_700_086_401,
            now,
            max_ttl_secs: 86_400,
        }),
    );
}

#[test]
fn check_username_refuses_malformed() {
    for username in [
        "alice",
        ":alice",
        "",
        "+1700003600:alice",
        "-1:x",
        "1e9:x",
        "99999999999999999999999:x",
        " 1700003600:x",
    ] {
        check(
            username,
            1_700_000_000,
            Err(CredentialError::Malformed {
                username: username.to_owned(),
            }),
        );
    }
}

#[test]
fn minted_credentials_pass_the_check_until_they_expire() {
    let now = 1_700_000_000;
    let creds = Credentials::mint(SECRET, "alice", HOUR, now);
    assert_eq!(
        check_username(&creds.username, now, MAX_CREDENTIAL_TTL),
        Ok(creds.expires_at_unix_secs)
    );
    assert!(check_username(&creds.username, now + 3599, MAX_CREDENTIAL_TTL).is_ok());
    assert!(matches!(
        check_username(&creds.username, now + 3600, MAX_CREDENTIAL_TTL),
        Err(CredentialError::Expired { .. })
    ));
}

#[test]
fn mint_saturates_instead_of_overflowing() {
    let creds = Credentials::mint(SECRET, "alice", Duration::MAX, u64::MAX - 1);
    assert_eq!(creds.expires_at_unix_secs, u64::MAX);
}
