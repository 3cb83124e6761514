//! NEON (aarch64): 4 float32 or 2 float64 lanes. NEON is part of every aarch64 CPU, so this
//! tier is always available there. The `exp` is the AVX2 tier's algorithm (Cody–Waite
//! reduction by ln2, the exponent added into the exponent field); tails go through a small
//! buffer, as NEON has no masked loads.

use super::consts::*;
use super::{log, Kernel, SimdVec};
use std::arch::aarch64::*;

/// # Safety
/// Always sound on aarch64 (NEON is baseline); `unsafe` only to match the other tiers.
#[target_feature(enable = "neon")]
pub unsafe fn run_f32<K: Kernel<F = f32>>(k: K) -> K::Out {
    k.run::<F32x4>()
}

/// # Safety
/// As [`run_f32`].
#[target_feature(enable = "neon")]
pub unsafe fn run_f64<K: Kernel<F = f64>>(k: K) -> K::Out {
    k.run::<F64x2>()
}

#[derive(Clone, Copy)]
pub struct F32x4(float32x4_t);

#[derive(Clone, Copy)]
pub struct F64x2(float64x2_t);

// SAFETY: NEON is present on every aarch64 CPU; every method is inlined into `run_f32`.
unsafe impl SimdVec for F32x4 {
    type F = f32;
    const LANES: usize = 4;
    #[inline(always)]
    fn splat(x: f32) -> Self {
        // SAFETY: NEON is present (baseline).
        F32x4(unsafe { vdupq_n_f32(x) })
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller guarantees 4 readable elements.
        F32x4(unsafe { vld1q_f32(p) })
    }
    #[inline(always)]
    unsafe fn load_tail(p: *const f32, n: usize, fill: f32) -> Self {
        let mut a = [fill; 4];
        // SAFETY: the caller guarantees `n < 4` readable elements; `a` holds 4.
        unsafe {
            std::ptr::copy_nonoverlapping(p, a.as_mut_ptr(), n);
            Self::load(a.as_ptr())
        }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller guarantees 4 writable elements.
        unsafe { vst1q_f32(p, self.0) }
    }
    #[inline(always)]
    unsafe fn store_tail(self, p: *mut f32, n: usize) {
        let mut a = [0f32; 4];
        // SAFETY: `a` holds 4; the caller guarantees `n < 4` writable elements at `p`.
        unsafe {
            self.store(a.as_mut_ptr());
            std::ptr::copy_nonoverlapping(a.as_ptr(), p, n);
        }
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        // SAFETY: NEON is present (baseline).
        F32x4(unsafe { vaddq_f32(self.0, o.0) })
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        // SAFETY: NEON is present (baseline).
        F32x4(unsafe { vsubq_f32(self.0, o.0) })
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        // SAFETY: NEON is present (baseline).
        F32x4(unsafe { vmulq_f32(self.0, o.0) })
    }
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        // SAFETY: NEON is present (baseline).
        F32x4(unsafe { vdivq_f32(self.0, o.0) })
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        // SAFETY: NEON is present (baseline).
        F32x4(unsafe { vfmaq_f32(c.0, self.0, b.0) })
    }
    #[inline(always)]
    fn max_acc(self, x: Self) -> Self {
        // x > acc is false for a NaN x: the accumulator wins.
        // SAFETY: NEON is present (baseline).
        F32x4(unsafe { vbslq_f32(vcgtq_f32(x.0, self.0), x.0, self.0) })
    }
    #[inline(always)]
    fn exp(self) -> Self {
        // SAFETY: NEON is present (baseline).
        unsafe {
            let x = self.0;
            let lo = vdupq_n_f32(EXP_LO_F32);
            // vmaxq keeps a NaN, so NaN stays NaN.
            let xc = vmaxq_f32(lo, x);
            let n = vrndnq_f32(vmulq_f32(xc, vdupq_n_f32(LOG2E_F32)));
            let r = vfmsq_f32(xc, n, vdupq_n_f32(LN2_HI_F32));
            let r = vfmsq_f32(r, n, vdupq_n_f32(LN2_LO_F32));
            let mut p = vdupq_n_f32(EXP_P_F32[0]);
            for c in &EXP_P_F32[1..] {
                p = vfmaq_f32(vdupq_n_f32(*c), p, r);
            }
            let one = vdupq_n_f32(1.0);
            let y = vfmaq_f32(one, vfmaq_f32(one, p, r), r);
            // 2^n as a float: n + 127 into the exponent field (n ≥ −126 after the clamp).
            let e = vshlq_n_s32::<23>(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)));
            let y = vmulq_f32(y, vreinterpretq_f32_s32(e));
            let under = vcltq_f32(x, lo);
            F32x4(vbslq_f32(under, vdupq_n_f32(0.0), y))
        }
    }
    #[inline(always)]
    fn mul_nonzero(v: Self, d: Self) -> Self {
        // SAFETY: NEON is present (baseline).
        unsafe {
            let zero = vdupq_n_f32(0.0);
            F32x4(vbslq_f32(vceqq_f32(v.0, zero), zero, vmulq_f32(v.0, d.0)))
        }
    }
    #[inline(always)]
    fn add_split(self, cnt: Self, e: Self, x: Self, m: Self) -> (Self, Self) {
        // SAFETY: NEON is present (baseline).
        unsafe {
            let eq = vceqq_f32(x.0, m.0);
            let zero = vdupq_n_f32(0.0);
            (
                F32x4(vaddq_f32(self.0, vbslq_f32(eq, zero, e.0))),
                F32x4(vaddq_f32(cnt.0, vbslq_f32(eq, vdupq_n_f32(1.0), zero))),
            )
        }
    }
    #[inline(always)]
    fn where_eq(a: Self, b: Self, then: Self, otherwise: Self) -> Self {
        // SAFETY: NEON is present (baseline).
        F32x4(unsafe { vbslq_f32(vceqq_f32(a.0, b.0), then.0, otherwise.0) })
    }
    #[inline(always)]
    fn reduce_sum(self) -> f64 {
        // SAFETY: NEON is present (baseline).
        unsafe {
            let lo = vcvt_f64_f32(vget_low_f32(self.0));
            let hi = vcvt_high_f64_f32(self.0);
            vaddvq_f64(vaddq_f64(lo, hi))
        }
    }
    #[inline(always)]
    fn reduce_max(self) -> f32 {
        // SAFETY: NEON is present (baseline).
        unsafe { vmaxnmvq_f32(self.0) }
    }
    #[inline(always)]
    fn ln_1p(self) -> Self {
        // SAFETY: NEON is present (baseline).
        unsafe {
            let v = vaddq_f32(self.0, vdupq_n_f32(1.0));
            // v = f·2^k with f ∈ [√½, √2): offset by the bits of 1 − √½, the exponent field
            // steps up at √½ instead of 1.
            let ix = vaddq_s32(
                vreinterpretq_s32_f32(v),
                vdupq_n_s32(0x3f80_0000 - 0x3f35_04f3),
            );
            let k = vcvtq_f32_s32(vsubq_s32(vshrq_n_s32::<23>(ix), vdupq_n_s32(0x7f)));
            let f = vreinterpretq_f32_s32(vaddq_s32(
                vandq_s32(ix, vdupq_n_s32(0x007f_ffff)),
                vdupq_n_s32(0x3f35_04f3),
            ));
            log::ln_1p_f32(self, F32x4(v), F32x4(f), F32x4(k))
        }
    }
}

