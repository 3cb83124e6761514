//! Storage types and their compute type: float32 and float64 are computed in place; float16 and
//! bfloat16 are widened to float32 one chunk at a time (never a full-size temporary).

use crate::simd::Float;
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// Elements per chunk: a chunk of the widest compute type (16 KiB of f64) stays in L1, so the
/// second pass over it (sum after max, or the gradient after the statistics) is a cache hit.
pub const CHUNK: usize = 2048;

/// A scratch chunk of compute values, used when the storage type is not the compute type.
pub type Buf<F> = [F; CHUNK];

/// An element type that kernels read and write.
pub trait Elem: Copy + Send + Sync + 'static {
    type F: Float;
    /// True when `Self` is `Self::F`, so chunks are used where they lie.
    const NATIVE: bool;
    fn to_f64(self) -> f64;
    fn from_f64(x: f64) -> Self;

    /// Returns a pointer to `n ≤ CHUNK` compute values equal to `src[..n]`: `src` itself when
    /// native, else `buf` after conversion.
    ///
    /// # Safety
    /// `src` must be valid for reading `n` elements.
    #[inline(always)]
    unsafe fn read(src: *const Self, n: usize, buf: &mut Buf<Self::F>) -> *const Self::F {
        if Self::NATIVE {
            src as *const Self::F
        } else {
            // SAFETY: the caller guarantees `n` readable elements.
            let s = unsafe { std::slice::from_raw_parts(src, n) };
            Self::widen(s, &mut buf[..n]);
            buf.as_ptr()
        }
    }

    /// Where a kernel should write `n` compute values destined for `dst`: `dst` itself when
    /// native, else `buf` (then [`Elem::commit`] narrows them into `dst`).
    #[inline(always)]
    fn target(dst: *mut Self, buf: &mut Buf<Self::F>) -> *mut Self::F {
        if Self::NATIVE {
            dst as *mut Self::F
        } else {
            buf.as_mut_ptr()
        }
    }

    /// Completes a write started with [`Elem::target`].
    ///
    /// # Safety
    /// `dst` must be valid for writing `n` elements.
    #[inline(always)]
    unsafe fn commit(dst: *mut Self, n: usize, buf: &Buf<Self::F>) {
        if !Self::NATIVE {
            // SAFETY: the caller guarantees `n` writable elements.
            let d = unsafe { std::slice::from_raw_parts_mut(dst, n) };
            Self::narrow(&buf[..n], d);
        }
    }

    /// Converts storage values to compute values (only called when not native).
    fn widen(src: &[Self], dst: &mut [Self::F]);
    /// Converts compute values to storage values, rounding to nearest (only when not native).
    fn narrow(src: &[Self::F], dst: &mut [Self]);
}

macro_rules! native {
    ($t:ty) => {
        impl Elem for $t {
            type F = $t;
            const NATIVE: bool = true;
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            fn widen(src: &[Self], dst: &mut [Self::F]) {
                dst.copy_from_slice(src)
            }
            fn narrow(src: &[Self::F], dst: &mut [Self]) {
                dst.copy_from_slice(src)
            }
        }
    };
}
native!(f32);
native!(f64);

impl Elem for bf16 {
    type F = f32;
    const NATIVE: bool = false;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        bf16::from_f64(x)
    }
    fn widen(src: &[Self], dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if x86::avx2() {
            // SAFETY: AVX2 is present (just checked).
            return unsafe { x86::widen_bf16(src, dst) };
        }
        src.convert_to_f32_slice(dst)
    }
    fn narrow(src: &[f32], dst: &mut [Self]) {
        dst.convert_from_f32_slice(src)
    }
}

impl Elem for f16 {
    type F = f32;
    const NATIVE: bool = false;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        f16::from_f64(x)
    }
    fn widen(src: &[Self], dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if x86::f16c() {
            // SAFETY: F16C and AVX are present (just checked).
            return unsafe { x86::widen_f16(src, dst) };
        }
        src.convert_to_f32_slice(dst)
    }
    fn narrow(src: &[f32], dst: &mut [Self]) {
        #[cfg(target_arch = "x86_64")]
        if x86::f16c() {
            // SAFETY: F16C and AVX are present (just checked).
            return unsafe { x86::narrow_f16(src, dst) };
        }
        dst.convert_from_f32_slice(src)
    }
}

