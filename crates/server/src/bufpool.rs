//! Per-shard recycling of large buffers: messages being assembled by the
//! decoder and frames waiting to be sent.
//!
//! Why: echoing 16 KiB messages allocated and freed two 16 KiB buffers per
//! message (the decoder's, for a message cut by a read boundary, and the
//! outgoing frame's). glibc serves a shard thread from a non-main arena and
//! trims that arena's top with `madvise(MADV_DONTNEED)` once enough is free,
//! so the next message faulted its pages in again and the kernel zeroed
//! them: `make perf` showed page faults in 37% of the server's samples with
//! the epoll backend. Buffers kept here stay resident and warm.
//!
//! Only buffers of 4 KiB to 2 MiB are pooled (smaller ones come from
//! malloc's per-thread caches cheaply), in power-of-two classes, up to
//! `--buffer-pool` bytes per shard. Threads that are not shards (a user
//! thread pushing through a `ServerHandle`) keep nothing. A frame freed on
//! another shard (a broadcast) joins that shard's pool.
//!
//! The decoder also turns each large incoming message into a server frame:
//! right in the reactor's receive buffer when it arrived whole and the
//! reactor lends that buffer ([`Received`]), else in a pooled buffer (see
//! `BufferPool::frame_buf`). That frame travels with the message to the app
//! (`Decoder::decode_framed` → `Message`), so sending the message on as it
//! is (the echo route, `/broadcast`) shares it: no copy. Unmasking in place
//! and copying the payload into a new frame afterwards were 10% and 11% of
//! the server's CPU in the 16 KiB echo.

use std::cell::RefCell;

use bytes::Bytes;
use ringcast_codec::{
    encode_header, server_frame, server_frame_into, server_frame_len, BufferPool, Lend, OpCode,
    MAX_HEADER_LEN,
};

/// log2 of the smallest pooled capacity (4 KiB).
const MIN_CLASS: u32 = 12;
/// log2 of the largest pooled capacity (2 MiB).
const MAX_CLASS: u32 = 21;
const CLASSES: usize = (MAX_CLASS - MIN_CLASS + 1) as usize;

struct Pool {
    free: [Vec<Vec<u8>>; CLASSES],
    /// Capacity held in `free`.
    bytes: usize,
    /// Most capacity `free` may hold; 0 on threads that are not shards.
    limit: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool {
            free: [const { Vec::new() }; CLASSES],
            bytes: 0,
            limit: 0,
        })
    };
}

/// Lets this thread (a shard) keep up to `limit` bytes of buffers.
pub(crate) fn configure(limit: usize) {
    POOL.with(|p| p.borrow_mut().limit = limit);
}

/// The class whose buffers all hold `n` bytes, if `n` is in the pooled range.
fn class_for_request(n: usize) -> Option<u32> {
    let c = n.max(1).next_power_of_two().trailing_zeros();
    (MIN_CLASS..=MAX_CLASS).contains(&c).then_some(c)
}

/// The class a buffer of capacity `cap` can serve (its largest power of two).
fn class_of_capacity(cap: usize) -> Option<u32> {
    if cap == 0 {
        return None;
    }
    let c = usize::BITS - 1 - cap.leading_zeros();
    (MIN_CLASS..=MAX_CLASS).contains(&c).then_some(c)
}

/// An empty buffer with room for at least `min` bytes.
pub(crate) fn take(min: usize) -> Vec<u8> {
    let Some(c) = class_for_request(min) else {
        return Vec::with_capacity(min);
    };
    let reused = POOL.try_with(|p| {
        let mut p = p.borrow_mut();
        if p.limit == 0 {
            return Err(());
        }
        let v = p.free[(c - MIN_CLASS) as usize].pop();
        if let Some(v) = &v {
            p.bytes -= v.capacity();
        }
        Ok(v)
    });
    match reused {
        Ok(Ok(Some(v))) => v,
        // A pooling thread allocates the whole class, so the buffer can
        // serve any request of its class later.
        Ok(Ok(None)) => Vec::with_capacity(1 << c),
        // Not a shard (or the pool is gone): exactly what was asked.
        _ => Vec::with_capacity(min),
    }
}

/// Returns a buffer for reuse (or frees it if the pool is full).
pub(crate) fn give(mut buf: Vec<u8>) {
    let Some(c) = class_of_capacity(buf.capacity()) else {
        return;
    };
    // During thread teardown the pool may be gone: then just free.
    let _ = POOL.try_with(|p| {
        let mut p = p.borrow_mut();
        if p.bytes + buf.capacity() > p.limit {
            return;
        }
        buf.clear();
        p.bytes += buf.capacity();
        p.free[(c - MIN_CLASS) as usize].push(std::mem::take(&mut buf));
    });
}

/// A buffer that goes back to the pool of the thread that drops it.
struct Recycled(Vec<u8>);

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.0));
    }
}

