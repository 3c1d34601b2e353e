//! Forwarding the ranks' output: whole lines only, so lines of different ranks never mix.

use std::io::{BufRead, BufReader, Read, Write};
use std::thread::JoinHandle;

use crate::node::OutputSink;

/// Hand `src` line by line to `sink` as `(rank, is_stderr, line)`; every line ends in `\n`.
pub fn forward(
    src: impl Read + Send + 'static,
    rank: usize,
    err: bool,
    sink: OutputSink,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::with_capacity(64 << 10, src);
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
            sink(rank, err, &line);
        }
    })
}

/// Write one line of `rank` to the launcher's stdout or stderr, `[rank] `-prefixed if `tag`.
/// One locked write per line: std's stdout/stderr locks keep lines whole. A closed output is
/// ignored (the ranks' pipes keep being drained, so no rank blocks on a full pipe).
pub fn print_line(rank: usize, err: bool, tag: bool, line: &[u8]) {
    let write = |w: &mut dyn Write| {
        if tag {
            write!(w, "[{rank}] ")?;
        }
        w.write_all(line)?;
        w.flush()
    };
    let _ = if err {
        write(&mut std::io::stderr().lock())
    } else {
        write(&mut std::io::stdout().lock())
    };
}
