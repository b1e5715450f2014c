//! The home directory: identity, store, API address and token.
//!
//! ```text
//! <home>/identity.key   libp2p ed25519 keypair, protobuf-encoded, mode 0600
//! <home>/db/            the sled store
//! <home>/olm.key        32-byte key that encrypts the Olm state in the store, mode 0600
//! <home>/api.token      bearer token for the local API, mode 0600
//! <home>/api.json       {"addr", "pid", "peer_id"} of the running node; removed on clean exit
//! <home>/api.port       the API's last port, reused on the next start so open web app tabs
//!                       and bookmarks keep working across restarts
//! ```

use std::{
    fs,
    io::Write as _,
    net::SocketAddr,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use kith_api::ApiToken;
use libp2p::identity::Keypair;
use serde::{Deserialize, Serialize};

use crate::exit::{self, CliError};

/// Generates identities until one's peer id is worked at `difficulty` (`kith_core::id_work`),
/// on every core: about `2^difficulty` key generations. `progress` is called with the number of
/// generations so far, from the worker threads, every `id_work::PROGRESS_EVERY` of them per thread.
pub(crate) fn grind_identity(
    difficulty: u8,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<Keypair> {
    use std::{
        ops::ControlFlow,
        sync::{
            Mutex,
            atomic::{AtomicBool, AtomicU64, Ordering},
        },
    };
    if difficulty == 0 {
        return Ok(Keypair::generate_ed25519());
    }
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let done = AtomicBool::new(false);
    let generations = AtomicU64::new(0);
    let found: Mutex<Option<Keypair>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let result =
                    kith_core::id_work::grind(difficulty, Keypair::generate_ed25519, |_| {
                        let so_far = generations
                            .fetch_add(kith_core::id_work::PROGRESS_EVERY, Ordering::Relaxed)
                            .saturating_add(kith_core::id_work::PROGRESS_EVERY);
                        progress(so_far);
                        if done.load(Ordering::Relaxed) {
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        }
                    });
                if let Some(keypair) = result
                    && !done.swap(true, Ordering::Relaxed)
                    && let Ok(mut slot) = found.lock()
                {
                    *slot = Some(keypair);
                }
            });
        }
    });
    found
        .into_inner()
        .ok()
        .flatten()
        .context("no worked identity was found (a worker thread failed)")
}

/// A kith home directory.
#[derive(Debug, Clone)]
pub(crate) struct Home {
    dir: PathBuf,
}

/// What a running node writes to `api.json` so commands can find it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ApiInfo {
    /// Where the API listens.
    pub(crate) addr: SocketAddr,
    /// The node's process id.
    pub(crate) pid: u32,
    /// The node's peer id.
    pub(crate) peer_id: String,
}

