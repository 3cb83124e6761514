//! AVX-512F: 16 float32 or 8 float64 lanes, masked tails, `scalef` for the exponent.

use super::consts::*;
use super::{Kernel, SimdVec};
use std::arch::x86_64::*;

pub fn supported() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
}

/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA ([`supported`]).
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn run_f32<K: Kernel<F = f32>>(k: K) -> K::Out {
    k.run::<F32x16>()
}

/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA ([`supported`]).
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn run_f64<K: Kernel<F = f64>>(k: K) -> K::Out {
    k.run::<F64x8>()
}

#[derive(Clone, Copy)]
pub struct F32x16(__m512);

#[derive(Clone, Copy)]
pub struct F64x8(__m512d);

#[inline(always)]
fn tail_mask16(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

#[inline(always)]
fn tail_mask8(n: usize) -> __mmask8 {
    ((1u32 << n) - 1) as __mmask8
}

// SAFETY: only instantiated by `run_f32`, whose caller checked AVX-512F; every method is
// inlined into that `#[target_feature]` function.
unsafe impl SimdVec for F32x16 {
    type F = f32;
    const LANES: usize = 16;
    #[inline(always)]
    fn splat(x: f32) -> Self {
        // SAFETY: AVX-512F is present (trait contract).
        F32x16(unsafe { _mm512_set1_ps(x) })
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller guarantees 16 readable elements.
        F32x16(unsafe { _mm512_loadu_ps(p) })
    }
    #[inline(always)]
    unsafe fn load_tail(p: *const f32, n: usize, fill: f32) -> Self {
        // SAFETY: the mask limits the read to the `n` elements the caller guarantees.
        F32x16(unsafe { _mm512_mask_loadu_ps(_mm512_set1_ps(fill), tail_mask16(n), p) })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller guarantees 16 writable elements.
        unsafe { _mm512_storeu_ps(p, self.0) }
    }
    #[inline(always)]
    unsafe fn store_tail(self, p: *mut f32, n: usize) {
        // SAFETY: the mask limits the write to the `n` elements the caller guarantees.
        unsafe { _mm512_mask_storeu_ps(p, tail_mask16(n), self.0) }
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        // SAFETY: AVX-512F is present (trait contract).
        F32x16(unsafe { _mm512_add_ps(self.0, o.0) })
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        // SAFETY: AVX-512F is present (trait contract).
        F32x16(unsafe { _mm512_sub_ps(self.0, o.0) })
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        // SAFETY: AVX-512F is present (trait contract).
        F32x16(unsafe { _mm512_mul_ps(self.0, o.0) })
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        // SAFETY: AVX-512F is present (trait contract).
        F32x16(unsafe { _mm512_fmadd_ps(self.0, b.0, c.0) })
    }
    #[inline(always)]
    fn max_acc(self, x: Self) -> Self {
        // vmaxps returns its second operand when either is NaN: the accumulator wins.
        // SAFETY: AVX-512F is present (trait contract).
        F32x16(unsafe { _mm512_max_ps(x.0, self.0) })
    }
    #[inline(always)]
    fn exp(self) -> Self {
        // SAFETY: AVX-512F is present (trait contract).
        unsafe {
            let x = self.0;
            let lo = _mm512_set1_ps(EXP_LO_F32);
            // Second operand NaN wins, so NaN inputs stay NaN through the clamp.
            let xc = _mm512_min_ps(_mm512_set1_ps(EXP_HI_F32), _mm512_max_ps(lo, x));
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_ps(xc, _mm512_set1_ps(LOG2E_F32)),
            );
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI_F32), xc);
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO_F32), r);
            let mut p = _mm512_set1_ps(EXP_P_F32[0]);
            for c in &EXP_P_F32[1..] {
                p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
            }
            let r2 = _mm512_mul_ps(r, r);
            let y = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
            let y = _mm512_scalef_ps(y, n);
            let under = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, lo);
            F32x16(_mm512_mask_blend_ps(under, y, _mm512_setzero_ps()))
        }
    }
    #[inline(always)]
    fn add_where_ne(self, e: Self, x: Self, m: Self) -> Self {
        // SAFETY: AVX-512F is present (trait contract).
        unsafe {
            let ne = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(x.0, m.0);
            F32x16(_mm512_mask_add_ps(self.0, ne, self.0, e.0))
        }
    }
    #[inline(always)]
    fn count_eq(x: Self, m: Self) -> u32 {
        // SAFETY: AVX-512F is present (trait contract).
        unsafe { _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(x.0, m.0).count_ones() }
    }
    #[inline(always)]
    fn mul_nonzero(v: Self, d: Self) -> Self {
        // SAFETY: AVX-512F is present (trait contract).
        unsafe {
            let nz = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(v.0, _mm512_setzero_ps());
            F32x16(_mm512_maskz_mul_ps(nz, v.0, d.0))
        }
    }
    #[inline(always)]
    fn reduce_sum(self) -> f64 {
        let mut a = [0f32; 16];
        // SAFETY: `a` holds 16 floats.
        unsafe { _mm512_storeu_ps(a.as_mut_ptr(), self.0) };
        a.iter().map(|&v| v as f64).sum()
    }
    #[inline(always)]
    fn reduce_max(self) -> f32 {
        // SAFETY: AVX-512F is present (trait contract).
        unsafe { _mm512_reduce_max_ps(self.0) }
    }
}

