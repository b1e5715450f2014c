//! `bootstrap.toml`: which network this node belongs to and whom it asks first.
//!
//! Only `node/` reads it. A file that is not TOML at all is an error (the user named a wrong file);
//! a single bad entry inside a good file is a warning naming the entry, and the rest is used.

use std::path::Path;

use anyhow::Context as _;
use libp2p::Multiaddr;
use serde::Deserialize;

/// The repository's `bootstrap.toml`, built in so a fresh `kith run` needs no files.
pub(crate) const BUILTIN: &str = include_str!("../../bootstrap.toml");

/// A bootstrap list after parsing: what could be used, and what had to be skipped and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bootstrap {
    /// Network id; namespaces the DHT protocol.
    pub(crate) network_id: String,
    /// Network-wide name rules (every node of a network must agree on them).
    pub(crate) name_rules: kith_core::NameRules,
    /// Network-wide peer-id difficulty (`kith_core::id_work`): only worked ids may be DHT
    /// servers. 0 (absent) admits every id.
    pub(crate) peer_id_difficulty: u8,
    /// Usable entries.
    pub(crate) entries: Vec<Entry>,
    /// One line per skipped entry, naming it.
    pub(crate) warnings: Vec<String>,
}

/// One bootstrap node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Where to dial it.
    pub(crate) addr: Multiaddr,
    /// Also usable as relay and mailbox.
    pub(crate) relay: bool,
}

/// The file as written; every field optional so that a partial file still parses.
#[derive(Debug, Deserialize)]
struct RawFile {
    /// `[network]`, default id "main".
    #[serde(default)]
    network: RawNetwork,
    /// `[[bootstrap]]` tables, kept loose so one bad entry cannot spoil the others.
    #[serde(default)]
    bootstrap: Vec<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    /// Default "main".
    #[serde(default = "default_network_id")]
    id: String,
    /// Proof-of-work difficulty for name claims, in leading zero bits. Default 22 (about a second
    /// on one core); test networks lower it.
    #[serde(default)]
    name_difficulty: Option<u8>,
    /// Longest lifetime of a name claim, in seconds. Default 30 days; at most that.
    #[serde(default)]
    name_max_ttl_secs: Option<u64>,
    /// Leading zero bits a DHT server's peer id must have (`kith_core::id_work`). Default 0: off.
    #[serde(default)]
    peer_id_difficulty: Option<u8>,
}

impl Default for RawNetwork {
    fn default() -> Self {
        Self {
            id: default_network_id(),
            name_difficulty: None,
            name_max_ttl_secs: None,
            peer_id_difficulty: None,
        }
    }
}

fn default_network_id() -> String {
    "main".to_owned()
}

