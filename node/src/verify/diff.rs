//! The built-in comparison of two differing outputs, used by `barn diff` when `diffoscope`
//! is not installed: where two byte streams first part, a unified line diff for small text,
//! and a hex dump of the bytes around a difference.
//!
//! Everything here is bounded: streams are compared in fixed-size chunks, a line diff is
//! only attempted for text of at most [`TEXT_LIMIT`] bytes a side and gives up (returns
//! `None`) when the changed middle would need more than [`MAX_CELLS`] table cells.

use std::fmt::Write as _;
use std::io::{self, Read};

/// The largest file, in bytes, shown as a line diff.
pub const TEXT_LIMIT: usize = 64 * 1024;
/// How many bytes a hex window shows.
pub const HEX_WINDOW: u64 = 64;
/// Lines of context around each change in a line diff.
pub const CONTEXT: usize = 3;
/// The largest LCS table (lines × lines, after the common head and tail are cut off) a
/// line diff builds: 4 Mi cells of `u32`, 16 MiB.
pub const MAX_CELLS: usize = 4 * 1024 * 1024;

const CHUNK: usize = 64 * 1024;

/// The offset of the first byte at which `a` and `b` differ, or where the shorter ends;
/// `None` if they are the same bytes.
pub fn first_difference(mut a: impl Read, mut b: impl Read) -> io::Result<Option<u64>> {
    let mut buf_a = vec![0u8; CHUNK];
    let mut buf_b = vec![0u8; CHUNK];
    let mut offset = 0u64;
    loop {
        let n_a = fill(&mut a, &mut buf_a)?;
        let n_b = fill(&mut b, &mut buf_b)?;
        let n = n_a.min(n_b);
        if let Some(i) = buf_a[..n].iter().zip(&buf_b[..n]).position(|(x, y)| x != y) {
            return Ok(Some(offset + i as u64));
        }
        if n_a != n_b {
            return Ok(Some(offset + n as u64));
        }
        if n_a == 0 {
            return Ok(None);
        }
        offset += n as u64;
    }
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Where a [`HEX_WINDOW`]-byte window around `offset` starts: about half a window before
/// it, on a 16-byte line.
pub fn window_start(offset: u64) -> u64 {
    offset.saturating_sub(HEX_WINDOW / 2) & !15
}

/// An `xxd`-style dump of `bytes`, which start at `base` in their file: offset, 16 hex
/// bytes, the printable ASCII. The line holding `mark` (the first difference) ends in `<`.
pub fn hex_dump(bytes: &[u8], base: u64, mark: u64) -> String {
    let mut out = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        let at = base + 16 * i as u64;
        let _ = write!(out, "{at:08x}  ");
        for k in 0..16 {
            match line.get(k) {
                Some(b) => {
                    let _ = write!(out, "{b:02x} ");
                }
                None => out.push_str("   "),
            }
            if k == 7 {
                out.push(' ');
            }
        }
        out.push_str(" |");
        out.extend(line.iter().map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '.'
            }
        }));
        out.push('|');
        if (at..at + line.len() as u64).contains(&mark) {
            out.push_str(" <");
        }
        out.push('\n');
    }
    out
}

/// Whether `a` and `b` are small enough and text enough for [`unified`]: valid UTF-8 and
/// at most [`TEXT_LIMIT`] bytes each.
pub fn as_text<'a>(a: &'a [u8], b: &'a [u8]) -> Option<(&'a str, &'a str)> {
    if a.len() > TEXT_LIMIT || b.len() > TEXT_LIMIT {
        return None;
    }
    Some((std::str::from_utf8(a).ok()?, std::str::from_utf8(b).ok()?))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Same(usize, usize),
    Delete(usize),
    Insert(usize),
}

/// A unified diff (`---`/`+++`, `@@` hunks, [`CONTEXT`] lines of context) from `a` to `b`.
/// `None` if they are equal or differ in too many places for a bounded diff.
pub fn unified(a: &str, b: &str, name_a: &str, name_b: &str) -> Option<String> {
    if a == b {
        return None;
    }
    let la: Vec<&str> = a.split_inclusive('\n').collect();
    let lb: Vec<&str> = b.split_inclusive('\n').collect();
    let ops = line_ops(&la, &lb)?;
    let mut out = format!("--- {name_a}\n+++ {name_b}\n");
    let changes: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| !matches!(op, Op::Same(..)))
        .map(|(i, _)| i)
        .collect();
    // Group changes whose gap is small enough that their contexts would touch.
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for &i in &changes {
        match groups.last_mut() {
            Some((_, last)) if i - *last <= 2 * CONTEXT + 1 => *last = i,
            _ => groups.push((i, i)),
        }
    }
    for (first, last) in groups {
        let start = first.saturating_sub(CONTEXT);
        let end = (last + CONTEXT + 1).min(ops.len());
        hunk(&mut out, &ops[start..end], &la, &lb);
    }
    Some(out)
}

