//! `ranks run --trace job.json`: the ranks' records merged into one Chrome/Perfetto trace
//! (open it at <https://ui.perfetto.dev> or `chrome://tracing`), and `ranks report job.json`:
//! a summary of it and a picture of who sent how much to whom.
//!
//! In the trace every rank is a process (`rank 3 (host)`), each of its threads a track; every
//! call is a complete event (`"ph": "X"`) with its peer, tag, bytes and communicator in
//! `args`. Collectives contain the point-to-point steps they are made of.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ranks::trace::{Cat, RankTrace};
use serde::{Deserialize, Serialize};

/// The fields of a Chrome trace event that `ranks` writes and reads.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ChromeEvent {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cat: String,
    pub ph: String,
    pub pid: u32,
    #[serde(default)]
    pub tid: u32,
    /// Microseconds from the start of the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dur: Option<f64>,
    #[serde(default)]
    pub args: Args,
}

/// `args` of an event: what the call was about (or, for metadata, a name or sort index).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Args {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<u32>,
    /// World rank of the peer of a point-to-point call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<u32>,
    /// Root of a collective (rank in its communicator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<u32>,
    /// Owner of a primitive (world rank).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort_index: Option<u32>,
}

/// What the job was, beside the events.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct JobInfo {
    pub ranks: u32,
    /// Host of each rank that sent a trace.
    pub hosts: BTreeMap<u32, String>,
    /// Ranks that wrote no trace (killed, or ended by a signal).
    pub missing: Vec<u32>,
    /// Events the ranks recorded but could not keep.
    pub dropped: u64,
    /// When the trace starts (Unix time, ns).
    pub start_unix_ns: u64,
}

/// A whole trace file.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TraceFile {
    pub trace_events: Vec<ChromeEvent>,
    #[serde(default)]
    pub display_time_unit: String,
    #[serde(default)]
    pub other_data: JobInfo,
}

/// Merge the traces of the ranks of a job of `size` ranks into one trace.
pub fn merge(traces: &[RankTrace], size: usize) -> TraceFile {
    let start = traces.iter().map(|t| t.t0_unix_ns).min().unwrap_or(0);
    let mut events = Vec::new();
    let mut info = JobInfo {
        ranks: size as u32,
        start_unix_ns: start,
        ..JobInfo::default()
    };
    for t in traces {
        info.hosts.insert(t.rank, t.host.clone());
        info.dropped += t.dropped;
        let meta = |name: &str, tid: u32, args: Args| ChromeEvent {
            name: name.into(),
            cat: String::new(),
            ph: "M".into(),
            pid: t.rank,
            tid,
            ts: None,
            dur: None,
            args,
        };
        events.push(meta(
            "process_name",
            0,
            Args {
                name: Some(format!("rank {} ({})", t.rank, t.host)),
                ..Args::default()
            },
        ));
        events.push(meta(
            "process_sort_index",
            0,
            Args {
                sort_index: Some(t.rank),
                ..Args::default()
            },
        ));
        for (tid, name) in t.threads.iter().enumerate() {
            events.push(meta(
                "thread_name",
                tid as u32,
                Args {
                    name: Some(name.clone()),
                    ..Args::default()
                },
            ));
        }
        let offset = t.t0_unix_ns - start;
        for e in &t.events {
            let mut args = Args {
                comm: Some(e.comm),
                tag: e.tag,
                ..Args::default()
            };
            match e.cat {
                Cat::P2p => {
                    args.peer = e.peer;
                    args.bytes = Some(e.bytes);
                }
                Cat::Coll => args.root = e.peer,
                Cat::Prim => args.owner = e.peer,
            }
            events.push(ChromeEvent {
                name: e.name.clone(),
                cat: e.cat.name().into(),
                ph: "X".into(),
                pid: t.rank,
                tid: e.tid,
                ts: Some((offset + e.start_ns) as f64 / 1000.0),
                dur: Some(e.dur_ns as f64 / 1000.0),
                args,
            });
        }
    }
    info.missing = (0..size as u32)
        .filter(|r| !info.hosts.contains_key(r))
        .collect();
    TraceFile {
        trace_events: events,
        display_time_unit: "ns".into(),
        other_data: info,
    }
}

/// One rank in a [`Report`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RankStats {
    pub rank: u32,
    pub host: String,
    /// From its first call's start to its last call's end, µs.
    pub span_us: f64,
    /// Time inside calls of ours (overlapping calls of several threads counted once), µs.
    pub in_calls_us: f64,
    pub calls: u64,
    pub sent_msgs: u64,
    pub sent_bytes: u64,
}

