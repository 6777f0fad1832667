//! Receive buffers lent out past `on_data`.
//!
//! A handler that keeps part of what it received (a server echoing or
//! relaying a large message as it came in) would otherwise copy it out of
//! the receive buffer before the callback returns. Through [`Input`] it can
//! instead take a [`Bytes`] that points into the receive buffer itself. The
//! buffer is reused (given back to the io_uring buffer ring, or put back in
//! the epoll read rotation) once the last such `Bytes` is dropped, on
//! whatever thread that happens.
//!
//! Each buffer of a [`Region`] has a reference count. The backend holds one
//! reference while the handler sees the buffer and every lent `Bytes` holds
//! one more. When the backend drops its reference and nothing was lent, it
//! reuses the buffer at once (two uncontended atomic operations). Otherwise
//! the last `Bytes` to go sets the buffer's bit in a `returned` bitmap that
//! the owning shard drains once per loop pass: no lock, no queue node, and
//! a drop on another shard costs three atomic operations.
//!
//! Soundness rests on [`Lender::lend`] taking the part as `&'a mut [u8]`,
//! where `'a` is the whole `on_data` borrow: once lent, the handler cannot
//! reach those bytes again, and the backend does not touch the buffer until
//! its count is back to zero.

use bytes::Bytes;
use std::io;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// A private anonymous mapping: page aligned, backed by RAM only once touched.
pub(crate) fn map_anon(bytes: usize) -> io::Result<*mut u8> {
    // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p.cast())
}

/// `count` receive buffers of `size` bytes in one mapping, with their
/// reference counts. Unmapped when the last `Arc` goes: the backend's, or
/// that of the last lent `Bytes`.
pub(crate) struct Region {
    base: *mut u8,
    bytes: usize,
    size: usize,
    refs: Box<[AtomicU32]>,
    /// Bit `b` set: buffer `b`'s last lent `Bytes` was dropped.
    returned: Box<[AtomicU64]>,
    /// Bits set in `returned` and not drained yet (wrapping: a drain may
    /// count a bit before its setter's increment lands).
    pending: AtomicU32,
}

// SAFETY: the mapping is plain memory owned by the region. Which thread may
// write a buffer is decided by its reference count (only the backend, and
// only while it is 0 or it holds the single reference); lent parts are only
// read. The counters are atomics.
unsafe impl Send for Region {}
// SAFETY: as above; every `&self` method is safe to call concurrently.
unsafe impl Sync for Region {}

impl Region {
    pub fn new(count: u16, size: u32) -> io::Result<Arc<Region>> {
        let bytes = count as usize * size as usize;
        let base = map_anon(bytes.max(1))?;
        Ok(Arc::new(Region {
            base,
            bytes,
            size: size as usize,
            refs: (0..count).map(|_| AtomicU32::new(0)).collect(),
            returned: (0..(count as usize).div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            pending: AtomicU32::new(0),
        }))
    }

    pub fn count(&self) -> u16 {
        self.refs.len() as u16
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Start of buffer `bid` (inside the mapping when `bid < count`).
    pub fn addr(&self, bid: u16) -> *mut u8 {
        self.base.wrapping_add(bid as usize * self.size)
    }

    /// The first `len` bytes of buffer `bid`, for the backend to hand to the
    /// handler (taking the backend's reference, see [`Region::release`]).
    ///
    /// # Safety
    /// The buffer must be the caller's: not in the kernel's hands and not
    /// lent (its count is 0), and no other slice of it may be alive.
    // The slice is the mapping's memory, not `&self`'s; exclusivity is the
    // caller's promise above.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn hold(&self, bid: u16, len: usize) -> &mut [u8] {
        assert!(
            (bid as usize) < self.refs.len() && len <= self.size,
            "buffer {bid} / length {len} outside the region"
        );
        let prev = self.refs[bid as usize].swap(1, Ordering::Relaxed);
        debug_assert_eq!(prev, 0, "buffer {bid} held twice");
        // SAFETY: inside the mapping (checked above); exclusive by the
        // caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.addr(bid), len) }
    }

    /// Drops the backend's reference. True: nothing was lent, the buffer is
    /// the backend's again. False: it comes back through [`Region::drain`].
    pub fn release(&self, bid: u16) -> bool {
        let r = &self.refs[bid as usize];
        // Nothing lent: the common case skips the read-modify-write.
        if r.load(Ordering::Acquire) == 1 {
            r.store(0, Ordering::Relaxed);
            return true;
        }
        self.unref(bid)
    }

    /// Drops one reference; the last one marks the buffer returned.
    fn unref(&self, bid: u16) -> bool {
        if self.refs[bid as usize].fetch_sub(1, Ordering::AcqRel) != 1 {
            return false;
        }
        let (w, b) = (bid as usize / 64, bid % 64);
        self.returned[w].fetch_or(1 << b, Ordering::Release);
        self.pending.fetch_add(1, Ordering::Release);
        false
    }

    /// Whether [`Region::drain`] would find anything (one atomic load).
    pub fn has_returned(&self) -> bool {
        self.pending.load(Ordering::Relaxed) != 0
    }

    /// Calls `f` with every buffer returned since the last call; returns how
    /// many. One atomic load when there are none.
    pub fn drain(&self, mut f: impl FnMut(u16)) -> usize {
        if self.pending.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let mut n = 0;
        for (w, word) in self.returned.iter().enumerate() {
            let mut bits = word.swap(0, Ordering::Acquire);
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                f((w * 64) as u16 + b as u16);
                n += 1;
            }
        }
        self.pending.fetch_sub(n as u32, Ordering::Relaxed);
        n
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length; the last Arc is gone, so
        // no lent `Bytes` points here, and the backend owning the region
        // keeps (leaks) its Arc while the kernel may still use the memory.
        unsafe { libc::munmap(self.base.cast(), self.bytes.max(1)) };
    }
}

