//! Cross-thread wake-up through an eventfd.
//!
//! An eventfd is a kernel counter: `write` adds, `read` returns and resets it,
//! and it is readable while non-zero. Many writes between two reads collapse
//! into one readiness, which suits wake-ups. It works for both backends: the
//! epoll backend watches it in its epoll set, the io_uring backend keeps one
//! 8-byte read on it in flight. (IORING_OP_MSG_RING was measured against it;
//! see docs/reactor.md and `examples/wake_cost.rs`.)

use nix::sys::eventfd::{EfdFlags, EventFd};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

pub(crate) struct Waker {
    fd: EventFd,
}

impl Waker {
    /// `nonblocking` for epoll (read after readiness). The io_uring backend
    /// uses a blocking eventfd: on older kernels an `IORING_OP_READ` on an
    /// `O_NONBLOCK` file completes at once with `-EAGAIN` instead of waiting
    /// for the counter to change (6.18 waits either way).
    pub fn new(nonblocking: bool) -> std::io::Result<Self> {
        let mut flags = EfdFlags::EFD_CLOEXEC;
        if nonblocking {
            flags |= EfdFlags::EFD_NONBLOCK;
        }
        let fd = EventFd::from_flags(flags)?;
        Ok(Waker { fd })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_fd().as_raw_fd()
    }

    /// Add 1 to the counter. EAGAIN (counter at its 2^64-2 maximum) still
    /// leaves it readable, so the error is ignored.
    pub fn wake(&self) {
        let _ = self.fd.write(1);
    }

    /// Reset the counter (only after readiness, or on a nonblocking eventfd).
    pub fn drain(&self) {
        let _ = self.fd.read();
    }

    /// Block until woken or `timeout` passes; true if woken. (Tests and tools.)
    #[allow(dead_code)]
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        loop {
            match poll(&mut fds, ms) {
                Ok(0) => return false,
                Ok(_) => {
                    self.drain();
                    return true;
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return false,
            }
        }
    }
}