/// A call that took long, with the longest step inside it.
#[derive(Debug, Clone, PartialEq)]
pub struct Slow {
    pub rank: u32,
    pub what: String,
    pub at_us: f64,
    pub dur_us: f64,
    pub step: Option<String>,
}

/// What `ranks report` tells.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub size: usize,
    pub events: usize,
    pub span_us: f64,
    pub ranks: Vec<RankStats>,
    /// `traffic[from][to]`: (messages, bytes) sent.
    pub traffic: Vec<Vec<(u64, u64)>>,
    /// The slowest outermost calls, slowest first.
    pub slowest: Vec<Slow>,
    pub missing: Vec<u32>,
    pub dropped: u64,
}

/// How an event reads in a report: `recv(from 3, tag 5)`, `barrier(comm 2)`.
fn describe(e: &ChromeEvent) -> String {
    let a = &e.args;
    let mut parts = Vec::new();
    if let Some(p) = a.peer {
        let dir = if e.name.contains("send") {
            "to"
        } else {
            "from"
        };
        parts.push(format!("{dir} {p}"));
    } else if e.cat == "p2p" {
        parts.push("any source".into());
    }
    if let Some(r) = a.root {
        parts.push(format!("root {r}"));
    }
    if let Some(o) = a.owner {
        parts.push(format!("owner {o}"));
    }
    if let Some(t) = a.tag {
        parts.push(format!("tag {t}"));
    }
    if let Some(b) = a.bytes.filter(|b| *b > 0) {
        parts.push(bytes(b));
    }
    match a.comm {
        // The contexts of the primitives' requests and replies (see `ranks::primitives`).
        Some(c) if c >= 0xffff_ff00 => parts.push("primitive service".into()),
        Some(c) if c != 0 => parts.push(format!("comm {c}")),
        _ => {}
    }
    format!("{}({})", e.name, parts.join(", "))
}

/// Read a trace file's text into a report.
pub fn report(text: &str) -> Result<Report, String> {
    let file: TraceFile =
        serde_json::from_str(text).map_err(|e| format!("not a trace of ranks: {e}"))?;
    Ok(summarise(&file))
}

/// Summarise a trace: time in calls per rank, traffic per pair, the slowest calls.
pub fn summarise(file: &TraceFile) -> Report {
    let info = &file.other_data;
    let mut size = info.ranks as usize;
    let calls: Vec<&ChromeEvent> = file
        .trace_events
        .iter()
        .filter(|e| e.ph == "X" && e.ts.is_some())
        .collect();
    for e in &calls {
        size = size.max(e.pid as usize + 1);
        if let Some(p) = e.args.peer {
            size = size.max(p as usize + 1);
        }
    }
    let mut traffic = vec![vec![(0u64, 0u64); size]; size];
    // Ranks that made no call are listed too.
    let mut by_rank: BTreeMap<u32, Vec<&ChromeEvent>> =
        info.hosts.keys().map(|&r| (r, Vec::new())).collect();
    for e in &calls {
        by_rank.entry(e.pid).or_default().push(e);
        if e.cat == "p2p" && (e.name == "send" || e.name == "isend") {
            if let Some(p) = e.args.peer {
                let cell = &mut traffic[e.pid as usize][p as usize];
                cell.0 += 1;
                cell.1 += e.args.bytes.unwrap_or(0);
            }
        }
    }
    let (mut first, mut last) = (f64::MAX, 0f64);
    let mut ranks = Vec::new();
    let mut slowest = Vec::new();
    for (&rank, evs) in &by_rank {
        let mut iv: Vec<(f64, f64)> = evs
            .iter()
            .map(|e| {
                let s = e.ts.unwrap_or(0.0);
                (s, s + e.dur.unwrap_or(0.0))
            })
            .collect();
        iv.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mut busy, mut cur) = (0.0, None::<(f64, f64)>);
        for (s, e) in iv.iter().copied() {
            cur = match cur {
                Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
                Some((cs, ce)) => {
                    busy += ce - cs;
                    Some((s, e))
                }
                None => Some((s, e)),
            };
        }
        if let Some((cs, ce)) = cur {
            busy += ce - cs;
        }
        let lo = iv.first().map_or(0.0, |x| x.0);
        let hi = iv.iter().map(|x| x.1).fold(lo, f64::max);
        if !iv.is_empty() {
            first = first.min(lo);
            last = last.max(hi);
        }
        let sent = traffic[rank as usize]
            .iter()
            .fold((0, 0), |a, c| (a.0 + c.0, a.1 + c.1));
        ranks.push(RankStats {
            rank,
            host: info.hosts.get(&rank).cloned().unwrap_or_default(),
            span_us: hi - lo,
            in_calls_us: busy,
            calls: evs.len() as u64,
            sent_msgs: sent.0,
            sent_bytes: sent.1,
        });
        slowest.extend(outermost(rank, evs));
    }
    slowest.sort_by(|a, b| b.dur_us.total_cmp(&a.dur_us));
    slowest.truncate(10);
    Report {
        size,
        events: calls.len(),
        span_us: if last > first { last - first } else { 0.0 },
        ranks,
        traffic,
        slowest,
        missing: info.missing.clone(),
        dropped: info.dropped,
    }
}

