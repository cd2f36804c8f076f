//! Strings from peers and guests, made safe to print on a terminal.
//!
//! A guest writes its console log, task names, artifact paths and notes; a peer writes
//! node names, versions, error reasons and manifest paths. Printed raw, an escape
//! sequence among them can retitle a terminal, clear it, move the cursor to rewrite lines
//! already shown, or (with bidi overrides) make text read differently from its bytes.
//! Every such string goes through [`printable`] (one-line fields) or [`printable_log`]
//! (multi-line log text) before a human sees it.
//!
//! What is replaced, each by a visible escape so nothing is silently hidden:
//! - C0 controls U+0000–U+001F and DEL U+007F as `\xNN` (`\x1b` for ESC), except that
//!   [`printable_log`] keeps `\n` and `\t`: a newline ends a line and a tab only moves
//!   the cursor right, neither can rewrite what is on screen. `\r` is always escaped
//!   (it returns to the start of the line, so what follows overwrites what was shown);
//! - C1 controls U+0080–U+009F (U+009B is a one-byte CSI for some terminals) as `\u{9b}`;
//! - bidi controls: the embeddings and overrides U+202A–U+202E, the isolates
//!   U+2066–U+2069, and the marks U+061C, U+200E, U+200F, as `\u{202e}`;
//! - the line and paragraph separators U+2028 and U+2029, which some terminals and
//!   viewers break lines on, as `\u{2028}`.
//!
//! Everything else is kept, including accents, CJK and emoji. A backslash is kept as it
//! is: the output is for eyes, not for parsing back (use `--json` for that).
//!
//! JSON output needs none of this: serde_json escapes every control character.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `s` with every control character replaced by a visible escape; for one-line fields
/// (names, paths, reasons, table cells). Borrows when there is nothing to replace.
pub fn printable(s: &str) -> Cow<'_, str> {
    escape(s, false)
}

/// Like [`printable`] but keeps `\n` and `\t`; for log text shown line by line.
pub fn printable_log(s: &str) -> Cow<'_, str> {
    escape(s, true)
}

/// Bytes that should be UTF-8 (a log line, a file name) made printable: invalid
/// sequences become U+FFFD, then as [`printable_log`] if `multiline`, else [`printable`].
pub fn printable_bytes(b: &[u8], multiline: bool) -> Cow<'_, str> {
    match String::from_utf8_lossy(b) {
        Cow::Borrowed(s) => escape(s, multiline),
        Cow::Owned(s) => Cow::Owned(escape(&s, multiline).into_owned()),
    }
}

/// Whether `c` is replaced by [`printable`] (`multiline` = false) or [`printable_log`].
pub fn is_unsafe(c: char, multiline: bool) -> bool {
    match c {
        '\n' | '\t' => !multiline,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => true,
        '\u{61c}' | '\u{200e}' | '\u{200f}' => true,
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => true,
        '\u{2028}' | '\u{2029}' => true,
        _ => false,
    }
}

fn escape(s: &str, multiline: bool) -> Cow<'_, str> {
    let Some(first) = s.find(|c| is_unsafe(c, multiline)) else {
        return Cow::Borrowed(s);
    };
    let mut out = String::with_capacity(s.len() + 8);
    out.push_str(&s[..first]);
    for c in s[first..].chars() {
        if !is_unsafe(c, multiline) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_become_visible() {
        let evil = "\x1b]0;pwned\x07\x1b[2J\x1b[1;1Hok";
        let shown = printable(evil);
        assert!(
            !shown.contains('\x1b') && !shown.contains('\x07'),
            "{shown}"
        );
        assert_eq!(shown, "\\x1b]0;pwned\\x07\\x1b[2J\\x1b[1;1Hok");
        assert_eq!(printable("a\rb\0c\x7f"), "a\\x0db\\x00c\\x7f");
    }

    #[test]
    fn c1_controls_and_bidi_overrides_become_visible() {
        // U+009B is CSI on its own for terminals that read C1 controls.
        assert_eq!(printable("x\u{9b}2Jy\u{85}"), "x\\u{9b}2Jy\\u{85}");
        assert_eq!(
            printable("invoice\u{202e}fdp.exe"),
            "invoice\\u{202e}fdp.exe"
        );
        for c in ['\u{202a}', '\u{202d}', '\u{2066}', '\u{2069}', '\u{200f}'] {
            let s = format!("a{c}b");
            assert!(!printable(&s).contains(c), "{c:?} kept");
        }
    }

    #[test]
    fn ordinary_text_is_kept_and_borrowed() {
        for s in [
            "café naïve",
            "構築農場",
            "🦀 barn ✅",
            "a\\x1b",
            "",
            "tab-free",
        ] {
            assert!(matches!(printable(s), Cow::Borrowed(_)), "{s}");
            assert_eq!(printable(s), s);
        }
    }

    #[test]
    fn tabs_and_newlines_only_in_logs() {
        assert_eq!(printable("a\tb\nc"), "a\\x09b\\x0ac");
        assert_eq!(printable_log("a\tb\nc"), "a\tb\nc");
        assert_eq!(printable_log("a\r\n\x1b[A"), "a\\x0d\n\\x1b[A");
    }

    #[test]
    fn bytes_are_decoded_lossily_then_escaped() {
        assert_eq!(printable_bytes(b"ok\xff\x1b", false), "ok\u{fffd}\\x1b");
        assert_eq!(printable_bytes("é\n".as_bytes(), true), "é\n");
    }
}