impl Home {
    /// The home named by `--home`/`KITH_HOME`, else the platform data directory.
    pub(crate) fn locate(flag: Option<PathBuf>) -> anyhow::Result<Self> {
        let dir = match flag {
            Some(dir) => dir,
            None => directories::ProjectDirs::from("org", "kith", "kith")
                .map(|d| d.data_dir().to_path_buf())
                .context("cannot find a data directory for this user; pass --home DIR")?,
        };
        Ok(Self { dir })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the directory (mode 0700) if it is missing.
    pub(crate) fn create(&self) -> anyhow::Result<()> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create home directory {}", self.dir.display()))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict permissions of {}", self.dir.display()))?;
        Ok(())
    }

    pub(crate) fn db_path(&self) -> PathBuf {
        self.dir.join("db")
    }

    fn identity_path(&self) -> PathBuf {
        self.dir.join("identity.key")
    }

    fn token_path(&self) -> PathBuf {
        self.dir.join("api.token")
    }

    fn api_info_path(&self) -> PathBuf {
        self.dir.join("api.json")
    }

    /// Loads the identity, creating it first if `create` is set and none exists.
    pub(crate) fn identity(&self, create: bool) -> anyhow::Result<Keypair> {
        self.load_or_create(create, || Ok(Keypair::generate_ed25519()))
    }

    /// Loads the identity, or creates one whose peer id is worked at `difficulty` (the network's
    /// `peer_id_difficulty`; see [`grind_identity`]) if none exists. An existing identity is
    /// returned as it is, worked or not: an un-worked one still works as a DHT client, and
    /// replacing it would change the peer id every contact knows.
    pub(crate) fn identity_worked(
        &self,
        difficulty: u8,
        progress: &(dyn Fn(u64) + Sync),
    ) -> anyhow::Result<Keypair> {
        self.load_or_create(true, || grind_identity(difficulty, progress))
    }

    /// Whether an identity file exists (a start that will create one may announce the wait).
    pub(crate) fn has_identity(&self) -> bool {
        self.identity_path().exists()
    }

    fn load_or_create(
        &self,
        create: bool,
        make: impl FnOnce() -> anyhow::Result<Keypair>,
    ) -> anyhow::Result<Keypair> {
        let path = self.identity_path();
        match fs::read(&path) {
            Ok(bytes) => {
                warn_if_readable_by_others(&path);
                Keypair::from_protobuf_encoding(&bytes).with_context(|| {
                    format!(
                        "{} is damaged; restore it from a backup (deleting it gives this home a new peer id)",
                        path.display()
                    )
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                self.create()?;
                let keypair = make()?;
                let bytes = keypair
                    .to_protobuf_encoding()
                    .context("cannot encode the new identity")?;
                write_private(&path, &bytes)?;
                tracing::info!(peer_id = %keypair.public().to_peer_id(), "created a new identity");
                Ok(keypair)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CliError::new(
                exit::FAILURE,
                format!(
                    "no identity in {}; create one with `kith init --home {}`",
                    self.dir.display(),
                    self.dir.display()
                ),
            )
            .into()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Loads the key that encrypts the end-to-end encryption state at rest, creating it on first
    /// start. Losing it makes the stored sessions unreadable (messages stay readable).
    pub(crate) fn pickle_key(&self) -> anyhow::Result<kith_crypto::PickleKey> {
        let path = self.dir.join("olm.key");
        match fs::read(&path) {
            Ok(bytes) => kith_crypto::PickleKey::from_bytes(&bytes).with_context(|| {
                format!("{} is damaged; restore it from a backup", path.display())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = kith_crypto::PickleKey::generate()?;
                write_private(&path, key.as_bytes())?;
                Ok(key)
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Loads the secret this relay's TURN server checks credentials with, creating it on first
    /// use. Replacing it only invalidates credentials handed out so far (users ask again).
    pub(crate) fn turn_secret(&self) -> anyhow::Result<Vec<u8>> {
        let path = self.dir.join("turn.secret");
        match fs::read(&path) {
            Ok(bytes) if bytes.len() >= kith_turn::MIN_SECRET_LEN => Ok(bytes),
            Ok(_) => Err(anyhow::anyhow!(
                "{} is too short; delete it and a new one is made at the next start",
                path.display()
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = vec![0u8; 32];
                getrandom::fill(&mut secret)
                    .map_err(|e| anyhow::anyhow!("no randomness for the TURN secret: {e}"))?;
                write_private(&path, &secret)?;
                Ok(secret)
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Loads the API token, creating it if `create` is set and none exists.
    pub(crate) fn token(&self, create: bool) -> anyhow::Result<ApiToken> {
        let path = self.token_path();
        match fs::read_to_string(&path) {
            Ok(text) => ApiToken::parse(&text).with_context(|| path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let token = ApiToken::generate()?;
                write_private(&path, token.as_str().as_bytes())?;
                Ok(token)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(self.no_node()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// The port the API listened on last time, if it is known.
    pub(crate) fn last_api_port(&self) -> Option<u16> {
        fs::read_to_string(self.dir.join("api.port"))
            .ok()?
            .trim()
            .parse()
            .ok()
            .filter(|port| *port != 0)
    }

    /// Remembers the API's port for the next start.
    pub(crate) fn remember_api_port(&self, port: u16) -> anyhow::Result<()> {
        write_private(&self.dir.join("api.port"), port.to_string().as_bytes())
    }

    pub(crate) fn write_api_info(&self, info: &ApiInfo) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(info).context("cannot encode api.json")?;
        write_private(&self.api_info_path(), &json)
    }

    /// Reads `api.json`; a missing file means no node runs here (exit 5).
    pub(crate) fn read_api_info(&self) -> anyhow::Result<ApiInfo> {
        let path = self.api_info_path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(self.no_node()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is damaged; if no node is running, delete it and start one with `kith run`",
                path.display()
            )
        })
    }

    /// Removes `api.json` if it still names `pid` (a newer node may have replaced it).
    pub(crate) fn remove_api_info(&self, pid: u32) {
        if let Ok(info) = self.read_api_info()
            && info.pid == pid
        {
            let _ = fs::remove_file(self.api_info_path());
        }
    }

    /// The error for "nothing runs here" (exit 5).
    pub(crate) fn no_node(&self) -> anyhow::Error {
        CliError::new(
            exit::NO_NODE,
            format!(
                "no kith node is running for home {}; start one with `kith run --home {}`",
                self.dir.display(),
                self.dir.display()
            ),
        )
        .into()
    }
}

/// Writes a file only the owner can read, atomically (temp file + rename).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let result = (|| -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // `mode` only applies to new files; an old temp file keeps its bits otherwise.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        if e.raw_os_error() == Some(28) {
            bail!(
                "the disk holding {} is full; free some space and try again",
                path.display()
            );
        }
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            "identity key is readable by other users; run `chmod 600` on it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home() -> (tempfile::TempDir, Home) {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::locate(Some(dir.path().join("home"))).unwrap();
        (dir, home)
    }

    #[test]
    fn a_worked_identity_is_ground_once_and_then_loaded_as_it_is() {
        let (_dir, home) = home();
        let calls = std::sync::atomic::AtomicU64::new(0);
        let made = home
            .identity_worked(10, &|_| {
                calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
            .unwrap();
        let peer = made.public().to_peer_id();
        assert!(kith_core::id_work::is_worked(&peer, 10));
        // Loaded, not ground again, even at a difficulty it does not meet.
        let again = home
            .identity_worked(30, &|_| panic!("no grinding"))
            .unwrap();
        assert_eq!(again.public().to_peer_id(), peer);
    }

    #[test]
    fn identity_is_created_once_and_reloaded_with_the_same_peer_id() {
        let (_dir, home) = home();
        let first = home.identity(true).unwrap();
        let again = home.identity(true).unwrap();
        let loaded = home.identity(false).unwrap();
        assert_eq!(first.public().to_peer_id(), again.public().to_peer_id());
        assert_eq!(first.public().to_peer_id(), loaded.public().to_peer_id());
    }

    #[test]
    fn identity_and_token_files_are_private() {
        let (_dir, home) = home();
        home.identity(true).unwrap();
        home.token(true).unwrap();
        for name in ["identity.key", "api.token"] {
            let mode = fs::metadata(home.dir().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name} has mode {mode:o}");
        }
        let mode = fs::metadata(home.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_missing_identity_is_not_created_when_not_asked() {
        let (_dir, home) = home();
        let err = home.identity(false).unwrap_err();
        assert!(err.to_string().contains("kith init"), "{err}");
        assert!(!home.dir().join("identity.key").exists());
    }

    #[test]
    fn a_damaged_identity_is_reported_and_left_alone() {
        let (_dir, home) = home();
        home.create().unwrap();
        fs::write(home.dir().join("identity.key"), b"garbage").unwrap();
        let err = home.identity(true).unwrap_err();
        assert!(err.to_string().contains("is damaged"), "{err}");
        assert_eq!(
            fs::read(home.dir().join("identity.key")).unwrap(),
            b"garbage"
        );
    }

    #[test]
    fn pickle_key_is_created_once_private_and_stable() {
        let (_dir, home) = home();
        home.create().unwrap();
        let a = home.pickle_key().unwrap();
        let b = home.pickle_key().unwrap();
        assert_eq!(a.as_bytes(), b.as_bytes());
        let mode = fs::metadata(home.dir().join("olm.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::write(home.dir().join("olm.key"), b"short").unwrap();
        assert!(home.pickle_key().is_err());
    }

    #[test]
    fn token_is_stable_across_loads() {
        let (_dir, home) = home();
        home.create().unwrap();
        let a = home.token(true).unwrap();
        let b = home.token(false).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn api_info_round_trips_and_a_missing_file_means_no_node() {
        let (_dir, home) = home();
        home.create().unwrap();
        let err = home.read_api_info().unwrap_err();
        let cli = err.downcast_ref::<CliError>().unwrap();
        assert_eq!(cli.code, exit::NO_NODE);
        let info = ApiInfo {
            addr: "127.0.0.1:5555".parse().unwrap(),
            pid: 42,
            peer_id: "p".into(),
        };
        home.write_api_info(&info).unwrap();
        assert_eq!(home.read_api_info().unwrap(), info);
        home.remove_api_info(41);
        assert!(home.read_api_info().is_ok(), "another pid's file is kept");
        home.remove_api_info(42);
        assert!(home.read_api_info().is_err());
    }
}
