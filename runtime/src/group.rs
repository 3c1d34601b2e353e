//! Making communicators from communicators: `split`, `dup`, `subgroup`, `split_by_host`.
//!
//! A new communicator needs a context id that no communicator sharing a process with it
//! uses; `crate::context` owns them and says how members agree on one. Communicators of
//! disjoint groups (the colors of one split) share an id: their messages never meet.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::comm::Comm;
use crate::error::{Error, Result};

impl Comm {
    /// This process's rank in the world (the job).
    pub fn world_rank(&self) -> usize {
        self.core.rank
    }

    /// World rank of each member, in communicator rank order.
    pub fn members(&self) -> &[usize] {
        &self.members
    }

    /// Split into sub-communicators: ranks passing the same `color` form one, ordered by
    /// `key` (ties by rank in this communicator). `None` as color takes no part and gets
    /// `None` back. Collective: every rank must call it.
    ///
    /// ```
    /// let world = ranks::init()?;
    /// // Even and odd ranks, each in a communicator of their own.
    /// let half = world.split(Some(world.rank() as u32 % 2), 0)?.expect("every rank took part");
    /// assert_eq!(half.world_rank(), world.rank());
    /// half.barrier()?;
    /// # Ok::<(), ranks::Error>(())
    /// ```
    pub fn split(&self, color: Option<u32>, key: i32) -> Result<Option<Comm>> {
        let n = self.size();
        let contexts = &self.core.contexts;
        let out_of_ids = || Error::InvalidArgument("out of communicator context ids".into());
        let mut floor = 2;
        let (ctx, all, epoch) = loop {
            let proposal = contexts.propose(floor).ok_or_else(out_of_ids)?;
            let mine = [
                color.map_or(-1, i64::from),
                i64::from(key),
                i64::from(proposal),
            ];
            let mut all = vec![0i64; 3 * n];
            self.all_gather_slice(&mine, &mut all)?;
            let ctx = all.chunks(3).map(|c| c[2]).max().unwrap_or(2);
            let ctx = u32::try_from(ctx).map_err(|_| out_of_ids())?;
            // Another thread of some member may have claimed the same id meanwhile.
            let claimed = contexts.claim(ctx);
            // The new communicator's epoch is above every epoch of every member
            // (`crate::host_sync`). Read after the claim: a communicator that had this id
            // here before was made (and its epoch noted) before it was freed.
            let epoch_proposal = i64::from(self.core.epochs.load(Relaxed)) + 1;
            let mut oks = vec![0i64; 2 * n];
            self.all_gather_slice(&[i64::from(claimed), epoch_proposal], &mut oks)?;
            if oks.chunks(2).all(|c| c[0] == 1) {
                let epoch = oks.chunks(2).map(|c| c[1]).max().unwrap_or(1);
                let epoch = u32::try_from(epoch)
                    .map_err(|_| Error::InvalidArgument("out of communicator epochs".into()))?;
                self.core.epochs.fetch_max(epoch, Relaxed);
                break (ctx, all, epoch);
            }
            if claimed {
                contexts.release(ctx);
            }
            // Retry above it; parents part ways by jumping ahead by different amounts.
            floor = ctx.checked_add(2 + self.ctx % 128).ok_or_else(out_of_ids)?;
        };
        let Some(color) = color else {
            // No communicator here takes the id.
            contexts.release(ctx);
            return Ok(None);
        };
        let mut group: Vec<(i64, usize)> = all
            .chunks(3)
            .enumerate()
            .filter(|(_, c)| c[0] == i64::from(color))
            .map(|(r, c)| (c[1], r))
            .collect();
        group.sort();
        let members: Arc<[usize]> = group.iter().map(|&(_, r)| self.members[r]).collect();
        let rank = group
            .iter()
            .position(|&(_, r)| r == self.rank())
            .expect("this rank passed this color");
        Ok(Some(Comm::new(crate::comm::CommData {
            core: self.core.clone(),
            ctx,
            rank,
            members,
            coll_seq: Default::default(),
            obj_seq: Default::default(),
            layout: Default::default(),
            epoch,
            host_slot: Default::default(),
            host_ops: Default::default(),
            host_last: Default::default(),
            labels: Default::default(),
        })))
    }

