//! Per-connection output queue of refcounted buffers.
//!
//! A broadcast payload is one `Bytes`; queueing it on N connections costs N
//! refcount increments, never a copy. The queue tracks the bytes not yet
//! accepted by the kernel, including those lent to an in-flight io_uring send
//! (see `take_front` / `requeue_front`).

use bytes::{Buf, Bytes};
use std::collections::VecDeque;
use std::io::IoSlice;

/// Most buffers handed to one `sendmsg` (well under `IOV_MAX` = 1024).
pub(crate) const MAX_IOV: usize = 64;

#[derive(Default, Debug)]
pub(crate) struct OutQueue {
    bufs: VecDeque<Bytes>,
    /// Bytes queued or in flight, not yet written.
    len: usize,
}

impl OutQueue {
    pub fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.bufs.push_back(b);
        }
    }

    /// Bytes not yet written (queued plus in flight).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Buffers waiting in the queue (not counting ones lent to the kernel).
    pub fn has_queued(&self) -> bool {
        !self.bufs.is_empty()
    }

    /// Fill `iov` with up to `iov.len()` slices from the front; returns how
    /// many were filled (epoll path).
    pub fn io_slices<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, b) in iov.iter_mut().zip(self.bufs.iter()) {
            *slot = IoSlice::new(b);
            n += 1;
        }
        n
    }

    /// `n` bytes from the front were written (epoll path).
    pub fn advance(&mut self, mut n: usize) {
        debug_assert!(n <= self.len);
        self.len -= n;
        while n > 0 {
            let front = self.bufs.front_mut().expect("advance past queue end");
            if front.len() <= n {
                n -= front.len();
                self.bufs.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }

    /// Move up to `MAX_IOV` front buffers into `out` (io_uring path: the send
    /// op owns them while the kernel reads them). `len` still counts them.
    pub fn take_front(&mut self, out: &mut Vec<Bytes>) {
        let n = self.bufs.len().min(MAX_IOV);
        out.extend(self.bufs.drain(..n));
    }

    /// The kernel wrote `written` bytes of the buffers lent by `take_front`;
    /// put the unwritten remainder back at the front, in order.
    pub fn requeue_front(&mut self, lent: &mut Vec<Bytes>, mut written: usize) {
        self.len = self.len.saturating_sub(written);
        let mut keep = Vec::new();
        for mut b in lent.drain(..) {
            if written >= b.len() {
                written -= b.len();
            } else {
                b.advance(written);
                written = 0;
                keep.push(b);
            }
        }
        for b in keep.into_iter().rev() {
            self.bufs.push_front(b);
        }
    }

    /// Drop everything (abort). Buffers lent to the kernel are not here.
    pub fn clear(&mut self) {
        self.bufs.clear();
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_and_requeue() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"hello"));
        q.push(Bytes::new());
        q.push(Bytes::from_static(b" world"));
        assert_eq!(q.len(), 11);
        q.advance(7);
        assert_eq!(q.len(), 4);
        let mut lent = Vec::new();
        q.take_front(&mut lent);
        assert!(!q.has_queued());
        q.push(Bytes::from_static(b"!"));
        q.requeue_front(&mut lent, 2);
        assert_eq!(q.len(), 3);
        let mut v = [IoSlice::new(&[]); MAX_IOV];
        let n = q.io_slices(&mut v);
        let all: Vec<u8> = v[..n].iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(all, b"ld!");
    }
}
