//! AVX2 + FMA: 8 float32 or 4 float64 lanes; the exponent is built by an integer add into the
//! exponent field (AVX2 has no `scalef`), tails through `maskload`/`maskstore`.

use super::consts::*;
use super::{log, Kernel, SimdVec};
use std::arch::x86_64::*;

pub fn supported() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// # Safety
/// The CPU must support AVX2 and FMA ([`supported`]).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn run_f32<K: Kernel<F = f32>>(k: K) -> K::Out {
    k.run::<F32x8>()
}

/// # Safety
/// The CPU must support AVX2 and FMA ([`supported`]).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn run_f64<K: Kernel<F = f64>>(k: K) -> K::Out {
    k.run::<F64x4>()
}

#[derive(Clone, Copy)]
pub struct F32x8(__m256);

#[derive(Clone, Copy)]
pub struct F64x4(__m256d);

/// All-ones in the first `n` 32-bit lanes.
#[inline(always)]
unsafe fn mask32(n: usize) -> __m256i {
    // SAFETY: AVX2 is present (caller's contract).
    unsafe {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }
}

/// All-ones in the first `n` 64-bit lanes.
#[inline(always)]
unsafe fn mask64(n: usize) -> __m256i {
    // SAFETY: AVX2 is present (caller's contract).
    unsafe { _mm256_cmpgt_epi64(_mm256_set1_epi64x(n as i64), _mm256_setr_epi64x(0, 1, 2, 3)) }
}