// SAFETY: NEON is present on every aarch64 CPU; every method is inlined into `run_f64`.
unsafe impl SimdVec for F64x2 {
    type F = f64;
    const LANES: usize = 2;
    #[inline(always)]
    fn splat(x: f64) -> Self {
        // SAFETY: NEON is present (baseline).
        F64x2(unsafe { vdupq_n_f64(x) })
    }
    #[inline(always)]
    unsafe fn load(p: *const f64) -> Self {
        // SAFETY: the caller guarantees 2 readable elements.
        F64x2(unsafe { vld1q_f64(p) })
    }
    #[inline(always)]
    unsafe fn load_tail(p: *const f64, n: usize, fill: f64) -> Self {
        let mut a = [fill; 2];
        // SAFETY: the caller guarantees `n < 2` readable elements; `a` holds 2.
        unsafe {
            std::ptr::copy_nonoverlapping(p, a.as_mut_ptr(), n);
            Self::load(a.as_ptr())
        }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f64) {
        // SAFETY: the caller guarantees 2 writable elements.
        unsafe { vst1q_f64(p, self.0) }
    }
    #[inline(always)]
    unsafe fn store_tail(self, p: *mut f64, n: usize) {
        let mut a = [0f64; 2];
        // SAFETY: `a` holds 2; the caller guarantees `n < 2` writable elements at `p`.
        unsafe {
            self.store(a.as_mut_ptr());
            std::ptr::copy_nonoverlapping(a.as_ptr(), p, n);
        }
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        // SAFETY: NEON is present (baseline).
        F64x2(unsafe { vaddq_f64(self.0, o.0) })
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        // SAFETY: NEON is present (baseline).
        F64x2(unsafe { vsubq_f64(self.0, o.0) })
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        // SAFETY: NEON is present (baseline).
        F64x2(unsafe { vmulq_f64(self.0, o.0) })
    }
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        // SAFETY: NEON is present (baseline).
        F64x2(unsafe { vdivq_f64(self.0, o.0) })
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        // SAFETY: NEON is present (baseline).
        F64x2(unsafe { vfmaq_f64(c.0, self.0, b.0) })
    }
    #[inline(always)]
    fn max_acc(self, x: Self) -> Self {
        // SAFETY: NEON is present (baseline).
        F64x2(unsafe { vbslq_f64(vcgtq_f64(x.0, self.0), x.0, self.0) })
    }
    #[inline(always)]
    fn exp(self) -> Self {
        // SAFETY: NEON is present (baseline).
        unsafe {
            let x = self.0;
            let lo = vdupq_n_f64(EXP_LO_F64);
            let xc = vmaxq_f64(lo, x);
            let n = vrndnq_f64(vmulq_f64(xc, vdupq_n_f64(LOG2E_F64)));
            let r = vfmsq_f64(xc, n, vdupq_n_f64(LN2_HI_F64));
            let r = vfmsq_f64(r, n, vdupq_n_f64(LN2_LO_F64));
            let mut p = vdupq_n_f64(EXP_P_F64[0]);
            for c in &EXP_P_F64[1..] {
                p = vfmaq_f64(vdupq_n_f64(*c), p, r);
            }
            let one = vdupq_n_f64(1.0);
            let y = vfmaq_f64(one, vfmaq_f64(one, p, r), r);
            let e = vshlq_n_s64::<52>(vaddq_s64(vcvtnq_s64_f64(n), vdupq_n_s64(1023)));
            let y = vmulq_f64(y, vreinterpretq_f64_s64(e));
            let under = vcltq_f64(x, lo);
            F64x2(vbslq_f64(under, vdupq_n_f64(0.0), y))
        }
    }
    #[inline(always)]
    fn mul_nonzero(v: Self, d: Self) -> Self {
        // SAFETY: NEON is present (baseline).
        unsafe {
            let zero = vdupq_n_f64(0.0);
            F64x2(vbslq_f64(vceqq_f64(v.0, zero), zero, vmulq_f64(v.0, d.0)))
        }
    }
    #[inline(always)]
    fn add_split(self, cnt: Self, e: Self, x: Self, m: Self) -> (Self, Self) {
        // SAFETY: NEON is present (baseline).
        unsafe {
            let eq = vceqq_f64(x.0, m.0);
            let zero = vdupq_n_f64(0.0);
            (
                F64x2(vaddq_f64(self.0, vbslq_f64(eq, zero, e.0))),
                F64x2(vaddq_f64(cnt.0, vbslq_f64(eq, vdupq_n_f64(1.0), zero))),
            )
        }
    }
    #[inline(always)]
    fn where_eq(a: Self, b: Self, then: Self, otherwise: Self) -> Self {
        // SAFETY: NEON is present (baseline).
        F64x2(unsafe { vbslq_f64(vceqq_f64(a.0, b.0), then.0, otherwise.0) })
    }
    #[inline(always)]
    fn reduce_sum(self) -> f64 {
        // SAFETY: NEON is present (baseline).
        unsafe { vaddvq_f64(self.0) }
    }
    #[inline(always)]
    fn reduce_max(self) -> f64 {
        // SAFETY: NEON is present (baseline).
        unsafe { vmaxnmvq_f64(self.0) }
    }
}
