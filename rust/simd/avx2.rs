//! AVX2 + FMA: 8 float32 or 4 float64 lanes; 2^n is built by integer operations on the
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

/// l·stride in lane l of eight 32-bit lanes: the offsets of a strided gather (also of the
/// AVX-512 float64 one, whose eight offsets are 32-bit, and, the lower four, of the AVX2
/// float64 one).
///
/// # Safety
/// The CPU must support AVX2.
#[inline(always)]
pub(super) unsafe fn strided_offsets(stride: usize) -> __m256i {
    // SAFETY: AVX2 is present (caller's contract).
    unsafe {
        _mm256_mullo_epi32(
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            _mm256_set1_epi32(stride as i32),
        )
    }
}

/// All-ones in the first `n` 64-bit lanes.
#[inline(always)]
unsafe fn mask64(n: usize) -> __m256i {
    // SAFETY: AVX2 is present (caller's contract).
    unsafe { _mm256_cmpgt_epi64(_mm256_set1_epi64x(n as i64), _mm256_setr_epi64x(0, 1, 2, 3)) }
}

/// e^x of K vectors, within 2 ulp from EXP_LO_F32 up (`IN_SUM`: a polynomial one degree
/// lower, for terms of a sum; still within 2 ulp, tested). Below it the clamp at EXP_ZERO8_F32
/// makes the exponent field 0: from there down (−inf included) the result is exactly 0, and in
/// between some value below 2^−126 (the caller flushes it, or adds it to a sum where it cannot
/// show). 2^n comes from the table and the exponent field by integer operations, but is
/// applied by the last FMA: a NaN argument then stays NaN, which an integer add into the
/// result's exponent would not guarantee.
///
/// Each step is taken for all K vectors before the next: in program order the K chains
/// interleave, so an operation waits for its operands about one latency after it enters the
/// scheduler instead of a whole chain's. Zen 3's FP scheduler holds about two chains of one
/// vector each: written vector by vector, this loop runs at half its throughput there.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
// The loops over k step through parallel arrays at once.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn exp_f32_steps<const K: usize, const IN_SUM: bool>(x: [__m256; K]) -> [__m256; K] {
    // Loops over k, not closures: nothing here may stay a call outside the caller's
    // `#[target_feature]` code.
    // SAFETY: AVX2 and FMA are present (caller's contract).
    unsafe {
        let z = _mm256_setzero_ps();
        let (mut t, mut n, mut r) = ([z; K], [z; K], [z; K]);
        let (mut r2, mut a, mut s) = ([z; K], [z; K], [z; K]);
        let (magic, l8) = (_mm256_set1_ps(12_582_912.0), _mm256_set1_ps(LOG2E_X8_F32));
        let (hi, lo) = (_mm256_set1_ps(LN2_8_HI_F32), _mm256_set1_ps(LN2_8_LO_F32));
        let [c4, c3, c2] = EXP_P4_F32;
        let (c4, c3, c2) = (_mm256_set1_ps(c4), _mm256_set1_ps(c3), _mm256_set1_ps(c2));
        let [s3, s2] = EXP_P3_SUM_F32;
        let (s3, s2) = (_mm256_set1_ps(s3), _mm256_set1_ps(s2));
        let table = _mm256_castsi256_ps(_mm256_loadu_si256(EXP2_J8_ADJ_F32.as_ptr().cast()));
        let mut out = x;
        for k in 0..K {
            // vmaxps returns its second operand when either is NaN: a NaN x passes.
            out[k] = _mm256_max_ps(_mm256_set1_ps(EXP_ZERO8_F32), x[k]);
        }
        // Adding 1.5·2^23 rounds x·8/ln2 to an integer n and leaves it in the low bits of t.
        for k in 0..K {
            t[k] = _mm256_fmadd_ps(out[k], l8, magic);
        }
        for k in 0..K {
            n[k] = _mm256_sub_ps(t[k], magic);
        }
        // r = x − n·ln2/8 in two parts (Cody–Waite).
        for k in 0..K {
            r[k] = _mm256_fnmadd_ps(n[k], hi, out[k]);
        }
        for k in 0..K {
            r[k] = _mm256_fnmadd_ps(n[k], lo, r[k]);
        }
        // e^r − 1 by Estrin: r² alongside the first FMA shortens the chain. Inside a sum,
        // degree 3 (minimax, 0.22 ulp of truncation against degree 4's 0.01): one FMA fewer.
        for k in 0..K {
            r2[k] = _mm256_mul_ps(r[k], r[k]);
            a[k] = if IN_SUM {
                _mm256_fmadd_ps(r[k], s3, s2)
            } else {
                _mm256_fmadd_ps(r[k], c3, c2)
            };
        }
        if !IN_SUM {
            for k in 0..K {
                a[k] = _mm256_fmadd_ps(r2[k], c4, a[k]);
            }
        }
        for k in 0..K {
            r[k] = _mm256_fmadd_ps(r2[k], a[k], r[k]);
        }
        // 2^(n/8): vpermps reads the low 3 bits of each lane of t (j = n mod 8), and the
        // table's entries expect the bits of t shifted left by 20 (see EXP2_J8_ADJ_F32).
        for k in 0..K {
            let tb = _mm256_castps_si256(t[k]);
            s[k] = _mm256_castsi256_ps(_mm256_add_epi32(
                _mm256_castps_si256(_mm256_permutevar8x32_ps(table, tb)),
                _mm256_slli_epi32::<20>(tb),
            ));
        }
        // 2^(n/8)·(1 + q), rounded once.
        for k in 0..K {
            out[k] = _mm256_fmadd_ps(s[k], r[k], s[k]);
        }
        out
    }
}

