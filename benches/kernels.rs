//! The kernels alone, without Python: `cargo bench` (or `cargo bench -- --quick`).
//!
//! Prints the median time and GB/s of each kernel per SIMD tier, on data in DRAM and on data
//! that fits in the last-level cache (which shows whether a kernel is bound by memory or by
//! arithmetic), next to a plain threaded sum of the same array (the read ceiling).

use mlecore::{
    cross_entropy, cross_entropy_with_grad, logsumexp_axis, logsumexp_rows, set_tier, CeOptions,
    GradIo, GradScale, Labels, RowResults, Target, Tier,
};
use rayon::prelude::*;
use std::time::Instant;

fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[reps / 2]
}

fn data(rows: usize, cols: usize) -> Vec<f32> {
    let mut s = 0x2545_f491_4f6c_dd1du64;
    (0..rows * cols)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
        })
        .collect()
}

/// Σ c with 16 independent running sums, which the compiler keeps in vector registers: a
/// read as fast as the core can stream, so it measures the memory, not an addition chain.
fn sum_f32(c: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut it = c.chunks_exact(16);
    for v in &mut it {
        for (a, x) in acc.iter_mut().zip(v) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + it.remainder().iter().sum::<f32>()
}

/// One line: time, bandwidth, and the fraction of the read ceiling (the sum's time over this
/// kernel's, for kernels that read the array once).
fn report(name: &str, bytes: usize, ms: f64, ceiling_ms: Option<f64>) {
    let gbs = bytes as f64 / ms / 1e6;
    let frac = ceiling_ms.map_or(String::new(), |c| {
        format!("{:>5.2} of the read ceiling", c / ms)
    });
    println!("  {name:<36} {ms:>8.2} ms {gbs:>7.1} GB/s   {frac}");
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let tier_in_use = mlecore::tier();
    let reps = if quick { 5 } else { 11 };
    let threads = mlecore::num_threads();
    println!(
        "mlecore kernels, {threads} threads, detected tier {:?}",
        mlecore::detected_tier()
    );
    let cases: &[(&str, usize, usize)] = if quick {
        &[("DRAM", 1024, 32000), ("cache", 256, 8192)]
    } else {
        &[
            ("DRAM", 4096, 32000),
            ("cache", 256, 8192),
            ("few classes", 1 << 20, 10),
        ]
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    for &(label, rows, cols) in cases {
        let x = data(rows, cols);
        let bytes = x.len() * 4;
        let labels: Vec<i64> = (0..rows as i64).map(|r| (r * 7919) % cols as i64).collect();
        let ceiling = median_ms(reps, || {
            let s: f32 = pool.install(|| x.par_chunks(1 << 16).map(sum_f32).sum());
            std::hint::black_box(s);
        });
        println!(
            "{label}: {rows} × {cols} float32 ({:.0} MB)",
            bytes as f64 / 1e6
        );
        report("threaded sum (read ceiling)", bytes, ceiling, Some(ceiling));
        for tier in [Tier::Avx512, Tier::Avx2, Tier::Neon, Tier::Scalar] {
            if set_tier(tier) != tier {
                continue;
            }
            let mut out = vec![0f32; rows];
            let ms = median_ms(reps, || logsumexp_rows(&x, cols, &mut out).unwrap());
            report(&format!("{tier:?} logsumexp"), bytes, ms, Some(ceiling));
            // The same memory as a (cols, rows) array, reduced over its leading axis.
            let ms = median_ms(reps, || {
                logsumexp_axis(&x, 1, cols, rows, &mut out).unwrap()
            });
            report(
                &format!("{tier:?} logsumexp axis=0"),
                bytes,
                ms,
                Some(ceiling),
            );
            let (mut loss, mut lse) = (vec![0f64; rows], vec![0f32; rows]);
            let opts = CeOptions::default();
            let ms = median_ms(reps, || {
                let t = Target::<f32>::Index(Labels::I64(&labels));
                cross_entropy(&x, cols, t, &opts, RowResults::new(&mut loss, &mut lse)).unwrap();
            });
            report(&format!("{tier:?} cross_entropy"), bytes, ms, Some(ceiling));
            let mut grad = vec![0f32; x.len()];
            let ms = median_ms(reps, || {
                let io = GradIo::Separate {
                    x: &x,
                    grad: &mut grad,
                };
                let t = Target::<f32>::Index(Labels::I64(&labels));
                cross_entropy_with_grad(
                    io,
                    cols,
                    t,
                    &opts,
                    GradScale::Mean,
                    RowResults::new(&mut loss, &mut lse),
                )
                .unwrap();
            });
            report(
                &format!("{tier:?} cross_entropy_with_grad (r+w)"),
                2 * bytes,
                ms,
                None,
            );
        }
        set_tier(tier_in_use);
    }
}
