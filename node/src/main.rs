//! `kith`: the node binary. Parses the command line, sets up logging and dispatches; everything
//! else lives in the crates under `crates/`.

/// `println!` that never panics: a closed stdout (`kith peers | head -1`) is not an error worth a
/// crash, and the daemon must keep running if whoever started it stopped reading.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Prints a listing: `items` as one JSON array with `--json`, otherwise `empty` (which says how
/// to add one) when there are none, else `line` for each.
fn print_list<T: serde::Serialize>(
    json: bool,
    items: &[T],
    empty: &str,
    line: impl Fn(&T),
) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string(items)?);
    } else if items.is_empty() {
        outln!("{empty}");
    } else {
        items.iter().for_each(line);
    }
    Ok(())
}

mod chat;
mod cli;
mod commands;
mod config;
mod exit;
mod groups;
mod home;
mod messages;
mod names;
mod run;

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

use crate::{
    cli::{Cli, Command},
    exit::CliError,
    home::Home,
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version exit 0; usage errors exit 2.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(exit::USAGE));
        }
    };
    // libp2p-kad warns on every bootstrap attempt of a node with no peers yet; that is normal
    // for a first node, so it is only shown when asked for with RUST_LOG.
    let default_level = if matches!(cli.command, Command::Run(_)) {
        "info,libp2p_kad::behaviour=error"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e
                .downcast_ref::<CliError>()
                .map_or(exit::FAILURE, |c| c.code);
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let home = Home::locate(cli.global.home)?;
    let json = cli.global.json;
    match cli.command {
        Command::Init { bootstrap_file } => commands::init(&home, bootstrap_file.as_deref(), json),
        Command::Id => commands::id(&home, json),
        Command::Run(args) => run::run(&home, args, json).await,
        Command::Status => commands::status(&home, json).await,
        Command::Doctor => commands::doctor(&home, json).await,
        Command::Peers => commands::peers(&home, json).await,
        Command::Stop => commands::stop(&home, json).await,
        Command::Name(cmd) => names::name(&home, cmd, json).await,
        Command::Resolve { name, fresh } => names::resolve(&home, &name, fresh, json).await,
        Command::Contacts(cmd) => names::contacts(&home, cmd, json).await,
        Command::Verify { target } => names::verify(&home, &target, json).await,
        Command::Relay(cli::RelayCommand::Status) => commands::relay_status(&home, json).await,
        Command::Group(cmd) => groups::group(&home, cmd, json).await,
        Command::Open { print } => commands::open(&home, "", print, json).await,
        Command::Call { who, video, print } => {
            commands::call(&home, &who, video, print, json).await
        }
        Command::Calls { limit } => commands::calls(&home, limit, json).await,
        Command::Invite { no_qr } => names::invite(&home, no_qr, json).await,
        Command::Send { to, text } => messages::send(&home, &to, &text, json).await,
        Command::SendFile { to, path, options } => {
            messages::send_file(
                &home,
                messages::FileTarget::Person(&to),
                &path,
                options,
                json,
            )
            .await
        }
        Command::Files {
            action: Some(cli::FilesCommand::Cancel { file_id }),
            ..
        } => messages::cancel_file(&home, &file_id, json).await,
        Command::Files { with, action: None } => {
            messages::files(&home, with.as_deref(), json).await
        }
        Command::Save { file_id, path } => messages::save(&home, &file_id, &path, json).await,
        Command::Filters => messages::filters(&home, json).await,
        Command::History {
            with,
            limit,
            before,
        } => messages::history(&home, &with, limit, before.as_deref(), json).await,
        Command::Chat { with } => chat::run(&home, &with).await,
        Command::Inbox => messages::inbox(&home, false, json).await,
        Command::Requests => messages::inbox(&home, true, json).await,
        Command::Accept { who } => messages::trust(&home, &who, true, json).await,
        Command::Block { who } => messages::trust(&home, &who, false, json).await,
    }
}