    /// A copy of this communicator with its own message space. Collective.
    pub fn dup(&self) -> Result<Comm> {
        Ok(self
            .split(Some(0), self.rank() as i32)?
            .expect("every rank passes color 0"))
    }

    /// The communicator of the listed ranks (in that order); `None` on ranks not listed.
    /// Collective: every rank must call it with the same list.
    pub fn subgroup(&self, ranks: &[usize]) -> Result<Option<Comm>> {
        if let Some(&bad) = ranks.iter().find(|&&r| r >= self.size()) {
            return Err(Error::InvalidRank {
                rank: bad as i64,
                size: self.size(),
            });
        }
        let pos = ranks.iter().position(|&r| r == self.rank());
        self.split(pos.map(|_| 0), pos.unwrap_or(0) as i32)
    }

    /// The name of this rank's host in the job (MPI's processor name): the name the
    /// launcher knows it by, Slurm's node name under srun, the machine's name otherwise.
    ///
    /// ```
    /// let world = ranks::init()?;
    /// assert!(!world.host().is_empty());
    /// # Ok::<(), ranks::Error>(())
    /// ```
    pub fn host(&self) -> &str {
        &self.core.host
    }

    /// The ranks that share this host, as a communicator (ordered by rank). Collective.
    pub fn split_by_host(&self) -> Result<Comm> {
        let host = self.core.host.clone();
        let hosts = self.all_gather(&host)?;
        let color = hosts.iter().position(|h| *h == host).unwrap_or(0) as u32;
        Ok(self
            .split(Some(color), self.rank() as i32)?
            .expect("every rank has a host"))
    }
}

/// How two groups or two communicators relate (MPI's `MPI_IDENT` .. `MPI_UNEQUAL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// The same members in the same order (communicators: the same communicator, or a
    /// clone of it).
    Identical,
    /// Communicators only: the same members in the same order, but distinct communicators
    /// (their messages never meet), as after `dup`.
    Congruent,
    /// The same members in another order.
    Similar,
    /// Different members.
    Unequal,
}

/// An ordered set of processes of the job (MPI's group): what a communicator is made of,
/// without the means to talk. Groups are plain values, made and combined locally; turn one
/// into a communicator with [`Comm::create`].
///
/// ```
/// let world = ranks::init()?;
/// let all = world.group();
/// let evens = all.incl(&(0..world.size()).step_by(2).collect::<Vec<_>>())?;
/// let odds = all.difference(&evens);
/// assert_eq!(evens.union(&odds).size(), world.size());
/// assert_eq!(evens.rank(), Some(world.rank() / 2)); // rank 0 is even
/// let evens_comm = world.create(&evens)?; // Some on even ranks, None on odd ones
/// assert!(evens_comm.is_some());
/// # Ok::<(), ranks::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// World rank of each member, in group rank order.
    members: Vec<usize>,
    /// This process's world rank.
    me: usize,
}

impl Group {
    /// The number of members.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// This process's rank in the group, if it is a member.
    pub fn rank(&self) -> Option<usize> {
        self.members.iter().position(|&m| m == self.me)
    }

    /// The world rank of each member, in group rank order.
    pub fn world_ranks(&self) -> &[usize] {
        &self.members
    }

    fn with(&self, members: Vec<usize>) -> Group {
        Group {
            members,
            me: self.me,
        }
    }

    fn check(&self, what: &str, ranks: &[usize]) -> Result<()> {
        let mut seen = vec![false; self.size()];
        for &r in ranks {
            if r >= self.size() {
                return Err(Error::InvalidRank {
                    rank: r as i64,
                    size: self.size(),
                });
            }
            if std::mem::replace(&mut seen[r], true) {
                return Err(Error::InvalidArgument(format!(
                    "{what}: rank {r} is listed twice"
                )));
            }
        }
        Ok(())
    }

