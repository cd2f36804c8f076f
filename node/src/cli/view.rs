//! How the commands that read the local API show things to people: aligned tables, ages,
//! short forms of node ids and hashes. `--json` output does not pass through here.
//!
//! Table cells and fields hold strings from peers and guests (node names, versions,
//! statuses, reasons): [`table`] and [`field`] pass each through
//! [`barn_protocol::text::printable`] so none can drive the terminal.

use barn_protocol::text::printable;

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `12s ago`, `5m ago`, `3h ago`, `2d ago`; `never` for 0.
pub fn ago(then: u64, now: u64) -> String {
    if then == 0 {
        return "never".into();
    }
    let d = now.saturating_sub(then);
    match d {
        0..60 => format!("{d}s ago"),
        60..3600 => format!("{}m ago", d / 60),
        3600..86400 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

/// The short form of a peer id shown in tables: its last 8 characters.
pub fn short_node(node: &str) -> String {
    let n = node.chars().count();
    node.chars().skip(n.saturating_sub(8)).collect()
}

/// `b3:` and the first 12 hex digits of a `b3:` hash.
pub fn short_hash(hash: &str) -> String {
    hash.chars().take(15).collect()
}

/// The 12 hex digits tables show for a job id.
pub fn short_job(id: &str) -> String {
    id.strip_prefix("b3:")
        .unwrap_or(id)
        .chars()
        .take(12)
        .collect()
}

/// `name`, padded to 12 columns, then `value` with control characters escaped, and a newline.
pub fn field(name: &str, value: &str) -> String {
    format!("{name:<12}{}\n", printable(value))
}

/// Renders rows under headers, columns padded to their widest cell, two spaces apart;
/// control characters in cells are escaped.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c).into_owned()).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(cell);
            let pad = widths
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(cell.chars().count());
            s.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_naturally() {
        assert_eq!(ago(100, 112), "12s ago");
        assert_eq!(ago(100, 400), "5m ago");
        assert_eq!(ago(100, 100 + 3 * 3600), "3h ago");
        assert_eq!(ago(100, 100 + 2 * 86400 + 5), "2d ago");
        assert_eq!(ago(200, 100), "0s ago");
        assert_eq!(ago(0, 100), "never");
    }

    #[test]
    fn short_forms() {
        assert_eq!(short_node("12D3KooWAbCdEfGh12345678"), "12345678");
        assert_eq!(short_node("abc"), "abc");
        assert_eq!(
            short_job(&format!("b3:{}", "ab".repeat(32))),
            "abababababab"
        );
        assert_eq!(
            short_hash(&format!("b3:{}", "cd".repeat(32))),
            "b3:cdcdcdcdcdcd"
        );
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["NODE", "CPUS"],
            &[
                vec!["a".into(), "4".into()],
                vec!["longer".into(), "16".into()],
            ],
        );
        assert_eq!(t, "NODE    CPUS\na       4\nlonger  16\n");
    }

    #[test]
    fn cells_and_fields_cannot_drive_the_terminal() {
        let t = table(&["NODE"], &[vec!["ev\x1b]0;pwned\x07il\u{202e}".into()]]);
        assert!(!t.contains('\x1b') && !t.contains('\u{202e}'), "{t}");
        assert!(t.contains("ev\\x1b]0;pwned\\x07il\\u{202e}"), "{t}");
        let f = field("reason", "a\nverdict: reproducible\x1b[2J");
        assert_eq!(f, "reason      a\\x0averdict: reproducible\\x1b[2J\n");
    }
}
