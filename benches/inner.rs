//! Cycles per vector of the inner loops, per SIMD tier, on one chunk in L1: `cargo bench
//! --bench inner`. One thread, no rows and no memory traffic: what the arithmetic costs.
//! BENCHMARKS.md explains the budget these numbers are held against.

use mlecore::{inner_loop, Loop, Tier};
use std::time::Instant;

/// Time-stamp counter ticks (x86) or nanoseconds, and the name of the unit.
fn ticks() -> (u64, &'static str) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: RDTSC is part of every x86-64 CPU.
    return (unsafe { std::arch::x86_64::_rdtsc() }, "TSC cycles");
    #[allow(unreachable_code)]
    (
        std::time::SystemTime::UNIX_EPOCH
            .elapsed()
            .map_or(0, |d| d.as_nanos() as u64),
        "ns",
    )
}

fn data<F: Copy>(n: usize, from: impl Fn(f64) -> F) -> Vec<F> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            from(((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 12.0)
        })
        .collect()
}

/// The best of several timed runs, per vector: (ticks, nanoseconds).
fn per_vector(lanes: usize, n: usize, mut run: impl FnMut(usize) -> f64) -> (f64, f64) {
    let reps = 20_000;
    std::hint::black_box(run(reps / 10));
    let mut best = (f64::INFINITY, f64::INFINITY);
    for _ in 0..7 {
        let (t0, s0) = (ticks().0, Instant::now());
        std::hint::black_box(run(reps));
        let (dt, ds) = (ticks().0 - t0, s0.elapsed().as_secs_f64());
        let vectors = (reps * n.div_ceil(lanes)) as f64;
        if (dt as f64) / vectors < best.0 {
            best = (dt as f64 / vectors, ds * 1e9 / vectors);
        }
    }
    best
}

fn main() {
    let n = 2048;
    let tiers = [
        (Tier::Avx512, 16),
        (Tier::Avx2, 8),
        (Tier::Neon, 4),
        (Tier::Scalar, 1),
    ];
    println!(
        "inner loops on {n} values in L1, one thread; per vector, {}",
        ticks().1
    );
    println!(
        "{:<10} {:<6} {:>7} {:>16} {:>16}",
        "tier", "dtype", "lanes", "stats pass", "write pass"
    );
    for (tier, lanes32) in tiers {
        if mlecore::set_tier(tier) != tier {
            continue;
        }
        let x32 = data(n, |v| v as f32);
        let mut o32 = vec![0f32; n];
        let s = per_vector(lanes32, n, |r| {
            inner_loop(tier, Loop::Stats, &x32, &mut o32, r)
        });
        let w = per_vector(lanes32, n, |r| {
            inner_loop(tier, Loop::Write, &x32, &mut o32, r)
        });
        println!(
            "{:<10} {:<6} {:>7} {:>7.2} ({:>5.2} ns) {:>7.2} ({:>5.2} ns)",
            format!("{tier:?}"),
            "f32",
            lanes32,
            s.0,
            s.1,
            w.0,
            w.1
        );
        let x64 = data(n, |v| v);
        let mut o64 = vec![0f64; n];
        let lanes64 = lanes32.div_ceil(2);
        let s = per_vector(lanes64, n, |r| {
            inner_loop(tier, Loop::Stats, &x64, &mut o64, r)
        });
        let w = per_vector(lanes64, n, |r| {
            inner_loop(tier, Loop::Write, &x64, &mut o64, r)
        });
        println!(
            "{:<10} {:<6} {:>7} {:>7.2} ({:>5.2} ns) {:>7.2} ({:>5.2} ns)",
            format!("{tier:?}"),
            "f64",
            lanes64,
            s.0,
            s.1,
            w.0,
            w.1
        );
    }
    mlecore::set_tier(mlecore::detected_tier());
}