impl Bootstrap {
    /// Parses a bootstrap file's text. `origin` names the file in messages.
    pub(crate) fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        let raw: RawFile = toml::from_str(text)
            .with_context(|| format!("{origin} is not a valid bootstrap file"))?;
        let id = raw.network.id;
        if id.is_empty()
            || id.len() > 32
            || !id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            anyhow::bail!(
                "{origin}: network id '{id}' must be 1-32 characters of a-z, 0-9 and '-'"
            );
        }
        let mut name_rules = kith_core::NameRules::default();
        if let Some(difficulty) = raw.network.name_difficulty {
            if difficulty > 40 {
                anyhow::bail!(
                    "{origin}: name_difficulty {difficulty} is above 40; nobody could register a name"
                );
            }
            name_rules.difficulty = difficulty;
        }
        if let Some(secs) = raw.network.name_max_ttl_secs {
            let max = name_rules.max_ttl.as_secs();
            if secs == 0 || secs > max {
                anyhow::bail!("{origin}: name_max_ttl_secs must be between 1 and {max}");
            }
            name_rules.max_ttl = std::time::Duration::from_secs(secs);
        }
        let peer_id_difficulty = raw.network.peer_id_difficulty.unwrap_or(0);
        if peer_id_difficulty > kith_core::id_work::MAX_DIFFICULTY {
            anyhow::bail!(
                "{origin}: peer_id_difficulty {peer_id_difficulty} is above {}; nobody could create an identity",
                kith_core::id_work::MAX_DIFFICULTY
            );
        }
        let mut entries = Vec::new();
        let mut warnings = Vec::new();
        for (i, value) in raw.bootstrap.into_iter().enumerate() {
            let n = i + 1;
            let Some(table) = value.as_table() else {
                warnings.push(format!(
                    "{origin}: bootstrap entry {n} is not a table; skipped"
                ));
                continue;
            };
            let Some(addr) = table.get("addr").and_then(|a| a.as_str()) else {
                warnings.push(format!(
                    "{origin}: bootstrap entry {n} has no 'addr' string; skipped"
                ));
                continue;
            };
            let relay = match table.get("relay") {
                None => false,
                Some(v) => match v.as_bool() {
                    Some(b) => b,
                    None => {
                        warnings.push(format!(
                            "{origin}: bootstrap entry {n} ({addr}): 'relay' must be true or false; treated as false"
                        ));
                        false
                    }
                },
            };
            match parse_addr(addr) {
                Ok(addr) => entries.push(Entry { addr, relay }),
                Err(why) => warnings.push(format!(
                    "{origin}: bootstrap entry {n} '{addr}' {why}; skipped"
                )),
            }
        }
        Ok(Self {
            network_id: id,
            name_rules,
            peer_id_difficulty,
            entries,
            warnings,
        })
    }

    /// Loads the list a node should use: `file` if given, else the built-in copy; then `flags`, if
    /// any, replace the file's entries (the network id stays the file's).
    pub(crate) fn load(file: Option<&Path>, flags: &[String]) -> anyhow::Result<Self> {
        let mut list = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read bootstrap file {}", path.display()))?;
                Self::parse(&text, &path.display().to_string())?
            }
            None => Self::parse(BUILTIN, "built-in bootstrap.toml")?,
        };
        if !flags.is_empty() {
            list.entries.clear();
            for flag in flags {
                match parse_addr(flag) {
                    Ok(addr) => list.entries.push(Entry { addr, relay: false }),
                    Err(why) => list
                        .warnings
                        .push(format!("--bootstrap '{flag}' {why}; skipped")),
                }
            }
        }
        Ok(list)
    }
}

