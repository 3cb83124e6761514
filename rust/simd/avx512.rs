//! AVX-512F: 16 float32 or 8 float64 lanes, masked tails, `scalef` for the exponent.

use super::avx2::strided_offsets;
use super::consts::*;
use super::{log, Kernel, SimdVec};
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
    unsafe fn load_strided(p: *const f32, stride: usize) -> Self {
        // SAFETY: the offsets l·stride fit in 32 bits and address readable values (the
        // caller's contract); AVX-512F is present (only `run_f32` instantiates this type).
        unsafe {
            let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            let at = _mm512_mullo_epi32(iota, _mm512_set1_epi32(stride as i32));
            F32x16(_mm512_i32gather_ps::<4>(at, p))
        }
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
    fn div(self, o: Self) -> Self {
        // SAFETY: AVX-512F is present (trait contract).
        F32x16(unsafe { _mm512_div_ps(self.0, o.0) })
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
            // Clamped where the result underflows to 0 anyway: −inf becomes finite, and
            // scalef turns the clamped value into 0, so no comparison is needed. The second
            // operand wins for NaN, so NaN stays NaN.
            let xc = _mm512_max_ps(_mm512_set1_ps(EXP_FLOOR_F32), x);
            // x = (n/16)·ln2 + r, |r| ≤ ln2/32; e^x = 2^floor(n/16) · 2^((n mod 16)/16) · e^r.
            // Adding 1.5·2^23 rounds x·16/ln2 to the integer n and leaves n's low bits in the
            // mantissa, where vpermps reads its index (the low 4 bits: n mod 16, also for
            // negative n) without a conversion.
            let magic = _mm512_set1_ps(12_582_912.0);
            let nm = _mm512_fmadd_ps(xc, _mm512_set1_ps(LOG2E_X16_F32), magic);
            let n = _mm512_sub_ps(nm, magic);
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_16_HI_F32), xc);
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_16_LO_F32), r);
            let table = _mm512_castsi512_ps(_mm512_loadu_si512(EXP2_J16_F32.as_ptr().cast()));
            let t = _mm512_permutexvar_ps(_mm512_castps_si512(nm), table);
            let one = _mm512_set1_ps(1.0);
            let p = _mm512_fmadd_ps(
                _mm512_set1_ps(EXP_P3_F32[0]),
                r,
                _mm512_set1_ps(EXP_P3_F32[1]),
            );
            let p = _mm512_fmadd_ps(_mm512_fmadd_ps(p, r, one), r, one);
            // scalef multiplies by 2^floor(n/16): the table held the rest.
            let k = _mm512_mul_ps(n, _mm512_set1_ps(1.0 / 16.0));
            F32x16(_mm512_scalef_ps(_mm512_mul_ps(p, t), k))
        }
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
    fn add_split(self, cnt: Self, e: Self, x: Self, m: Self) -> (Self, Self) {
        // SAFETY: AVX-512F is present (trait contract).
        unsafe {
            let eq = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(x.0, m.0);
            (
                F32x16(_mm512_mask_add_ps(self.0, !eq, self.0, e.0)),
                F32x16(_mm512_mask_add_ps(cnt.0, eq, cnt.0, _mm512_set1_ps(1.0))),
            )
        }
    }
    #[inline(always)]
    fn where_eq(a: Self, b: Self, then: Self, otherwise: Self) -> Self {
        // SAFETY: AVX-512F is present (trait contract).
        unsafe {
            let eq = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a.0, b.0);
            F32x16(_mm512_mask_blend_ps(eq, otherwise.0, then.0))
        }
    }
    #[inline(always)]
    fn reduce_sum(self) -> f64 {
        // Widened first, so the lanes add in float64; a tree, not a chain of 16 additions.
        // SAFETY: AVX-512F is present (trait contract).
        unsafe {
            let lo = _mm512_cvtps_pd(_mm512_castps512_ps256(self.0));
            let hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                _mm512_castps_pd(self.0),
            )));
            _mm512_reduce_add_pd(_mm512_add_pd(lo, hi))
        }
    }
    #[inline(always)]
    fn reduce_max(self) -> f32 {
        // SAFETY: AVX-512F is present (trait contract).
        unsafe { _mm512_reduce_max_ps(self.0) }
    }
    #[inline(always)]
    fn ln_1p(self) -> Self {
        // SAFETY: AVX-512F is present (trait contract).
        unsafe {
            let v = _mm512_add_ps(self.0, _mm512_set1_ps(1.0));
            // v = f·2^k with f ∈ [√½, √2): offset by the bits of 1 − √½, the exponent field
            // steps up at √½ instead of 1.
            let ix = _mm512_add_epi32(
                _mm512_castps_si512(v),
                _mm512_set1_epi32(0x3f80_0000 - 0x3f35_04f3),
            );
            let k = _mm512_cvtepi32_ps(_mm512_sub_epi32(
                _mm512_srai_epi32::<23>(ix),
                _mm512_set1_epi32(0x7f),
            ));
            let f = _mm512_castsi512_ps(_mm512_add_epi32(
                _mm512_and_si512(ix, _mm512_set1_epi32(0x007f_ffff)),
                _mm512_set1_epi32(0x3f35_04f3),
            ));
            log::ln_1p_f32(self, F32x16(v), F32x16(f), F32x16(k))
        }
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
    unsafe fn load_strided(p: *const f64, stride: usize) -> Self {
        // SAFETY: as for float32; the tier requires AVX2 too (`supported`).
        unsafe { F64x8(_mm512_i32gather_pd::<8>(strided_offsets(stride), p)) }
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
    fn div(self, o: Self) -> Self {
        // SAFETY: AVX-512F is present (trait contract).
        F64x8(unsafe { _mm512_div_pd(self.0, o.0) })
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
            // Clamped where the result underflows to 0 anyway: −inf becomes finite, and
            // scalef turns the clamped value into 0, so no comparison is needed. The second
            // operand wins for NaN, so NaN stays NaN.
            let xc = _mm512_max_pd(_mm512_set1_pd(EXP_FLOOR_F64), x);
            // As in float32: x = (n/16)·ln2 + r, the table holds 2^((n mod 16)/16), the
            // magic number leaves n's low bits where vpermt2pd reads its 4-bit index.
            let magic = _mm512_set1_pd(6_755_399_441_055_744.0);
            let nm = _mm512_fmadd_pd(xc, _mm512_set1_pd(LOG2E_X16_F64), magic);
            let n = _mm512_sub_pd(nm, magic);
            let r = _mm512_fnmadd_pd(n, _mm512_set1_pd(LN2_16_HI_F64), xc);
            let r = _mm512_fnmadd_pd(n, _mm512_set1_pd(LN2_16_LO_F64), r);
            let lo = _mm512_castsi512_pd(_mm512_loadu_si512(EXP2_J16_F64.as_ptr().cast()));
            let hi = _mm512_castsi512_pd(_mm512_loadu_si512(EXP2_J16_F64[8..].as_ptr().cast()));
            let t = _mm512_permutex2var_pd(lo, _mm512_castpd_si512(nm), hi);
            let mut p = _mm512_set1_pd(EXP_P7_F64[0]);
            for c in &EXP_P7_F64[1..] {
                p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(*c));
            }
            // e^r = 1 + r·p, and t·e^r = t + t·(r·p): one rounding less than t·(1 + r·p).
            let y = _mm512_fmadd_pd(t, _mm512_mul_pd(r, p), t);
            let k = _mm512_mul_pd(n, _mm512_set1_pd(1.0 / 16.0));
            F64x8(_mm512_scalef_pd(y, k))
        }
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
    fn add_split(self, cnt: Self, e: Self, x: Self, m: Self) -> (Self, Self) {
        // SAFETY: AVX-512F is present (trait contract).
        unsafe {
            let eq = _mm512_cmp_pd_mask::<_CMP_EQ_OQ>(x.0, m.0);
            (
                F64x8(_mm512_mask_add_pd(self.0, !eq, self.0, e.0)),
                F64x8(_mm512_mask_add_pd(cnt.0, eq, cnt.0, _mm512_set1_pd(1.0))),
            )
        }
    }
    #[inline(always)]
    fn where_eq(a: Self, b: Self, then: Self, otherwise: Self) -> Self {
        // SAFETY: AVX-512F is present (trait contract).
        unsafe {
            let eq = _mm512_cmp_pd_mask::<_CMP_EQ_OQ>(a.0, b.0);
            F64x8(_mm512_mask_blend_pd(eq, otherwise.0, then.0))
        }
    }
    #[inline(always)]
    fn reduce_sum(self) -> f64 {
        // SAFETY: AVX-512F is present (trait contract).
        unsafe { _mm512_reduce_add_pd(self.0) }
    }
    #[inline(always)]
    fn reduce_max(self) -> f64 {
        // SAFETY: AVX-512F is present (trait contract).
        unsafe { _mm512_reduce_max_pd(self.0) }
    }
}
