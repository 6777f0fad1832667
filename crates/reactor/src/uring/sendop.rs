//! The memory behind one in-flight `IORING_OP_SENDMSG`.
//!
//! A `SendOp` owns the `msghdr`, the iovec array it points to, and the
//! `Bytes` the iovecs point into. It is boxed (stable address) and kept in the
//! driver's send table from submission until the send's CQE arrives, so every
//! pointer the kernel was given stays valid for as long as the kernel may use
//! it, even if the connection is aborted meanwhile (abort clears the
//! connection's queue, but the buffers lent here are separate clones-by-move).

use crate::outq::MAX_IOV;
use bytes::Bytes;

pub(crate) struct SendOp {
    hdr: libc::msghdr,
    iov: [libc::iovec; MAX_IOV],
    /// Buffers referenced by `iov[..bufs.len()]`.
    pub bufs: Vec<Bytes>,
}

impl SendOp {
    pub fn new() -> Box<Self> {
        Box::new(SendOp {
            // SAFETY: msghdr is a plain C struct for which all-zero is a valid value.
            hdr: unsafe { std::mem::zeroed() },
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; MAX_IOV],
            bufs: Vec::with_capacity(MAX_IOV),
        })
    }

    /// Point the header at `bufs` and return it for the SQE. The pointers stay
    /// valid while `self` (boxed) is neither moved out of its box, dropped,
    /// nor has `bufs` modified — the driver guarantees all three until the CQE.
    pub fn prepare(&mut self) -> *const libc::msghdr {
        debug_assert!(!self.bufs.is_empty() && self.bufs.len() <= MAX_IOV);
        for (v, b) in self.iov.iter_mut().zip(self.bufs.iter()) {
            v.iov_base = b.as_ptr() as *mut libc::c_void;
            v.iov_len = b.len();
        }
        // SAFETY: as in `new`, all-zero is a valid msghdr.
        self.hdr = unsafe { std::mem::zeroed() };
        self.hdr.msg_iov = self.iov.as_mut_ptr();
        self.hdr.msg_iovlen = self.bufs.len() as _;
        &self.hdr
    }

    /// Make reusable (drops the buffers).
    pub fn reset(&mut self) {
        self.bufs.clear();
        for v in self.iov.iter_mut() {
            v.iov_base = std::ptr::null_mut();
            v.iov_len = 0;
        }
    }
}
