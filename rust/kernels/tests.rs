//! The public kernels against obviously-correct float64 scalar code, on every SIMD tier, at
//! sizes that hit every vector tail, chunk and segment boundary.

use super::columns::logsumexp_axis;
use super::cross_entropy::*;
use super::softmax::*;
use crate::elem::{Elem, Labels, CHUNK};
use crate::error::KernelError;
use crate::parallel::{num_threads, set_num_threads};
use crate::simd::{set_tier, tier, Tier};
use half::{bf16, f16};
use std::sync::{Mutex, MutexGuard};

/// The process-wide settings (SIMD tier, thread count), held by a test that changes them so
/// that two such tests do not interleave, and put back as they were when it ends (also when
/// it fails).
struct Globals {
    tier: Tier,
    threads: usize,
    _lock: MutexGuard<'static, ()>,
}

impl Globals {
    fn take() -> Globals {
        static LOCK: Mutex<()> = Mutex::new(());
        let lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        Globals {
            tier: tier(),
            threads: num_threads(),
            _lock: lock,
        }
    }
}

impl Drop for Globals {
    fn drop(&mut self) {
        set_tier(self.tier);
        set_num_threads(self.threads);
    }
}

fn each_tier(mut f: impl FnMut(Tier)) {
    let _globals = Globals::take();
    let mut done = Vec::new();
    for t in [Tier::Scalar, Tier::Neon, Tier::Avx2, Tier::Avx512] {
        let used = set_tier(t);
        if !done.contains(&used) {
            done.push(used);
            f(used);
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.next().max(1e-300), self.next());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() * n as f64) as usize
    }
}

