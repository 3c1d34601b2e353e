//! `ranks`: message passing between ranked processes.
//!
//! Start a job with the launcher (`ranks run -n 4 prog`); in each process,
//! [`init`] returns the world communicator:
//!
//! ```no_run
//! let world = ranks::init()?;
//! if world.rank() == 0 {
//!     world.send(1, 7, &"hello".to_string())?;
//! } else if world.rank() == 1 {
//!     let (msg, status) = world.recv::<String>(0, 7)?;
//!     println!("{msg} from {}", status.source);
//! }
//! # Ok::<(), ranks::Error>(())
//! ```
//!
//! A program started without the launcher gets a world of size 1.

#![warn(missing_docs)]
// `unsafe` only where a module below allows it: the shared-memory mapping and rings, the
// core's lock, and two system calls (`atexit`, adopting an inherited socket).
#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod at_exit;
#[doc(hidden)]
pub mod board;
mod bootstrap;
mod collectives;
mod comm;
#[doc(hidden)]
pub mod config;
mod context;
mod diag;
mod error;
mod fingerprint;
mod group;
mod hier;
mod host_sync;
#[allow(unsafe_code)]
mod lock;
mod nbc;
pub mod op;
mod p2p;
#[allow(unsafe_code)]
mod pmi;
pub mod primitives;
mod progress;
mod protocol;
mod request;
mod topo;
#[doc(hidden)]
pub mod trace;
#[doc(hidden)]
pub mod transport;
#[doc(hidden)]
pub mod wire;

use std::sync::OnceLock;

pub use comm::{
    test_all, test_any, test_some, wait_all, wait_any, wait_some, Comm, Message, PersistentRecv,
    PersistentSend, Request, Source, Status, MAX_TAG,
};
pub use config::env;
pub use error::{Error, Result};
pub use group::{Comparison, Group};
pub use primitives::manager::{Dict, List, Manager, Namespace};
pub use primitives::pipe::Pipe;
pub use primitives::pool::{AsyncResult, Pool};
pub use primitives::queue::Queue;
pub use primitives::shared::{SharedArray, SharedMemory, SharedValue};
pub use primitives::sync::{Barrier, Condition, Event, Lock, LockGuard, RLock, Semaphore};
pub use protocol::matching::{ANY_SOURCE, ANY_TAG};
pub use topo::{dims_create, CartComm, Shift};

/// Re-exported so users can derive `Pod` for their own plain structs.
pub use bytemuck::{Pod, Zeroable};

static WORLD: OnceLock<Comm> = OnceLock::new();
/// Serialises the first joins: two threads calling `init` at once must not both attach.
static JOINING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Join the job and return the world communicator (a world of one outside the launcher).
/// Calling it again, from any thread, returns the same world.
pub fn init() -> Result<Comm> {
    if let Some(w) = WORLD.get() {
        return Ok(w.clone());
    }
    let _one_at_a_time = JOINING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(w) = WORLD.get() {
        return Ok(w.clone());
    }
    let w = bootstrap::world_from_env()?;
    Ok(WORLD.get_or_init(|| w).clone())
}

/// Run a rank's program: join the job, call `body` with the world, and turn an error into
/// a readable line on stderr (`rank 3: error: ...`, the error's message rather than its
/// debug form) and a failing exit code. Use it as `main`:
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     ranks::main(|world| {
///         let (v, _) = world.recv::<u32>(0, 1)?; // an error here is printed, named by rank
///         println!("{v}");
///         Ok(())
///     })
/// }
/// ```
pub fn main(body: impl FnOnce(Comm) -> Result<()>) -> std::process::ExitCode {
    let world = match init() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("ranks: error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let rank = world.rank();
    match body(world) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rank {rank}: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The README's examples, compiled and run as doctests (in a world of one).
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
