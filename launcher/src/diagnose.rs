//! Explaining a stuck job: what each rank is blocked in, who waits on whom, the wait-for
//! cycles (deadlocks), and collectives called in a different order on different ranks.
//!
//! Pure: the launcher gathers the ranks' records from every host's job board and hands them
//! here; the lines that come back are printed as they are.

use std::collections::BTreeMap;

use ranks::board::Blocked;

/// What the launcher knows of one rank.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum View {
    /// Blocked in a call of ours, as its record says.
    Blocked(Blocked),
    /// Running, not blocked in a call of ours (computing, or blocked elsewhere).
    Running,
    /// Stopped by a signal (SIGSTOP, Ctrl-Z, a debugger), with its last record if any.
    Stopped(Option<Blocked>),
    /// It ended; how.
    Ended(String),
    /// Its host did not answer.
    Unknown,
}

fn comm_name(ctx: u32) -> String {
    if ctx == 0 {
        "world".into()
    } else {
        format!("comm {ctx}")
    }
}

/// `recv(from 1, tag 5)`, `send(to 2, tag 0, 1048576 bytes)`, `recv(from any)`.
fn step(b: &Blocked) -> String {
    let dir = match b.op.as_str() {
        "send" => "to",
        "wait" => "on",
        _ => "from",
    };
    let mut parts = vec![match b.peer {
        Some(p) => format!("{dir} {p}"),
        None => format!("{dir} any"),
    }];
    // Tags of collective steps are internal; show the user's own.
    if let (Some(t), None) = (b.tag, &b.within) {
        parts.push(format!("tag {t}"));
    }
    if b.bytes > 0 {
        parts.push(format!("{} bytes", b.bytes));
    }
    format!("{}({})", b.op, parts.join(", "))
}

/// The whole call: `all_reduce_slice #3 on world, in recv(from 0)`.
fn describe(b: &Blocked) -> String {
    match &b.within {
        Some(w) if is_primitive(&w.op) => {
            let owner = w
                .root
                .map_or(String::new(), |o| format!(" (owned by rank {o})"));
            format!("{}{owner}, in {}", w.op, step(b))
        }
        Some(w) => {
            let root = w.root.map_or(String::new(), |r| format!(", root {r}"));
            format!(
                "{} #{} on {}{root}, in {}",
                w.op,
                w.seq,
                comm_name(w.comm),
                step(b)
            )
        }
        None => step(b),
    }
}

/// Primitive calls are named after their type (`Lock.acquire`), collectives in lower case.
fn is_primitive(op: &str) -> bool {
    op.starts_with(|c: char| c.is_ascii_uppercase())
}

/// The rank `b` waits on, if one.
fn waits_on(me: usize, b: &Blocked) -> Option<usize> {
    let p = b.peer? as usize;
    (p != me).then_some(p)
}

