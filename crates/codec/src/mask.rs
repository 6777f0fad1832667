//! Payload masking (RFC 6455 §5.3).
//!
//! Byte `i` of a masked payload is XORed with `key[i % 4]`. XOR is its own
//! inverse, so the same functions mask (client role) and unmask (server role).
//!
//! Every function works in place on any length and any alignment, and takes
//! `offset`: how many bytes of the same payload were already processed, so a
//! payload that arrives in several chunks continues with the key rotated.
//!
//! [`unmask`] picks the fastest variant for this CPU once and caches the
//! choice. The individual [`variants`] are reachable through the hidden
//! `internals` module, for tests and benchmarks. Their `unsafe` bodies
//! (`*_unchecked`) stay private: outside callers get the safe wrappers,
//! which check the CPU feature first.

use std::sync::atomic::{AtomicU8, Ordering};

/// Below this length the SIMD set-up costs more than it saves (measured:
/// see docs/codec.md); the u64 loop is auto-vectorised anyway.
const SMALL: usize = 128;

/// XORs `buf` with the masking key, in place.
///
/// `offset` is the number of bytes of this payload already unmasked before
/// `buf` (only `offset % 4` matters). Uses the best variant for this CPU,
/// detected on first use and cached.
#[inline]
pub fn unmask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    if buf.len() < SMALL {
        variants::words(buf, key, offset);
    } else {
        unmask_large(buf, key, offset);
    }
}

/// Block size for [`append_unmasked`]: small enough to stay in L1 between
/// the copy and the XOR, a multiple of 4 so the key phase carries over.
const APPEND_BLOCK: usize = 4096;

/// Appends `src` to `dst` unmasked, leaving `src` as it is.
///
/// Works a block at a time: copy, then XOR the copy while it is still in L1.
/// So the payload is read from `src` once and written once, where
/// unmasking in place and copying afterwards would touch `src` twice.
/// `offset` is as for [`unmask`].
pub(crate) fn append_unmasked(dst: &mut Vec<u8>, src: &[u8], key: [u8; 4], offset: usize) {
    dst.reserve(src.len());
    for (i, block) in src.chunks(APPEND_BLOCK).enumerate() {
        let at = dst.len();
        dst.extend_from_slice(block);
        unmask(&mut dst[at..], key, offset.wrapping_add(i * APPEND_BLOCK));
    }
}

/// Kept out of line so the small-buffer path of [`unmask`] stays tiny when
/// inlined into the decoder.
#[inline(never)]
fn unmask_large(buf: &mut [u8], key: [u8; 4], offset: usize) {
    match best() {
        #[cfg(target_arch = "x86_64")]
        BEST_AVX512 => {
            // SAFETY: BEST_AVX512 is only stored after runtime detection of AVX-512F.
            unsafe { variants::avx512_unchecked(buf, key, offset) }
        }
        #[cfg(target_arch = "x86_64")]
        BEST_AVX2 => {
            // SAFETY: BEST_AVX2 is only stored after runtime detection of AVX2.
            unsafe { variants::avx2_unchecked(buf, key, offset) }
        }
        #[cfg(target_arch = "x86_64")]
        BEST_SSE2 => variants::sse2(buf, key, offset),
        #[cfg(target_arch = "aarch64")]
        BEST_NEON => variants::neon(buf, key, offset),
        _ => variants::words(buf, key, offset),
    }
}

/// Name of the variant [`unmask`] uses on this machine ("avx512", "avx2",
/// "sse2", "neon" or "words"), for logs and benchmark reports.
pub fn best_variant() -> &'static str {
    match best() {
        BEST_AVX512 => "avx512",
        BEST_AVX2 => "avx2",
        BEST_SSE2 => "sse2",
        BEST_NEON => "neon",
        _ => "words",
    }
}

const UNKNOWN: u8 = 0;
#[cfg_attr(any(target_arch = "x86_64", target_arch = "aarch64"), allow(dead_code))]
const BEST_WORDS: u8 = 1;
const BEST_SSE2: u8 = 2;
const BEST_AVX2: u8 = 3;
const BEST_NEON: u8 = 4;
const BEST_AVX512: u8 = 5;

static BEST: AtomicU8 = AtomicU8::new(UNKNOWN);

#[inline]
fn best() -> u8 {
    let b = BEST.load(Ordering::Relaxed);
    if b != UNKNOWN {
        return b;
    }
    let detected = detect();
    BEST.store(detected, Ordering::Relaxed);
    detected
}