/// Half-precision conversions eight values at a time: float16 ⇄ float32 with the F16C
/// instructions, bfloat16 → float32 with AVX2 (a shift into the high half). The generic
/// float16 conversion ran at a third of the speed of the kernels it feeds; both generic ones
/// are compiled for the baseline SSE2 only.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::{bf16, f16};
    use std::arch::x86_64::*;
    use std::sync::atomic::{AtomicU8, Ordering};

    /// `probe()` worked out once into `cell`; an atomic, which a `fork()` cannot leave locked
    /// (a once-cell could).
    fn detected(cell: &AtomicU8, probe: fn() -> bool) -> bool {
        match cell.load(Ordering::Relaxed) {
            0 => {
                let has = probe();
                cell.store(1 + has as u8, Ordering::Relaxed);
                has
            }
            v => v == 2,
        }
    }

    pub fn f16c() -> bool {
        static HAS: AtomicU8 = AtomicU8::new(0);
        detected(&HAS, || {
            is_x86_feature_detected!("f16c") && is_x86_feature_detected!("avx")
        })
    }

    pub fn avx2() -> bool {
        static HAS: AtomicU8 = AtomicU8::new(0);
        detected(&HAS, || is_x86_feature_detected!("avx2"))
    }

    /// bfloat16 is the high half of a float32: each value zero-extended and shifted left by
    /// 16, exact. A NaN keeps its payload as it is (the generic conversion sets the quiet bit).
    ///
    /// # Safety
    /// The CPU must support AVX2; `dst` is at least as long as `src`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn widen_bf16(src: &[bf16], dst: &mut [f32]) {
        let n = src.len();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: 8 bfloat16 (16 bytes) are read and 8 floats written, inside both slices.
            unsafe {
                let h = _mm_loadu_si128(src.as_ptr().add(i).cast());
                let w = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h));
                _mm256_storeu_si256(dst.as_mut_ptr().add(i).cast(), w);
            }
            i += 8;
        }
        for (d, s) in dst[i..n].iter_mut().zip(&src[i..]) {
            *d = s.to_f32();
        }
    }

    /// # Safety
    /// The CPU must support F16C and AVX; `dst` is at least as long as `src`.
    #[target_feature(enable = "f16c,avx")]
    pub unsafe fn widen_f16(src: &[f16], dst: &mut [f32]) {
        let n = src.len();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: 8 halves (16 bytes) are read and 8 floats written, inside both slices.
            unsafe {
                let h = _mm_loadu_si128(src.as_ptr().add(i).cast());
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            }
            i += 8;
        }
        for (d, s) in dst[i..n].iter_mut().zip(&src[i..]) {
            *d = s.to_f32();
        }
    }

    /// # Safety
    /// The CPU must support F16C and AVX; `dst` is at least as long as `src`.
    #[target_feature(enable = "f16c,avx")]
    pub unsafe fn narrow_f16(src: &[f32], dst: &mut [f16]) {
        let n = src.len();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: 8 floats are read and 8 halves (16 bytes) written, inside both slices.
            unsafe {
                let v = _mm256_loadu_ps(src.as_ptr().add(i));
                let h = _mm256_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(v);
                _mm_storeu_si128(dst.as_mut_ptr().add(i).cast(), h);
            }
            i += 8;
        }
        for (d, s) in dst[i..n].iter_mut().zip(&src[i..]) {
            *d = f16::from_f32(*s);
        }
    }
}