// SAFETY: only instantiated by `run_f64`, whose caller checked AVX-512F; every method is
// inlined into that `#[target_feature]` function.
unsafe impl SimdVec for F64x8 {
    type F = f64;
    const LANES: usize = 8;
    #[inline(always)]
    fn splat(x: f64) -> Self {
        // SAFETY: AVX-512F is present (trait contract).
        F64x8(unsafe { _mm512_set1_pd(x) })
    }
    #[inline(always)]
    unsafe fn load(p: *const f64) -> Self {
        // SAFETY: the caller guarantees 8 readable elements.
        F64x8(unsafe { _mm512_loadu_pd(p) })
    }
    #[inline(always)]
    unsafe fn load_tail(p: *const f64, n: usize, fill: f64) -> Self {
        // SAFETY: the mask limits the read to the `n` elements the caller guarantees.
        F64x8(unsafe { _mm512_mask_loadu_pd(_mm512_set1_pd(fill), tail_mask8(n), p) })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f64) {
        // SAFETY: the caller guarantees 8 writable elements.
        unsafe { _mm512_storeu_pd(p, self.0) }
    }
    #[inline(always)]
    unsafe fn store_tail(self, p: *mut f64, n: usize) {
        // SAFETY: the mask limits the write to the `n` elements the caller guarantees.
        unsafe { _mm512_mask_storeu_pd(p, tail_mask8(n), self.0) }
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        // SAFETY: AVX-512F is present (trait contract).
        F64x8(unsafe { _mm512_add_pd(self.0, o.0) })
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        // SAFETY: AVX-512F is present (trait contract).
        F64x8(unsafe { _mm512_sub_pd(self.0, o.0) })
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        // SAFETY: AVX-512F is present (trait contract).
        F64x8(unsafe { _mm512_mul_pd(self.0, o.0) })
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        // SAFETY: AVX-512F is present (trait contract).
        F64x8(unsafe { _mm512_fmadd_pd(self.0, b.0, c.0) })
    }
    #[inline(always)]
    fn max_acc(self, x: Self) -> Self {
        // SAFETY: AVX-512F is present (trait contract).
        F64x8(unsafe { _mm512_max_pd(x.0, self.0) })
    }
    #[inline(always)]
    fn exp(self) -> Self {
        // SAFETY: AVX-512F is present (trait contract).
        unsafe {
            let x = self.0;
            let lo = _mm512_set1_pd(EXP_LO_F64);
            let xc = _mm512_min_pd(_mm512_set1_pd(EXP_HI_F64), _mm512_max_pd(lo, x));
            let n = _mm512_roundscale_pd::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_pd(xc, _mm512_set1_pd(LOG2E_F64)),
            );
            let r = _mm512_fnmadd_pd(n, _mm512_set1_pd(LN2_HI_F64), xc);
            let r = _mm512_fnmadd_pd(n, _mm512_set1_pd(LN2_LO_F64), r);
            let mut p = _mm512_set1_pd(EXP_P_F64[0]);
            for c in &EXP_P_F64[1..] {
                p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(*c));
            }
            let r2 = _mm512_mul_pd(r, r);
            let y = _mm512_add_pd(_mm512_fmadd_pd(p, r2, r), _mm512_set1_pd(1.0));
            let y = _mm512_scalef_pd(y, n);
            let under = _mm512_cmp_pd_mask::<_CMP_LT_OQ>(x, lo);
            F64x8(_mm512_mask_blend_pd(under, y, _mm512_setzero_pd()))
        }
    }
    #[inline(always)]
    fn add_where_ne(self, e: Self, x: Self, m: Self) -> Self {
        // SAFETY: AVX-512F is present (trait contract).
        unsafe {
            let ne = _mm512_cmp_pd_mask::<_CMP_NEQ_UQ>(x.0, m.0);
            F64x8(_mm512_mask_add_pd(self.0, ne, self.0, e.0))
        }
    }
    #[inline(always)]
    fn count_eq(x: Self, m: Self) -> u32 {
        // SAFETY: AVX-512F is present (trait contract).
        unsafe { _mm512_cmp_pd_mask::<_CMP_EQ_OQ>(x.0, m.0).count_ones() }
    }
    #[inline(always)]
    fn mul_nonzero(v: Self, d: Self) -> Self {
        // SAFETY: AVX-512F is present (trait contract).
        unsafe {
            let nz = _mm512_cmp_pd_mask::<_CMP_NEQ_UQ>(v.0, _mm512_setzero_pd());
            F64x8(_mm512_maskz_mul_pd(nz, v.0, d.0))
        }
    }
    #[inline(always)]
    fn reduce_sum(self) -> f64 {
        let mut a = [0f64; 8];
        // SAFETY: `a` holds 8 doubles.
        unsafe { _mm512_storeu_pd(a.as_mut_ptr(), self.0) };
        a.iter().sum()
    }
    #[inline(always)]
    fn reduce_max(self) -> f64 {
        // SAFETY: AVX-512F is present (trait contract).
        unsafe { _mm512_reduce_max_pd(self.0) }
    }
}
