//! `barn`: the volunteer daemon and the command-line tool, in one binary.
//!
//! Only this file installs the tracing subscriber; everything else logs through spans.

use barn_node::cli;

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(if args.verbose { "debug" } else { "warn" })
            }),
        )
        .with_writer(|| PrintableStderr(std::io::stderr()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            // Errors may quote what a peer or a guest sent: escaped for the terminal.
            let text = format!("{err:#}");
            eprintln!("error: {}", barn_protocol::text::printable_log(&text));
            ExitCode::from(cli::exit::FAILURE)
        }
    }
}

/// Stderr for tracing, which logs strings from peers and guests (node names, reasons,
/// console lines). tracing-subscriber already escapes ESC, BEL, BS, FF, DEL and C1
/// controls inside fields; this escapes what it leaves (`\r`, the other C0 controls,
/// bidi controls, line separators) with [`barn_protocol::text`]'s rule. ESC itself is
/// kept here: the only ones left are tracing's own colours.
struct PrintableStderr(io::Stderr);

impl Write for PrintableStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The fmt layer writes each event whole, so lines are not split between calls.
        self.0.write_all(escape_event(buf).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

fn escape_event(buf: &[u8]) -> String {
    use barn_protocol::text::{is_unsafe, printable};
    let text = String::from_utf8_lossy(buf);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c != '\x1b' && is_unsafe(c, true) {
            out.push_str(&printable(c.encode_utf8(&mut [0; 4])));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_events_keep_colours_and_lose_other_controls() {
        let event = "\x1b[33mWARN\x1b[0m peer said a\rb\x0ec\u{202e}d\n";
        assert_eq!(
            escape_event(event.as_bytes()),
            "\x1b[33mWARN\x1b[0m peer said a\\x0db\\x0ec\\u{202e}d\n"
        );
    }
}
