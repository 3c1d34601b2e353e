//! The pure parts of the `ranks` launcher, as a library: host lists and hostfiles, what the
//! launcher and its agents say to each other, and the diagnosis of a stuck job. The binary
//! (`src/main.rs`) is everything else; the fuzz targets (`fuzz/`) use these.

pub mod diagnose;
pub mod hosts;
pub mod proto;