/// The edit script from `a` to `b`: the common head and tail, then an LCS over the rest.
fn line_ops(a: &[&str], b: &[&str]) -> Option<Vec<Op>> {
    let head = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let tail = a[head..]
        .iter()
        .rev()
        .zip(b[head..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (ma, mb) = (&a[head..a.len() - tail], &b[head..b.len() - tail]);
    let (n, m) = (ma.len(), mb.len());
    let cells = (n + 1).checked_mul(m + 1)?;
    if cells > MAX_CELLS {
        return None;
    }
    // lcs[i * (m + 1) + j] = length of the LCS of ma[i..] and mb[j..].
    let mut lcs = vec![0u32; cells];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i * (m + 1) + j] = if ma[i] == mb[j] {
                lcs[(i + 1) * (m + 1) + j + 1] + 1
            } else {
                lcs[(i + 1) * (m + 1) + j].max(lcs[i * (m + 1) + j + 1])
            };
        }
    }
    let mut ops: Vec<Op> = (0..head).map(|k| Op::Same(k, k)).collect();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && ma[i] == mb[j] {
            ops.push(Op::Same(head + i, head + j));
            i += 1;
            j += 1;
        } else if j == m || (i < n && lcs[(i + 1) * (m + 1) + j] >= lcs[i * (m + 1) + j + 1]) {
            ops.push(Op::Delete(head + i));
            i += 1;
        } else {
            ops.push(Op::Insert(head + j));
            j += 1;
        }
    }
    ops.extend((0..tail).map(|k| Op::Same(head + n + k, head + m + k)));
    Some(ops)
}

/// Writes one hunk; within a run of changes, deletions come before insertions.
fn hunk(out: &mut String, ops: &[Op], a: &[&str], b: &[&str]) {
    let (mut len_a, mut len_b) = (0, 0);
    let (mut start_a, mut start_b) = (None, None);
    for op in ops {
        match *op {
            Op::Same(i, j) => {
                start_a.get_or_insert(i);
                start_b.get_or_insert(j);
                len_a += 1;
                len_b += 1;
            }
            Op::Delete(i) => {
                start_a.get_or_insert(i);
                len_a += 1;
            }
            Op::Insert(j) => {
                start_b.get_or_insert(j);
                len_b += 1;
            }
        }
    }
    // A hunk always holds context when there is any, so a side without lines in it is
    // empty, and `-0,0` is how unified diffs say so.
    let show = |start: Option<usize>, len: usize| match start {
        Some(s) => format!("{},{len}", s + 1),
        None => "0,0".to_string(),
    };
    let _ = writeln!(
        out,
        "@@ -{} +{} @@",
        show(start_a, len_a),
        show(start_b, len_b)
    );
    let mut dels: Vec<&str> = Vec::new();
    let mut ins: Vec<&str> = Vec::new();
    let flush = |out: &mut String, dels: &mut Vec<&str>, ins: &mut Vec<&str>| {
        for l in dels.drain(..) {
            line(out, '-', l);
        }
        for l in ins.drain(..) {
            line(out, '+', l);
        }
    };
    for op in ops {
        match *op {
            Op::Same(i, _) => {
                flush(out, &mut dels, &mut ins);
                line(out, ' ', a[i]);
            }
            Op::Delete(i) => dels.push(a[i]),
            Op::Insert(j) => ins.push(b[j]),
        }
    }
    flush(out, &mut dels, &mut ins);
}

