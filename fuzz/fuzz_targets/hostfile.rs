//! Hostfiles, `--host` lists and Slurm's node lists and task counts: any text parses to hosts
//! with names and at least one slot each (to names, to counts), or to an error; placing ranks
//! on what parsed never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ranks_launcher::hosts::{map, parse_host_list, parse_hostfile_text, MapBy};
use ranks_launcher::slurm::{parse_hostlist, parse_tasks_per_node};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(names) = parse_hostlist(text) {
        assert!(!names.is_empty() && names.len() <= 100_000);
        assert!(names.iter().all(|n| !n.is_empty()));
    }
    if let Ok(counts) = parse_tasks_per_node(text) {
        assert!(!counts.is_empty() && counts.len() <= 100_000);
    }
    for parsed in [parse_hostfile_text(text, "fuzz"), parse_host_list(text)] {
        let Ok(hosts) = parsed else { continue };
        assert!(!hosts.is_empty());
        for h in &hosts {
            assert!(!h.name.is_empty() && h.slots >= 1, "{h:?}");
        }
        for n in [1, 2, 7, 64] {
            for by in [MapBy::Slot, MapBy::Node] {
                if let Ok(placed) = map(&hosts, n, by) {
                    assert_eq!(placed.len(), n);
                    assert!(placed.iter().all(|&h| (h as usize) < hosts.len()));
                }
            }
        }
    }
});