    /// The group of the listed ranks of this group, in the order listed.
    pub fn incl(&self, ranks: &[usize]) -> Result<Group> {
        self.check("incl", ranks)?;
        Ok(self.with(ranks.iter().map(|&r| self.members[r]).collect()))
    }

    /// This group without the listed ranks (the others keep their order).
    pub fn excl(&self, ranks: &[usize]) -> Result<Group> {
        self.check("excl", ranks)?;
        Ok(self.with(
            (0..self.size())
                .filter(|r| !ranks.contains(r))
                .map(|r| self.members[r])
                .collect(),
        ))
    }

    /// This group's members, then `other`'s members that are not in this group.
    pub fn union(&self, other: &Group) -> Group {
        let mut m = self.members.clone();
        m.extend(other.members.iter().filter(|x| !self.members.contains(x)));
        self.with(m)
    }

    /// This group's members that are also in `other`, in this group's order.
    pub fn intersection(&self, other: &Group) -> Group {
        self.with(
            self.members
                .iter()
                .copied()
                .filter(|x| other.members.contains(x))
                .collect(),
        )
    }

    /// This group's members that are not in `other`, in this group's order.
    pub fn difference(&self, other: &Group) -> Group {
        self.with(
            self.members
                .iter()
                .copied()
                .filter(|x| !other.members.contains(x))
                .collect(),
        )
    }

    /// The rank in `other` of each listed rank of this group (`None`: not a member there).
    pub fn translate_ranks(&self, ranks: &[usize], other: &Group) -> Result<Vec<Option<usize>>> {
        if let Some(&bad) = ranks.iter().find(|&&r| r >= self.size()) {
            return Err(Error::InvalidRank {
                rank: bad as i64,
                size: self.size(),
            });
        }
        Ok(ranks
            .iter()
            .map(|&r| other.members.iter().position(|&m| m == self.members[r]))
            .collect())
    }

    /// `Identical` (same members, same order), `Similar` (same members) or `Unequal`.
    pub fn compare(&self, other: &Group) -> Comparison {
        if self.members == other.members {
            return Comparison::Identical;
        }
        let mut a = self.members.clone();
        let mut b = other.members.clone();
        a.sort_unstable();
        b.sort_unstable();
        if a == b {
            Comparison::Similar
        } else {
            Comparison::Unequal
        }
    }
}

impl Comm {
    /// The group of this communicator's members.
    pub fn group(&self) -> Group {
        Group {
            members: self.members.to_vec(),
            me: self.core.rank,
        }
    }

    /// The communicator of `group`'s members, ranked in the group's order: `Some` on the
    /// members, `None` on the others. `group` must be made of this communicator's members.
    /// Collective: every rank must call it, with the same group.
    pub fn create(&self, group: &Group) -> Result<Option<Comm>> {
        let ranks = self.group().translate_ranks_from(group)?;
        let pos = ranks.iter().position(|&r| r == self.rank());
        self.split(pos.map(|_| 0), pos.unwrap_or(0) as i32)
    }

    /// How this communicator relates to `other`: `Identical` (the same one, or a clone),
    /// `Congruent` (same members in the same order, distinct message spaces), `Similar`
    /// (same members in another order) or `Unequal`.
    pub fn compare(&self, other: &Comm) -> Comparison {
        match self.group().compare(&other.group()) {
            Comparison::Identical if self.ctx == other.ctx => Comparison::Identical,
            Comparison::Identical => Comparison::Congruent,
            c => c,
        }
    }
}

impl Group {
    /// The rank in this group of each member of `sub` (all must be members).
    fn translate_ranks_from(&self, sub: &Group) -> Result<Vec<usize>> {
        sub.members
            .iter()
            .map(|m| {
                self.members.iter().position(|x| x == m).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "create: world rank {m} is not a member of this communicator"
                    ))
                })
            })
            .collect()
    }
}

/// A communicator's name and attributes.
#[derive(Default)]
pub(crate) struct Labels {
    name: std::sync::Mutex<Option<String>>,
    attrs: std::sync::Mutex<
        std::collections::HashMap<std::any::TypeId, Arc<dyn std::any::Any + Send + Sync>>,
    >,
}

