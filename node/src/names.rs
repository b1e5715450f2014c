//! `kith name`, `kith resolve`, `kith contacts`, `kith verify`, `kith invite`.

use std::{ops::ControlFlow, time::Duration};

use kith_api::{ClientError, NameReport, RegisterRequest, ResolveReport};
use kith_core::{Name, pow};
use serde_json::json;

use crate::{
    cli::{ContactsCommand, NameCommand},
    commands::{api_error, connect},
    exit::{self, CliError},
    home::Home,
};

pub(crate) async fn name(home: &Home, cmd: NameCommand, json_output: bool) -> anyhow::Result<()> {
    let client = connect(home)?;
    match cmd {
        NameCommand::Register { name } => {
            // Check the rules here first, so a typo costs no proof of work.
            let parsed =
                Name::parse(&name).map_err(|e| CliError::new(exit::USAGE, e.to_string()))?;
            let owned = client.names().await.map_err(|e| api_error(home, e))?;
            let renewal = owned.iter().any(|n| n.name == parsed.as_str());
            let (created_at_ms, pow_nonce) = if renewal {
                (None, None)
            } else {
                let params = client.pow_params().await.map_err(|e| api_error(home, e))?;
                let (created, nonce) =
                    solve_with_progress(&parsed, &params.peer_id, params.difficulty, params.now_ms)
                        .await?;
                (Some(created), Some(nonce))
            };
            let request = RegisterRequest {
                name: parsed.to_string(),
                created_at_ms,
                pow_nonce,
            };
            let report = client
                .register(&request)
                .await
                .map_err(|e| api_error(home, e))?;
            if json_output {
                outln!("{}", serde_json::to_string(&report)?);
            } else {
                let verb = if report.renewed == Some(true) {
                    "renewed"
                } else {
                    "registered"
                };
                outln!(
                    "{verb} '{}' for {} until {}",
                    report.name,
                    report.peer_id,
                    date(report.expires_at)
                );
                if report.published == Some(false) {
                    outln!(
                        "no DHT peers yet: the claim is stored and will be published once the node has peers"
                    );
                }
            }
        }
        NameCommand::List => {
            let names = client.names().await.map_err(|e| api_error(home, e))?;
            crate::print_list(
                json_output,
                &names,
                "this node owns no names; claim one with `kith name register NAME`",
                print_name,
            )?;
        }
        NameCommand::Release { name } => {
            let report = client
                .release(&name)
                .await
                .map_err(|e| api_error(home, e))?;
            if json_output {
                outln!(
                    "{}",
                    json!({ "released": report.name, "free_after": report.expires_at })
                );
            } else {
                outln!(
                    "released '{}'; others may claim it after {}",
                    report.name,
                    date(report.expires_at)
                );
            }
        }
    }
    Ok(())
}

/// Proof of work in a blocking thread, with a progress bar on stderr (hidden when not a terminal).
async fn solve_with_progress(
    name: &Name,
    peer_id: &str,
    difficulty: u8,
    now_ms: u64,
) -> anyhow::Result<(u64, u64)> {
    let peer: libp2p::PeerId = peer_id.parse().map_err(|_| {
        CliError::new(
            exit::FAILURE,
            format!("the node sent a bad peer id: {peer_id}"),
        )
    })?;
    let peer = peer.to_bytes();
    let text = name.as_str().to_owned();
    let expected = pow::expected_attempts(difficulty);
    let bar = indicatif::ProgressBar::new(expected);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "proof of work for '{msg}' {bar:30} {pos}/{len} hashes (~{eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(text.clone());
    let progress = bar.clone();
    let nonce = tokio::task::spawn_blocking(move || {
        pow::solve(&text, &peer, now_ms, difficulty, |attempts| {
            // Past the expected count the bar just stays full; luck varies.
            progress.set_position(attempts.min(expected));
            ControlFlow::Continue(())
        })
    })
    .await?;
    bar.finish_and_clear();
    let nonce =
        nonce.ok_or_else(|| CliError::new(exit::FAILURE, "proof of work found no nonce"))?;
    Ok((now_ms, nonce))
}

pub(crate) async fn resolve(
    home: &Home,
    name: &str,
    fresh: bool,
    json_output: bool,
) -> anyhow::Result<()> {
    let client = connect(home)?;
    let answer = if fresh {
        client.resolve_fresh(name).await
    } else {
        client.resolve(name).await
    };
    match answer {
        Ok(report) => {
            if json_output {
                outln!("{}", serde_json::to_string(&report)?);
            } else {
                print_resolution(&report);
            }
            Ok(())
        }
        Err(ClientError::Api { status: 409, body }) => {
            // Both keys go to stdout: this is the answer the user needs to see, not noise.
            if json_output {
                outln!(
                    "{}",
                    json!({
                        "name": name,
                        "conflict": true,
                        "pinned_peer_id": body.pinned_peer_id,
                        "found_peer_id": body.found_peer_id,
                        "pinned_since": body.since,
                    })
                );
            } else {
                outln!("name        {name}");
                outln!(
                    "you know    {}",
                    body.pinned_peer_id.as_deref().unwrap_or("?")
                );
                outln!(
                    "DHT now     {}",
                    body.found_peer_id.as_deref().unwrap_or("?")
                );
            }
            Err(CliError::new(exit::CONFLICT, body.error).into())
        }
        Err(e) => Err(api_error(home, e)),
    }
}