#[cold]
fn detect() -> u8 {
    #[cfg(target_arch = "x86_64")]
    {
        if variants::avx512_available() {
            BEST_AVX512
        } else if variants::avx2_available() {
            BEST_AVX2
        } else {
            // SSE2 is part of the x86_64 baseline.
            BEST_SSE2
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        // NEON is part of the aarch64 baseline.
        BEST_NEON
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        BEST_WORDS
    }
}

/// The key as seen by a buffer that starts `offset` bytes into the payload.
#[inline(always)]
fn rotate(key: [u8; 4], offset: usize) -> [u8; 4] {
    let r = (offset & 3) as u32;
    u32::from_le_bytes(key).rotate_right(8 * r).to_le_bytes()
}

/// The individual implementations. All give the same result as
/// [`bytewise`](variants::bytewise).
pub mod variants {
    use super::rotate;
    #[cfg(target_arch = "x86_64")]
    use std::sync::atomic::{AtomicU8, Ordering};

    /// Reference implementation: one byte at a time.
    pub fn bytewise(buf: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(offset + i) & 3];
        }
    }

    /// Portable: eight bytes per step as a `u64` word.
    #[inline]
    pub fn words(buf: &mut [u8], key: [u8; 4], offset: usize) {
        let k = rotate(key, offset);
        let k32 = u32::from_ne_bytes(k);
        // Both halves are the same key, so this is right on either endianness.
        let k64 = (k32 as u64) | ((k32 as u64) << 32);
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            c.copy_from_slice(&(u64::from_ne_bytes(w) ^ k64).to_ne_bytes());
        }
        // Whole words keep the key phase, so the tail starts at phase 0.
        let mut rest = chunks.into_remainder();
        if rest.len() >= 4 {
            let (head, tail) = rest.split_at_mut(4);
            let mut w = [0u8; 4];
            w.copy_from_slice(head);
            head.copy_from_slice(&(u32::from_ne_bytes(w) ^ k32).to_ne_bytes());
            rest = tail;
        }
        for (b, m) in rest.iter_mut().zip(k) {
            *b ^= m;
        }
    }

    /// x86_64 SSE2: 16 bytes per vector, four vectors per step.
    #[cfg(target_arch = "x86_64")]
    pub fn sse2(buf: &mut [u8], key: [u8; 4], offset: usize) {
        use std::arch::x86_64::*;
        let k = rotate(key, offset);
        let k16 = [u32::from_ne_bytes(k); 4];
        let len = buf.len();
        let p = buf.as_mut_ptr();
        let mut i = 0;
        // SAFETY: k16 is 16 readable bytes; loadu has no alignment requirement.
        let kv = unsafe { _mm_loadu_si128(k16.as_ptr().cast()) };
        while i + 64 <= len {
            // SAFETY: i + 64 <= len, so the four 16-byte accesses stay in buf;
            // loadu/storeu accept any alignment; SSE2 is in the x86_64 baseline.
            unsafe {
                let q = p.add(i).cast::<__m128i>();
                let a = _mm_loadu_si128(q);
                let b = _mm_loadu_si128(q.add(1));
                let c = _mm_loadu_si128(q.add(2));
                let d = _mm_loadu_si128(q.add(3));
                _mm_storeu_si128(q, _mm_xor_si128(a, kv));
                _mm_storeu_si128(q.add(1), _mm_xor_si128(b, kv));
                _mm_storeu_si128(q.add(2), _mm_xor_si128(c, kv));
                _mm_storeu_si128(q.add(3), _mm_xor_si128(d, kv));
            }
            i += 64;
        }
        while i + 16 <= len {
            // SAFETY: i + 16 <= len; unaligned access is allowed.
            unsafe {
                let q = p.add(i).cast::<__m128i>();
                _mm_storeu_si128(q, _mm_xor_si128(_mm_loadu_si128(q), kv));
            }
            i += 16;
        }
        // 16-byte steps keep the key phase.
        words(&mut buf[i..], k, 0);
    }

    #[cfg(target_arch = "x86_64")]
    static AVX2: AtomicU8 = AtomicU8::new(0);
    #[cfg(target_arch = "x86_64")]
    static AVX512: AtomicU8 = AtomicU8::new(0);

    /// A CPU feature check run once and cached in `slot` (0 = not yet,
    /// 1 = no, 2 = yes).
    #[cfg(target_arch = "x86_64")]
    fn cached(slot: &AtomicU8, detect: fn() -> bool) -> bool {
        match slot.load(Ordering::Relaxed) {
            1 => false,
            2 => true,
            _ => {
                let yes = detect();
                slot.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
                yes
            }
        }
    }

    /// Whether this CPU supports AVX-512F (detected once, then cached).
    /// Always false off x86_64.
    pub fn avx512_available() -> bool {
        #[cfg(target_arch = "x86_64")]
        return cached(&AVX512, || std::is_x86_feature_detected!("avx512f"));
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// x86_64 AVX-512: 64 bytes per vector, four vectors per step, the
    /// stores aligned to 64 bytes on long buffers (a 64-byte store then
    /// fills exactly one cache line). Falls back to [`avx2`] when the CPU
    /// has no AVX-512F, so it is always safe to call.
    #[cfg(target_arch = "x86_64")]
    pub fn avx512(buf: &mut [u8], key: [u8; 4], offset: usize) {
        if avx512_available() {
            // SAFETY: AVX-512F support was just checked.
            unsafe { avx512_unchecked(buf, key, offset) }
        } else {
            avx2(buf, key, offset)
        }
    }

    /// AVX-512 body without the feature check.
    ///
    /// # Safety
    /// The CPU must support AVX-512F (see [`avx512_available`]).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512_unchecked(buf: &mut [u8], key: [u8; 4], offset: usize) {
        use std::arch::x86_64::*;
        let len = buf.len();
        let mut i = if len >= ALIGN_FROM {
            buf.as_ptr().align_offset(64).min(len)
        } else {
            0
        };
        words(&mut buf[..i], key, offset);
        let k = rotate(key, offset + i);
        let kv = _mm512_set1_epi32(i32::from_ne_bytes(k));
        let p = buf.as_mut_ptr();
        while i + 256 <= len {
            // SAFETY: i + 256 <= len keeps the four 64-byte accesses inside
            // buf; loadu/storeu accept any alignment; the caller guarantees
            // AVX-512F.
            unsafe {
                let q = p.add(i).cast::<__m512i>();
                let a = _mm512_loadu_si512(q);
                let b = _mm512_loadu_si512(q.add(1));
                let c = _mm512_loadu_si512(q.add(2));
                let d = _mm512_loadu_si512(q.add(3));
                _mm512_storeu_si512(q, _mm512_xor_si512(a, kv));
                _mm512_storeu_si512(q.add(1), _mm512_xor_si512(b, kv));
                _mm512_storeu_si512(q.add(2), _mm512_xor_si512(c, kv));
                _mm512_storeu_si512(q.add(3), _mm512_xor_si512(d, kv));
            }
            i += 256;
        }
        while i + 64 <= len {
            // SAFETY: i + 64 <= len; unaligned access is allowed.
            unsafe {
                let q = p.add(i).cast::<__m512i>();
                _mm512_storeu_si512(q, _mm512_xor_si512(_mm512_loadu_si512(q), kv));
            }
            i += 64;
        }
        // 64-byte steps keep the key phase.
        words(&mut buf[i..], k, 0);
    }

    /// Whether this CPU supports AVX2 (detected once, then cached).
    /// Always false off x86_64.
    pub fn avx2_available() -> bool {
        #[cfg(target_arch = "x86_64")]
        return cached(&AVX2, || std::is_x86_feature_detected!("avx2"));
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// x86_64 AVX2: 32 bytes per vector, four vectors per step, with the
    /// stores aligned to 32 bytes. Falls back to [`sse2`] when the CPU has no
    /// AVX2, so it is always safe to call.
    #[cfg(target_arch = "x86_64")]
    pub fn avx2(buf: &mut [u8], key: [u8; 4], offset: usize) {
        if avx2_available() {
            // SAFETY: AVX2 support was just checked.
            unsafe { avx2_unchecked(buf, key, offset) }
        } else {
            sse2(buf, key, offset)
        }
    }

    /// From this length on, AVX2 first aligns to 32 bytes.
    #[cfg(target_arch = "x86_64")]
    const ALIGN_FROM: usize = 512;

    /// AVX2 body without the feature check.
    ///
    /// # Safety
    /// The CPU must support AVX2 (see [`avx2_available`]).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn avx2_unchecked(buf: &mut [u8], key: [u8; 4], offset: usize) {
        use std::arch::x86_64::*;
        let len = buf.len();
        // On long buffers, reach a 32-byte boundary first so no access in the
        // main loop straddles a cache line.
        let mut i = if len >= ALIGN_FROM {
            buf.as_ptr().align_offset(32).min(len)
        } else {
            0
        };
        words(&mut buf[..i], key, offset);
        let k = rotate(key, offset + i);
        let k32 = [u32::from_ne_bytes(k); 8];
        let p = buf.as_mut_ptr();
        // SAFETY: k32 is 32 readable bytes; loadu has no alignment requirement.
        let kv = unsafe { _mm256_loadu_si256(k32.as_ptr().cast()) };
        while i + 128 <= len {
            // SAFETY: i + 128 <= len keeps the four 32-byte accesses inside
            // buf; loadu/storeu accept any alignment; the caller guarantees
            // AVX2.
            unsafe {
                let q = p.add(i).cast::<__m256i>();
                let a = _mm256_loadu_si256(q);
                let b = _mm256_loadu_si256(q.add(1));
                let c = _mm256_loadu_si256(q.add(2));
                let d = _mm256_loadu_si256(q.add(3));
                _mm256_storeu_si256(q, _mm256_xor_si256(a, kv));
                _mm256_storeu_si256(q.add(1), _mm256_xor_si256(b, kv));
                _mm256_storeu_si256(q.add(2), _mm256_xor_si256(c, kv));
                _mm256_storeu_si256(q.add(3), _mm256_xor_si256(d, kv));
            }
            i += 128;
        }
        while i + 32 <= len {
            // SAFETY: i + 32 <= len; unaligned access is allowed.
            unsafe {
                let q = p.add(i).cast::<__m256i>();
                _mm256_storeu_si256(q, _mm256_xor_si256(_mm256_loadu_si256(q), kv));
            }
            i += 32;
        }
        if i + 16 <= len {
            // SAFETY: i + 16 <= len; k32 holds at least 16 bytes; unaligned
            // access is allowed.
            unsafe {
                let q = p.add(i).cast::<__m128i>();
                let k16 = _mm_loadu_si128(k32.as_ptr().cast());
                _mm_storeu_si128(q, _mm_xor_si128(_mm_loadu_si128(q), k16));
            }
            i += 16;
        }
        // 16- and 32-byte steps keep the key phase.
        words(&mut buf[i..], k, 0);
    }

    /// aarch64 NEON: 16 bytes per vector.
    #[cfg(target_arch = "aarch64")]
    pub fn neon(buf: &mut [u8], key: [u8; 4], offset: usize) {
        use std::arch::aarch64::*;
        let k = rotate(key, offset);
        let k16 = [u32::from_ne_bytes(k); 4];
        let len = buf.len();
        let p = buf.as_mut_ptr();
        let mut i = 0;
        while i + 16 <= len {
            // SAFETY: i + 16 <= len keeps the access in buf; k16 holds 16
            // bytes; vld1q/vst1q need no alignment; NEON is in the aarch64
            // baseline.
            unsafe {
                let kv = vld1q_u8(k16.as_ptr().cast::<u8>());
                let v = vld1q_u8(p.add(i));
                vst1q_u8(p.add(i), veorq_u8(v, kv));
            }
            i += 16;
        }
        words(&mut buf[i..], k, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::variants::*;
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    type F = fn(&mut [u8], [u8; 4], usize);

    fn all() -> Vec<(&'static str, F)> {
        let mut v: Vec<(&'static str, F)> = vec![("words", words), ("unmask", unmask)];
        #[cfg(target_arch = "x86_64")]
        {
            v.push(("sse2", sse2));
            v.push(("avx2", avx2));
            v.push(("avx512", avx512));
        }
        #[cfg(target_arch = "aarch64")]
        v.push(("neon", neon));
        v
    }

    #[test]
    fn rfc_hello_example() {
        // RFC 6455 §5.7: masked "Hello".
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut p = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        unmask(&mut p, key, 0);
        assert_eq!(&p, b"Hello");
    }

    #[test]
    fn rotation_continues_across_chunks() {
        let key = [1, 2, 3, 4];
        let mut whole = pattern(11);
        bytewise(&mut whole, key, 0);
        let mut split = pattern(11);
        let (a, b) = split.split_at_mut(3);
        unmask(a, key, 0);
        unmask(b, key, 3);
        assert_eq!(whole, split);
    }

    #[test]
    fn variants_match_reference_every_small_len_and_alignment() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        for (name, f) in all() {
            for start in 0..33 {
                for len in (0..300).chain(500..530).chain(1020..1040) {
                    for offset in 0..4 {
                        let mut a = pattern(start + len);
                        let mut b = a.clone();
                        bytewise(&mut a[start..], key, offset);
                        f(&mut b[start..], key, offset);
                        assert_eq!(a, b, "{name} start={start} len={len} off={offset}");
                    }
                }
            }
        }
    }

    #[test]
    fn append_unmasked_matches_in_place() {
        let key = [0x12, 0x34, 0x56, 0x78];
        for len in [0, 1, 5, 127, 128, 4095, 4096, 4097, 10_000] {
            for offset in 0..4 {
                let src = pattern(len);
                let mut want = src.clone();
                variants::bytewise(&mut want, key, offset);
                let mut dst = vec![0xee; 3];
                append_unmasked(&mut dst, &src, key, offset);
                assert_eq!(&dst[..3], &[0xee; 3], "len {len} offset {offset}");
                assert_eq!(&dst[3..], &want[..], "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn twice_is_identity() {
        let key = [9, 8, 7, 6];
        let orig = pattern(1000);
        let mut b = orig.clone();
        unmask(&mut b, key, 1);
        assert_ne!(b, orig);
        unmask(&mut b, key, 1);
        assert_eq!(b, orig);
    }

    #[test]
    fn detection_is_cached_and_named() {
        let first = best_variant();
        assert_eq!(first, best_variant());
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            first,
            if avx512_available() {
                "avx512"
            } else if avx2_available() {
                "avx2"
            } else {
                "sse2"
            }
        );
    }
}
