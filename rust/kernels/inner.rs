//! The inner loops alone, on one chunk already in L1, for `benches/inner.rs`: what each tier
//! spends per vector on the statistics pass (max, then the exp-and-sum) and on the write pass
//! (the gradient), without threads, rows or memory traffic.

use super::chunk::{self, NoWeights, ScaledSoftmax};
use crate::simd::{Ahead, Float, Kernel, SimdVec, Tier};

/// Which loop [`run`] repeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loop {
    /// The statistics pass: the maximum, then Σ e^(x − m) and the count of maxima.
    Stats,
    /// The write pass: e^((x − m) − excess) scaled, into a second buffer.
    Write,
}

struct Repeat<'a, F> {
    what: Loop,
    x: &'a [F],
    out: &'a mut [F],
    reps: usize,
}

impl<F: Float> Kernel for Repeat<'_, F> {
    type F = F;
    type Out = f64;
    #[inline(always)]
    fn run<V: SimdVec<F = F>>(self) -> f64 {
        let (x, n) = (self.x.as_ptr(), self.x.len());
        let mut check = 0.0;
        for r in 0..self.reps {
            // SAFETY: `x` and `out` hold `n` values each (checked by `run`).
            unsafe {
                match self.what {
                    Loop::Stats => {
                        let floor = F::from_f64(f64::NEG_INFINITY);
                        let s = chunk::stats::<V, _>(x, n, NoWeights, Ahead::at(x), floor);
                        // Every field the kernels use, so that none is optimized away.
                        check += s.rest + s.cnt + s.m;
                    }
                    Loop::Write => {
                        let f = ScaledSoftmax {
                            m: F::from_f64(r as f64 * 1e-9),
                            excess: F::ZERO,
                            p_scale: F::ONE,
                            v_scale: F::ZERO,
                        };
                        let out = self.out.as_mut_ptr();
                        chunk::write_exp::<V, _>(x, out, n, f, NoWeights);
                        check += self.out[n / 2].to_f64();
                    }
                }
            }
        }
        check
    }
}

/// Repeats `what` over `x` (at most one chunk) `reps` times on `tier` (or the widest tier the
/// CPU has below it); returns a checksum, so that nothing is optimized away.
pub fn run<F: Float>(tier: Tier, what: Loop, x: &[F], out: &mut [F], reps: usize) -> f64 {
    assert!(x.len() <= crate::elem::CHUNK && out.len() == x.len());
    F::dispatch(tier, Repeat { what, x, out, reps })
}
