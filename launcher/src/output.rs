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

/// What the launcher does with every line a rank writes, wherever the rank runs (this host
/// or an agent's): a progress line becomes a bar; any other line of stderr is kept for the
/// failure tail, and the line is printed. The abort code of an abort line is returned.
#[derive(Clone)]
pub struct Lines {
    pub bars: std::sync::Arc<Bars>,
    pub tails: std::sync::Arc<Tails>,
    /// `--tag-output`: prefix every line with `[rank] `.
    pub tag: bool,
}

impl Lines {
    pub fn handle(&self, rank: usize, err: bool, line: &[u8]) -> Option<u8> {
        if err && self.bars.take(rank, line) {
            return None;
        }
        let abort = err
            .then(|| ranks::config::parse_abort_line(rank, line))
            .flatten();
        if err {
            self.tails.note(rank, line);
        }
        print_line(rank, err, self.tag, line);
        abort
    }
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
    let write = || {
        let write = |w: &mut dyn Write| {
            w.write_all(bytes)?;
            w.flush()
        };
        let _ = if err {
            write(&mut std::io::stderr().lock())
        } else {
            write(&mut std::io::stdout().lock())
        };
    };
    // Progress bars on the terminal step aside while a line is written.
    match DRAWN.get() {
        Some(mp) => mp.suspend(write),
        None => write(),
    }
}

/// The progress bars on the terminal, once there are any.
static DRAWN: std::sync::OnceLock<indicatif::MultiProgress> = std::sync::OnceLock::new();

/// Progress of the ranks' pools (`--progress`): the ranks write progress lines on stderr
/// (see `ranks::config::progress_line`); they are drawn as bars on a terminal, or written
/// as plain lines at every tenth, and never printed as they are.
pub struct Bars {
    /// `None`: off; `Some(true)`: bars on the terminal; `Some(false)`: plain lines.
    mode: Option<bool>,
    /// By (rank, batch id): the bar, or the last tenth reported as a plain line.
    live: std::sync::Mutex<std::collections::HashMap<(usize, u64), Shown>>,
}

enum Shown {
    Bar(indicatif::ProgressBar),
    Tenth(usize),
}

impl Bars {
    pub fn new(mode: Option<bool>) -> Bars {
        Bars {
            mode,
            live: Default::default(),
        }
    }

    /// Whether ranks should report progress.
    pub fn on(&self) -> bool {
        self.mode.is_some()
    }

    /// If `line` is a progress line of `rank`, show it and return true.
    pub fn take(&self, rank: usize, line: &[u8]) -> bool {
        let Some(terminal) = self.mode else {
            return false;
        };
        let Some((id, done, total, label)) = ranks::config::parse_progress_line(rank, line) else {
            return false;
        };
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let key = (rank, id);
        if terminal {
            let shown = live.entry(key).or_insert_with(|| {
                let mp = DRAWN.get_or_init(indicatif::MultiProgress::new);
                let bar = mp.add(indicatif::ProgressBar::new(total as u64));
                let style = indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:40}] {pos}/{len} ({percent}%) {per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                bar.set_prefix(format!("rank {rank} {label}"));
                Shown::Bar(bar)
            });
            if let Shown::Bar(bar) = shown {
                bar.set_position(done as u64);
                if done == total {
                    bar.finish();
                    live.remove(&key);
                }
            }
        } else {
            let tenth = (done * 10).checked_div(total).unwrap_or(10);
            let last = match live.get(&key) {
                Some(Shown::Tenth(t)) => Some(*t),
                _ => None,
            };
            if last.is_none_or(|t| tenth > t) && done > 0 {
                say_line(&format!(
                    "ranks: rank {rank} {label}: {done}/{total} ({}%)",
                    done * 100 / total.max(1)
                ));
                live.insert(key, Shown::Tenth(tenth));
            } else if last.is_none() {
                live.insert(key, Shown::Tenth(0));
            }
            if done == total {
                live.remove(&key);
            }
        }
        true
    }
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

/// The last lines each rank wrote to stderr, to show again, prefixed with the rank, when it
/// turns out to be the rank whose failure ended the job.
#[derive(Default)]
pub struct Tails {
    lines: std::sync::Mutex<std::collections::HashMap<usize, std::collections::VecDeque<Vec<u8>>>>,
}

impl Tails {
    /// Lines kept per rank.
    pub const LINES: usize = 10;
    /// Bytes kept of each line.
    const WIDTH: usize = 1024;

    pub fn note(&self, rank: usize, line: &[u8]) {
        let mut all = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let q = all.entry(rank).or_default();
        if q.len() == Self::LINES {
            q.pop_front();
        }
        let mut l = line[..line.len().min(Self::WIDTH)].to_vec();
        if l.last() != Some(&b'\n') {
            l.push(b'\n');
        }
        q.push_back(l);
    }

    pub fn take(&self, rank: usize) -> Vec<Vec<u8>> {
        let mut all = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        all.remove(&rank).map(Vec::from).unwrap_or_default()
    }

    /// Show the last stderr lines of `rank`, each prefixed `[rank] `, after a line saying so.
    pub fn show(&self, rank: usize) {
        let lines = self.take(rank);
        if lines.is_empty() {
            return;
        }
        say_line(&format!(
            "ranks: the last {} line(s) rank {rank} wrote to stderr:",
            lines.len()
        ));
        for l in lines {
            print_line(rank, true, true, &l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_are_taken_only_when_on_and_from_their_rank() {
        let line = ranks::config::progress_line(2, 0, 5, 10, "Pool.map");
        assert!(
            !Bars::new(None).take(2, line.as_bytes()),
            "off: printed as is"
        );
        let plain = Bars::new(Some(false));
        assert!(plain.take(2, line.as_bytes()));
        assert!(
            !plain.take(1, line.as_bytes()),
            "another rank's line is output"
        );
        assert!(!plain.take(2, b"hello"));
    }

    #[test]
    fn a_tail_keeps_the_last_lines_of_each_rank() {
        let t = Tails::default();
        for i in 0..15 {
            t.note(2, format!("line {i}\n").as_bytes());
        }
        t.note(3, b"other");
        let got = t.take(2);
        assert_eq!(got.len(), Tails::LINES);
        assert_eq!(got[0], b"line 5\n");
        assert_eq!(got[9], b"line 14\n");
        assert!(t.take(2).is_empty());
        assert_eq!(t.take(3), [b"other\n".to_vec()]);
        t.note(4, &[b'x'; 5000]);
        assert_eq!(t.take(4)[0].len(), 1025);
    }
}
