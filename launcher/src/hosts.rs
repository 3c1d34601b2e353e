//! Where ranks run: `--host a:4,b:4`, `--hostfile F` (Open MPI's format), `--map-by`.

use std::path::Path;

/// A host and how many ranks it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub slots: usize,
}

/// `a:4,b:4,c` (no count means one slot).
pub fn parse_host_list(s: &str) -> Result<Vec<Host>, String> {
    let mut hosts = Vec::new();
    for item in s.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(format!("--host {s:?}: an empty host name"));
        }
        let (name, slots) = match item.rsplit_once(':') {
            Some((n, c)) => (
                n,
                c.parse::<usize>().ok().filter(|c| *c > 0).ok_or_else(|| {
                    format!("--host {item:?}: the slot count must be a number >= 1")
                })?,
            ),
            None => (item, 1),
        };
        check_name(name)?;
        hosts.push(Host {
            name: name.to_string(),
            slots,
        });
    }
    merge(hosts)
}

/// Lines `host [slots=N] [max_slots=M]`; `#` starts a comment; blank lines are skipped.
pub fn parse_hostfile(path: &Path) -> Result<Vec<Host>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the hostfile {}: {e}", path.display()))?;
    parse_hostfile_text(&text, &path.display().to_string())
}

/// A hostfile's `text`; `origin` names it in errors.
pub fn parse_hostfile_text(text: &str, origin: &str) -> Result<Vec<Host>, String> {
    let mut hosts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = || format!("{origin}:{}", i + 1);
        let mut words = line.split_whitespace();
        let name = words.next().expect("a non-empty line has a word");
        check_name(name).map_err(|e| format!("{}: {e}", at()))?;
        let mut slots = 1;
        for w in words {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| format!("{}: expected slots=N, found {w:?}", at()))?;
            let v: usize = v
                .parse()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| format!("{}: {k} must be a number >= 1", at()))?;
            match k {
                "slots" | "cpu" | "count" => slots = v,
                "max_slots" | "max-slots" => {}
                _ => return Err(format!("{}: unknown setting {k:?}", at())),
            }
        }
        hosts.push(Host {
            name: name.to_string(),
            slots,
        });
    }
    if hosts.is_empty() {
        return Err(format!("the hostfile {origin} names no host"));
    }
    merge(hosts)
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._@[]:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid host name"))
    }
}

/// A host named twice gets the slots of both mentions, at its first place.
fn merge(hosts: Vec<Host>) -> Result<Vec<Host>, String> {
    let mut out: Vec<Host> = Vec::new();
    for h in hosts {
        match out.iter_mut().find(|o| o.name == h.name) {
            Some(o) => {
                o.slots = o
                    .slots
                    .checked_add(h.slots)
                    .ok_or_else(|| format!("host {}: too many slots", h.name))?
            }
            None => out.push(h),
        }
    }
    Ok(out)
}

/// How ranks are laid out over the hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MapBy {
    /// Fill each host's slots before the next host: ranks 0-3 on a, 4-7 on b.
    Slot,
    /// One rank per host in turn: 0 on a, 1 on b, 2 on a, ...
    Node,
}

/// The host index of each of `n` ranks.
pub fn map(hosts: &[Host], n: usize, by: MapBy) -> Result<Vec<u32>, String> {
    let total: usize = hosts.iter().fold(0usize, |t, h| t.saturating_add(h.slots));
    if n > total {
        return Err(format!(
            "-n {n} asks for more ranks than the {total} slot(s) of the hosts given"
        ));
    }
    let mut left: Vec<usize> = hosts.iter().map(|h| h.slots).collect();
    let mut out = Vec::with_capacity(n);
    match by {
        MapBy::Slot => {
            for (i, h) in hosts.iter().enumerate() {
                let k = h.slots.min(n - out.len());
                out.extend(std::iter::repeat_n(i as u32, k));
            }
        }
        MapBy::Node => {
            let mut i = 0;
            while out.len() < n {
                if left[i] > 0 {
                    left[i] -= 1;
                    out.push(i as u32);
                }
                i = (i + 1) % hosts.len();
            }
        }
    }
    Ok(out)
}

/// Whether `name` is this machine (run its ranks directly, without ssh).
pub fn is_local(name: &str) -> bool {
    if matches!(name, "localhost" | "127.0.0.1" | "::1") {
        return true;
    }
    let me = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    !me.is_empty() && (name == me || name.split('.').next() == Some(me.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, slots: usize) -> Host {
        Host {
            name: name.into(),
            slots,
        }
    }

    #[test]
    fn host_lists() {
        assert_eq!(
            parse_host_list("a:4,b:2,c").unwrap(),
            vec![h("a", 4), h("b", 2), h("c", 1)]
        );
        assert_eq!(parse_host_list("a:1,a:2").unwrap(), vec![h("a", 3)]);
        // Found by the hostfile fuzz target: slot counts wrapped around to 0.
        let max = usize::MAX;
        assert!(parse_host_list(&format!("a:{max},a:1")).is_err());
        assert!(parse_hostfile_text(&format!("a slots={max}\na slots=1"), "f").is_err());
        let big = parse_host_list(&format!("a:{max},b:1")).unwrap();
        assert_eq!(map(&big, 3, MapBy::Node).unwrap(), vec![0, 1, 0]);
        assert!(parse_host_list("a:0").is_err());
        assert!(parse_host_list("a:x").is_err());
        assert!(parse_host_list("a,,b").is_err());
        assert!(parse_host_list("-o:1").is_err());
        assert!(parse_host_list("a;rm:1").is_err());
    }

    #[test]
    fn hostfiles() {
        let dir = std::env::temp_dir().join(format!("ranks-hostfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("hosts");
        std::fs::write(
            &f,
            "# lab\n\nnode1 slots=4\nnode2 slots=2 max_slots=8  # two\n  node3\n",
        )
        .unwrap();
        assert_eq!(
            parse_hostfile(&f).unwrap(),
            vec![h("node1", 4), h("node2", 2), h("node3", 1)]
        );
        std::fs::write(&f, "node1 slots=four\n").unwrap();
        assert!(parse_hostfile(&f).unwrap_err().contains(":1"));
        std::fs::write(&f, "node1 colour=red\n").unwrap();
        assert!(parse_hostfile(&f).is_err());
        std::fs::write(&f, "# nothing\n").unwrap();
        assert!(parse_hostfile(&f).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(parse_hostfile(&dir.join("missing")).is_err());
    }

    #[test]
    fn mapping() {
        let hosts = [h("a", 3), h("b", 2)];
        assert_eq!(map(&hosts, 5, MapBy::Slot).unwrap(), vec![0, 0, 0, 1, 1]);
        assert_eq!(map(&hosts, 4, MapBy::Slot).unwrap(), vec![0, 0, 0, 1]);
        assert_eq!(map(&hosts, 5, MapBy::Node).unwrap(), vec![0, 1, 0, 1, 0]);
        assert_eq!(map(&hosts, 2, MapBy::Node).unwrap(), vec![0, 1]);
        assert!(map(&hosts, 6, MapBy::Slot).is_err());
    }
}
