//! Hostfiles and `--host` lists: any text parses to hosts with names and at least one slot
//! each, or to an error; placing ranks on what parsed never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ranks_launcher::hosts::{map, parse_host_list, parse_hostfile_text, MapBy};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
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