/// The lines explaining the job's state (`now_ms`: the launcher's clock, for durations).
pub fn explain(views: &[View], now_ms: u64) -> Vec<String> {
    let mut out = vec!["what each rank is doing:".to_string()];
    for (r, v) in views.iter().enumerate() {
        let what = match v {
            View::Blocked(b) => {
                let secs = now_ms.saturating_sub(b.since_ms) as f64 / 1000.0;
                format!("blocked in {} for {secs:.1} s", describe(b))
            }
            View::Running => {
                "running, not in a ranks call (computing, or blocked elsewhere)".into()
            }
            View::Stopped(None) => "stopped by a signal (SIGSTOP, a debugger?)".into(),
            View::Stopped(Some(b)) => format!(
                "stopped by a signal (SIGSTOP, a debugger?) while in {}",
                describe(b)
            ),
            View::Ended(how) => how.clone(),
            View::Unknown => "unknown (its host did not answer)".into(),
        };
        out.push(format!("  rank {r}: {what}"));
    }

    // Wait-for cycles: each blocked rank waits on at most one rank.
    let next = |r: usize| match views.get(r) {
        Some(View::Blocked(b)) => waits_on(r, b),
        _ => None,
    };
    let mut seen_cycles: Vec<Vec<usize>> = Vec::new();
    for start in 0..views.len() {
        let mut path = vec![start];
        let mut cur = start;
        while let Some(n) = next(cur) {
            if let Some(pos) = path.iter().position(|&p| p == n) {
                let mut cycle = path[pos..].to_vec();
                let min = cycle
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, r)| **r)
                    .map(|(i, _)| i);
                cycle.rotate_left(min.unwrap_or(0));
                if !seen_cycles.contains(&cycle) {
                    seen_cycles.push(cycle);
                }
                break;
            }
            if path.len() > views.len() {
                break;
            }
            path.push(n);
            cur = n;
        }
    }
    for cycle in &seen_cycles {
        let mut s = String::from("deadlock: ");
        for &r in cycle {
            if let Some(View::Blocked(b)) = views.get(r) {
                s.push_str(&format!("rank {r} {} -> ", step(b)));
            }
        }
        s.push_str(&format!("rank {}", cycle[0]));
        out.push(s);
    }

    // Waits on ranks that ended or are not in a ranks call.
    for (r, v) in views.iter().enumerate() {
        let View::Blocked(b) = v else { continue };
        let Some(p) = waits_on(r, b) else { continue };
        match views.get(p) {
            Some(View::Ended(how)) => out.push(format!("rank {r} waits on rank {p}, which {how}")),
            Some(View::Running) => out.push(format!(
                "rank {r} waits on rank {p}, which is not in a ranks call"
            )),
            Some(View::Stopped(_)) => out.push(format!(
                "rank {r} waits on rank {p}, which is stopped by a signal"
            )),
            _ => {}
        }
    }

    // Collectives called in a different order: ranks blocked in collectives of one
    // communicator must be in the same call (same number, same operation).
    let mut by_comm: BTreeMap<u32, BTreeMap<(u64, String), Vec<usize>>> = BTreeMap::new();
    for (r, v) in views.iter().enumerate() {
        if let View::Blocked(Blocked {
            within: Some(w), ..
        }) = v
        {
            if !is_primitive(&w.op) {
                by_comm
                    .entry(w.comm)
                    .or_default()
                    .entry((w.seq, w.op.clone()))
                    .or_default()
                    .push(r);
            }
        }
    }
    for (comm, calls) in by_comm {
        if calls.len() < 2 {
            continue;
        }
        let parts: Vec<String> = calls
            .iter()
            .map(|((seq, op), ranks)| {
                let rs: Vec<String> = ranks.iter().map(usize::to_string).collect();
                format!("rank(s) {} in {op} (#{seq})", rs.join(", "))
            })
            .collect();
        out.push(format!(
            "collective mismatch on {}: {}",
            comm_name(comm),
            parts.join(" while ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ranks::board::Within;

    fn recv(from: Option<u32>, tag: i32) -> View {
        View::Blocked(Blocked {
            op: "recv".into(),
            comm: 0,
            peer: from,
            tag: Some(tag),
            bytes: 0,
            since_ms: 1000,
            within: None,
        })
    }

    fn coll(op: &str, seq: u64, peer: u32) -> View {
        View::Blocked(Blocked {
            op: "recv".into(),
            comm: 1,
            peer: Some(peer),
            tag: Some(77),
            bytes: 0,
            since_ms: 1000,
            within: Some(Within {
                op: op.into(),
                comm: 0,
                seq,
                root: None,
            }),
        })
    }

    #[test]
    fn a_two_rank_receive_deadlock_is_named_once() {
        let v = [recv(Some(1), 5), recv(Some(0), 7)];
        let out = explain(&v, 5900);
        assert!(out.contains(&"  rank 0: blocked in recv(from 1, tag 5) for 4.9 s".to_string()));
        let d: Vec<&String> = out.iter().filter(|l| l.starts_with("deadlock")).collect();
        assert_eq!(
            d,
            ["deadlock: rank 0 recv(from 1, tag 5) -> rank 1 recv(from 0, tag 7) -> rank 0"]
        );
    }

    #[test]
    fn a_longer_cycle_and_a_rank_outside_it() {
        // 3 waits on 0, which is in the cycle 0 -> 1 -> 2 -> 0.
        let v = [
            recv(Some(1), 0),
            recv(Some(2), 0),
            recv(Some(0), 0),
            recv(Some(0), 0),
        ];
        let out = explain(&v, 1000);
        let d: Vec<&String> = out.iter().filter(|l| l.starts_with("deadlock")).collect();
        assert_eq!(d.len(), 1, "{out:?}");
        assert!(d[0].starts_with("deadlock: rank 0 recv(from 1"), "{out:?}");
        assert!(
            d[0].ends_with("-> rank 2 recv(from 0, tag 0) -> rank 0"),
            "{out:?}"
        );
    }

    #[test]
    fn no_cycle_through_any_source_or_ended_ranks() {
        let v = [
            recv(None, 0),
            recv(Some(2), 0),
            View::Ended("exited with code 0".into()),
            View::Running,
            recv(Some(3), 1),
            View::Stopped(None),
            recv(Some(5), 1),
        ];
        let out = explain(&v, 1000);
        assert!(!out.iter().any(|l| l.starts_with("deadlock")), "{out:?}");
        assert!(out.contains(&"  rank 0: blocked in recv(from any, tag 0) for 0.0 s".into()));
        assert!(out.contains(&"rank 1 waits on rank 2, which exited with code 0".into()));
        assert!(out.contains(&"rank 4 waits on rank 3, which is not in a ranks call".into()));
        assert!(out.contains(&"rank 6 waits on rank 5, which is stopped by a signal".into()));
        assert!(out.contains(&"  rank 5: stopped by a signal (SIGSTOP, a debugger?)".into()));
    }

    #[test]
    fn collectives_in_a_different_order_are_a_mismatch() {
        let v = [coll("barrier", 3, 1), coll("all_reduce_slice", 3, 0)];
        let out = explain(&v, 1000);
        assert!(
            out.contains(
                &"collective mismatch on world: rank(s) 1 in all_reduce_slice (#3) while rank(s) 0 in barrier (#3)"
                    .to_string()
            ),
            "{out:?}"
        );
        assert!(
            out[1].contains("barrier #3 on world, in recv(from 1)"),
            "{out:?}"
        );
        // Same call everywhere: no mismatch.
        let v = [coll("barrier", 3, 1), coll("barrier", 3, 0)];
        assert!(!explain(&v, 1000).iter().any(|l| l.contains("mismatch")));
    }

    #[test]
    fn primitives_name_their_owner() {
        let v = [View::Blocked(Blocked {
            op: "recv".into(),
            comm: 4,
            peer: Some(1),
            tag: None,
            bytes: 0,
            since_ms: 0,
            within: Some(Within {
                op: "Lock.acquire".into(),
                comm: 0,
                seq: 0,
                root: Some(1),
            }),
        })];
        let out = explain(&v, 2000);
        assert_eq!(
            out[1],
            "  rank 0: blocked in Lock.acquire (owned by rank 1), in recv(from 1) for 2.0 s"
        );
    }
}
