//! The memory behind one in-flight `IORING_OP_SENDMSG`.
//!
//! A `SendOp` owns the `msghdr`, the iovec array it points to, and the
//! `Bytes` the iovecs point into. It is boxed (stable address) and kept in the
//! driver's send table from submission until the send's CQE arrives, so every
//! pointer the kernel was given stays valid for as long as the kernel may use
//! it, even if the connection is aborted meanwhile (abort clears the
//! connection's queue, but the buffers lent here are separate clones-by-move).
//!
//! The iovec and buffer arrays grow to what a send carries (at most
//! `MAX_IOV`) and are trimmed back to `KEEP_IOV` when the op is recycled, so
//! a pooled op is a few hundred bytes: the driver can keep one per
//! concurrently sending connection instead of allocating one per send.

use crate::outq::MAX_IOV;
use bytes::Bytes;

/// Entries a recycled op keeps room for.
const KEEP_IOV: usize = 16;

pub(crate) struct SendOp {
    hdr: libc::msghdr,
    iov: Vec<libc::iovec>,
    /// Buffers referenced by `iov`.
    pub bufs: Vec<Bytes>,
}

impl SendOp {
    pub fn new() -> Box<Self> {
        Box::new(SendOp {
            // SAFETY: msghdr is a plain C struct for which all-zero is a valid value.
            hdr: unsafe { std::mem::zeroed() },
            iov: Vec::new(),
            bufs: Vec::new(),
        })
    }

    /// Point the header at `bufs` and return it for the SQE. The pointers stay
    /// valid while `self` (boxed) is neither moved out of its box, dropped,
    /// nor has `bufs` or `iov` modified — the driver guarantees all three
    /// until the CQE.
    pub fn prepare(&mut self) -> *const libc::msghdr {
        debug_assert!(!self.bufs.is_empty() && self.bufs.len() <= MAX_IOV);
        self.iov.clear();
        self.iov.extend(self.bufs.iter().map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        }));
        // SAFETY: as in `new`, all-zero is a valid msghdr.
        self.hdr = unsafe { std::mem::zeroed() };
        self.hdr.msg_iov = self.iov.as_mut_ptr();
        self.hdr.msg_iovlen = self.iov.len() as _;
        &self.hdr
    }

    /// Make reusable (drops the buffers).
    pub fn reset(&mut self) {
        self.bufs.clear();
        self.iov.clear();
        if self.bufs.capacity() > KEEP_IOV {
            self.bufs.shrink_to(KEEP_IOV);
            self.iov.shrink_to(KEEP_IOV);
        }
    }
}
