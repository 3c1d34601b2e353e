//! Collective operations, written once over point-to-point in the communicator's collective
//! context (`ctx + 1`), so they never match user messages.

use crate::comm::{Comm, Source};
use crate::error::Result;
use crate::wire::Encoding;

/// Tags inside the collective context.
const TAG_BARRIER: i32 = 1;

impl Comm {
    fn coll_ctx(&self) -> u32 {
        self.ctx + 1
    }

    /// Block until every rank of the communicator has called `barrier`.
    ///
    /// Dissemination algorithm: in round k each rank signals rank + 2^k and waits for
    /// rank - 2^k, so it finishes in ceil(log2 n) rounds for any n.
    pub fn barrier(&self) -> Result<()> {
        let n = self.size();
        let me = self.rank();
        let mut dist = 1;
        while dist < n {
            let to = (me + dist) % n;
            let from = (me + n - dist) % n;
            let ctx = self.coll_ctx();
            let req = self.isend_owned(
                ctx,
                to,
                TAG_BARRIER,
                vec![0u8; crate::wire::HEADER_LEN],
                Encoding::Raw,
                0,
            )?;
            let pat = self.pattern(ctx, Source::from(from), TAG_BARRIER)?;
            self.recv_msg(pat)?;
            req.wait()?;
            dist *= 2;
        }
        Ok(())
    }
}