impl Comm {
    /// Name this communicator (MPI's `MPI_Comm_set_name`), for the program's own messages
    /// and logs. Every handle of it (its clones) sees the name; `dup` and `split` start
    /// unnamed.
    ///
    /// ```
    /// let world = ranks::init()?;
    /// assert_eq!(world.name(), "world");
    /// let rows = world.dup()?;
    /// assert_eq!(rows.name(), "");
    /// rows.set_name("rows");
    /// assert_eq!(rows.clone().name(), "rows");
    /// # Ok::<(), ranks::Error>(())
    /// ```
    pub fn set_name(&self, name: &str) {
        *self.labels.name.lock().unwrap_or_else(|p| p.into_inner()) = Some(name.to_string());
    }

    /// This communicator's name: the one given by `set_name`, `"world"` for the world,
    /// empty otherwise.
    pub fn name(&self) -> String {
        let given = self.labels.name.lock().unwrap_or_else(|p| p.into_inner());
        match &*given {
            Some(n) => n.clone(),
            None if self.ctx == 0 => "world".into(),
            None => String::new(),
        }
    }

    /// Attach a value to this communicator, one per type (MPI's attribute caching, keyed by
    /// type rather than by a key number: use a type of your own as the key). It replaces a
    /// value of the same type; every handle of the communicator sees it; `dup` and `split`
    /// do not copy it.
    ///
    /// ```
    /// let world = ranks::init()?;
    /// struct Tuning { chunk: usize }
    /// world.set_attr(Tuning { chunk: 64 });
    /// assert_eq!(world.attr::<Tuning>().map(|t| t.chunk), Some(64));
    /// assert!(world.dup()?.attr::<Tuning>().is_none());
    /// assert!(world.remove_attr::<Tuning>().is_some());
    /// assert!(world.attr::<Tuning>().is_none());
    /// # Ok::<(), ranks::Error>(())
    /// ```
    pub fn set_attr<T: std::any::Any + Send + Sync>(&self, value: T) {
        self.labels
            .attrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(std::any::TypeId::of::<T>(), Arc::new(value));
    }

    /// The value of type `T` attached with `set_attr`, if any.
    pub fn attr<T: std::any::Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let a = self.labels.attrs.lock().unwrap_or_else(|p| p.into_inner());
        a.get(&std::any::TypeId::of::<T>())
            .cloned()
            .and_then(|v| v.downcast::<T>().ok())
    }

    /// Detach the value of type `T`, returning it.
    pub fn remove_attr<T: std::any::Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.labels
            .attrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&std::any::TypeId::of::<T>())
            .and_then(|v| v.downcast::<T>().ok())
    }
}