pub(crate) async fn contacts(
    home: &Home,
    cmd: ContactsCommand,
    json_output: bool,
) -> anyhow::Result<()> {
    let client = connect(home)?;
    match cmd {
        ContactsCommand::Add { petname, target } => {
            let added = client.add_contact(&petname, &target).await;
            print_added(added.map_err(|e| api_error(home, e))?, json_output)?;
        }
        ContactsCommand::AddInvite { invite, petname } => {
            let added = client.add_invite(&invite, petname.as_deref()).await;
            print_added(added.map_err(|e| api_error(home, e))?, json_output)?;
        }
        ContactsCommand::List => {
            let list = client.contacts().await.map_err(|e| api_error(home, e))?;
            crate::print_list(
                json_output,
                &list,
                "no contacts yet; add one with `kith contacts add PETNAME NAME`",
                |c| {
                    let via = if c.name.is_empty() {
                        String::new()
                    } else {
                        format!(" (name '{}')", c.name)
                    };
                    outln!("{:<20} {}{via}", c.petname, c.peer_id);
                },
            )?;
        }
        ContactsCommand::Remove { petname } => {
            client
                .remove_contact(&petname)
                .await
                .map_err(|e| api_error(home, e))?;
            if json_output {
                outln!("{}", json!({ "removed": petname }));
            } else {
                outln!("removed '{petname}'");
            }
        }
    }
    Ok(())
}

pub(crate) async fn verify(home: &Home, target: &str, json_output: bool) -> anyhow::Result<()> {
    let client = connect(home)?;
    let v = client
        .verify(target)
        .await
        .map_err(|e| api_error(home, e))?;
    if json_output {
        outln!("{}", serde_json::to_string(&v)?);
    } else {
        outln!("safety number with {target} ({}):", v.peer_id);
        let groups: Vec<&str> = v.safety_number.split(' ').collect();
        for row in groups.chunks(4) {
            outln!("    {}", row.join(" "));
        }
        outln!(
            "Read it to each other in person or on a call; if both of you see the same digits, nobody is in between."
        );
    }
    Ok(())
}

pub(crate) async fn invite(home: &Home, no_qr: bool, json_output: bool) -> anyhow::Result<()> {
    let client = connect(home)?;
    let invite = client.invite().await.map_err(|e| api_error(home, e))?;
    if json_output {
        outln!("{}", serde_json::to_string(&invite)?);
        return Ok(());
    }
    outln!("{}", invite.url);
    if !no_qr {
        match qrcode::QrCode::new(invite.url.as_bytes()) {
            Ok(code) => outln!(
                "{}",
                code.render::<qrcode::render::unicode::Dense1x2>()
                    .quiet_zone(true)
                    .build()
            ),
            Err(e) => eprintln!("(no QR code: {e})"),
        }
    }
    outln!("Your friend adds you with: kith contacts add-invite '<link>'");
    Ok(())
}

/// What `kith contacts add` and `add-invite` print for the contact they added.
fn print_added(c: kith_api::ContactReport, json_output: bool) -> anyhow::Result<()> {
    if json_output {
        outln!("{}", serde_json::to_string(&c)?);
    } else {
        outln!("added '{}' → {}", c.petname, c.peer_id);
    }
    Ok(())
}

fn print_name(n: &NameReport) {
    outln!(
        "{:<24} since {}  expires {}  seq {}",
        n.name,
        date(n.created_at),
        date(n.expires_at),
        n.seq
    );
}

fn print_resolution(r: &ResolveReport) {
    outln!("name        {}", r.name);
    outln!("peer id     {}", r.peer_id);
    outln!(
        "pinned      {}",
        if r.newly_pinned {
            "now (first lookup)"
        } else {
            "yes, same key as before"
        }
    );
    if r.created_at > 0 {
        outln!("claimed     {}", date(r.created_at));
    }
    if r.expires_at > 0 {
        outln!("expires     {}", date(r.expires_at));
    }
    match (r.source.as_str(), r.checked_at) {
        ("network", _) => outln!("checked     now, on the network"),
        (_, Some(at)) => outln!(
            "checked     {} (answered from this node; `--fresh` asks the network now)",
            date(at)
        ),
        _ => outln!(
            "checked     not since the node started (answered from the pin; being checked in the background, `--fresh` asks now)"
        ),
    }
    if r.holders > 0 {
        outln!(
            "holders     {} agreeing, {} of 5 replica keys",
            r.holders,
            r.replicas
        );
    }
    for addr in &r.addrs {
        outln!("address     {addr}");
    }
    if r.rival_holders.is_empty() {
        for rival in &r.rivals {
            outln!("rival       {rival} (ignored)");
        }
    }
    for rival in &r.rival_holders {
        outln!(
            "rival       {} from {} holder(s) (ignored: the owner holds the majority of the name's keys)",
            rival.peer_id,
            rival.holders
        );
    }
}

/// Unix ms as a UTC date and time, for people.
fn date(ms: u64) -> String {
    let when = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    let secs = when
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let (y, m, d) = civil(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        (secs % 86_400) / 3600,
        (secs % 3600) / 60
    )
}

fn civil(days: u64) -> (u64, u64, u64) {
    // Howard Hinnant's days-to-civil, for dates after 1970.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_render_in_utc() {
        assert_eq!(super::date(0), "1970-01-01 00:00 UTC");
        assert_eq!(
            super::date(1_795_564_800_000 + 3_600_000),
            "2026-11-25 01:00 UTC"
        );
    }
}
