//! Work the process does on its way out (`exit`, or `main` returning): finishing QUIC
//! streams, writing the trace. One `atexit` registration runs every hook, in the order they
//! were added. A process killed by a signal runs none of them.

use std::sync::Mutex;

static HOOKS: Mutex<Vec<fn()>> = Mutex::new(Vec::new());

/// Run `hook` when the process exits (after every hook added before it).
pub(crate) fn add(hook: fn()) {
    let mut hooks = HOOKS.lock().unwrap_or_else(|p| p.into_inner());
    if hooks.is_empty() {
        // SAFETY: `run_hooks` is a plain `extern "C" fn()` that only touches the
        // process-wide `HOOKS` list; registering it has no other preconditions.
        unsafe {
            libc::atexit(run_hooks);
        }
    }
    hooks.push(hook);
}

extern "C" fn run_hooks() {
    let hooks = std::mem::take(&mut *HOOKS.lock().unwrap_or_else(|p| p.into_inner()));
    for h in hooks {
        h();
    }
}
