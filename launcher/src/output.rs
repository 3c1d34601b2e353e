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
/// The line is put together first and written with one call under the stream's lock:
/// stderr is unbuffered, so pieces written separately could land between the pieces of a
/// line on stdout when both go to one terminal or file. A closed output is ignored (the
/// ranks' pipes keep being drained, so no rank blocks on a full pipe).
pub fn print_line(rank: usize, err: bool, tag: bool, line: &[u8]) {
    let mut whole = Vec::with_capacity(line.len() + 8);
    if tag {
        let _ = write!(whole, "[{rank}] ");
    }
    whole.extend_from_slice(line);
    write_whole(err, &whole);
}

fn write_whole(err: bool, bytes: &[u8]) {
    let write = |w: &mut dyn Write| {
        w.write_all(bytes)?;
        w.flush()
    };
    let _ = if err {
        write(&mut std::io::stderr().lock())
    } else {
        write(&mut std::io::stdout().lock())
    };
}

/// The launcher's own line on stderr, whole (see [`print_line`]); use through [`say!`].
pub fn say_line(text: &str) {
    let mut whole = String::with_capacity(text.len() + 1);
    whole.push_str(text);
    whole.push('\n');
    write_whole(true, whole.as_bytes());
}

/// `eprintln!` for the launcher's own messages: one write, so a rank's output never cuts it.
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {
        $crate::output::say_line(&format!($($t)*))
    };
}