// SAFETY: only instantiated by `run_f32`, whose caller checked AVX2 and FMA; every method is
// inlined into that `#[target_feature]` function.
unsafe impl SimdVec for F32x8 {
    type F = f32;
    const LANES: usize = 8;
    #[inline(always)]
    fn splat(x: f32) -> Self {
        // SAFETY: AVX2 is present (trait contract).
        F32x8(unsafe { _mm256_set1_ps(x) })
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller guarantees 8 readable elements.
        F32x8(unsafe { _mm256_loadu_ps(p) })
    }
    #[inline(always)]
    unsafe fn load_tail(p: *const f32, n: usize, fill: f32) -> Self {
        // SAFETY: maskload reads only the `n` lanes the caller guarantees.
        unsafe {
            let m = mask32(n);
            let v = _mm256_maskload_ps(p, m);
            F32x8(_mm256_blendv_ps(
                _mm256_set1_ps(fill),
                v,
                _mm256_castsi256_ps(m),
            ))
        }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller guarantees 8 writable elements.
        unsafe { _mm256_storeu_ps(p, self.0) }
    }
    #[inline(always)]
    unsafe fn store_tail(self, p: *mut f32, n: usize) {
        // SAFETY: maskstore writes only the `n` lanes the caller guarantees.
        unsafe { _mm256_maskstore_ps(p, mask32(n), self.0) }
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        // SAFETY: AVX2 is present (trait contract).
        F32x8(unsafe { _mm256_add_ps(self.0, o.0) })
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        // SAFETY: AVX2 is present (trait contract).
        F32x8(unsafe { _mm256_sub_ps(self.0, o.0) })
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        // SAFETY: AVX2 is present (trait contract).
        F32x8(unsafe { _mm256_mul_ps(self.0, o.0) })
    }
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        // SAFETY: AVX2 is present (trait contract).
        F32x8(unsafe { _mm256_div_ps(self.0, o.0) })
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        // SAFETY: FMA is present (trait contract).
        F32x8(unsafe { _mm256_fmadd_ps(self.0, b.0, c.0) })
    }
    #[inline(always)]
    fn max_acc(self, x: Self) -> Self {
        // vmaxps returns its second operand when either is NaN: the accumulator wins.
        // SAFETY: AVX2 is present (trait contract).
        F32x8(unsafe { _mm256_max_ps(x.0, self.0) })
    }
    #[inline(always)]
    fn exp(self) -> Self {
        // SAFETY: AVX2 and FMA are present (trait contract).
        unsafe {
            let x = self.0;
            let lo = _mm256_set1_ps(EXP_LO_F32);
            let xc = _mm256_max_ps(lo, x);
            let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(xc, _mm256_set1_ps(LOG2E_F32)),
            );
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI_F32), xc);
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO_F32), r);
            let mut p = _mm256_set1_ps(EXP_P_F32[0]);
            for c in &EXP_P_F32[1..] {
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
            }
            let one = _mm256_set1_ps(1.0);
            let y = _mm256_fmadd_ps(_mm256_fmadd_ps(p, r, one), r, one);
            // 2^n as a float: n + 127 into the exponent field (n ≥ −126 after the clamp).
            let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(
                _mm256_cvtps_epi32(n),
                _mm256_set1_epi32(127),
            ));
            let y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
            let under = _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo);
            F32x8(_mm256_andnot_ps(under, y))
        }
    }
    #[inline(always)]
    fn mul_nonzero(v: Self, d: Self) -> Self {
        // SAFETY: AVX2 is present (trait contract).
        unsafe {
            let z = _mm256_cmp_ps::<_CMP_EQ_OQ>(v.0, _mm256_setzero_ps());
            F32x8(_mm256_andnot_ps(z, _mm256_mul_ps(v.0, d.0)))
        }
    }
    #[inline(always)]
    fn add_split(self, cnt: Self, e: Self, x: Self, m: Self) -> (Self, Self) {
        // SAFETY: AVX2 is present (trait contract).
        unsafe {
            let eq = _mm256_cmp_ps::<_CMP_EQ_OQ>(x.0, m.0);
            (
                F32x8(_mm256_add_ps(self.0, _mm256_andnot_ps(eq, e.0))),
                F32x8(_mm256_add_ps(cnt.0, _mm256_and_ps(eq, _mm256_set1_ps(1.0)))),
            )
        }
    }
    #[inline(always)]
    fn where_eq(a: Self, b: Self, then: Self, otherwise: Self) -> Self {
        // SAFETY: AVX2 is present (trait contract).
        unsafe {
            let eq = _mm256_cmp_ps::<_CMP_EQ_OQ>(a.0, b.0);
            F32x8(_mm256_blendv_ps(otherwise.0, then.0, eq))
        }
    }
    #[inline(always)]
    fn reduce_sum(self) -> f64 {
        let mut a = [0f32; 8];
        // SAFETY: `a` holds 8 floats.
        unsafe { _mm256_storeu_ps(a.as_mut_ptr(), self.0) };
        a.iter().map(|&v| v as f64).sum()
    }
    #[inline(always)]
    fn reduce_max(self) -> f32 {
        let mut a = [0f32; 8];
        // SAFETY: `a` holds 8 floats.
        unsafe { _mm256_storeu_ps(a.as_mut_ptr(), self.0) };
        a.iter()
            .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
    }
    #[inline(always)]
    fn ln_1p(self) -> Self {
        // SAFETY: AVX2 is present (trait contract).
        unsafe {
            let v = _mm256_add_ps(self.0, _mm256_set1_ps(1.0));
            // v = f·2^k with f ∈ [√½, √2): offset by the bits of 1 − √½, the exponent field
            // steps up at √½ instead of 1.
            let ix = _mm256_add_epi32(
                _mm256_castps_si256(v),
                _mm256_set1_epi32(0x3f80_0000 - 0x3f35_04f3),
            );
            let k = _mm256_cvtepi32_ps(_mm256_sub_epi32(
                _mm256_srai_epi32::<23>(ix),
                _mm256_set1_epi32(0x7f),
            ));
            let f = _mm256_castsi256_ps(_mm256_add_epi32(
                _mm256_and_si256(ix, _mm256_set1_epi32(0x007f_ffff)),
                _mm256_set1_epi32(0x3f35_04f3),
            ));
            log::ln_1p_f32(self, F32x8(v), F32x8(f), F32x8(k))
        }
    }
}

