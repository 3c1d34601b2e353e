//! The one error type of the runtime.

use std::fmt;

/// Everything that can go wrong in a `ranks` call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The environment the launcher set up is missing or inconsistent.
    #[error("bootstrap failed: {0}")]
    Bootstrap(String),

    /// A rank outside `0..size` (and not a wildcard where one is allowed).
    #[error("invalid rank {rank}: the communicator has {size} ranks (valid: 0..{size})")]
    InvalidRank { rank: i64, size: usize },

    /// A negative tag other than `ANY_TAG`, or `ANY_TAG` in a send.
    #[error("invalid tag {0}: tags are 0..=i32::MAX (ANY_TAG only in receives)")]
    InvalidTag(i32),

    /// A message did not decode as the type the receive asked for.
    #[error("message from rank {rank} with tag {tag} does not decode as {expected}: {detail}")]
    TypeMismatch {
        rank: usize,
        tag: i32,
        expected: &'static str,
        detail: String,
    },

    /// A frame announced a payload above the size limit (`RANKS_MAX_MESSAGE`).
    #[error("message from rank {rank} with tag {tag} has {len} bytes, above the limit of {max} bytes (set RANKS_MAX_MESSAGE to raise it)")]
    FrameTooLarge {
        rank: usize,
        tag: i32,
        len: u64,
        max: u64,
    },

    /// A peer's stream ended in the middle of a frame.
    #[error("truncated frame from rank {rank}: {detail}")]
    Truncated { rank: usize, detail: String },

    /// A peer sent bytes that are not a valid frame.
    #[error("malformed frame from rank {rank}: {detail}")]
    Malformed { rank: usize, detail: String },

    /// The peer we were sending to or waiting on is gone.
    #[error("rank {rank} is gone ({detail}); the operation waiting on it cannot complete")]
    PeerLost { rank: usize, detail: String },

    /// A value could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(String),

    /// Invalid argument that is not a rank or a tag (buffer sizes, counts...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A nonblocking `try_get`, or a `get` whose timeout passed, found the queue empty.
    #[error("the queue is empty")]
    Empty,

    /// A nonblocking `try_put`, or a `put` whose timeout passed, found the queue full.
    #[error("the queue is full")]
    Full,

    /// The object was closed (a queue after `close`, a pool after `close`).
    #[error("{0} is closed")]
    Closed(&'static str),

    /// A wait with a timeout ran out.
    #[error("timed out")]
    Timeout,

    /// The rank holding a lock (or semaphore, or condition) died holding it.
    #[error("rank {rank} died while holding the {what}; it was released without being unlocked")]
    HolderDied { rank: usize, what: &'static str },

    /// A barrier was aborted, or broken by a timeout or a lost party.
    #[error("the barrier is broken ({0})")]
    BrokenBarrier(String),

    /// The other end of a pipe closed it (or exited) and nothing more will come.
    #[error("end of stream: the other end of the pipe closed it")]
    EndOfStream,

    /// Releasing a lock this rank does not hold, and similar misuse.
    #[error("{0}")]
    Usage(String),

    /// A pool task panicked or failed.
    #[error("pool task for item {item} failed on rank {rank}: {message}")]
    TaskFailed {
        item: usize,
        rank: usize,
        message: String,
    },

    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            context: context.to_string(),
            source,
        }
    }
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
