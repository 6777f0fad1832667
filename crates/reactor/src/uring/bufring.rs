//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`, Linux 5.19).
//!
//! The shard registers one ring of `count` equal buffers. A multishot recv
//! names the buffer *group* instead of a buffer: the kernel picks the next
//! buffer from the ring only when data actually arrives, and reports its id in
//! the CQE. So receive memory is per shard, proportional to data in flight,
//! not per connection: an idle connection holds no user-space buffer.
//!
//! Memory layout: the ring is an array of 16-byte `io_uring_buf` entries
//! (addr, len, bid), whose first entry's reserved field doubles as the
//! producer `tail` (u16). We are the producer (returning buffers), the kernel
//! the consumer; it never reads past `tail`, so we fill the entry at `tail`
//! and then publish `tail + 1` with a release store. Both the ring and the
//! buffers are anonymous `mmap`s: page aligned (the kernel requires it for
//! the ring) and only backed by RAM once touched.

use crate::lend::{map_anon, Region};
use io_uring::types::BufRingEntry;
use io_uring::Submitter;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

pub(crate) struct BufRing {
    ring: *mut BufRingEntry,
    ring_bytes: usize,
    entries: u16,
    tail: u16,
    /// The buffers, which lent parts may keep mapped past this ring.
    bufs: Arc<Region>,
    count: u16,
    /// Buffers handed to the kernel so far (`0..provided` circulate).
    provided: u16,
    bgid: u16,
}

impl BufRing {
    /// Allocate (not yet registered). `count` buffers of `buf_size` bytes.
    pub fn new(count: u16, buf_size: u32, bgid: u16) -> io::Result<Self> {
        assert!(count > 0);
        let entries = count.next_power_of_two();
        let ring_bytes = entries as usize * std::mem::size_of::<BufRingEntry>();
        let ring = map_anon(ring_bytes)?;
        let bufs = match Region::new(count, buf_size) {
            Ok(b) => b,
            Err(e) => {
                // SAFETY: `ring` was mapped just above with this length and is unused.
                unsafe { libc::munmap(ring.cast(), ring_bytes) };
                return Err(e);
            }
        };
        Ok(BufRing {
            ring: ring.cast(),
            ring_bytes,
            entries,
            tail: 0,
            bufs,
            count,
            provided: 0,
            bgid,
        })
    }

    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    /// Register with the ring and hand the first `initial` buffers to the kernel.
    pub fn register(&mut self, sub: &Submitter<'_>, initial: u16) -> io::Result<()> {
        // SAFETY: `ring` points to `entries` page-aligned, zeroed entries that
        // stay mapped until `Drop`, and the owner (`UringDriver`) unregisters
        // the group or destroys the io_uring instance before dropping us.
        unsafe { sub.register_buf_ring_with_flags(self.ring as u64, self.entries, self.bgid, 0)? };
        self.grow(initial.max(1));
        Ok(())
    }

    /// Hand up to `n` more never-used buffers to the kernel; returns how many.
    ///
    /// The ring is FIFO, so every provided buffer takes its turn: the cache
    /// and RSS working set is *all* provided buffers, however little data
    /// flows. Starting small and growing only when the ring runs dry keeps
    /// that working set proportional to the real burst size.
    pub fn grow(&mut self, n: u16) -> u16 {
        let add = n.min(self.count - self.provided);
        for bid in self.provided..self.provided + add {
            self.push(bid);
        }
        self.provided += add;
        if add > 0 {
            self.publish();
        }
        add
    }

    /// Buffers circulating (handed to the kernel at least once).
    pub fn provided(&self) -> u16 {
        self.provided
    }

    fn push(&mut self, bid: u16) {
        let slot = (self.tail & (self.entries - 1)) as usize;
        // SAFETY: `slot < entries`, inside the mapping. The kernel only reads
        // entries in [head, tail), and at most `count <= entries` buffers exist,
        // so the slot at `tail` is not being read. Only addr/len/bid are
        // written; entry 0's reserved field (the tail) is left alone.
        let e = unsafe { &mut *self.ring.add(slot) };
        // bid < count, so this address lies inside `bufs`.
        e.set_addr(self.bufs.addr(bid) as u64);
        e.set_len(self.bufs.size() as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: `ring` is the first entry of a live, page-aligned ring;
        // the tail is a naturally aligned u16 the kernel reads concurrently,
        // so it is accessed atomically. Release orders the entry writes above
        // before the kernel can observe the new tail.
        unsafe {
            let tail = BufRingEntry::tail(self.ring) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// The buffers, for handing received data to the handler (see
    /// [`Region::hold`]): a buffer the kernel reported in a CQE is ours until
    /// we `recycle` it.
    pub fn region(&self) -> &Arc<Region> {
        &self.bufs
    }

    /// Gives back every buffer whose lent parts are all gone; returns how many.
    pub fn recycle_returned(&mut self) -> u16 {
        if !self.bufs.has_returned() {
            return 0;
        }
        let bufs = Arc::clone(&self.bufs);
        let n = bufs.drain(|bid| self.push(bid));
        if n > 0 {
            self.publish();
        }
        n as u16
    }

    /// Give buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        if bid < self.count {
            self.push(bid);
            self.publish();
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the ring was mapped in `new` with this length. The owner
        // guarantees the kernel no longer uses it: every recv that could pick
        // a buffer has completed and the group was unregistered (or, if that
        // could not be established, the owner leaks us instead). The buffers
        // go with the region's last reference.
        unsafe { libc::munmap(self.ring.cast(), self.ring_bytes) };
    }
}
