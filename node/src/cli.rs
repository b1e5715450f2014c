//! The command line. Global flags (`--home`, `--json`) are accepted anywhere on the line.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use libp2p::Multiaddr;

/// kith: a peer-to-peer messenger. Run a node with `kith run`, then drive it with the other commands.
#[derive(Debug, Parser)]
#[command(name = "kith", version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags every command takes.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// The node's home directory (identity, store, API address). Default: the platform data dir.
    #[arg(long, global = true, env = "KITH_HOME", value_name = "DIR")]
    pub(crate) home: Option<PathBuf>,
    /// Print exactly one JSON document on stdout instead of human output.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// What `kith send-file` and `kith group send-file` send besides the file (the same flags for
/// a person and a group).
#[derive(Debug, Default, Args)]
pub(crate) struct FileArgs {
    /// Text shown with it.
    #[arg(long)]
    pub(crate) caption: Option<String>,
    /// A photo filter (see `kith filters`).
    #[arg(long)]
    pub(crate) filter: Option<String>,
    /// Send a photo's own bytes, not re-encoded (metadata still stripped).
    #[arg(long)]
    pub(crate) original: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create the home directory and identity if missing; print the peer id. On a network whose
    /// bootstrap file sets `peer_id_difficulty`, the new identity is ground to meet it (a DHT
    /// server's peer id must), with a progress bar.
    Init {
        /// Bootstrap file of the network to join (default: the built-in copy); only its
        /// `[network]` table is read.
        #[arg(long, value_name = "FILE")]
        bootstrap_file: Option<PathBuf>,
    },
    /// Print this home's peer id (no running node needed).
    Id,
    /// Run the node in the foreground until Ctrl-C, SIGTERM or `kith stop`.
    Run(RunArgs),
    /// Show the running node's peer id, addresses, peers, DHT and NAT state.
    Status,
    /// Diagnose the node in plain words, each problem with its fix; exits 1 if any problem.
    Doctor,
    /// List connected peers with their addresses and protocols.
    Peers,
    /// Ask the running node to shut down cleanly.
    Stop,
    /// Claim, list and release names.
    #[command(subcommand)]
    Name(NameCommand),
    /// Look up who owns a name (and pin the answer the first time). A pinned name answers from
    /// the node at once and is re-checked on the network in the background.
    Resolve {
        /// The name.
        name: String,
        /// Ask the network now, even for a pinned name (finds a key change at once).
        #[arg(long)]
        fresh: bool,
    },
    /// Local petnames for people.
    #[command(subcommand)]
    Contacts(ContactsCommand),
    /// Print the safety number to compare with a contact (petname, name or peer id).
    Verify {
        /// Who.
        target: String,
    },
    /// Send a message to a petname, name or peer id.
    Send {
        /// Who.
        to: String,
        /// The text.
        text: String,
    },
    /// Send a file or photo (photos are oriented, stripped of metadata and thumbnailed).
    SendFile {
        /// Who.
        to: String,
        /// The file.
        path: std::path::PathBuf,
        #[command(flatten)]
        options: FileArgs,
    },
    /// List files sent and received, optionally with one person (`kith files cancel ID` stops a
    /// transfer).
    Files {
        /// Petname, name or peer id.
        with: Option<String>,
        /// What to do with one file.
        #[command(subcommand)]
        action: Option<FilesCommand>,
    },
    /// Save a received file (waits until it has arrived).
    Save {
        /// The file id (from `kith files`).
        file_id: String,
        /// A new file, or a directory to save into.
        path: std::path::PathBuf,
    },
    /// List the photo filters.
    Filters,
    /// Show a conversation, newest last (and mark it read).
    History {
        /// Petname, name or peer id.
        with: String,
        /// How many messages.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only messages before this message id.
        #[arg(long, value_name = "ID")]
        before: Option<String>,
    },
    /// Interactive chat in the terminal.
    Chat {
        /// Petname, name or peer id.
        with: String,
    },
    /// Conversations with unread counts.
    Inbox,
    /// Messages from people you have not accepted yet.
    Requests,
    /// Accept a sender (or unblock one).
    Accept {
        /// Petname, name or peer id.
        who: String,
    },
    /// Block a sender: their messages are refused.
    Block {
        /// Petname, name or peer id.
        who: String,
    },
    /// Community relay commands.
    #[command(subcommand)]
    Relay(RelayCommand),
    /// Group chats: create, invite, join, send, history, members, remove, leave.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Open the web app of the running node in the browser, signed in.
    Open {
        /// Only print the URL (it carries the API token: do not share it).
        #[arg(long)]
        print: bool,
    },
    /// Call someone: opens the web app on a call to WHO (voice unless --video).
    Call {
        /// Petname, name or peer id.
        who: String,
        /// Start with the camera on.
        #[arg(long)]
        video: bool,
        /// Only print the URL (it carries the API token: do not share it).
        #[arg(long)]
        print: bool,
    },
    /// List calls made and received, newest first.
    Calls {
        /// How many (newest first).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Print an invite link (and QR code) that lets a friend add you without any lookup.
    Invite {
        /// Do not draw the QR code.
        #[arg(long)]
        no_qr: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum GroupCommand {
    /// Creates a group with you as its admin; prints its id.
    Create {
        /// Its title (1 to 64 characters).
        title: String,
    },
    /// Lists your groups and invitations.
    List,
    /// Invites someone (admins only): by petname, name or peer id.
    Invite {
        /// The group: title, id or id prefix.
        group: String,
        /// Who.
        who: String,
    },
    /// Lists invitations you have not answered.
    Invitations,
    /// Accepts an invitation and catches up on the group.
    Join {
        /// The group: id (or title) from `kith group invitations`.
        group: String,
    },
    /// Sends a message to a group.
    Send {
        /// The group: title, id or id prefix.
        group: String,
        /// The text.
        text: String,
    },
    /// Sends a file or photo to a group; members who have it serve it to the others.
    SendFile {
        /// The group: title, id or id prefix.
        group: String,
        /// The file.
        path: std::path::PathBuf,
        #[command(flatten)]
        options: FileArgs,
    },
    /// Shows a group's messages, oldest first.
    History {
        /// The group: title, id or id prefix.
        group: String,
        /// How many of the latest messages.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only messages before this id.
        #[arg(long, value_name = "ID")]
        before: Option<String>,
    },
    /// Lists a group's members.
    Members {
        /// The group: title, id or id prefix.
        group: String,
    },
    /// Removes a member (admins only); they cannot read what is sent afterwards.
    Remove {
        /// The group: title, id or id prefix.
        group: String,
        /// Who.
        who: String,
    },
    /// Leaves a group.
    Leave {
        /// The group: title, id or id prefix.
        group: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RelayCommand {
    /// Reservations, circuits, mailbox counts and bytes, per-recipient usage.
    Status,
}

#[derive(Debug, Subcommand)]
pub(crate) enum NameCommand {
    /// Claim a name for this node's key (or renew our claim); does about a second of proof of work.
    Register {
        /// The name: 3-32 letters or digits of one script, '-' and '_'.
        name: String,
    },
    /// Names this node owns.
    List,
    /// Give a name up; anyone may claim it a minute later.
    Release {
        /// The name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ContactsCommand {
    /// Add a contact: a petname for whoever a name resolves to, or for a peer id.
    Add {
        /// Your name for them (case-insensitive).
        petname: String,
        /// Their name or peer id.
        target: String,
    },
    /// Add a contact from a `kith://invite/...` link.
    AddInvite {
        /// The link.
        invite: String,
        /// Petname to use instead of the name in the invite.
        #[arg(long = "as", value_name = "PETNAME")]
        petname: Option<String>,
    },
    /// List contacts.
    List,
    /// Remove a contact.
    Remove {
        /// The petname.
        petname: String,
    },
}

/// Whether this node answers DHT queries for others.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum DhtModeArg {
    /// Server once reachability is confirmed (AutoNAT, relay, --external-addr).
    Auto,
    /// Always answer (LAN, loopback, servers).
    Server,
    /// Never answer.
    Client,
}

/// When to listen through relays.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum RelayPolicyArg {
    /// Once AutoNAT says direct dials fail.
    WhenPrivate,
    /// From the start.
    Always,
    /// Never.
    Never,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Listen address (repeatable). Default: TCP and QUIC on all interfaces, port 4717, or a random
    /// port if 4717 is taken.
    #[arg(long, value_name = "MULTIADDR")]
    pub(crate) listen: Vec<Multiaddr>,
    /// Bootstrap node (repeatable). Replaces the entries of the bootstrap file.
    #[arg(long, value_name = "MULTIADDR")]
    pub(crate) bootstrap: Vec<String>,
    /// Bootstrap file to use instead of the built-in copy of the repository's bootstrap.toml.
    #[arg(long, value_name = "FILE")]
    pub(crate) bootstrap_file: Option<PathBuf>,
    /// Switch off LAN discovery (mDNS).
    #[arg(long)]
    pub(crate) no_mdns: bool,
    /// Run as a community relay: DHT server, circuit relay v2 and AutoNAT server.
    #[arg(long)]
    pub(crate) relay: bool,
    /// DHT mode.
    #[arg(long, value_enum, default_value_t = DhtModeArg::Auto)]
    pub(crate) dht_mode: DhtModeArg,
    /// An address other nodes can reach this one at (repeatable); confirms reachability.
    #[arg(long, value_name = "MULTIADDR")]
    pub(crate) external_addr: Vec<Multiaddr>,
    /// When to listen through the relays of the bootstrap list: when AutoNAT finds us unreachable
    /// (default), always, or never.
    #[arg(long, value_enum, default_value_t = RelayPolicyArg::WhenPrivate)]
    pub(crate) relay_policy: RelayPolicyArg,
    /// How long an incoming call rings before it counts as missed.
    #[arg(
        long,
        env = "KITH_CALL_RING_TIMEOUT_SECS",
        default_value_t = 45,
        value_name = "SECS"
    )]
    pub(crate) call_ring_timeout_secs: u64,
    /// Calls: send media only through a TURN relay, so the other side never learns your IP
    /// addresses (calls fail where no TURN relay is known).
    #[arg(long, env = "KITH_RELAY_ONLY_CALLS")]
    pub(crate) relay_only_calls: bool,
    /// Relay mode: serve STUN/TURN for calls on this UDP address (e.g. 0.0.0.0:3478); registered
    /// users get short-lived credentials from this relay.
    #[arg(long, value_name = "ADDR", requires = "relay")]
    pub(crate) turn: Option<SocketAddr>,
    /// The relay's public IP address, put in relayed candidates and handed to users. Default: the
    /// --turn address, unless that is unspecified (0.0.0.0).
    #[arg(long, value_name = "IP", requires = "turn")]
    pub(crate) turn_public_ip: Option<std::net::IpAddr>,
    /// TURN may relay to loopback and private addresses (a relay for one LAN, or tests); off by
    /// default so users cannot reach the relay's own network.
    #[arg(long, requires = "turn")]
    pub(crate) turn_allow_private_peers: bool,
    /// Relay mode: also serve Prometheus `/metrics` here, without a token (for scrapers).
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_addr: Option<SocketAddr>,
    /// Relay mode: most messages held per recipient.
    #[arg(long, default_value_t = 1000)]
    pub(crate) mailbox_items: u64,
    /// Relay mode: most bytes held per recipient.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub(crate) mailbox_bytes: u64,
    /// Relay mode: how long mail is held, in seconds (default 30 days).
    #[arg(long, default_value_t = 30 * 86_400)]
    pub(crate) mailbox_ttl_secs: u64,
    /// Relay mode: most bytes of files held per recipient while they are offline (kept apart
    /// from the mailbox quota).
    #[arg(long, default_value_t = 512 * 1024 * 1024)]
    pub(crate) relay_file_bytes: u64,
    /// Relay mode: how long a file is held for an offline recipient, in seconds (default 14 days).
    #[arg(long, default_value_t = 14 * 86_400)]
    pub(crate) relay_file_ttl_secs: u64,
    /// Most bytes a second this node sends on one file transfer (default: no limit), for a
    /// metered or shared uplink.
    #[arg(long, value_name = "BYTES")]
    pub(crate) file_upload_rate: Option<u64>,
    /// Where the local API listens. Must be a loopback address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub(crate) api_addr: SocketAddr,
    /// Most direct messages a second accepted from one peer, after a burst of five seconds'
    /// worth (at least 1,000); a faster sender is told to slow down and its node retries. A flood
    /// limit: raise it for a bot or service account that one node writes to heavily.
    #[arg(long, default_value_t = 200, value_name = "PER_SEC")]
    pub(crate) peer_message_rate: u32,
    /// Memory the store may use to cache its pages, in MiB: lower it on a small device, raise it
    /// for a relay or a bot with a large history.
    #[arg(long, env = "KITH_STORE_CACHE_MB", value_name = "MIB", default_value_t = kith_store::StoreConfig::DEFAULT_CACHE_MB)]
    pub(crate) store_cache_mb: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_are_accepted_after_the_subcommand() {
        let cli = Cli::try_parse_from(["kith", "status", "--json", "--home", "/tmp/x"]).unwrap();
        assert!(cli.global.json);
        assert_eq!(cli.global.home, Some(PathBuf::from("/tmp/x")));
        assert!(matches!(cli.command, Command::Status));
    }

    #[test]
    fn run_flags_repeat() {
        let cli = Cli::try_parse_from([
            "kith",
            "run",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "--bootstrap",
            "/ip4/127.0.0.1/tcp/9",
            "--no-mdns",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(run.listen.len(), 2);
        assert_eq!(run.bootstrap.len(), 1);
        assert!(run.no_mdns);
    }

    #[test]
    fn the_store_cache_defaults_and_takes_mebibytes() {
        let Command::Run(run) = Cli::try_parse_from(["kith", "run"]).unwrap().command else {
            panic!("expected run")
        };
        assert_eq!(
            run.store_cache_mb,
            kith_store::StoreConfig::DEFAULT_CACHE_MB
        );
        let Command::Run(run) = Cli::try_parse_from(["kith", "run", "--store-cache-mb", "16"])
            .unwrap()
            .command
        else {
            panic!("expected run")
        };
        assert_eq!(run.store_cache_mb, 16);
        let err = Cli::try_parse_from(["kith", "run", "--store-cache-mb", "lots"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn a_bad_listen_address_is_a_usage_error() {
        let err = Cli::try_parse_from(["kith", "run", "--listen", "nonsense"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}

/// `kith files <action>`.
#[derive(Debug, Subcommand)]
pub(crate) enum FilesCommand {
    /// Stop a download or an upload for good: nothing retries it, its partial data is deleted
    /// (a file you sent is no longer served).
    Cancel {
        /// The file id (from `kith files`).
        file_id: String,
    },
}
