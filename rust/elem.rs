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

macro_rules! half_float {
    ($t:ty) => {
        impl Elem for $t {
            type F = f32;
            const NATIVE: bool = false;
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self.to_f64()
            }
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                <$t>::from_f64(x)
            }
            fn widen(src: &[Self], dst: &mut [f32]) {
                src.convert_to_f32_slice(dst)
            }
            fn narrow(src: &[f32], dst: &mut [Self]) {
                dst.convert_from_f32_slice(src)
            }
        }
    };
}
half_float!(bf16);

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
        if f16c::available() {
            // SAFETY: F16C and AVX are present (just checked).
            return unsafe { f16c::widen(src, dst) };
        }
        src.convert_to_f32_slice(dst)
    }
    fn narrow(src: &[f32], dst: &mut [Self]) {
        #[cfg(target_arch = "x86_64")]
        if f16c::available() {
            // SAFETY: F16C and AVX are present (just checked).
            return unsafe { f16c::narrow(src, dst) };
        }
        dst.convert_from_f32_slice(src)
    }
}

/// float16 ⇄ float32 eight at a time with the F16C instructions: the generic slice
/// conversion ran at a third of the speed of the kernels it feeds.
#[cfg(target_arch = "x86_64")]
mod f16c {
    use half::f16;
    use std::arch::x86_64::*;
    use std::sync::atomic::{AtomicU8, Ordering};

    /// Detected once; an atomic, which a `fork()` cannot leave locked (a once-cell could).
    pub fn available() -> bool {
        static HAS: AtomicU8 = AtomicU8::new(0);
        match HAS.load(Ordering::Relaxed) {
            0 => {
                let has = is_x86_feature_detected!("f16c") && is_x86_feature_detected!("avx");
                HAS.store(1 + has as u8, Ordering::Relaxed);
                has
            }
            v => v == 2,
        }
    }

    /// # Safety
    /// The CPU must support F16C and AVX; `dst` is at least as long as `src`.
    #[target_feature(enable = "f16c,avx")]
    pub unsafe fn widen(src: &[f16], dst: &mut [f32]) {
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
    pub unsafe fn narrow(src: &[f32], dst: &mut [f16]) {
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

    /// `visitor` on the typed slice `range`: a loop over many labels then has no branch on
    /// their width.
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
