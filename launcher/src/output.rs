//! Forwarding the ranks' output: whole lines only, so lines of different ranks never mix.

use std::io::{BufRead, BufReader, Read, Write};
use std::thread::JoinHandle;

/// Which of the launcher's streams a rank's stream goes to.
#[derive(Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Copy `src` line by line to the launcher's `stream`, prefixed with `[rank] ` if `tag`.
pub fn forward(
    src: impl Read + Send + 'static,
    rank: usize,
    stream: Stream,
    tag: bool,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::with_capacity(64 << 10, src);
        let prefix = format!("[{rank}] ");
        let mut line = Vec::with_capacity(256);
        loop {
            line.clear();
            // Lines longer than 64 KiB are forwarded in pieces, so memory stays bounded.
            match (&mut reader).take(64 << 10).read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if line.last() != Some(&b'\n') {
                line.push(b'\n');
            }
            // One locked write per line: std's stdout/stderr locks keep lines whole.
            let write = |w: &mut dyn Write| {
                if tag {
                    w.write_all(prefix.as_bytes())?;
                }
                w.write_all(&line)?;
                w.flush()
            };
            let r = match stream {
                Stream::Stdout => write(&mut std::io::stdout().lock()),
                Stream::Stderr => write(&mut std::io::stderr().lock()),
            };
            if r.is_err() {
                // Our own output is gone (closed pipe); keep draining so the rank never blocks.
                continue;
            }
        }
    })
}
