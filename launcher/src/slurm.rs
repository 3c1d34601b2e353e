//! Running inside a Slurm allocation (`salloc`, `sbatch`): the hosts and slots come from
//! Slurm's environment, and agents on the other nodes are started with `srun` instead of ssh.
//!
//! Slurm writes node lists in its compressed "hostlist" form, `node[01-04,07],gpu2`, and the
//! tasks per node as counts with repeats, `2(x3),1`.

use crate::hosts::Host;

/// The nodes of a Slurm hostlist, in order: `node[01-03],gpu2` is node01, node02, node03,
/// gpu2. Ranges keep their zero padding; several bracket groups in one name multiply
/// (`r[1-2]n[1-2]` is r1n1, r1n2, r2n1, r2n2).
pub fn parse_hostlist(list: &str) -> Result<Vec<String>, String> {
    let bad = |why: &str| format!("Slurm node list {list:?}: {why}");
    let mut out = Vec::new();
    // Split on commas outside brackets.
    let mut depth = 0usize;
    let mut start = 0;
    let mut items = Vec::new();
    for (i, c) in list.char_indices() {
        match c {
            '[' => {
                if depth > 0 {
                    return Err(bad("nested brackets"));
                }
                depth = 1;
            }
            ']' => {
                if depth == 0 {
                    return Err(bad("a ']' without its '['"));
                }
                depth = 0;
            }
            ',' if depth == 0 => {
                items.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(bad("a '[' without its ']'"));
    }
    items.push(&list[start..]);
    for item in items {
        let item = item.trim();
        if item.is_empty() {
            return Err(bad("an empty name"));
        }
        let mut names = vec![String::new()];
        let mut rest = item;
        while !rest.is_empty() {
            match rest.find('[') {
                None => {
                    for n in &mut names {
                        n.push_str(rest);
                    }
                    rest = "";
                }
                Some(open) => {
                    let close = open + rest[open..].find(']').ok_or_else(|| bad("unclosed '['"))?;
                    let fixed = &rest[..open];
                    let values = expand_ranges(&rest[open + 1..close]).map_err(|w| bad(&w))?;
                    if names.len().saturating_mul(values.len()) + out.len() > 100_000 {
                        return Err(bad("more than 100000 nodes"));
                    }
                    let mut next = Vec::with_capacity(names.len() * values.len());
                    for n in &names {
                        for v in &values {
                            next.push(format!("{n}{fixed}{v}"));
                        }
                    }
                    names = next;
                    rest = &rest[close + 1..];
                }
            }
        }
        out.extend(names);
        if out.len() > 100_000 {
            return Err(bad("more than 100000 nodes"));
        }
    }
    Ok(out)
}

/// `01-03,07` → `01 02 03 07` (zero padding as in the range's first number).
fn expand_ranges(spec: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in spec.split(',') {
        let part = part.trim();
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(lo) || !digits(hi) {
            return Err(format!("{part:?} is not a number or a range of numbers"));
        }
        let width = lo.len();
        let (a, b): (u64, u64) = (
            lo.parse().map_err(|_| format!("{lo:?} is too large"))?,
            hi.parse().map_err(|_| format!("{hi:?} is too large"))?,
        );
        if a > b {
            return Err(format!("the range {part:?} runs backwards"));
        }
        if b - a >= 100_000 || out.len() as u64 + (b - a) >= 100_000 {
            return Err("more than 100000 nodes".into());
        }
        out.extend((a..=b).map(|v| format!("{v:0width$}")));
    }
    Ok(out)
}

/// `2(x3),1` → `[2, 2, 2, 1]`.
pub fn parse_tasks_per_node(spec: &str) -> Result<Vec<usize>, String> {
    let bad = || format!("SLURM_TASKS_PER_NODE {spec:?}: expected counts like 2(x3),1");
    let mut out = Vec::new();
    for part in spec.split(',') {
        let part = part.trim();
        let (count, times) = match part.split_once("(x") {
            Some((c, rest)) => (c, rest.strip_suffix(')').ok_or_else(bad)?),
            None => (part, "1"),
        };
        let count: usize = count.parse().map_err(|_| bad())?;
        let times: usize = times.parse().map_err(|_| bad())?;
        if times == 0 || out.len() + times > 100_000 {
            return Err(bad());
        }
        out.extend(std::iter::repeat_n(count, times));
    }
    Ok(out)
}

/// A Slurm allocation this process runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub job: String,
    /// Every node with its number of task slots.
    pub hosts: Vec<Host>,
}

impl Allocation {
    /// The allocation described by the environment (`get`), if there is one.
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Allocation>, String> {
        let (Some(job), Some(nodes)) = (
            get("SLURM_JOB_ID").or_else(|| get("SLURM_JOBID")),
            get("SLURM_JOB_NODELIST").or_else(|| get("SLURM_NODELIST")),
        ) else {
            return Ok(None);
        };
        let names = parse_hostlist(&nodes)?;
        // Without a task count (`salloc -N 2` alone) each node offers its CPUs.
        let slots = match get("SLURM_TASKS_PER_NODE") {
            Some(t) => parse_tasks_per_node(&t)?,
            None => match get("SLURM_JOB_CPUS_PER_NODE") {
                Some(c) => parse_tasks_per_node(&c)?,
                None => vec![1; names.len()],
            },
        };
        if slots.len() != names.len() {
            return Err(format!(
                "Slurm gives {} nodes ({nodes}) but {} task counts",
                names.len(),
                slots.len()
            ));
        }
        Ok(Some(Allocation {
            job,
            hosts: names
                .into_iter()
                .zip(slots)
                .map(|(name, slots)| Host { name, slots })
                .collect(),
        }))
    }

    pub fn slots(&self) -> usize {
        self.hosts.iter().map(|h| h.slots).sum()
    }
}

/// The command that starts an agent on `host` of the allocation, before the agent's own
/// arguments: one task on that node, overlapping the job's other steps (the launcher may
/// itself run in one), no CPU binding (the agent's ranks use the node's CPUs as they are).
pub fn srun_agent(host: &str) -> Vec<String> {
    [
        "srun",
        "--nodes=1",
        "--ntasks=1",
        "--overlap",
        "--cpu-bind=none",
        "--kill-on-bad-exit=1",
        "--quiet",
        "--unbuffered",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--nodelist={host}")])
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostlists_expand_like_slurm() {
        assert_eq!(parse_hostlist("vm").unwrap(), ["vm"]);
        assert_eq!(
            parse_hostlist("node[01-04,07],gpu2").unwrap(),
            ["node01", "node02", "node03", "node04", "node07", "gpu2"]
        );
        assert_eq!(
            parse_hostlist("r[1-2]n[08-09]").unwrap(),
            ["r1n08", "r1n09", "r2n08", "r2n09"]
        );
        assert_eq!(
            parse_hostlist("a[9-11]-ib,b").unwrap(),
            ["a9-ib", "a10-ib", "a11-ib", "b"]
        );
        assert_eq!(
            parse_hostlist("ranks-h[1-2]").unwrap(),
            ["ranks-h1", "ranks-h2"]
        );
    }

    #[test]
    fn bad_hostlists_are_clear_errors() {
        for (list, why) in [
            ("node[1-", "without its ']'"),
            ("node1]", "without its '['"),
            ("node[3-1]", "backwards"),
            ("node[a-b]", "not a number"),
            ("a,,b", "empty name"),
            ("n[[1]]", "nested"),
            ("n[0-99999999]", "more than 100000"),
            ("a[0-999]b[0-999]", "more than 100000"),
        ] {
            let e = parse_hostlist(list).unwrap_err();
            assert!(e.contains(why), "{list}: {e}");
        }
    }

    #[test]
    fn tasks_per_node_repeat() {
        assert_eq!(parse_tasks_per_node("2(x3),1").unwrap(), [2, 2, 2, 1]);
        assert_eq!(parse_tasks_per_node("4").unwrap(), [4]);
        for bad in ["", "x", "2(x0)", "2(x3", "-1"] {
            assert!(parse_tasks_per_node(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_allocation_comes_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(Allocation::from_env(&env(&[])).unwrap(), None);
        let a = Allocation::from_env(&env(&[
            ("SLURM_JOB_ID", "42"),
            ("SLURM_JOB_NODELIST", "n[1-3]"),
            ("SLURM_TASKS_PER_NODE", "2(x2),1"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(a.job, "42");
        assert_eq!(a.slots(), 5);
        assert_eq!(
            a.hosts,
            [
                Host {
                    name: "n1".into(),
                    slots: 2
                },
                Host {
                    name: "n2".into(),
                    slots: 2
                },
                Host {
                    name: "n3".into(),
                    slots: 1
                },
            ]
        );
        // `salloc -N 2` without tasks: the CPUs per node.
        let a = Allocation::from_env(&env(&[
            ("SLURM_JOB_ID", "7"),
            ("SLURM_JOB_NODELIST", "a,b"),
            ("SLURM_JOB_CPUS_PER_NODE", "8(x2)"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(a.slots(), 16);
        let e = Allocation::from_env(&env(&[
            ("SLURM_JOB_ID", "7"),
            ("SLURM_JOB_NODELIST", "a,b"),
            ("SLURM_TASKS_PER_NODE", "1"),
        ]))
        .unwrap_err();
        assert!(e.contains("2 nodes"), "{e}");
    }
}
