//! Drawing the chat with ratatui, and the terminal guard that restores the screen.

use std::io;

use crossterm::{
    execute,
    terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
};
use ratatui::{
    Frame,
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::Paragraph,
};

use super::state::{ChatState, LineKind, Link};

// ---------------------------------------------------------------------------------------------
// Drawing.
// ---------------------------------------------------------------------------------------------

pub(super) fn draw(frame: &mut Frame<'_>, state: &mut ChatState) {
    let [title, pane, status, input] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());

    frame.render_widget(
        Paragraph::new(state.title())
            .style(Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD)),
        title,
    );

    let lines: Vec<Line<'_>> = state
        .visible(usize::from(pane.width), usize::from(pane.height))
        .into_iter()
        .map(|l| {
            let style = match l.kind {
                LineKind::Mine | LineKind::Blank => Style::default(),
                LineKind::Theirs => Style::default().fg(Color::Cyan),
                LineKind::Failed => Style::default().fg(Color::Red),
            };
            Line::styled(l.text, style)
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), pane);

    let status_style = match (&state.notice, &state.link) {
        (Some(n), _) if n.starts_with("not sent") || n.starts_with("cannot") => {
            Style::default().fg(Color::Red)
        }
        (_, Link::Retrying { .. } | Link::Down) => Style::default().fg(Color::Yellow),
        _ => Style::default().fg(Color::DarkGray),
    };
    frame.render_widget(
        Paragraph::new(state.status_line()).style(status_style),
        status,
    );

    let (text, cursor) = state.input_view(usize::from(input.width));
    frame.render_widget(Paragraph::new(text), input);
    let x = input
        .x
        .saturating_add(u16::try_from(cursor).unwrap_or(u16::MAX))
        .min(input.right().saturating_sub(1));
    frame.set_cursor_position((x, input.y));
}

// ---------------------------------------------------------------------------------------------
// Terminal and network I/O.
// ---------------------------------------------------------------------------------------------

/// Raw mode and the alternate screen, undone on drop: on quit, on error and on panic.
pub(super) struct TerminalGuard;

impl TerminalGuard {
    pub(super) fn enter() -> anyhow::Result<Self> {
        enable_raw_mode()?;
        // From here on the drop undoes whatever part succeeded.
        let guard = Self;
        execute!(io::stdout(), EnterAlternateScreen)?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = execute!(io::stdout(), LeaveAlternateScreen, crossterm::cursor::Show);
        let _ = disable_raw_mode();
    }
}