/// The calls of one rank that no other call of the same thread contains, each with the
/// longest call inside it.
fn outermost(rank: u32, evs: &[&ChromeEvent]) -> Vec<Slow> {
    let mut by_thread: BTreeMap<u32, Vec<&ChromeEvent>> = BTreeMap::new();
    for e in evs {
        by_thread.entry(e.tid).or_default().push(e);
    }
    let mut out = Vec::new();
    for (_, mut v) in by_thread {
        // Outer calls first: by start, then the longer one.
        v.sort_by(|a, b| {
            let (sa, sb) = (a.ts.unwrap_or(0.0), b.ts.unwrap_or(0.0));
            sa.total_cmp(&sb)
                .then(b.dur.unwrap_or(0.0).total_cmp(&a.dur.unwrap_or(0.0)))
        });
        let mut open: Option<(f64, Slow, f64)> = None; // (end, call, longest step)
        for e in v {
            let (s, d) = (e.ts.unwrap_or(0.0), e.dur.unwrap_or(0.0));
            if let Some((end, slow, longest)) = &mut open {
                if s < *end {
                    if d > *longest {
                        *longest = d;
                        slow.step = Some(format!("{} for {}", describe(e), secs(d)));
                    }
                    continue;
                }
                out.push(open.take().expect("open").1);
            }
            open = Some((
                s + d,
                Slow {
                    rank,
                    what: describe(e),
                    at_us: s,
                    dur_us: d,
                    step: None,
                },
                0.0,
            ));
        }
        out.extend(open.map(|o| o.1));
    }
    out
}

/// `1.5 KiB`, `3.0 MiB`.
pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Microseconds, readably: `850 us`, `12.3 ms`, `1.204 s`.
pub fn secs(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} us")
    } else if us < 1e6 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{:.3} s", us / 1e6)
    }
}

