//! A connection's send queue: bytes the scenario appends, and shared frame
//! bodies queued by reference.
//!
//! A 16 KiB echo frame is the same bytes every time except its first few
//! payload bytes, so the echo scenario appends only those (and the header)
//! and queues the rest as one shared body. `writev` then sends both without
//! the generator copying 16 KiB per message, which it would otherwise pay
//! for on top of the kernel's own copy.

use std::io::IoSlice;
use std::iter;
use std::rc::Rc;

use ringcast_codec::{encode_client_frame, OpCode};

/// Bytes queued for one connection, in order: `buf` with each shared body
/// spliced in at its offset.
#[derive(Default, Debug)]
pub struct Out {
    buf: Vec<u8>,
    /// Shared bodies; each goes after the first `at` bytes of `buf`.
    shared: Vec<(usize, Rc<[u8]>)>,
    /// Bytes queued in all (`buf` plus the bodies).
    len: usize,
    /// Of those, bytes the socket has taken.
    written: usize,
}

impl Out {
    /// Appends bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Appends `body` by reference.
    pub fn push_shared(&mut self, body: &Rc<[u8]>) {
        self.shared.push((self.buf.len(), Rc::clone(body)));
        self.len += body.len();
    }

    /// Appends one whole masked frame.
    pub fn frame(&mut self, opcode: OpCode, payload: &[u8], mask: [u8; 4]) {
        let before = self.buf.len();
        encode_client_frame(&mut self.buf, true, opcode, payload, mask);
        self.len += self.buf.len() - before;
    }

    /// Moves everything queued in `other` (nothing of it written yet) to
    /// the end of this queue.
    pub fn append(&mut self, other: Out) {
        debug_assert_eq!(other.written, 0);
        let base = self.buf.len();
        self.buf.extend_from_slice(&other.buf);
        self.shared
            .extend(other.shared.into_iter().map(|(at, b)| (base + at, b)));
        self.len += other.len;
    }

    /// Bytes queued and not yet written.
    pub fn unsent(&self) -> usize {
        self.len - self.written
    }

    /// The queue in order, written bytes included.
    fn segments(&self) -> impl Iterator<Item = &[u8]> {
        let mut from = 0;
        let spliced = self.shared.iter().flat_map(move |(at, body)| {
            let own = &self.buf[from..*at];
            from = *at;
            [own, &body[..]]
        });
        let last = self.shared.last().map_or(0, |(at, _)| *at);
        spliced.chain(iter::once(&self.buf[last..]))
    }

    /// Fills `iov` with the unsent bytes, as many slices as fit; returns
    /// how many were filled.
    pub fn io_slices<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut skip = self.written;
        let mut n = 0;
        for seg in self.segments() {
            if n == iov.len() {
                break;
            }
            if skip >= seg.len() {
                skip -= seg.len();
                continue;
            }
            iov[n] = IoSlice::new(&seg[skip..]);
            skip = 0;
            n += 1;
        }
        n
    }

    /// The socket took `n` more bytes. Once all is written the buffers are
    /// emptied, keeping their capacity.
    pub fn advance(&mut self, n: usize) {
        self.written += n;
        debug_assert!(self.written <= self.len);
        if self.written >= self.len {
            self.buf.clear();
            self.shared.clear();
            self.len = 0;
            self.written = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsent(q: &Out) -> Vec<u8> {
        let mut iov = [IoSlice::new(&[]); 8];
        let n = q.io_slices(&mut iov);
        iov[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn bodies_are_spliced_in_order_across_partial_writes() {
        let body: Rc<[u8]> = Rc::from(&b"BODY"[..]);
        let mut q = Out::default();
        q.push(b"h1");
        q.push_shared(&body);
        q.push(b"h2");
        q.push_shared(&body);
        q.push(b"tail");
        assert_eq!(unsent(&q), b"h1BODYh2BODYtail");
        assert_eq!(q.unsent(), 16);
        q.advance(3);
        assert_eq!(unsent(&q), b"ODYh2BODYtail");
        q.advance(7);
        assert_eq!(unsent(&q), b"DYtail");
        let mut more = Out::default();
        more.push(b"+");
        more.push_shared(&body);
        q.append(more);
        assert_eq!(unsent(&q), b"DYtail+BODY");
        q.advance(11);
        assert_eq!(q.unsent(), 0);
        assert!(unsent(&q).is_empty());
        q.push(b"again");
        assert_eq!(unsent(&q), b"again");
    }

    #[test]
    fn io_slices_stops_at_the_array_size() {
        let body: Rc<[u8]> = Rc::from(&b"b"[..]);
        let mut q = Out::default();
        for _ in 0..10 {
            q.push(b"h");
            q.push_shared(&body);
        }
        let mut iov = [IoSlice::new(&[]); 8];
        assert_eq!(q.io_slices(&mut iov), 8);
        q.advance(19);
        assert_eq!(unsent(&q), b"b");
    }
}
