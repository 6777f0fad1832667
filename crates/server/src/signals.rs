//! SIGTERM / SIGINT handling without signal handlers: the signals are
//! blocked in every thread and one thread waits for them with `sigwait`, so
//! the reaction runs as ordinary code.

use nix::sys::signal::{SigSet, SigmaskHow, Signal};

/// The signals that start a graceful shutdown.
fn termination() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

/// Blocks SIGTERM and SIGINT in the calling thread. Threads spawned later
/// inherit the mask, so call this before starting the shards.
pub fn block() -> std::io::Result<()> {
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&termination()), None)
        .map_err(std::io::Error::from)
}

/// Spawns the waiting thread. `on_signal(n)` runs for the n-th signal
/// received (1 = first).
pub fn spawn(mut on_signal: impl FnMut(Signal, u32) + Send + 'static) -> std::io::Result<()> {
    let set = termination();
    std::thread::Builder::new().name("ringcast-signals".into()).spawn(move || {
        let mut n = 0;
        loop {
            match set.wait() {
                Ok(sig) => {
                    n += 1;
                    on_signal(sig, n);
                }
                Err(e) => {
                    tracing::error!(error = %e, "sigwait failed; signals are no longer handled");
                    return;
                }
            }
        }
    })?;
    Ok(())
}
