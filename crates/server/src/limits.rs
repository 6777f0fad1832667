//! Process-wide connection counts, checked at upgrade time only.
//!
//! The message path never touches these. `max-connections` compares the sum
//! of per-shard gauges (each written only by its shard) with the limit, so
//! shards upgrading at the same instant may overshoot it by at most
//! `shards - 1`. `max-connections-per-ip` needs an exact count per address
//! across shards: a map split into 64 stripes, each behind its own mutex,
//! locked once when a WebSocket opens and once when it closes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

/// One cache line pair per shard, so shards never write a shared line.
#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicUsize);

/// Open WebSockets per shard.
pub(crate) struct Gauges {
    cells: Box<[Padded]>,
}

impl Gauges {
    pub fn new(shards: usize) -> Gauges {
        Gauges {
            cells: (0..shards).map(|_| Padded::default()).collect(),
        }
    }

    /// Called by `shard` only (single writer: a plain store).
    pub fn set(&self, shard: usize, open: usize) {
        self.cells[shard].0.store(open, Relaxed);
    }

    /// Sum over shards.
    pub fn total(&self) -> usize {
        self.cells.iter().map(|c| c.0.load(Relaxed)).sum()
    }
}

const STRIPES: usize = 64;

/// Exact open-WebSocket count per client address.
pub(crate) struct PerIp {
    max: usize,
    stripes: Box<[Mutex<HashMap<IpAddr, u32>>]>,
}

impl PerIp {
    pub fn new(max: usize) -> PerIp {
        PerIp {
            max,
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn stripe(&self, ip: IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(ip);
        &self.stripes[(h as usize) % STRIPES]
    }

    /// Counts one more connection from `ip`, unless it already has `max`.
    pub fn try_acquire(&self, ip: IpAddr) -> bool {
        let mut map = self.stripe(ip).lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if (*n as usize) >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    /// Forgets one connection from `ip`.
    pub fn release(&self, ip: IpAddr) {
        let mut map = self.stripe(ip).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_counts_exactly() {
        let p = PerIp::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(p.try_acquire(a));
        assert!(p.try_acquire(a));
        assert!(!p.try_acquire(a));
        assert!(p.try_acquire(b));
        p.release(a);
        assert!(p.try_acquire(a));
    }

    #[test]
    fn gauges_sum() {
        let g = Gauges::new(3);
        g.set(0, 2);
        g.set(2, 5);
        assert_eq!(g.total(), 7);
    }
}
