use super::*;

#[track_caller]
fn ok(input: &str, normalized: &str) {
    assert_eq!(
        Name::parse(input).unwrap().as_str(),
        normalized,
        "input {input:?}"
    );
}

#[test]
fn case_and_compatibility_forms_fold_to_one_name() {
    ok("Jürgen", "jürgen");
    ok("JÜRGEN", "jürgen");
    ok("ju\u{308}rgen", "jürgen"); // decomposed ü
    ok("ＡＬＩＣＥ", "alice"); // full-width
    ok("Straße", "strasse");
    ok("  bob  ", "bob");
    ok("dmitri_2", "dmitri_2");
    ok("дмитрий", "дмитрий");
    ok("ΑΘΗΝΑ-7", "αθηνα-7");
    ok("東京タワー", "東京タワー");
    ok("नमस्ते", "नमस्ते");
}

#[test]
fn same_name_same_key() {
    let a = Name::parse("Jürgen").unwrap();
    let b = Name::parse("jÜrgen").unwrap();
    assert_eq!(a.dht_key(), b.dht_key());
    assert_ne!(a.dht_key(), Name::parse("jurgen").unwrap().dht_key());
    assert_eq!(a.dht_key().len(), 32);
}

#[test]
fn replica_keys_are_distinct_stable_and_unambiguous() {
    let alice = Name::parse("alice").unwrap();
    let keys = alice.replica_keys();
    assert_eq!(keys.len(), REPLICAS);
    assert_eq!(keys[0], alice.dht_key(), "replica 0 is the original key");
    assert_eq!(
        keys[0],
        blake3::hash(b"kith/name/v1/alice").as_bytes().to_vec()
    );
    assert_eq!(
        keys[1],
        blake3::hash(b"kith/name/v1/1/alice").as_bytes().to_vec()
    );
    let distinct: std::collections::HashSet<_> = keys.iter().collect();
    assert_eq!(distinct.len(), REPLICAS);
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(alice.replica_of(key), Some(i));
    }
    // "1alice" is a valid name; its original key must not be alice's replica 1.
    let other = Name::parse("1alice").unwrap();
    for key in other.replica_keys() {
        assert_eq!(alice.replica_of(&key), None);
    }
    assert_eq!(alice.replica_of(b"not a key"), None);
}

#[test]
fn length_rules() {
    assert!(matches!(Name::parse("ab"), Err(NameError::TooShort(_))));
    assert!(matches!(Name::parse(""), Err(NameError::TooShort(_))));
    assert!(Name::parse("abc").is_ok());
    assert!(Name::parse(&"a".repeat(32)).is_ok());
    assert!(matches!(
        Name::parse(&"a".repeat(33)),
        Err(NameError::TooLong(_))
    ));
}

#[test]
fn bad_characters_are_named_in_the_error() {
    for bad in [
        "al ice",
        "alice!",
        "a.lice",
        "ali\u{200b}ce",
        "bob@home",
        "emoji😀",
    ] {
        let err = Name::parse(bad).unwrap_err();
        assert!(
            matches!(err, NameError::BadCharacter { .. }),
            "{bad:?}: {err:?}"
        );
        assert!(err.to_string().contains("letters and digits of one script"));
    }
}

#[test]
fn mixed_scripts_are_refused() {
    // Latin + Cyrillic, Latin + Greek.
    for bad in ["alicedмитрий", "bobβ"] {
        assert!(
            matches!(Name::parse(bad), Err(NameError::MixedScripts(_))),
            "{bad}"
        );
    }
}

#[test]
fn names_that_look_like_ascii_names_are_refused() {
    // Cyrillic а (U+0430), о, е, с look like Latin a, o, e, c.
    let err = Name::parse("\u{430}\u{43e}\u{435}").unwrap_err();
    match err {
        NameError::ConfusableWithAscii { looks_like, .. } => assert_eq!(looks_like, "aoe"),
        other => panic!("expected confusable, got {other:?}"),
    }
    assert!(Name::parse("ѕсоре").is_err());
}

proptest::proptest! {
    #[test]
    fn parse_never_panics_and_is_idempotent(s in "\\PC{0,40}") {
        if let Ok(name) = Name::parse(&s) {
            let again = Name::parse(name.as_str()).unwrap();
            proptest::prop_assert_eq!(again, name.clone());
            let n = name.as_str().chars().count();
            proptest::prop_assert!((MIN_LEN..=MAX_LEN).contains(&n));
        }
    }
}
