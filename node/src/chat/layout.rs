//! Widths and word wrapping for the chat pane.

use unicode_width::UnicodeWidthChar as _;

pub(super) fn text_width(chars: &[char]) -> usize {
    chars.iter().map(|c| c.width().unwrap_or(0)).sum()
}

/// Word-wraps `text` to `width` columns (hard breaks inside words longer than a line); control
/// characters become spaces so a message cannot move the cursor.
pub(super) fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut out = Vec::new();
    for paragraph in text.split('\n') {
        let mut line = String::new();
        let mut used = 0;
        // Byte index just after the last space in `line`, and the width up to there.
        let mut last_space: Option<(usize, usize)> = None;
        for c in paragraph.chars() {
            let c = if c.is_control() { ' ' } else { c };
            let w = c.width().unwrap_or(0);
            if c == ' ' && used + w > width {
                // A space at the edge is the break itself.
                out.push(std::mem::take(&mut line).trim_end().to_owned());
                used = 0;
                last_space = None;
                continue;
            }
            while used + w > width && !line.is_empty() {
                match last_space.take() {
                    Some((byte, upto)) => {
                        let rest = line.split_off(byte);
                        out.push(line.trim_end().to_owned());
                        line = rest;
                        used -= upto;
                    }
                    None => {
                        out.push(std::mem::take(&mut line));
                        used = 0;
                    }
                }
            }
            line.push(c);
            used += w;
            if c == ' ' {
                last_space = Some((line.len(), used));
            }
        }
        out.push(line);
    }
    out
}