// SAFETY: only instantiated by `run_f64`, whose caller checked AVX2 and FMA; every method is
// inlined into that `#[target_feature]` function.
unsafe impl SimdVec for F64x4 {
    type F = f64;
    const LANES: usize = 4;
    #[inline(always)]
    fn splat(x: f64) -> Self {
        // SAFETY: AVX2 is present (trait contract).
        F64x4(unsafe { _mm256_set1_pd(x) })
    }
    #[inline(always)]
    unsafe fn load(p: *const f64) -> Self {
        // SAFETY: the caller guarantees 4 readable elements.
        F64x4(unsafe { _mm256_loadu_pd(p) })
    }
    #[inline(always)]
    unsafe fn load_tail(p: *const f64, n: usize, fill: f64) -> Self {
        // SAFETY: maskload reads only the `n` lanes the caller guarantees.
        unsafe {
            let m = mask64(n);
            let v = _mm256_maskload_pd(p, m);
            F64x4(_mm256_blendv_pd(
                _mm256_set1_pd(fill),
                v,
                _mm256_castsi256_pd(m),
            ))
        }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f64) {
        // SAFETY: the caller guarantees 4 writable elements.
        unsafe { _mm256_storeu_pd(p, self.0) }
    }
    #[inline(always)]
    unsafe fn store_tail(self, p: *mut f64, n: usize) {
        // SAFETY: maskstore writes only the `n` lanes the caller guarantees.
        unsafe { _mm256_maskstore_pd(p, mask64(n), self.0) }
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        // SAFETY: AVX2 is present (trait contract).
        F64x4(unsafe { _mm256_add_pd(self.0, o.0) })
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        // SAFETY: AVX2 is present (trait contract).
        F64x4(unsafe { _mm256_sub_pd(self.0, o.0) })
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        // SAFETY: AVX2 is present (trait contract).
        F64x4(unsafe { _mm256_mul_pd(self.0, o.0) })
    }
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        // SAFETY: AVX2 is present (trait contract).
        F64x4(unsafe { _mm256_div_pd(self.0, o.0) })
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        // SAFETY: FMA is present (trait contract).
        F64x4(unsafe { _mm256_fmadd_pd(self.0, b.0, c.0) })
    }
    #[inline(always)]
    fn max_acc(self, x: Self) -> Self {
        // SAFETY: AVX2 is present (trait contract).
        F64x4(unsafe { _mm256_max_pd(x.0, self.0) })
    }
    #[inline(always)]
    fn exp(self) -> Self {
        // SAFETY: AVX2 and FMA are present (trait contract).
        unsafe {
            let x = self.0;
            let lo = _mm256_set1_pd(EXP_LO_F64);
            let xc = _mm256_max_pd(lo, x);
            // Adding 1.5·2^52 rounds to an integer and leaves it in the low mantissa bits.
            let magic = _mm256_set1_pd(6_755_399_441_055_744.0);
            let t = _mm256_fmadd_pd(xc, _mm256_set1_pd(LOG2E_F64), magic);
            let n = _mm256_sub_pd(t, magic);
            let r = _mm256_fnmadd_pd(n, _mm256_set1_pd(LN2_HI_F64), xc);
            let r = _mm256_fnmadd_pd(n, _mm256_set1_pd(LN2_LO_F64), r);
            let mut p = _mm256_set1_pd(EXP_P_F64[0]);
            for c in &EXP_P_F64[1..] {
                p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(*c));
            }
            let one = _mm256_set1_pd(1.0);
            let y = _mm256_fmadd_pd(_mm256_fmadd_pd(p, r, one), r, one);
            let e = _mm256_slli_epi64::<52>(_mm256_add_epi64(
                _mm256_castpd_si256(t),
                _mm256_set1_epi64x(1023),
            ));
            let y = _mm256_mul_pd(y, _mm256_castsi256_pd(e));
            let under = _mm256_cmp_pd::<_CMP_LT_OQ>(x, lo);
            F64x4(_mm256_andnot_pd(under, y))
        }
    }
    #[inline(always)]
    fn mul_nonzero(v: Self, d: Self) -> Self {
        // SAFETY: AVX2 is present (trait contract).
        unsafe {
            let z = _mm256_cmp_pd::<_CMP_EQ_OQ>(v.0, _mm256_setzero_pd());
            F64x4(_mm256_andnot_pd(z, _mm256_mul_pd(v.0, d.0)))
        }
    }
    #[inline(always)]
    fn add_split(self, cnt: Self, e: Self, x: Self, m: Self) -> (Self, Self) {
        // SAFETY: AVX2 is present (trait contract).
        unsafe {
            let eq = _mm256_cmp_pd::<_CMP_EQ_OQ>(x.0, m.0);
            (
                F64x4(_mm256_add_pd(self.0, _mm256_andnot_pd(eq, e.0))),
                F64x4(_mm256_add_pd(cnt.0, _mm256_and_pd(eq, _mm256_set1_pd(1.0)))),
            )
        }
    }
    #[inline(always)]
    fn where_eq(a: Self, b: Self, then: Self, otherwise: Self) -> Self {
        // SAFETY: AVX2 is present (trait contract).
        unsafe {
            let eq = _mm256_cmp_pd::<_CMP_EQ_OQ>(a.0, b.0);
            F64x4(_mm256_blendv_pd(otherwise.0, then.0, eq))
        }
    }
    #[inline(always)]
    fn reduce_sum(self) -> f64 {
        let mut a = [0f64; 4];
        // SAFETY: `a` holds 4 doubles.
        unsafe { _mm256_storeu_pd(a.as_mut_ptr(), self.0) };
        a.iter().sum()
    }
    #[inline(always)]
    fn reduce_max(self) -> f64 {
        let mut a = [0f64; 4];
        // SAFETY: `a` holds 4 doubles.
        unsafe { _mm256_storeu_pd(a.as_mut_ptr(), self.0) };
        a.iter()
            .fold(f64::NEG_INFINITY, |m, &v| if v > m { v } else { m })
    }
}