fn parse_addr(text: &str) -> Result<Multiaddr, String> {
    let addr: Multiaddr = text
        .parse()
        .map_err(|e| format!("is not a valid multiaddr ({e})"))?;
    if addr.is_empty() {
        return Err("is empty".to_owned());
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_file_parses_cleanly() {
        let list = Bootstrap::parse(BUILTIN, "built-in").unwrap();
        assert_eq!(list.network_id, "main");
        assert!(list.warnings.is_empty(), "{:?}", list.warnings);
    }

    #[test]
    fn a_good_file_yields_its_entries() {
        let text = r#"
            [network]
            id = "testnet"
            [[bootstrap]]
            addr = "/ip4/127.0.0.1/tcp/4717/p2p/12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp"
            relay = true
            [[bootstrap]]
            addr = "/ip4/127.0.0.1/udp/4717/quic-v1"
        "#;
        let list = Bootstrap::parse(text, "t").unwrap();
        assert_eq!(list.network_id, "testnet");
        assert_eq!(list.entries.len(), 2);
        assert!(list.entries[0].relay);
        assert!(!list.entries[1].relay);
        assert!(list.warnings.is_empty());
    }

    #[test]
    fn bad_entries_are_warnings_naming_the_entry() {
        let text = r#"
            [[bootstrap]]
            addr = "not-a-multiaddr"
            [[bootstrap]]
            relay = true
            [[bootstrap]]
            addr = "/ip4/127.0.0.1/tcp/1"
            relay = "yes"
            [[bootstrap]]
            addr = 42
        "#;
        let list = Bootstrap::parse(text, "f.toml").unwrap();
        assert_eq!(list.entries.len(), 1, "only the third entry is usable");
        assert_eq!(list.warnings.len(), 4, "{:?}", list.warnings);
        assert!(
            list.warnings[0].contains("'not-a-multiaddr'"),
            "{}",
            list.warnings[0]
        );
        assert!(list.warnings[1].contains("entry 2 has no 'addr'"));
        assert!(list.warnings[2].contains("'relay' must be true or false"));
        assert!(list.warnings[3].contains("entry 4"));
    }

    #[test]
    fn a_file_that_is_not_toml_is_an_error_naming_the_file() {
        let err = Bootstrap::parse("[[bootstrap]\naddr =", "broken.toml").unwrap_err();
        assert!(format!("{err:#}").contains("broken.toml"));
    }

    #[test]
    fn an_unusable_network_id_is_an_error() {
        let err = Bootstrap::parse("[network]\nid = \"Bad Id!\"", "f").unwrap_err();
        assert!(err.to_string().contains("network id 'Bad Id!'"));
    }

    #[test]
    fn network_wide_name_rules_come_from_the_network_table() {
        let list = Bootstrap::parse(
            "[network]\nid = \"lab\"\nname_difficulty = 8\nname_max_ttl_secs = 60\n",
            "f",
        )
        .unwrap();
        assert_eq!(list.name_rules.difficulty, 8);
        assert_eq!(list.name_rules.max_ttl.as_secs(), 60);
        let main = Bootstrap::parse("", "f").unwrap();
        assert_eq!(main.name_rules, kith_core::NameRules::default());
        assert!(Bootstrap::parse("[network]\nname_difficulty = 99\n", "f").is_err());
    }

    #[test]
    fn the_peer_id_difficulty_is_off_unless_the_network_sets_it() {
        assert_eq!(
            Bootstrap::parse(BUILTIN, "built-in")
                .unwrap()
                .peer_id_difficulty,
            0
        );
        let set =
            Bootstrap::parse("[network]\nid = \"lab\"\npeer_id_difficulty = 8\n", "f").unwrap();
        assert_eq!(set.peer_id_difficulty, 8);
        let err = Bootstrap::parse("[network]\npeer_id_difficulty = 33\n", "f").unwrap_err();
        assert!(
            format!("{err:#}").contains("peer_id_difficulty 33"),
            "{err:#}"
        );
        assert!(Bootstrap::parse("[network]\nname_max_ttl_secs = 0\n", "f").is_err());
        assert!(Bootstrap::parse("[network]\nname_max_ttl_secs = 99999999\n", "f").is_err());
        assert!(
            Bootstrap::parse("[network]\nnmae_difficulty = 8\n", "f").is_err(),
            "typos are errors"
        );
    }

    #[test]
    fn an_empty_file_means_the_main_network_and_no_entries() {
        let list = Bootstrap::parse("", "f").unwrap();
        assert_eq!(list.network_id, "main");
        assert!(list.entries.is_empty());
    }

    #[test]
    fn flags_replace_the_file_entries_and_bad_flags_warn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(
            &path,
            "[network]\nid = \"lab\"\n[[bootstrap]]\naddr = \"/ip4/127.0.0.1/tcp/1\"\n",
        )
        .unwrap();
        let from_file = Bootstrap::load(Some(&path), &[]).unwrap();
        assert_eq!(from_file.entries.len(), 1);
        let flags = vec!["/ip4/127.0.0.1/tcp/2".to_owned(), "garbage".to_owned()];
        let list = Bootstrap::load(Some(&path), &flags).unwrap();
        assert_eq!(list.network_id, "lab");
        assert_eq!(list.entries.len(), 1);
        assert_eq!(list.entries[0].addr.to_string(), "/ip4/127.0.0.1/tcp/2");
        assert_eq!(list.warnings.len(), 1);
        assert!(list.warnings[0].contains("'garbage'"));
    }

    #[test]
    fn a_missing_bootstrap_file_is_an_error_naming_it() {
        let err = Bootstrap::load(Some(Path::new("/nonexistent/kith.toml")), &[]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/kith.toml"));
    }
}
