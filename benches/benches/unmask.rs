//! Unmasking throughput per variant, with `copy_from_slice` (memcpy) of the
//! same size as the roofline. Reported in bytes/s.
//!
//! `unmask-cold` walks 16 KiB messages through a region far larger than L2,
//! so each one starts out of cache, as it does when io_uring has received a
//! whole batch of messages before the shard unmasks the first.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast_codec::internals::{best_variant, unmask as dispatch, variants};

const SIZES: [usize; 5] = [16, 125, 1024, 16 * 1024, 1024 * 1024];
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

type UnmaskFn = fn(&mut [u8], [u8; 4], usize);

fn unmask(c: &mut Criterion) {
    let mut fns: Vec<(&str, UnmaskFn)> =
        vec![("bytewise", variants::bytewise), ("words", variants::words)];
    #[cfg(target_arch = "x86_64")]
    {
        fns.push(("sse2", variants::sse2));
        if variants::avx512_available() {
            fns.push(("avx512", variants::avx512));
        }
        if variants::avx2_available() {
            fns.push(("avx2", variants::avx2));
        }
    }
    #[cfg(target_arch = "aarch64")]
    fns.push(("neon", variants::neon));
    fns.push(("dispatch", dispatch));
    eprintln!("unmask dispatches to: {}", best_variant());

    for size in SIZES {
        let mut g = c.benchmark_group(format!("unmask/{size}"));
        g.throughput(Throughput::Bytes(size as u64));
        let mut buf: Vec<u8> = (0..size).map(|i| i as u8).collect();
        for &(name, f) in &fns {
            g.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| f(black_box(&mut buf), black_box(KEY), 0))
            });
        }
        let src = buf.clone();
        g.bench_function(BenchmarkId::from_parameter("memcpy"), |b| {
            b.iter(|| black_box(&mut buf).copy_from_slice(black_box(&src)))
        });
        g.finish();
    }
}

/// Region walked by `unmask-cold`: 16× this machine's 2 MiB of L2 per core.
const COLD_REGION: usize = 64 << 20;
const COLD_MSG: usize = 16 * 1024;

fn unmask_cold(c: &mut Criterion) {
    let mut g = c.benchmark_group(format!("unmask-cold/{COLD_MSG}"));
    g.throughput(Throughput::Bytes(COLD_MSG as u64));
    let mut region: Vec<u8> = (0..COLD_REGION).map(|i| i as u8).collect();
    let slots = COLD_REGION / COLD_MSG;
    let mut next = 0;
    g.bench_function(BenchmarkId::from_parameter("dispatch"), |b| {
        b.iter(|| {
            next = (next + 1) % slots;
            let at = next * COLD_MSG;
            dispatch(black_box(&mut region[at..at + COLD_MSG]), KEY, 0)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = ringcast_benches::config();
    targets = unmask, unmask_cold
}
criterion_main!(benches);
