//! The one error type of the runtime.

use std::fmt;

/// Everything that can go wrong in a `ranks` call.
///
/// ```
/// let world = ranks::init()?;
/// match world.recv_vec::<u8>(world.size() + 5, 0) {
///     Err(ranks::Error::InvalidRank { rank, size }) => assert_eq!(rank as usize, size + 5),
///     other => panic!("{other:?}"),
/// }
/// // Errors display as sentences, for `main` and logs; `{:?}` (what a `main` that returns
/// // `Result<(), ranks::Error>` prints) gives the same sentence:
/// let e = ranks::Error::InvalidTag(-7);
/// assert!(e.to_string().starts_with("invalid tag -7"));
/// assert_eq!(format!("{e:?}"), e.to_string());
/// # Ok::<(), ranks::Error>(())
/// ```
#[derive(thiserror::Error)]
pub enum Error {
    /// The environment the launcher set up is missing or inconsistent.
    #[error("bootstrap failed: {0}")]
    Bootstrap(String),

    /// A rank outside `0..size` (and not a wildcard where one is allowed).
    #[error("invalid rank {rank}: the communicator has {size} ranks (valid: 0..{size})")]
    InvalidRank {
        /// The rank given.
        rank: i64,
        /// Size of the communicator.
        size: usize,
    },

    /// A negative tag other than `ANY_TAG`, or `ANY_TAG` in a send.
    #[error("invalid tag {0}: tags are 0..=i32::MAX (ANY_TAG only in receives)")]
    InvalidTag(i32),

    /// A message did not decode as the type the receive asked for.
    #[error("message from rank {rank} with tag {tag} does not decode as {expected}: {detail}")]
    TypeMismatch {
        /// Sender (rank in the communicator).
        rank: usize,
        /// The message's tag.
        tag: i32,
        /// The type the receive asked for.
        expected: &'static str,
        /// What the message was (the type it was sent as, when known) and why it failed.
        detail: String,
    },

    /// The members of a communicator passed operands that do not match to the same
    /// collective call (another element type, another serde type, another length). The
    /// member that finds it gets this; the members waiting for it get `CollectiveFailed`
    /// with its sentence.
    #[error("the operands of this collective call do not match: {detail}")]
    CollectiveMismatch {
        /// The member whose operand does not match this rank's (rank in the communicator).
        rank: usize,
        /// How they differ.
        detail: String,
    },

    /// A frame announced a payload above the size limit (`RANKS_MAX_MESSAGE`).
    #[error("message from rank {rank} with tag {tag} has {len} bytes, above the limit of {max} bytes (set RANKS_MAX_MESSAGE to raise it)")]
    FrameTooLarge {
        /// Sender.
        rank: usize,
        /// The message's tag.
        tag: i32,
        /// Payload bytes announced.
        len: u64,
        /// The limit.
        max: u64,
    },

    /// A receive's buffer is too small for the message that matched it (MPI's
    /// `MPI_ERR_TRUNCATE`). Unlike MPI, nothing is consumed or lost: the message stays
    /// queued in its place, and a receive (or `probe` first, for its size) with a buffer of
    /// at least `len` bytes gets it.
    #[error("message from rank {rank} with tag {tag} has {len} bytes but the buffer holds {capacity}; it stays queued")]
    Truncated {
        /// Sender (rank in the communicator of the receive).
        rank: usize,
        /// The message's tag.
        tag: i32,
        /// The message's length in bytes.
        len: usize,
        /// The buffer's length in bytes.
        capacity: usize,
    },

    /// A peer's stream ended in the middle of a frame.
    #[error("truncated frame from rank {rank}: {detail}")]
    TruncatedFrame {
        /// Sender.
        rank: usize,
        /// What was cut short.
        detail: String,
    },

    /// A peer sent bytes that are not a valid frame.
    #[error("malformed frame from rank {rank}: {detail}")]
    Malformed {
        /// Sender.
        rank: usize,
        /// What is wrong with the frame.
        detail: String,
    },

    /// Another member of the communicator left this collective call with an error of its
    /// own (its operands did not match this rank's: another type, another length), so the
    /// call cannot complete here either; every member gets an error instead of waiting.
    #[error("rank {rank} left this collective call with an error: {detail}")]
    CollectiveFailed {
        /// The member that failed (rank in the communicator).
        rank: usize,
        /// Its error.
        detail: String,
    },

    /// The peer we were sending to or waiting on is gone.
    #[error("rank {rank} is gone ({detail}); the operation waiting on it cannot complete")]
    PeerLost {
        /// The rank that is gone (world rank).
        rank: usize,
        /// How it ended, and on which host, as far as known.
        detail: String,
    },

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
    HolderDied {
        /// The rank that held it.
        rank: usize,
        /// `lock`, `semaphore`, ...
        what: &'static str,
    },

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
        /// Index of the item in the submission.
        item: usize,
        /// The worker that ran it (world rank).
        rank: usize,
        /// The panic message or error.
        message: String,
    },

    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// The sentence, as `Display` gives it: a program whose `main` returns `Result<(),
/// ranks::Error>` prints its error with `Debug`, and a user should read the sentence there,
/// not the variant's fields.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
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