fn line(out: &mut String, sign: char, text: &str) {
    out.push(sign);
    match text.strip_suffix('\n') {
        Some(t) => {
            out.push_str(t);
            out.push('\n');
        }
        None => {
            out.push_str(text);
            out.push_str("\n\\ No newline at end of file\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_difference_finds_the_byte_or_the_shorter_end() {
        assert_eq!(first_difference(&b"abc"[..], &b"abc"[..]).unwrap(), None);
        assert_eq!(first_difference(&b""[..], &b""[..]).unwrap(), None);
        assert_eq!(first_difference(&b"abc"[..], &b"abd"[..]).unwrap(), Some(2));
        assert_eq!(first_difference(&b"xbc"[..], &b"abc"[..]).unwrap(), Some(0));
        assert_eq!(first_difference(&b"ab"[..], &b"abc"[..]).unwrap(), Some(2));
        assert_eq!(first_difference(&b""[..], &b"a"[..]).unwrap(), Some(0));
        // Across chunk boundaries, and with a reader that hands out one byte at a time.
        let mut a = vec![7u8; 3 * CHUNK + 5];
        let b = a.clone();
        a[2 * CHUNK + 1] = 8;
        let slow = SlowReader(&b);
        assert_eq!(
            first_difference(&a[..], slow).unwrap(),
            Some(2 * CHUNK as u64 + 1)
        );
    }

    struct SlowReader<'a>(&'a [u8]);
    impl Read for SlowReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((b, rest)), Some(slot)) => {
                    *slot = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn text_diff_is_unified_with_context() {
        let a = "one\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\n";
        let b = "one\ntwo\nthree\nfour\nFIVE\nsix\nseven\neight\nnine\nten\n";
        let d = unified(a, b, "a/out", "b/out").unwrap();
        assert_eq!(
            d,
            "--- a/out\n+++ b/out\n\
             @@ -2,8 +2,9 @@\n two\n three\n four\n-five\n+FIVE\n six\n seven\n eight\n nine\n+ten\n"
        );
        assert_eq!(unified(a, a, "a", "b"), None);
    }

    #[test]
    fn text_diff_splits_far_apart_changes_and_marks_missing_newlines() {
        let a: String = (1..=20).map(|i| format!("{i}\n")).collect();
        let b: String = (1..=20)
            .map(|i| match i {
                2 => "two\n".to_string(),
                19 => "nineteen\n".to_string(),
                _ => format!("{i}\n"),
            })
            .collect();
        let d = unified(&a, &b, "a", "b").unwrap();
        assert_eq!(d.matches("@@ ").count(), 2, "{d}");
        assert!(d.contains("@@ -1,5 +1,5 @@\n 1\n-2\n+two\n 3\n"), "{d}");
        assert!(d.contains("@@ -16,5 +16,5 @@\n"), "{d}");

        let d = unified("x\n", "x", "a", "b").unwrap();
        assert_eq!(
            d,
            "--- a\n+++ b\n@@ -1,1 +1,1 @@\n-x\n+x\n\\ No newline at end of file\n"
        );
        let d = unified("", "new\n", "a", "b").unwrap();
        assert_eq!(d, "--- a\n+++ b\n@@ -0,0 +1,1 @@\n+new\n");
        let d = unified("a\nb\n", "a\n", "a", "b").unwrap();
        assert_eq!(d, "--- a\n+++ b\n@@ -1,2 +1,1 @@\n a\n-b\n");
    }

    #[test]
    fn text_is_only_small_utf8() {
        assert!(as_text(b"hi", "h\u{e9}".as_bytes()).is_some());
        assert!(as_text(b"hi", b"\xff\xfe").is_none());
        assert!(as_text(&vec![b'a'; TEXT_LIMIT + 1], b"a").is_none());
    }

    #[test]
    fn too_different_text_gives_up() {
        let a: String = (0..3000).map(|i| format!("a{i}\n")).collect();
        let b: String = (0..3000).map(|i| format!("b{i}\n")).collect();
        assert_eq!(unified(&a, &b, "a", "b"), None);
    }

    #[test]
    fn hex_window_surrounds_and_marks_the_difference() {
        assert_eq!(window_start(0), 0);
        assert_eq!(window_start(40), 0);
        assert_eq!(window_start(100), 64);
        assert_eq!(window_start(1000), 960);
        let bytes: Vec<u8> = (0u8..20).chain(*b"Hi!").collect();
        let dump = hex_dump(&bytes, 0x40, 0x51);
        assert_eq!(
            dump,
            "00000040  00 01 02 03 04 05 06 07  08 09 0a 0b 0c 0d 0e 0f  |................|\n\
             00000050  10 11 12 13 48 69 21                              |....Hi!| <\n"
        );
    }
}
