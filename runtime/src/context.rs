//! Context ids: the one owner of which ids this process's communicators use.
//!
//! Every communicator takes two ids, `ctx` for point-to-point and `ctx + 1` for its
//! collectives; the world has 0. A new communicator's id is agreed by its members in a
//! collective on the parent ([`crate::Comm::split`]): each proposes the lowest id free
//! locally, the largest proposal wins, and each member claims it. Threads of one process may
//! create communicators at once (on different parents), so two agreements can pick the same
//! id: a member that finds it already claimed says so, and the agreement is retried above
//! it, each parent jumping ahead by a different amount so the contenders part.

use std::collections::BTreeSet;
use std::sync::Mutex;

/// Ids at or above this are kept for the runtime's own traffic (primitives' services).
pub(crate) const RESERVED_FROM: u32 = u32::MAX - 16;

/// The context ids in use in this process.
pub(crate) struct Contexts {
    used: Mutex<BTreeSet<u32>>,
}

impl Contexts {
    pub(crate) fn new() -> Contexts {
        Contexts {
            used: Mutex::new(BTreeSet::from([0])),
        }
    }

    fn used(&self) -> std::sync::MutexGuard<'_, BTreeSet<u32>> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lowest even id at or above `at_least` not in use here (`None`: none left).
    pub(crate) fn propose(&self, at_least: u32) -> Option<u32> {
        let used = self.used();
        let mut c = at_least.max(2).next_multiple_of(2);
        // Claimed ids are even; walk the claimed ones at or above c.
        for &u in used.range(c..) {
            if u > c {
                break;
            }
            c = u + 2;
        }
        (c < RESERVED_FROM).then_some(c)
    }

    /// Claim `id` for a new communicator; false if it is already in use here.
    pub(crate) fn claim(&self, id: u32) -> bool {
        id.is_multiple_of(2) && id < RESERVED_FROM && self.used().insert(id)
    }

    /// Give back an id claimed by an agreement that failed elsewhere.
    pub(crate) fn release(&self, id: u32) {
        self.used().remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposals_skip_claimed_ids_and_claims_are_exclusive() {
        let c = Contexts::new();
        assert_eq!(c.propose(0), Some(2));
        assert!(c.claim(2));
        assert!(!c.claim(2));
        assert_eq!(c.propose(0), Some(4));
        assert!(c.claim(6));
        assert_eq!(c.propose(3), Some(4));
        assert!(c.claim(4));
        assert_eq!(c.propose(2), Some(8));
        c.release(4);
        assert_eq!(c.propose(2), Some(4));
        assert_eq!(c.propose(RESERVED_FROM), None);
        assert!(!c.claim(5), "odd ids belong to collectives");
    }

    #[test]
    fn threads_claiming_at_once_never_share_an_id() {
        let c = std::sync::Arc::new(Contexts::new());
        let got: Vec<Vec<u32>> = (0..8)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    while mine.len() < 200 {
                        let p = c.propose(0).unwrap();
                        if c.claim(p) {
                            mine.push(p);
                        }
                    }
                    mine
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        let all: BTreeSet<u32> = got.iter().flatten().copied().collect();
        assert_eq!(all.len(), 8 * 200);
    }
}