/// Class-index targets of any integer width and sign, one per row. The kernels take the
/// caller's labels as they are (no widened copy) and compare them as `i128`, so that every
/// value, `u64` included, is compared exactly.
#[derive(Clone, Copy, Debug)]
pub enum Labels<'a> {
    I8(&'a [i8]),
    I16(&'a [i16]),
    I32(&'a [i32]),
    I64(&'a [i64]),
    U8(&'a [u8]),
    U16(&'a [u16]),
    U32(&'a [u32]),
    U64(&'a [u64]),
}

impl Labels<'_> {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        match self {
            Labels::I8(y) => y.len(),
            Labels::I16(y) => y.len(),
            Labels::I32(y) => y.len(),
            Labels::I64(y) => y.len(),
            Labels::U8(y) => y.len(),
            Labels::U16(y) => y.len(),
            Labels::U32(y) => y.len(),
            Labels::U64(y) => y.len(),
        }
    }

    /// Label `r` as `i128` (every width and sign compared exactly): a branch on the width
    /// per call, for code that reads one label per row of many values. Loops over many
    /// labels use [`Labels::visit`] instead.
    #[inline(always)]
    pub fn get(&self, r: usize) -> i128 {
        match self {
            Labels::I8(y) => y[r].into(),
            Labels::I16(y) => y[r].into(),
            Labels::I32(y) => y[r].into(),
            Labels::I64(y) => y[r].into(),
            Labels::U8(y) => y[r].into(),
            Labels::U16(y) => y[r].into(),
            Labels::U32(y) => y[r].into(),
            Labels::U64(y) => y[r].into(),
        }
    }

    /// `visitor` on the typed slice `range`: a loop over many labels then has no branch on
    /// their width.
    #[inline(always)]
    pub fn visit<R>(&self, range: std::ops::Range<usize>, visitor: impl LabelVisitor<R>) -> R {
        match self {
            Labels::I8(y) => visitor.visit(&y[range]),
            Labels::I16(y) => visitor.visit(&y[range]),
            Labels::I32(y) => visitor.visit(&y[range]),
            Labels::I64(y) => visitor.visit(&y[range]),
            Labels::U8(y) => visitor.visit(&y[range]),
            Labels::U16(y) => visitor.visit(&y[range]),
            Labels::U32(y) => visitor.visit(&y[range]),
            Labels::U64(y) => visitor.visit(&y[range]),
        }
    }
}

macro_rules! labels_from {
    ($($t:ty => $v:ident),*) => {$(
        impl<'a> From<&'a [$t]> for Labels<'a> {
            fn from(y: &'a [$t]) -> Self {
                Labels::$v(y)
            }
        }
    )*};
}
labels_from!(i8 => I8, i16 => I16, i32 => I32, i64 => I64, u8 => U8, u16 => U16, u32 => U32,
             u64 => U64);

/// An integer label type: every width and sign, compared as `i128`.
pub trait Label: Copy + Into<i128> + Send + Sync + 'static {}
impl<L: Copy + Into<i128> + Send + Sync + 'static> Label for L {}

/// A computation over a typed slice of labels ([`Labels::visit`]): the kernels dispatch on the
/// labels' type once per call, then run code compiled for that type.
pub trait LabelVisitor<R> {
    fn visit<L: Label>(self, labels: &[L]) -> R;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every bit pattern, and a tail shorter than a vector, widened as the scalar conversion
    /// does (NaN as NaN: only the payload may differ).
    fn widens_every_value<T: Elem<F = f32>>(from_bits: fn(u16) -> T, scalar: fn(T) -> f32) {
        let src: Vec<T> = (0..=u16::MAX).chain(0..5).map(from_bits).collect();
        let mut dst = vec![0f32; src.len()];
        T::widen(&src, &mut dst);
        for (s, d) in src.iter().zip(&dst) {
            let want = scalar(*s);
            assert!(
                d.to_bits() == want.to_bits() || (d.is_nan() && want.is_nan()),
                "{want} widened to {d}"
            );
        }
    }

    #[test]
    fn half_precision_widens_exactly() {
        widens_every_value(bf16::from_bits, bf16::to_f32);
        widens_every_value(f16::from_bits, f16::to_f32);
    }
}
