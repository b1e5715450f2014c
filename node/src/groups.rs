//! `kith group ...`: group chats through the local API.

use kith_api::{GroupMessageReport, GroupReport};

use crate::{
    cli::GroupCommand,
    commands::{api_error, connect},
    home::Home,
};

pub(crate) async fn group(home: &Home, cmd: GroupCommand, json: bool) -> anyhow::Result<()> {
    let client = connect(home)?;
    let err = |e| api_error(home, e);
    match cmd {
        GroupCommand::Create { title } => {
            let g = client.create_group(&title).await.map_err(err)?;
            if json {
                outln!("{}", serde_json::to_string(&g)?);
            } else {
                outln!("created '{}' ({})", g.title, g.group_id);
                outln!("invite friends with `kith group invite {} <who>`", g.title);
            }
        }
        GroupCommand::List => {
            let groups = client.groups().await.map_err(err)?;
            crate::print_list(
                json,
                &groups,
                "no groups yet; create one with `kith group create <title>`",
                |g| outln!("{}", group_line(g)),
            )?;
        }
        GroupCommand::Invite { group, who } => {
            let g = client.invite_to_group(&group, &who).await.map_err(err)?;
            if json {
                outln!("{}", serde_json::to_string(&g)?);
            } else {
                outln!(
                    "invited {who} to '{}' ({} members); they join with `kith group join {}`",
                    g.title,
                    g.members.len(),
                    g.group_id
                );
            }
        }
        GroupCommand::Invitations => {
            let groups = client.group_invitations().await.map_err(err)?;
            if json {
                outln!("{}", serde_json::to_string(&groups)?);
            } else if groups.is_empty() {
                outln!("no invitations");
            } else {
                for g in &groups {
                    outln!(
                        "{} '{}' from {} ({} members) — `kith group join {}`",
                        g.group_id,
                        g.title,
                        g.invited_by.as_deref().unwrap_or("?"),
                        g.members.len(),
                        g.group_id
                    );
                }
            }
        }
        GroupCommand::Join { group } => {
            let g = client.join_group(&group).await.map_err(err)?;
            if json {
                outln!("{}", serde_json::to_string(&g)?);
            } else {
                outln!(
                    "joined '{}' ({} members); catching up on earlier messages",
                    g.title,
                    g.members.len()
                );
            }
        }
        GroupCommand::Send { group, text } => {
            let r = client.send_group(&group, &text).await.map_err(err)?;
            if json {
                outln!("{}", serde_json::to_string(&r)?);
            } else if r.published {
                outln!("{} sent", r.id);
            } else {
                outln!(
                    "{} stored; no member is online right now, they will fetch it",
                    r.id
                );
            }
        }
        GroupCommand::SendFile {
            group,
            path,
            options,
        } => {
            let to = crate::messages::FileTarget::Group(&group);
            crate::messages::send_file(home, to, &path, options, json).await?;
        }
        GroupCommand::History {
            group,
            limit,
            before,
        } => {
            let h = client
                .group_history_up_to(&group, limit, before.as_deref())
                .await
                .map_err(err)?;
            client.mark_group_read(&h.group_id).await.map_err(err)?;
            if json {
                outln!("{}", serde_json::to_string(&h.messages)?);
            } else if h.messages.is_empty() {
                outln!("no messages in '{}' yet", h.title);
            } else {
                let names = petnames(&client).await;
                for m in &h.messages {
                    outln!("{}", render(m, &names));
                }
            }
        }
        GroupCommand::Members { group } => {
            let g = client.group(&group).await.map_err(err)?;
            if json {
                outln!("{}", serde_json::to_string(&g.members)?);
            } else {
                outln!("'{}' (version {}, {}):", g.title, g.version, g.state);
                for m in &g.members {
                    let name = m.petname.as_deref().unwrap_or("");
                    let admin = if m.admin { " [admin]" } else { "" };
                    outln!("  {} {name}{admin}", m.peer_id);
                }
            }
        }
        GroupCommand::Remove { group, who } => {
            let g = client.remove_from_group(&group, &who).await.map_err(err)?;
            if json {
                outln!("{}", serde_json::to_string(&g)?);
            } else {
                outln!(
                    "removed {who} from '{}'; new messages use a fresh key they do not have",
                    g.title
                );
            }
        }
        GroupCommand::Leave { group } => {
            let g = client.leave_group(&group).await.map_err(err)?;
            if json {
                outln!("{}", serde_json::to_string(&g)?);
            } else {
                outln!("left '{}'", g.title);
            }
        }
    }
    Ok(())
}

fn group_line(g: &GroupReport) -> String {
    let unread = if g.unread > 0 {
        format!(", {} unread", g.unread)
    } else {
        String::new()
    };
    let admin = if g.admin { ", admin" } else { "" };
    format!(
        "{} '{}' [{}{admin}] {} members{unread}",
        g.group_id,
        g.title,
        g.state,
        g.members.len()
    )
}

/// Peer id → petname, for readable history.
pub(crate) async fn petnames(client: &kith_api::ApiClient) -> Vec<(String, String)> {
    client
        .contacts()
        .await
        .map(|cs| {
            cs.into_iter()
                .map(|c| (c.peer_id, c.petname))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
}

/// One line of group history: time, who, text.
pub(crate) fn render(m: &GroupMessageReport, names: &[(String, String)]) -> String {
    let who = if m.outgoing {
        "you".to_owned()
    } else {
        names
            .iter()
            .find(|(p, _)| *p == m.from)
            .map(|(_, n)| n.clone())
            .unwrap_or_else(|| short(&m.from))
    };
    let secs = m.sent_at / 1000;
    format!(
        "{:02}:{:02} {who}: {}",
        (secs % 86_400) / 3600,
        (secs % 3600) / 60,
        m.text
    )
}

fn short(peer: &str) -> String {
    let tail: String = peer
        .chars()
        .rev()
        .take(6)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}