/// A lent part of a receive buffer: one reference on it.
struct Piece {
    region: Arc<Region>,
    bid: u16,
    ptr: *const u8,
    len: usize,
}

// SAFETY: the bytes are only read, and the region outlives the piece (Arc).
unsafe impl Send for Piece {}

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` lies in buffer `bid` of the region, which
        // stays mapped while `region` is held and is not reused while this
        // piece's reference is counted. It was lent as `&'a mut` for the
        // whole `on_data` borrow, so nothing writes it any more.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Piece {
    fn drop(&mut self) {
        self.region.unref(self.bid);
    }
}

/// Lends parts of the buffer an `on_data` call is reading (see [`Input`]).
pub struct Lender<'a> {
    region: &'a Arc<Region>,
    bid: u16,
}

impl<'a> Lender<'a> {
    /// `part` as `Bytes` sharing the receive buffer, which then stays out of
    /// use until the last of them is dropped. `Err` (giving `part` back) if
    /// `part` is not in this call's buffer. Taking `part` for all of `'a` is
    /// what makes this sound: nothing can write those bytes afterwards.
    pub fn lend(&self, part: &'a mut [u8]) -> Result<Bytes, &'a mut [u8]> {
        let r = self.region;
        let start = r.addr(self.bid) as usize;
        let at = part.as_ptr() as usize;
        if at < start || at + part.len() > start + r.size {
            return Err(part);
        }
        r.refs[self.bid as usize].fetch_add(1, Ordering::Relaxed);
        Ok(Bytes::from_owner(Piece {
            region: Arc::clone(r),
            bid: self.bid,
            ptr: part.as_ptr(),
            len: part.len(),
        }))
    }
}

/// The bytes an `on_data` call received: mutable in place (the codec
/// unmasks there), and, when the backend can lend its buffer, able to
/// keep parts of it past the call (see [`Input::split`]).
pub struct Input<'a> {
    data: &'a mut [u8],
    lender: Option<Lender<'a>>,
}

impl<'a> Input<'a> {
    /// Input that cannot be lent (a copy, or a backend without lending).
    pub fn plain(data: &'a mut [u8]) -> Self {
        Input { data, lender: None }
    }

    pub(crate) fn lendable(data: &'a mut [u8], region: &'a Arc<Region>, bid: u16) -> Self {
        Input {
            data,
            lender: Some(Lender { region, bid }),
        }
    }

    /// The bytes, and a lender for parts of them if the backend offers one
    /// now (io_uring and epoll do while fewer than `max_lent_buffers` of the
    /// shard's buffers are lent).
    pub fn split(self) -> (&'a mut [u8], Option<Lender<'a>>) {
        (self.data, self.lender)
    }
}

impl Deref for Input<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.data
    }
}

impl DerefMut for Input<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlent_buffer_is_free_on_release() {
        let r = Region::new(4, 64).unwrap();
        // SAFETY: fresh region, buffer 2 is ours.
        let d = unsafe { r.hold(2, 10) };
        d.fill(7);
        assert!(r.release(2));
        assert_eq!(r.drain(|_| panic!("nothing was lent")), 0);
    }

    #[test]
    fn lent_buffer_returns_after_last_piece_on_any_thread() {
        let r = Region::new(130, 64).unwrap();
        // SAFETY: fresh region, buffer 129 is ours.
        let d = unsafe { r.hold(129, 64) };
        d.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        let inp = Input::lendable(d, &r, 129);
        let (data, lender) = inp.split();
        let lender = lender.unwrap();
        let (a, b) = data.split_at_mut(10);
        let a = lender.lend(a).unwrap();
        let b = lender.lend(&mut b[..5]).unwrap();
        let mut foreign = [0u8; 3];
        assert!(lender.lend(&mut foreign).is_err(), "foreign memory");
        assert!(!r.release(129));
        assert_eq!(&a[..], &(0..10).collect::<Vec<u8>>()[..]);
        assert_eq!(&b[..], &[10, 11, 12, 13, 14]);
        drop(a);
        assert_eq!(r.drain(|_| {}), 0, "one piece still out");
        std::thread::spawn(move || drop(b)).join().unwrap();
        let mut got = Vec::new();
        assert_eq!(r.drain(|bid| got.push(bid)), 1);
        assert_eq!(got, [129]);
        assert_eq!(r.drain(|_| {}), 0);
        // Reusable again.
        // SAFETY: buffer 129 came back through `drain`.
        let d = unsafe { r.hold(129, 1) };
        d[0] = 1;
        assert!(r.release(129));
    }

    #[test]
    fn region_outlives_its_backend() {
        let r = Region::new(1, 16).unwrap();
        // SAFETY: fresh region.
        let d = unsafe { r.hold(0, 16) };
        d.fill(9);
        let piece = Input::lendable(d, &r, 0);
        let (data, lender) = piece.split();
        let lent = lender.unwrap().lend(data).unwrap();
        assert!(!r.release(0));
        drop(r);
        assert_eq!(&lent[..], &[9u8; 16]);
    }
}
