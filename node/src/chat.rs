//! `kith chat`: interactive terminal chat (the ratatui UI lands in a following commit).

use crate::home::Home;

#[allow(clippy::unused_async)] // same signature as the real UI, which awaits the API
pub(crate) async fn run(home: &Home, with: &str) -> anyhow::Result<()> {
    let _ = (home, with);
    anyhow::bail!("kith chat is not in this build yet; use `kith send` and `kith history`")
}
