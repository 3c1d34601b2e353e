//! The pure parts of the `ranks` launcher, as a library: host lists and hostfiles, what the
//! launcher and its agents say to each other, the diagnosis of a stuck job, the job
//! loop's rules as a state machine, and traces (`--trace`, `ranks report`). The binary
//! (`src/main.rs`) is everything else; the fuzz targets (`fuzz/`) use these.

pub mod diagnose;
pub mod hosts;
pub mod jobstate;
pub mod proto;
pub mod slurm;
pub mod trace;