/// Freeing a communicator: when its last handle is dropped, its context ids go back to the
/// process's pool, for communicators made later. As in MPI, receive everything sent on a
/// communicator before dropping it: a message left unreceived could be received by a later
/// communicator of the same ranks that reuses the id.
impl Drop for crate::comm::CommData {
    fn drop(&mut self) {
        if self.ctx != 0 && self.ctx < crate::context::RESERVED_FROM {
            // Before the id (and its sync slot) can go to another communicator.
            if let Some((slot, left)) = self.data_left_behind() {
                let mut all = self.core.data_left();
                if all.len() <= slot {
                    all.resize_with(slot + 1, || None);
                }
                all[slot] = Some(left);
            }
            self.core.contexts.release(self.ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn g(members: &[usize]) -> Group {
        Group {
            members: members.to_vec(),
            me: 3,
        }
    }

    #[test]
    fn groups_combine_as_in_mpi() {
        let a = g(&[5, 1, 3, 7]);
        let b = g(&[3, 9, 5]);
        assert_eq!(a.union(&b).members, [5, 1, 3, 7, 9]);
        assert_eq!(a.intersection(&b).members, [5, 3]);
        assert_eq!(a.difference(&b).members, [1, 7]);
        assert_eq!(b.difference(&a).members, [9]);
        assert_eq!(a.incl(&[3, 0]).unwrap().members, [7, 5]);
        assert_eq!(a.excl(&[1, 3]).unwrap().members, [5, 3]);
        assert_eq!(
            (a.rank(), b.rank(), g(&[1]).rank()),
            (Some(2), Some(0), None)
        );
        assert_eq!(
            a.translate_ranks(&[0, 1, 2], &b).unwrap(),
            [Some(2), None, Some(0)]
        );
        assert_eq!(a.compare(&a.clone()), Comparison::Identical);
        assert_eq!(a.compare(&g(&[7, 5, 3, 1])), Comparison::Similar);
        assert_eq!(a.compare(&b), Comparison::Unequal);
        assert!(matches!(a.incl(&[4]), Err(Error::InvalidRank { .. })));
        assert!(matches!(a.incl(&[1, 1]), Err(Error::InvalidArgument(_))));
        assert!(matches!(a.excl(&[2, 2]), Err(Error::InvalidArgument(_))));
    }

    proptest! {
        /// Against sets: union, intersection and difference hold the right members, each
        /// once, in the order MPI gives (the first group's, then the second's).
        #[test]
        fn set_operations_match_a_model(
            a in proptest::sample::subsequence((0..12usize).collect::<Vec<_>>(), 0..12)
                .prop_shuffle(),
            b in proptest::sample::subsequence((0..12usize).collect::<Vec<_>>(), 0..12)
                .prop_shuffle(),
        ) {
            let (ga, gb) = (g(&a), g(&b));
            let u = ga.union(&gb).members;
            let want_u: Vec<usize> = a.iter().copied()
                .chain(b.iter().copied().filter(|x| !a.contains(x))).collect();
            prop_assert_eq!(u, want_u);
            let i = ga.intersection(&gb).members;
            prop_assert_eq!(i, a.iter().copied().filter(|x| b.contains(x)).collect::<Vec<_>>());
            let d = ga.difference(&gb).members;
            prop_assert_eq!(d, a.iter().copied().filter(|x| !b.contains(x)).collect::<Vec<_>>());
            // Each member's translated rank names it in the other group.
            let all: Vec<usize> = (0..a.len()).collect();
            for (r, t) in ga.translate_ranks(&all, &gb).unwrap().into_iter().enumerate() {
                prop_assert_eq!(t.map(|t| b[t]), b.contains(&a[r]).then_some(a[r]));
            }
        }
    }
}

#[cfg(test)]
mod free_tests {
    use crate::comm::Comm;
    use crate::progress::{Core, Tuning};
    use crate::transport::local::Local;
    use std::sync::Arc;

    fn world() -> Comm {
        let tuning = Tuning::resolve(&crate::config::Tuning::default(), 1);
        let core = Core::new(0, 1, Box::new(Local::default()), tuning, "h".into());
        Comm::world(Arc::new(core))
    }

    /// A dropped communicator's context id is used again; a live one's (or a clone's) is not.
    #[test]
    fn dropping_a_communicator_frees_its_context_id() {
        let w = world();
        let a = w.dup().unwrap();
        let id = a.ctx;
        let clone = a.clone();
        drop(a);
        let b = w.dup().unwrap();
        assert_ne!(b.ctx, id, "reused while a clone lives");
        drop(clone);
        let c = w.dup().unwrap();
        assert_eq!(c.ctx, id, "not reused once every handle is gone");
        // Many made and dropped: the ids stay low.
        for _ in 0..1000 {
            let d = w.dup().unwrap();
            assert!(d.ctx < 16, "id {} not reused", d.ctx);
        }
        assert_eq!(w.compare(&w.clone()), crate::Comparison::Identical);
        assert_eq!(w.compare(&c), crate::Comparison::Congruent);
    }

    /// A rank that takes no part in a split keeps no id for it.
    #[test]
    fn a_split_without_this_rank_keeps_no_id() {
        let w = world();
        for _ in 0..100 {
            assert!(w.split(None, 0).unwrap().is_none());
            assert!(w.subgroup(&[]).unwrap().is_none());
        }
        assert_eq!(
            w.dup().unwrap().ctx,
            2,
            "ids kept by splits this rank was not in"
        );
    }
}
