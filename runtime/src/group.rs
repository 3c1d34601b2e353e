//! Making communicators from communicators: `split`, `dup`, `subgroup`, `split_by_host`.
//!
//! A new communicator needs a context id that no communicator sharing a process with it
//! uses; `crate::context` owns them and says how members agree on one. Communicators of
//! disjoint groups (the colors of one split) share an id: their messages never meet.

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
        let (ctx, all) = loop {
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
            let mut oks = vec![0i64; n];
            self.all_gather_slice(&[i64::from(claimed)], &mut oks)?;
            if oks.iter().all(|&ok| ok == 1) {
                break (ctx, all);
            }
            if claimed {
                contexts.release(ctx);
            }
            // Retry above it; parents part ways by jumping ahead by different amounts.
            floor = ctx.checked_add(2 + self.ctx % 128).ok_or_else(out_of_ids)?;
        };
        let Some(color) = color else {
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