impl F32x8 {
    /// [`exp_f32_steps`] on vectors of this type.
    #[inline(always)]
    fn steps<const K: usize, const IN_SUM: bool>(x: [Self; K]) -> [Self; K] {
        let mut v = [x[0].0; K];
        for (v, x) in v.iter_mut().zip(&x) {
            *v = x.0;
        }
        // SAFETY: AVX2 and FMA are present (only `run_f32` instantiates this type).
        let e = unsafe { exp_f32_steps::<K, IN_SUM>(v) };
        let mut out = x;
        for (o, e) in out.iter_mut().zip(e) {
            *o = F32x8(e);
        }
        out
    }

    /// `self` (e^x) where x is in the normal range, 0 below it.
    #[inline(always)]
    fn flushed(self, x: Self) -> Self {
        // SAFETY: only reached from `run_f32`'s code, which has AVX2.
        unsafe {
            let under = _mm256_cmp_ps::<_CMP_LT_OQ>(x.0, _mm256_set1_ps(EXP_LO_F32));
            F32x8(_mm256_andnot_ps(under, self.0))
        }
    }
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
    unsafe fn load_strided(p: *const f32, stride: usize) -> Self {
        // SAFETY: the offsets l·stride fit in 32 bits and address readable values (the
        // caller's contract); AVX2 is present (only `run_f32` instantiates this type).
        unsafe { F32x8(_mm256_i32gather_ps::<4>(p, strided_offsets(stride))) }
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
        Self::exp_many([self])[0]
    }
    #[inline(always)]
    fn exp_in_sum(self) -> Self {
        Self::exp_in_sum_many([self])[0]
    }
    #[inline(always)]
    fn exp_in_sum_many<const K: usize>(x: [Self; K]) -> [Self; K] {
        F32x8::steps::<K, true>(x)
    }
    #[inline(always)]
    fn exp_many<const K: usize>(x: [Self; K]) -> [Self; K] {
        let mut out = F32x8::steps::<K, false>(x);
        for (o, x) in out.iter_mut().zip(x) {
            *o = o.flushed(x);
        }
        out
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

/// e^x of K float64 vectors, step by step as [`exp_f32_steps`]: within 2 ulp from EXP_LO_F64
/// up; clamped at EXP_ZERO_F64, where the result's exponent field comes out 0 with a zero
/// mantissa, so exactly 0 from there down (−inf included) and some value below 2^−1021 in
/// between.
///
/// x = (n/4)·ln2 + r with |r| ≤ ln2/8: 2^(n mod 4 / 4) comes from a 4-entry table in one
/// register (`vpermps` on the entries' 32-bit halves), and e^r then needs a polynomial of
/// degree 8, not 11: three FMAs fewer per vector, for two shuffles and two integer operations
/// more on the other ports.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
// The loops over k step through parallel arrays at once.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn exp_f64_steps<const K: usize>(x: [__m256d; K]) -> [__m256d; K] {
    // SAFETY: AVX2 and FMA are present (caller's contract); the table is 32 readable bytes.
    unsafe {
        let z = _mm256_setzero_pd();
        let (mut t, mut n, mut r) = ([z; K], [z; K], [z; K]);
        // Adding 1.5·2^52 rounds to an integer and leaves it in the low mantissa bits.
        let magic = _mm256_set1_pd(6_755_399_441_055_744.0);
        let (l2e, hi, lo) = (
            _mm256_set1_pd(LOG2E_X4_F64),
            _mm256_set1_pd(LN2_4_HI_F64),
            _mm256_set1_pd(LN2_4_LO_F64),
        );
        let table = _mm256_loadu_ps(EXP2_J4_F64.as_ptr().cast());
        let mut out = x;
        for k in 0..K {
            // vmaxpd returns its second operand when either is NaN: a NaN x passes.
            out[k] = _mm256_max_pd(_mm256_set1_pd(EXP_ZERO_F64), x[k]);
        }
        for k in 0..K {
            t[k] = _mm256_fmadd_pd(out[k], l2e, magic);
        }
        for k in 0..K {
            n[k] = _mm256_sub_pd(t[k], magic);
        }
        // r = x − n·ln2/4 in two parts (Cody–Waite).
        for k in 0..K {
            r[k] = _mm256_fnmadd_pd(n[k], hi, out[k]);
        }
        for k in 0..K {
            r[k] = _mm256_fnmadd_pd(n[k], lo, r[k]);
        }
        let mut p = [_mm256_set1_pd(EXP_P6_F64[0]); K];
        for c in &EXP_P6_F64[1..] {
            for k in 0..K {
                p[k] = _mm256_fmadd_pd(p[k], r[k], _mm256_set1_pd(*c));
            }
        }
        // e^r − 1 = r·(1 + r·P(r)).
        for k in 0..K {
            p[k] = _mm256_mul_pd(r[k], _mm256_fmadd_pd(p[k], r[k], _mm256_set1_pd(1.0)));
        }
        for k in 0..K {
            let ti = _mm256_castpd_si256(t[k]);
            // Entry j = n mod 4 is 32-bit elements 2j and 2j + 1: n's low 32 bits in both
            // halves of each lane, doubled, plus 1 in the upper half (vpermps reads 3 bits).
            let j = _mm256_shuffle_epi32::<0b1010_0000>(ti);
            let j = _mm256_or_si256(_mm256_slli_epi32::<1>(j), _mm256_set1_epi64x(1 << 32));
            let e = _mm256_castps_si256(_mm256_permutevar8x32_ps(table, j));
            // n << 50 is (n >> 2) in the exponent field plus j in mantissa bits 50–51, which
            // the table's entries have subtracted: the sum is 2^(n/4) (0 at the clamp, where
            // n = −4092).
            let s = _mm256_castsi256_pd(_mm256_add_epi64(e, _mm256_slli_epi64::<50>(ti)));
            out[k] = _mm256_fmadd_pd(s, p[k], s);
        }
        out
    }
}

impl F64x4 {
    /// `self` (e^x) where x is in the normal range, 0 below it.
    #[inline(always)]
    fn flushed(self, x: Self) -> Self {
        // SAFETY: only reached from `run_f64`'s code, which has AVX2.
        unsafe {
            let under = _mm256_cmp_pd::<_CMP_LT_OQ>(x.0, _mm256_set1_pd(EXP_LO_F64));
            F64x4(_mm256_andnot_pd(under, self.0))
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
    unsafe fn load_strided(p: *const f64, stride: usize) -> Self {
        // SAFETY: as for float32.
        unsafe {
            let at = _mm256_castsi256_si128(strided_offsets(stride));
            F64x4(_mm256_i32gather_pd::<8>(p, at))
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
        self.exp_in_sum().flushed(self)
    }
    #[inline(always)]
    fn exp_in_sum(self) -> Self {
        // SAFETY: AVX2 and FMA are present (trait contract).
        F64x4(unsafe { exp_f64_steps([self.0])[0] })
    }
    #[inline(always)]
    fn exp_in_sum_many<const K: usize>(x: [Self; K]) -> [Self; K] {
        // Two chains at a time: four of float64's longer polynomial need more than the 16
        // registers, and the compiler then orders the spilled chains one after the other.
        let mut out = x;
        for k in (0..K).step_by(2) {
            if k + 1 < K {
                // SAFETY: AVX2 and FMA are present (trait contract).
                let [a, b] = unsafe { exp_f64_steps([x[k].0, x[k + 1].0]) };
                (out[k], out[k + 1]) = (F64x4(a), F64x4(b));
            } else {
                // SAFETY: as above.
                out[k] = F64x4(unsafe { exp_f64_steps([x[k].0])[0] });
            }
        }
        out
    }
    #[inline(always)]
    fn exp_many<const K: usize>(x: [Self; K]) -> [Self; K] {
        let mut out = Self::exp_in_sum_many(x);
        for (o, x) in out.iter_mut().zip(x) {
            *o = o.flushed(x);
        }
        out
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