fn ref_lse(row: &[f64]) -> f64 {
    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if row.iter().any(|v| v.is_nan()) {
        return f64::NAN;
    }
    if !m.is_finite() {
        return m;
    }
    m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

fn close(got: f64, want: f64, rtol: f64, what: &str) {
    let ok = (got.is_nan() && want.is_nan())
        || got == want
        || (got - want).abs() <= rtol * want.abs().max(1.0);
    assert!(ok, "{what}: got {got}, want {want}");
}

const COLS: [usize; 17] = [
    0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 33, 100, 2047, 2048, 2049, 4097, 70001,
];

#[test]
fn logsumexp_matches_reference_at_every_tail() {
    let mut rng = Rng(7);
    each_tier(|tier| {
        for &cols in &COLS {
            let rows = if cols > 10_000 { 3 } else { 5 };
            let x64: Vec<f64> = (0..rows * cols).map(|_| 4.0 * rng.normal()).collect();
            let x32: Vec<f32> = x64.iter().map(|&v| v as f32).collect();
            let mut o64 = vec![0f64; rows];
            let mut o32 = vec![0f32; rows];
            logsumexp_rows(&x64, cols, &mut o64).unwrap();
            logsumexp_rows(&x32, cols, &mut o32).unwrap();
            for r in 0..rows {
                let row = &x64[r * cols..(r + 1) * cols];
                let row32: Vec<f64> = x32[r * cols..(r + 1) * cols]
                    .iter()
                    .map(|&v| v as f64)
                    .collect();
                let what = format!("{tier:?} cols={cols} row={r}");
                close(o64[r], ref_lse(row), 1e-14, &what);
                close(o32[r] as f64, ref_lse(&row32), 3e-7, &what);
            }
        }
    });
}

/// Rows whose log-sum-exp takes care: a dominant term, infinities, NaN, extremes.
fn edge_cases() -> Vec<(Vec<f64>, f64)> {
    let inf = f64::INFINITY;
    vec![
        (vec![0.0, -40.0], 4.248354255291589e-18),
        (vec![-40.0, 0.0], 4.248354255291589e-18),
        (vec![-inf, -inf, -inf], -inf),
        (vec![1.0, f64::NAN, 2.0], f64::NAN),
        (vec![inf, 0.0], inf),
        (vec![0.0, inf], inf),
        (vec![inf, -inf], inf),
        (vec![-inf, f64::NAN], f64::NAN),
        (vec![5.0], 5.0),
        (vec![1e300, 1e300], 1e300 + std::f64::consts::LN_2),
        (vec![-1e300, 0.0], 0.0),
    ]
}

#[test]
fn logsumexp_edge_values() {
    let cases = edge_cases();
    each_tier(|tier| {
        for (row, want) in &cases {
            let mut out = [0f64];
            logsumexp_rows(row, row.len(), &mut out).unwrap();
            close(out[0], *want, 1e-15, &format!("{tier:?} {row:?}"));
            // The same in float32, where representable.
            let r32: Vec<f32> = row.iter().map(|&v| v as f32).collect();
            let exact = r32
                .iter()
                .zip(row)
                .all(|(a, b)| *a as f64 == *b || b.is_nan());
            if exact {
                let mut o = [0f32];
                logsumexp_rows(&r32, r32.len(), &mut o).unwrap();
                close(o[0] as f64, *want, 1e-6, &format!("{tier:?} f32 {row:?}"));
            }
        }
        // Full precision where one term dominates, also at the end of a long row.
        let mut row = vec![-50.0f32; 5000];
        row[4321] = 10.0;
        let mut o = [0f64];
        let r64: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        logsumexp_rows(&r64, r64.len(), &mut o).unwrap();
        close(o[0] - 10.0, 4999.0 * (-60f64).exp(), 1e-12, "dominant");
    });
}

/// Column j of an `outer × steps × inner` array, slab `o`.
fn column(x: &[f64], steps: usize, inner: usize, o: usize, j: usize) -> Vec<f64> {
    (0..steps).map(|k| x[(o * steps + k) * inner + j]).collect()
}

#[test]
fn logsumexp_axis_matches_reference_across_blocks() {
    let mut rng = Rng(11);
    // Steps around the block length (32), widths that end in wide strips, single vectors and
    // scalar lanes, and more columns than one task unit holds.
    let shapes = [
        (1, 1, 1),
        (1, 31, 7),
        (2, 32, 16),
        (1, 33, 17),
        (3, 70, 130),
        (1, 100, 300),
        (1, 65, 1100),
        (2, 257, 33),
    ];
    each_tier(|tier| {
        for &(outer, steps, inner) in &shapes {
            // The spread grows down the axis, so later blocks keep bringing new maxima.
            let x64: Vec<f64> = (0..outer * steps * inner)
                .map(|i| (1.0 + ((i / inner) % steps) as f64 / 8.0) * rng.normal())
                .collect();
            let x32: Vec<f32> = x64.iter().map(|&v| v as f32).collect();
            let r32: Vec<f64> = x32.iter().map(|&v| v as f64).collect();
            let mut o64 = vec![0f64; outer * inner];
            let mut o32 = vec![0f32; outer * inner];
            logsumexp_axis(&x64, outer, steps, inner, &mut o64).unwrap();
            logsumexp_axis(&x32, outer, steps, inner, &mut o32).unwrap();
            for o in 0..outer {
                for j in 0..inner {
                    let what = format!("{tier:?} {outer}×{steps}×{inner} [{o}, {j}]");
                    let want = ref_lse(&column(&x64, steps, inner, o, j));
                    close(o64[o * inner + j], want, 1e-14, &what);
                    let want = ref_lse(&column(&r32, steps, inner, o, j));
                    close(o32[o * inner + j] as f64, want, 3e-7, &what);
                }
            }
        }
        // Empty slabs and columns.
        for (outer, steps, inner) in [(0, 5, 3), (2, 5, 0), (0, 0, 0), (3, 0, 2)] {
            let x = vec![0f32; outer * steps * inner];
            let mut out = vec![7f32; outer * inner];
            logsumexp_axis(&x, outer, steps, inner, &mut out).unwrap();
            assert!(
                out.iter().all(|&v| v == f32::NEG_INFINITY),
                "{outer}×{steps}×{inner}"
            );
        }
        // A long float32 column of similar terms: its sum must not lose digits to a float32
        // running total (one lane summing 300000 terms did, by 1e-5 relative).
        let (steps, inner) = (300_000, 17);
        let x: Vec<f32> = (0..steps * inner)
            .map(|_| (0.01 * rng.normal()) as f32)
            .collect();
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let mut out = vec![0f32; inner];
        logsumexp_axis(&x, 1, steps, inner, &mut out).unwrap();
        for (j, o) in out.iter().enumerate() {
            let want = ref_lse(&column(&x64, steps, inner, 0, j));
            close(*o as f64, want, 2e-7, &format!("{tier:?} long column {j}"));
        }
        // The edge cases down a column, their values 37 steps apart (in different blocks) or
        // 9001 apart (in different bands, merged), −inf between them.
        for ((vals, want), gap) in edge_cases()
            .into_iter()
            .flat_map(|c| [(c.clone(), 37), (c, 9001)])
        {
            let steps = gap * vals.len();
            let mut x = vec![f64::NEG_INFINITY; steps];
            for (i, v) in vals.iter().enumerate() {
                x[gap * i + gap - 1] = *v;
            }
            let mut out = [0f64];
            logsumexp_axis(&x, 1, steps, 1, &mut out).unwrap();
            close(
                out[0],
                want,
                1e-15,
                &format!("{tier:?} column {vals:?}, gap {gap}"),
            );
        }
    });
}

#[test]
fn logsumexp_axis_edge_values_in_every_kind_of_strip() {
    let mut rng = Rng(17);
    // Columns in a wide strip, a single vector and scalar lanes (on AVX-512 float32: 4 wide
    // strips of 32, one vector of 16, 3 lanes), beside columns of ordinary values, so that
    // one lane waits for its first finite value while the others are summed in one pass.
    let inner = 147;
    let cols = [5, 64 + 17, 140, 146];
    let check = |x: &[f64], steps: usize, what: &str| {
        let mut out = vec![0f64; inner];
        logsumexp_axis(x, 1, steps, inner, &mut out).unwrap();
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let r32: Vec<f64> = x32.iter().map(|&v| v as f64).collect();
        let mut o32 = vec![0f32; inner];
        logsumexp_axis(&x32, 1, steps, inner, &mut o32).unwrap();
        for j in 0..inner {
            let want = ref_lse(&column(x, steps, inner, 0, j));
            close(out[j], want, 1e-14, &format!("{what} column {j}"));
            let want = ref_lse(&column(&r32, steps, inner, 0, j));
            close(o32[j] as f64, want, 3e-7, &format!("{what} f32 column {j}"));
        }
    };
    each_tier(|tier| {
        for (vals, _) in edge_cases() {
            // The values 37 steps apart (in different blocks), −inf between them, and ordinary
            // blocks after them.
            let steps = 37 * vals.len() + 70;
            let mut x: Vec<f64> = (0..steps * inner).map(|_| rng.normal()).collect();
            for &j in &cols {
                for k in 0..steps {
                    x[k * inner + j] = f64::NEG_INFINITY;
                }
                for (i, v) in vals.iter().enumerate() {
                    x[(37 * i + 36) * inner + j] = *v;
                }
            }
            check(&x, steps, &format!("{tier:?} {vals:?}"));
        }
        // A maximum met again exactly many blocks later (it must be counted, not summed), and
        // a dominant value arriving after hundreds of steps below it.
        let steps = 700;
        let mut x: Vec<f64> = (0..steps * inner)
            .map(|_| -1.0 - rng.normal().abs())
            .collect();
        for &j in &cols {
            x[3 * inner + j] = 2.0;
            x[300 * inner + j] = 2.0;
        }
        for k in 0..steps {
            x[k * inner + 7] = -60.0;
        }
        x[500 * inner + 7] = 10.0;
        check(&x, steps, &format!("{tier:?} repeated and late maxima"));
    });
}

#[test]
fn softmax_and_log_softmax_match_reference() {
    let mut rng = Rng(11);
    each_tier(|tier| {
        for &cols in &COLS {
            let rows = 3;
            let x: Vec<f64> = (0..rows * cols).map(|_| 3.0 * rng.normal()).collect();
            for log in [false, true] {
                let mut out = vec![0f64; rows * cols];
                softmax_rows(Some(&x), &mut out, cols, log).unwrap();
                let mut inplace = x.clone();
                softmax_rows(None, &mut inplace, cols, log).unwrap();
                assert_eq!(out, inplace);
                for r in 0..rows {
                    let row = &x[r * cols..(r + 1) * cols];
                    let lse = ref_lse(row);
                    for c in 0..cols {
                        let want = if log {
                            row[c] - lse
                        } else {
                            (row[c] - lse).exp()
                        };
                        let what = format!("{tier:?} log={log} cols={cols}");
                        close(out[r * cols + c], want, 1e-13, &what);
                    }
                }
            }
        }
        let mut out = [0f64; 2];
        softmax_rows(Some(&[f64::INFINITY, 0.0]), &mut out, 2, true).unwrap();
        assert!(out.iter().all(|v| v.is_nan()));
    });
}

#[test]
fn logsumexp_gradient_is_the_scaled_softmax_with_its_edge_rows() {
    let mut rng = Rng(12);
    each_tier(|tier| {
        for &cols in &COLS {
            let rows = 4;
            let mut x: Vec<f64> = (0..rows * cols).map(|_| 3.0 * rng.normal()).collect();
            x[cols..2 * cols].fill(f64::NEG_INFINITY); // row 1: all −inf (or empty)
            if cols > 0 {
                x[2 * cols] = f64::INFINITY; // row 2 holds +inf
            }
            let scale: Vec<f64> = (0..rows).map(|r| 0.5 - r as f64).collect();
            let mut out = vec![7f64; rows * cols];
            logsumexp_grad_rows(&x, cols, &scale, &mut out).unwrap();
            let what = format!("{tier:?} cols={cols}");
            for r in 0..rows {
                let row = &x[r * cols..(r + 1) * cols];
                let lse = ref_lse(row);
                for c in 0..cols {
                    let got = out[r * cols + c];
                    match r {
                        1 => assert_eq!(got, 0.0, "{what}: an all −inf row's gradient is 0"),
                        2 => assert!(got.is_nan(), "{what}: a row with +inf is NaN"),
                        _ => close(got, scale[r] * (row[c] - lse).exp(), 1e-13, &what),
                    }
                }
            }
            // float32 storage: the same, to float32 rounding.
            let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let mut o32 = vec![0f32; rows * cols];
            logsumexp_grad_rows(&x32, cols, &scale, &mut o32).unwrap();
            for (i, (&a, &b)) in o32.iter().zip(&out).enumerate() {
                assert!(
                    (a.is_nan() && b.is_nan()) || (a as f64 - b).abs() <= 2e-6 * (1.0 + b.abs()),
                    "{what}: float32 [{i}] {a} vs {b}"
                );
            }
        }
        let mut out = [0f64; 2];
        let err = logsumexp_grad_rows(&[0.0; 4], 2, &[1.0], &mut out);
        assert!(matches!(err, Err(KernelError::Shape(_))), "{err:?}");
    });
}

/// A cross-entropy case and its float64 reference.
struct Case {
    rows: usize,
    cols: usize,
    x: Vec<f64>,
    labels: Vec<i64>,
    probs: Vec<f64>,
    weight: Option<Vec<f64>>,
    eps: f64,
    /// The z-loss's s.
    z: f64,
}

const IGNORE: i64 = -100;

impl Case {
    fn new(rng: &mut Rng, rows: usize, cols: usize, weighted: bool, eps: f64) -> Case {
        let x = (0..rows * cols).map(|_| 2.0 * rng.normal()).collect();
        let labels = (0..rows)
            .map(|r| {
                if r % 5 == 3 {
                    IGNORE
                } else {
                    rng.below(cols) as i64
                }
            })
            .collect();
        let mut probs: Vec<f64> = (0..rows * cols).map(|_| rng.next()).collect();
        for r in 0..rows {
            let s: f64 = probs[r * cols..(r + 1) * cols].iter().sum();
            probs[r * cols..(r + 1) * cols]
                .iter_mut()
                .for_each(|p| *p /= s);
        }
        let weight = weighted.then(|| (0..cols).map(|_| 0.5 + rng.next()).collect());
        Case {
            rows,
            cols,
            x,
            labels,
            probs,
            weight,
            eps,
            // Some cases carry a z-loss (tied to ε, so that the test's loops stay as they are).
            z: if eps == 0.1 { 0.05 } else { 0.0 },
        }
    }

    fn w(&self, c: usize) -> f64 {
        self.weight.as_ref().map_or(1.0, |w| w[c])
    }

    /// Per-row weights v over classes, as torch's definition spells them out.
    fn v(&self, r: usize, soft: bool) -> Vec<f64> {
        let c = self.cols;
        (0..c)
            .map(|k| {
                let t = if soft {
                    self.probs[r * c + k]
                } else {
                    let y = self.labels[r];
                    if y == IGNORE {
                        return 0.0;
                    }
                    (y as usize == k) as u8 as f64
                };
                self.w(k) * ((1.0 - self.eps) * t + self.eps / c as f64)
            })
            .collect()
    }

    /// (per-row losses, denominator, gradient of the mean, whether each row's class holds
    /// its maximum).
    fn reference(&self, soft: bool) -> (Vec<f64>, f64, Vec<f64>, Vec<u8>) {
        let c = self.cols;
        let mut loss = vec![0.0; self.rows];
        let mut grad = vec![0.0; self.rows * c];
        let denom = if soft {
            self.rows as f64
        } else {
            self.labels
                .iter()
                .filter(|&&y| y != IGNORE)
                .map(|&y| self.w(y as usize))
                .sum()
        };
        let mut hits = vec![0u8; self.rows];
        for r in 0..self.rows {
            let row = &self.x[r * c..(r + 1) * c];
            let lse = ref_lse(row);
            let v = self.v(r, soft);
            let counted = soft || self.labels[r] != IGNORE;
            // The z-loss s·lse² of a counted row, and its gradient 2·s·lse·softmax.
            let z = if counted { self.z } else { 0.0 };
            let a: f64 = v.iter().sum::<f64>() + 2.0 * z * lse;
            loss[r] = (0..c).map(|k| v[k] * (lse - row[k])).sum::<f64>() + z * lse * lse;
            for k in 0..c {
                grad[r * c + k] = (a * (row[k] - lse).exp() - v[k]) / denom;
            }
            if !soft && counted {
                let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                hits[r] = (row[self.labels[r] as usize] == max) as u8;
            }
        }
        (loss, denom, grad, hits)
    }
}

fn as_t<T: Elem>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

fn check_ce<T: Elem>(case: &Case, soft: bool, tol: f64, what: &str) {
    let (rows, cols) = (case.rows, case.cols);
    let x: Vec<T> = as_t(&case.x);
    let probs: Vec<T> = as_t(&case.probs);
    // The reference sees exactly the values the kernel sees.
    let xr: Vec<f64> = x.iter().map(|v| v.to_f64()).collect();
    let pr: Vec<f64> = probs.iter().map(|v| v.to_f64()).collect();
    let w: Option<Vec<T::F>> = case.weight.as_ref().map(|w| {
        w.iter()
            .map(|&v| <T::F as crate::simd::Float>::from_f64(v))
            .collect()
    });
    let wr = w.as_ref().map(|w| {
        w.iter()
            .map(|&v| crate::simd::Float::to_f64(v))
            .collect::<Vec<f64>>()
    });
    let exact = Case {
        rows,
        cols,
        x: xr,
        labels: case.labels.clone(),
        probs: pr,
        weight: wr,
        eps: case.eps,
        z: case.z,
    };
    let (want_loss, want_denom, want_grad, want_hits) = exact.reference(soft);
    let target = if soft {
        Target::Probs(&probs)
    } else {
        Target::Index(Labels::from(&case.labels[..]))
    };
    let opts = CeOptions {
        weight: w.as_deref(),
        ignore_index: IGNORE,
        label_smoothing: case.eps,
        lse_square_scale: case.z,
    };
    let mut loss = vec![0.0; rows];
    let mut lse = vec![<T::F as crate::simd::Float>::ZERO; rows];
    let mut hits = vec![9u8; rows];
    let out = RowResults {
        loss: &mut loss,
        lse: &mut lse,
        hits: Some(&mut hits),
    };
    let s = cross_entropy(&x, cols, target, &opts, out).unwrap();
    assert_eq!(hits, want_hits, "{what}: hits");
    close(s.denom, want_denom, 1e-12, what);
    for r in 0..rows {
        close(loss[r], want_loss[r], tol, &format!("{what} loss row {r}"));
    }
    close(
        s.total,
        want_loss.iter().sum(),
        tol,
        &format!("{what} total"),
    );

    // Fused, separate buffer and in place.
    let mut grad = vec![T::from_f64(0.0); rows * cols];
    let mut loss2 = vec![0.0; rows];
    let io = GradIo::Separate {
        x: &x,
        grad: &mut grad,
    };
    let s2 = cross_entropy_with_grad(
        io,
        cols,
        target,
        &opts,
        GradScale::Mean,
        RowResults::new(&mut loss2, &mut lse),
    )
    .unwrap();
    assert_eq!(s2, s, "{what}: fused forward differs");
    for (i, (g, w)) in grad.iter().zip(&want_grad).enumerate() {
        close(g.to_f64(), *w, tol, &format!("{what} grad {i}"));
    }
    let mut inplace = x.clone();
    cross_entropy_with_grad(
        GradIo::InPlace(&mut inplace),
        cols,
        target,
        &opts,
        GradScale::Mean,
        RowResults::new(&mut loss2, &mut lse),
    )
    .unwrap();
    assert!(
        inplace
            .iter()
            .zip(&grad)
            .all(|(a, b)| a.to_f64().to_bits() == b.to_f64().to_bits()),
        "{what}: in-place gradient differs"
    );

    // Backward from the saved log-sum-exps, per-row scale.
    let scale = vec![1.0 / s.denom; rows];
    let mut back = vec![T::from_f64(0.0); rows * cols];
    cross_entropy_backward(
        &x,
        cols,
        target,
        &opts,
        &lse,
        Scale::PerRow(&scale),
        &mut back,
    )
    .unwrap();
    for (i, (g, w)) in back.iter().zip(&want_grad).enumerate() {
        close(g.to_f64(), *w, tol, &format!("{what} backward {i}"));
    }
}

#[test]
fn cross_entropy_matches_reference_for_every_option() {
    let mut rng = Rng(3);
    each_tier(|tier| {
        for &cols in &[1usize, 2, 3, 16, 17, 100, 2049, 70001] {
            let rows = if cols > 10_000 { 4 } else { 11 };
            for weighted in [false, true] {
                for eps in [0.0, 0.1, 1.0] {
                    let case = Case::new(&mut rng, rows, cols, weighted, eps);
                    for soft in [false, true] {
                        let what = format!("{tier:?} C={cols} w={weighted} eps={eps} soft={soft}");
                        check_ce::<f64>(&case, soft, 1e-12, &what);
                        check_ce::<f32>(&case, soft, 2e-5, &format!("{what} f32"));
                    }
                }
            }
        }
    });
}

#[test]
fn half_precision_storage_is_computed_in_f32() {
    let mut rng = Rng(5);
    let case = Case::new(&mut rng, 9, 3000, true, 0.2);
    // `check_ce` compares runs bit for bit: hold the tier still (`each_tier`).
    each_tier(|tier| {
        for soft in [false, true] {
            // Reference from the same rounded values; gradients are rounded to 16 bits.
            check_ce::<f16>(&case, soft, 4e-3, &format!("{tier:?} f16"));
            check_ce::<bf16>(&case, soft, 3e-2, &format!("{tier:?} bf16"));
        }
    });
}

#[test]
fn bad_labels_and_shapes_are_errors_not_panics() {
    let x = vec![0f32; 12];
    let opts = CeOptions::default();
    let (mut loss, mut lse) = (vec![0.0; 4], vec![0f32; 4]);
    let labels: [u64; 4] = [0, 2, u64::MAX, 1];
    let err = cross_entropy(
        &x,
        3,
        Target::Index(Labels::from(&labels[..])),
        &opts,
        RowResults::new(&mut loss, &mut lse),
    );
    assert_eq!(
        err.unwrap_err(),
        KernelError::TargetOutOfBounds {
            position: 2,
            value: u64::MAX as i128,
            classes: 3,
            ignore_index: -100
        }
    );
    let labels: [i8; 4] = [0, -1, 0, 0];
    let err = cross_entropy(
        &x,
        3,
        Target::Index(Labels::from(&labels[..])),
        &opts,
        RowResults::new(&mut loss, &mut lse),
    );
    assert!(matches!(
        err,
        Err(KernelError::TargetOutOfBounds { position: 1, .. })
    ));
    let labels = [0i32; 3];
    let err = cross_entropy(
        &x,
        3,
        Target::Index(Labels::from(&labels[..])),
        &opts,
        RowResults::new(&mut loss, &mut lse),
    );
    assert!(matches!(err, Err(KernelError::Shape(_))));
    let bad = CeOptions::<f32> {
        label_smoothing: -0.1,
        ..CeOptions::default()
    };
    let labels = [0i32; 4];
    let err = cross_entropy(
        &x,
        3,
        Target::Index(Labels::from(&labels[..])),
        &bad,
        RowResults::new(&mut loss, &mut lse),
    );
    assert!(matches!(err, Err(KernelError::Shape(_))));
}

#[test]
fn ignored_rows_of_neg_inf_get_zero_gradient() {
    let inf = f32::INFINITY;
    let x = vec![-inf, -inf, -inf, 1.0, 2.0, 3.0];
    let labels = [-100i64, 2];
    let (mut loss, mut lse, mut g) = (vec![0.0; 2], vec![0f32; 2], vec![0f32; 6]);
    let io = GradIo::Separate {
        x: &x,
        grad: &mut g,
    };
    let opts = CeOptions::default();
    let s = cross_entropy_with_grad(
        io,
        3,
        Target::Index(Labels::from(&labels[..])),
        &opts,
        GradScale::Mean,
        RowResults::new(&mut loss, &mut lse),
    )
    .unwrap();
    assert_eq!(&g[..3], &[0.0, 0.0, 0.0]);
    assert!(g.iter().all(|v| v.is_finite()));
    assert_eq!(s.denom, 1.0);
    assert!(loss.iter().all(|v| v.is_finite()));
}

#[test]
fn zero_probability_on_neg_inf_logit_adds_nothing() {
    let x = vec![f64::NEG_INFINITY, 0.0, 1.0];
    let t = vec![0.0, 0.5, 0.5];
    let (mut loss, mut lse) = (vec![0.0; 1], vec![0f64; 1]);
    cross_entropy(
        &x,
        3,
        Target::<f64>::Probs(&t),
        &CeOptions::default(),
        RowResults::new(&mut loss, &mut lse),
    )
    .unwrap();
    let want = ref_lse(&x) - 0.5;
    close(loss[0], want, 1e-15, "0·log 0");
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let _globals = Globals::take();
    let mut rng = Rng(9);
    // Many rows, and few long rows (split into segments).
    for (rows, cols) in [(3000, 257), (3, 200_003), (40, 3 * CHUNK + 5)] {
        let x: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32).collect();
        let labels: Vec<u32> = (0..rows).map(|_| rng.below(cols) as u32).collect();
        let run = |threads| {
            set_num_threads(threads);
            let (mut loss, mut lse, mut g) =
                (vec![0.0; rows], vec![0f32; rows], vec![0f32; rows * cols]);
            let io = GradIo::Separate {
                x: &x,
                grad: &mut g,
            };
            let s = cross_entropy_with_grad(
                io,
                cols,
                Target::Index(Labels::from(&labels[..])),
                &CeOptions::default(),
                GradScale::Mean,
                RowResults::new(&mut loss, &mut lse),
            )
            .unwrap();
            (s.total.to_bits(), lse, g)
        };
        let one = run(1);
        assert!(one == run(2) && one == run(3), "rows={rows} cols={cols}");
    } // A reduction long enough to be cut into bands, and one that is not.
    for (steps, inner) in [(20_000, 37), (300, 1000)] {
        let x: Vec<f32> = (0..steps * inner).map(|_| rng.normal() as f32).collect();
        let run = |threads| {
            set_num_threads(threads);
            let mut out = vec![0f32; inner];
            logsumexp_axis(&x, 1, steps, inner, &mut out).unwrap();
            out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        let one = run(1);
        assert!(
            one == run(2) && one == run(3),
            "steps={steps} inner={inner}"
        );
    }
}

#[test]
fn few_classes_take_the_rows_as_lanes_path_correctly() {
    let mut rng = Rng(13);
    each_tier(|tier| {
        for cols in 1..=crate::kernels::rows::FEW_CLASSES + 1 {
            // 37 rows: whole vectors of rows plus a remainder, on every lane count.
            let rows = 37;
            let mut x: Vec<f64> = (0..rows * cols).map(|_| 3.0 * rng.normal()).collect();
            x[cols] = f64::NEG_INFINITY; // row 1 holds −inf
            let mut out = vec![0f64; rows];
            logsumexp_rows(&x, cols, &mut out).unwrap();
            for r in 0..rows {
                let want = ref_lse(&x[r * cols..(r + 1) * cols]);
                close(
                    out[r],
                    want,
                    1e-14,
                    &format!("{tier:?} cols={cols} row={r}"),
                );
            }
            let weighted = cols % 2 == 0;
            let case = Case::new(&mut rng, rows, cols, weighted, 0.0);
            let what = format!("{tier:?} few C={cols}");
            check_ce::<f64>(&case, false, 1e-12, &what);
            check_ce::<f32>(&case, false, 2e-5, &format!("{what} f32"));
        }
    });
}

/// The rows-as-lanes path finishes plain class-index rows without `RowOp::done`; with class
/// weights of 1 the same rows go through `done`, whose arithmetic is then the same to the bit.
/// Rows of edge values (NaN, ±inf, all −inf, the label on −inf or on the maximum) and ignored
/// rows, on every tier and lane count, with labels of three widths.
#[test]
fn few_classes_plain_rows_finish_as_the_general_path() {
    let mut rng = Rng(21);
    each_tier(|tier| {
        for cols in 1..=crate::kernels::rows::FEW_CLASSES {
            let rows = 53;
            let mut x: Vec<f32> = (0..rows * cols)
                .map(|_| 3.0 * rng.normal() as f32)
                .collect();
            let mut labels: Vec<i64> = (0..rows).map(|_| rng.below(cols) as i64).collect();
            let row = |r: usize| r * cols..(r + 1) * cols;
            x[row(1)].fill(f32::NEG_INFINITY);
            x[row(2).start + cols / 2] = f32::NAN;
            x[row(4).start + cols - 1] = f32::INFINITY;
            x[row(5).start + labels[5] as usize] = f32::NEG_INFINITY;
            x[row(6).start + labels[6] as usize] = 50.0;
            labels[7] = IGNORE;
            x[row(8)].fill(1.5);
            labels[9] = IGNORE;
            x[row(9)].fill(f32::NEG_INFINITY);
            let ones = vec![1f32; cols];
            let run = |weight: Option<&[f32]>, labels: Labels| {
                let (mut loss, mut lse, mut hits) =
                    (vec![0.0; rows], vec![0f32; rows], vec![9; rows]);
                let opts = CeOptions {
                    weight,
                    ignore_index: IGNORE,
                    label_smoothing: 0.0,
                    lse_square_scale: 0.0,
                };
                let out = RowResults {
                    loss: &mut loss,
                    lse: &mut lse,
                    hits: Some(&mut hits),
                };
                let s = cross_entropy(&x, cols, Target::Index(labels), &opts, out).unwrap();
                let bits = |v: &[f64]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                let lse: Vec<u32> = lse.iter().map(|v| v.to_bits()).collect();
                (bits(&loss), lse, hits, s.total.to_bits(), s.denom)
            };
            let typed = Labels::from(&labels[..]);
            let (plain, general) = (run(None, typed), run(Some(&ones), typed));
            assert!(plain == general, "{tier:?} cols={cols}");
            // Labels of other widths: the same values, read a vector of rows at a time.
            let narrow: Vec<i8> = labels.iter().map(|&y| y as i8).collect();
            let wide: Vec<i32> = labels.iter().map(|&y| y as i32).collect();
            assert!(run(None, Labels::from(&narrow[..])) == plain, "{tier:?} i8");
            assert!(run(None, Labels::from(&wide[..])) == plain, "{tier:?} i32");
            // The edge rows' values themselves: NaN where the row holds NaN or +inf.
            let loss = f64::from_bits(plain.0[2]);
            assert!(loss.is_nan() && f64::from_bits(plain.0[4]).is_nan());
            assert_eq!(f64::from_bits(plain.0[7]), 0.0, "{tier:?} cols={cols}");
            assert_eq!(
                plain.2[6], 1,
                "{tier:?} cols={cols}: the label holds the maximum"
            );
        }
    });
}