impl Report {
    /// The summary as text.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} ranks, {} calls over {}",
            self.size,
            self.events,
            secs(self.span_us)
        );
        if !self.missing.is_empty() {
            let m: Vec<String> = self.missing.iter().map(u32::to_string).collect();
            let _ = writeln!(
                s,
                "no trace from rank(s) {} (killed, or ended by a signal)",
                m.join(", ")
            );
        }
        if self.dropped > 0 {
            let _ = writeln!(
                s,
                "{} calls were not recorded (over the limit per rank)",
                self.dropped
            );
        }
        let _ = writeln!(s, "\nTime in communication, per rank:");
        let _ = writeln!(
            s,
            "  {:>5}  {:<12} {:>11} {:>7}  {:>8}  {:>9}  {:>11}",
            "rank", "host", "in calls", "share", "calls", "msgs sent", "bytes sent"
        );
        for r in &self.ranks {
            let share = if r.span_us > 0.0 {
                100.0 * r.in_calls_us / r.span_us
            } else {
                0.0
            };
            let _ = writeln!(
                s,
                "  {:>5}  {:<12} {:>11} {:>6.1}%  {:>8}  {:>9}  {:>11}",
                r.rank,
                r.host,
                secs(r.in_calls_us),
                share,
                r.calls,
                r.sent_msgs,
                bytes(r.sent_bytes)
            );
        }
        let mut pairs: Vec<(usize, usize, u64, u64)> = Vec::new();
        for (i, row) in self.traffic.iter().enumerate() {
            for (j, &(m, b)) in row.iter().enumerate() {
                if m > 0 {
                    pairs.push((i, j, m, b));
                }
            }
        }
        pairs.sort_by(|a, b| b.3.cmp(&a.3).then(b.2.cmp(&a.2)));
        let _ = writeln!(
            s,
            "\nTraffic by pair (sender -> receiver; {} pairs, top 20 by bytes):",
            pairs.len()
        );
        for (i, j, m, b) in pairs.iter().take(20) {
            let _ = writeln!(s, "  {i:>5} -> {j:<5} {:>11} in {m} messages", bytes(*b));
        }
        let _ = writeln!(s, "\nSlowest calls (outermost, with their longest step):");
        for w in &self.slowest {
            let _ = write!(
                s,
                "  rank {:<4} {:>10}  {} at {}",
                w.rank,
                secs(w.dur_us),
                w.what,
                secs(w.at_us)
            );
            if let Some(step) = &w.step {
                let _ = write!(s, "; longest step {step}");
            }
            s.push('\n');
        }
        s
    }

    /// A heatmap of bytes sent per pair, as SVG.
    pub fn heatmap_svg(&self) -> String {
        let n = self.size.max(1);
        let cell = (640 / n).clamp(4, 40) as f64;
        let (left, top) = (70.0, 60.0);
        let side = cell * n as f64;
        let (w, h) = (left + side + 150.0, top + side + 40.0);
        let max = self
            .traffic
            .iter()
            .flatten()
            .map(|c| c.1)
            .max()
            .unwrap_or(0)
            .max(1);
        let shade = |b: u64| {
            // Log scale from a very light to a dark blue.
            let t = if b == 0 {
                0.0
            } else {
                ((1.0 + b as f64).ln() / (1.0 + max as f64).ln()).clamp(0.05, 1.0)
            };
            let mix = |a: f64, z: f64| (a + (z - a) * t).round() as u8;
            format!(
                "#{:02x}{:02x}{:02x}",
                mix(247.0, 8.0),
                mix(251.0, 48.0),
                mix(255.0, 107.0)
            )
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{left}" y="20" font-size="14">Bytes sent, by sender (rows) and receiver (columns)</text>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">receiver</text>"#,
            left + side / 2.0,
            top - 22.0
        );
        let _ = writeln!(
            s,
            r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">sender</text>"#,
            top + side / 2.0,
            top + side / 2.0
        );
        let label_every = n.div_ceil(32);
        for i in 0..n {
            if i % label_every == 0 {
                let c = left + cell * (i as f64 + 0.5);
                let _ = writeln!(
                    s,
                    r#"<text x="{c}" y="{}" text-anchor="middle">{i}</text>"#,
                    top - 6.0
                );
                let r = top + cell * (i as f64 + 0.5) + 4.0;
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{r}" text-anchor="end">{i}</text>"#,
                    left - 6.0
                );
            }
        }
        for i in 0..n {
            for j in 0..n {
                let (m, b) = self
                    .traffic
                    .get(i)
                    .and_then(|r| r.get(j))
                    .copied()
                    .unwrap_or((0, 0));
                let _ = writeln!(
                    s,
                    r##"<rect x="{}" y="{}" width="{cell}" height="{cell}" fill="{}" stroke="#ddd"><title>{i} -> {j}: {} in {m} messages</title></rect>"##,
                    left + cell * j as f64,
                    top + cell * i as f64,
                    shade(b),
                    bytes(b)
                );
            }
        }
        // The scale.
        let lx = left + side + 20.0;
        for k in 0..=4u32 {
            let b = if k == 0 {
                0
            } else {
                ((1.0 + max as f64).powf(f64::from(k) / 4.0) - 1.0) as u64
            };
            let y = top + f64::from(k) * 22.0;
            let _ = writeln!(
                s,
                r##"<rect x="{lx}" y="{y}" width="16" height="16" fill="{}" stroke="#ddd"/><text x="{}" y="{}">{}</text>"##,
                shade(b),
                lx + 22.0,
                y + 12.0,
                bytes(b)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ranks::trace::Event;

    fn ev(
        name: &str,
        cat: Cat,
        tid: u32,
        start: u64,
        dur: u64,
        peer: Option<u32>,
        bytes: u64,
    ) -> Event {
        Event {
            name: name.into(),
            cat,
            tid,
            start_ns: start,
            dur_ns: dur,
            comm: 0,
            peer,
            tag: Some(1),
            bytes,
        }
    }

    fn rank(r: u32, t0: u64, events: Vec<Event>) -> RankTrace {
        RankTrace {
            rank: r,
            host: format!("h{r}"),
            pid: 100 + r,
            t0_unix_ns: t0,
            dropped: 0,
            threads: vec!["main".into()],
            events,
        }
    }

    /// Rank 0 sends 3 x 100 B to 1 inside a barrier; rank 1 receives; rank 2 sent no trace.
    fn job() -> TraceFile {
        let r0 = rank(
            0,
            1_000_000,
            vec![
                ev("barrier", Cat::Coll, 0, 0, 50_000, None, 0),
                ev("send", Cat::P2p, 0, 1_000, 2_000, Some(1), 100),
                ev("send", Cat::P2p, 0, 40_000, 9_000, Some(1), 100),
                ev("isend", Cat::P2p, 0, 60_000, 1_000, Some(1), 100),
            ],
        );
        let r1 = rank(
            1,
            1_010_000, // started 10 us after rank 0
            vec![
                ev("recv", Cat::P2p, 0, 0, 5_000, Some(0), 100),
                ev("recv", Cat::P2p, 1, 2_000, 5_000, None, 100),
            ],
        );
        merge(&[r0, r1], 3)
    }

    #[test]
    fn merging_puts_every_rank_on_one_clock_with_its_own_track() {
        let f = job();
        let names: Vec<_> = f
            .trace_events
            .iter()
            .filter(|e| e.name == "process_name")
            .map(|e| e.args.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["rank 0 (h0)", "rank 1 (h1)"]);
        let recv = f
            .trace_events
            .iter()
            .find(|e| e.pid == 1 && e.name == "recv")
            .unwrap();
        assert_eq!(recv.ts, Some(10.0), "rank 1 started 10 us later");
        assert_eq!(recv.args.peer, Some(0));
        assert_eq!(f.other_data.missing, [2]);
        // It reads back.
        let text = serde_json::to_string(&f).unwrap();
        assert!(text.contains("\"traceEvents\""));
        assert_eq!(serde_json::from_str::<TraceFile>(&text).unwrap(), f);
    }

    #[test]
    fn the_report_counts_traffic_time_and_the_slowest_calls() {
        let r = summarise(&job());
        assert_eq!(r.size, 3);
        assert_eq!(r.traffic[0][1], (3, 300));
        assert_eq!(r.traffic[1][0], (0, 0));
        let r0 = &r.ranks[0];
        assert_eq!((r0.sent_msgs, r0.sent_bytes, r0.calls), (3, 300, 4));
        // The barrier covers 0..50 us, the isend 60..61: 51 us in calls over a 61 us span.
        assert!((r0.in_calls_us - 51.0).abs() < 1e-9, "{}", r0.in_calls_us);
        assert!((r0.span_us - 61.0).abs() < 1e-9);
        // Rank 1's two threads overlap (10..15 and 12..17): 7 us, counted once.
        assert!((r.ranks[1].in_calls_us - 7.0).abs() < 1e-9);
        // The barrier is the slowest outermost call; its longest step is the 9 us send.
        let top = &r.slowest[0];
        assert_eq!((top.rank, top.dur_us), (0, 50.0));
        assert!(top.what.starts_with("barrier("), "{}", top.what);
        assert!(
            top.step.as_deref().unwrap().starts_with("send(to 1"),
            "{top:?}"
        );
        // Sends inside the barrier are not outermost calls.
        assert!(r.slowest.iter().all(|s| !s.what.starts_with("send(")));
        let text = r.text();
        assert!(text.contains("0 -> 1"), "{text}");
        assert!(text.contains("no trace from rank(s) 2"), "{text}");
    }

    #[test]
    fn the_heatmap_has_a_cell_per_pair_shaded_by_bytes() {
        let r = summarise(&job());
        let svg = r.heatmap_svg();
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<title>").count(), 9);
        assert!(svg.contains("<title>0 -> 1: 300 B in 3 messages</title>"));
        // The busiest pair is the darkest; an empty one is white-ish.
        assert!(svg.contains(r##"fill="#08306b" stroke="#ddd"><title>0 -> 1"##));
        assert!(svg.contains(r##"fill="#f7fbff" stroke="#ddd"><title>1 -> 0"##));
    }

    #[test]
    fn a_file_that_is_not_a_trace_is_a_clear_error() {
        let e = report("{\"hello\": 1}").unwrap_err();
        assert!(e.contains("not a trace of ranks"), "{e}");
    }
}
