//! Unmasking throughput per variant, with `copy_from_slice` (memcpy) of the
//! same size as the roofline. Reported in bytes/s.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast_codec::mask::{self, variants};

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
    fns.push(("dispatch", mask::unmask));
    eprintln!("unmask dispatches to: {}", mask::best_variant());

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

criterion_group! {
    name = benches;
    config = ringcast_benches::config();
    targets = unmask
}
criterion_main!(benches);
