//! The portable tier: one lane, plain Rust. It is the fallback on x86-64 CPUs without AVX2
//! and on every other architecture but aarch64 (which has NEON), and the reference every
//! vector tier is tested against.

use super::{Float, SimdVec};

/// One lane of `F`.
#[derive(Clone, Copy, Debug)]
pub struct Scalar<F>(pub F);

// SAFETY: uses no instruction beyond the target's baseline.
unsafe impl<F: Float> SimdVec for Scalar<F> {
    type F = F;
    const LANES: usize = 1;
    #[inline(always)]
    fn splat(x: F) -> Self {
        Scalar(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const F) -> Self {
        // SAFETY: the caller guarantees `p` is readable for one element.
        Scalar(unsafe { *p })
    }
    #[inline(always)]
    unsafe fn load_tail(_p: *const F, _n: usize, fill: F) -> Self {
        // With one lane a tail is always empty (n < 1).
        Scalar(fill)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut F) {
        // SAFETY: the caller guarantees `p` is writable for one element.
        unsafe { *p = self.0 }
    }
    #[inline(always)]
    unsafe fn store_tail(self, _p: *mut F, _n: usize) {}
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        Scalar(self.0 + o.0)
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        Scalar(self.0 - o.0)
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        Scalar(self.0 * o.0)
    }
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        Scalar(self.0 / o.0)
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        Scalar(self.0 * b.0 + c.0)
    }
    #[inline(always)]
    fn max_acc(self, x: Self) -> Self {
        if x.0 > self.0 {
            x
        } else {
            self
        }
    }
    #[inline(always)]
    fn exp(self) -> Self {
        Scalar(self.0.exp_scalar())
    }
    #[inline(always)]
    fn mul_nonzero(v: Self, d: Self) -> Self {
        if v.0 == F::ZERO {
            Scalar(F::ZERO)
        } else {
            Scalar(v.0 * d.0)
        }
    }
    #[inline(always)]
    fn add_split(self, cnt: Self, e: Self, x: Self, m: Self) -> (Self, Self) {
        if x.0 == m.0 {
            (self, Scalar(cnt.0 + F::ONE))
        } else {
            (Scalar(self.0 + e.0), cnt)
        }
    }
    #[inline(always)]
    fn where_eq(a: Self, b: Self, then: Self, otherwise: Self) -> Self {
        if a.0 == b.0 {
            then
        } else {
            otherwise
        }
    }
    #[inline(always)]
    fn reduce_sum(self) -> f64 {
        self.0.to_f64()
    }
    #[inline(always)]
    fn reduce_max(self) -> F {
        self.0
    }
}