/// An unmasked final frame, in a pooled buffer when it is large.
pub(crate) fn frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let len = server_frame_len(payload.len());
    if class_for_request(len).is_none() {
        return server_frame(opcode, payload);
    }
    let mut buf = take(len);
    server_frame_into(&mut buf, opcode, payload);
    Bytes::from_owner(Recycled(buf))
}

/// The decoder's view of this thread's pool.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ShardPool;

impl BufferPool for ShardPool {
    fn take(&mut self, min_capacity: usize) -> Vec<u8> {
        take(min_capacity)
    }
    fn give(&mut self, buf: Vec<u8>) {
        give(buf)
    }

    /// Large messages only: below 4 KiB unmasking in place and copying on
    /// echo is cheap, and nothing would be pooled.
    fn frame_buf(&mut self, opcode: OpCode, len: usize) -> Option<Vec<u8>> {
        let total = server_frame_len(len);
        class_for_request(total)?;
        let mut buf = take(total);
        let mut h = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut h, true, opcode, len as u64, None);
        buf.extend_from_slice(&h[..n]);
        Some(buf)
    }

    fn seal(&mut self, frame: Vec<u8>) -> Bytes {
        Bytes::from_owner(Recycled(frame))
    }
}

/// The decoder's view of the reactor's receive buffer: large messages that
/// lie whole in it are lent from it as their server frame (see
/// `ringcast_codec::Lend`), so echoing or relaying them copies nothing.
/// Small ones are not: a few bytes would keep a whole receive buffer out of
/// use for as long as they are queued.
pub(crate) struct Received<'a>(pub Option<ringcast_reactor::Lender<'a>>);

impl<'a> Lend<'a> for Received<'a> {
    fn wants(&self, frame_len: usize) -> bool {
        self.0.is_some() && class_for_request(frame_len).is_some()
    }

    fn lend(&mut self, frame: &'a mut [u8]) -> Result<Bytes, &'a mut [u8]> {
        match &self.0 {
            Some(l) => l.lend(frame),
            None => Err(frame),
        }
    }
}

/// Capacity held by this thread's pool (for tests).
#[cfg(test)]
fn held() -> usize {
    POOL.with(|p| p.borrow().bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(class_for_request(100), None);
        assert_eq!(class_for_request(4096), Some(12));
        assert_eq!(class_for_request(4097), Some(13));
        assert_eq!(class_for_request(16_388), Some(15));
        assert_eq!(class_for_request((2 << 20) + 1), None);
        assert_eq!(class_of_capacity(4095), None);
        assert_eq!(class_of_capacity(16_388), Some(14));
        assert_eq!(class_of_capacity(1 << 21), Some(21));
        assert_eq!(class_of_capacity(1 << 22), None);
    }

    #[test]
    fn reuses_within_limit_only_on_configured_threads() {
        std::thread::spawn(|| {
            // Not a shard: nothing is kept, and no size class is imposed.
            give(Vec::with_capacity(8192));
            assert_eq!(held(), 0);
            assert_eq!(take(5000).capacity(), 5000);

            configure(20_000);
            let a = take(5000);
            assert!(a.capacity() >= 8192);
            let ptr = a.as_ptr();
            give(a);
            assert_eq!(held(), 8192);
            let b = take(6000);
            assert_eq!(b.as_ptr(), ptr, "the pooled buffer is handed out again");
            assert!(b.is_empty());
            assert_eq!(held(), 0);

            // Over the limit: freed instead.
            give(Vec::with_capacity(16_384));
            give(Vec::with_capacity(8192));
            assert_eq!(held(), 16_384);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn large_messages_are_built_as_their_frame() {
        std::thread::spawn(|| {
            configure(1 << 20);
            let payload: Vec<u8> = (0..6000u32).map(|i| i as u8).collect();
            let mut pool = ShardPool;
            assert!(
                pool.frame_buf(OpCode::Binary, 100).is_none(),
                "small: in place"
            );
            let mut buf = pool.frame_buf(OpCode::Binary, payload.len()).unwrap();
            buf.extend_from_slice(&payload);
            let sealed = pool.seal(buf);
            assert_eq!(sealed, server_frame(OpCode::Binary, &payload));
            // Sealed frames go back to the pool when the last clone goes.
            let held_before = held();
            drop(sealed);
            assert_eq!(held(), held_before + 8192);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn frames_are_correct_and_recycled() {
        std::thread::spawn(|| {
            configure(1 << 20);
            for len in [0, 125, 4000, 5000, 70_000] {
                let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let f = frame(OpCode::Binary, &payload);
                assert_eq!(f, server_frame(OpCode::Binary, &payload), "len {len}");
                drop(f);
            }
            // 4000 → 4 KiB, 5000 → 8 KiB and 70,000 → 128 KiB came back.
            assert_eq!(held(), 4096 + 8192 + 131_072);
        })
        .join()
        .unwrap();
    }
}
