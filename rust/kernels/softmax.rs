//! Log-sum-exp, softmax and log-softmax over the rows of a C-contiguous matrix.

use super::chunk::ScaledSoftmax;
use super::rows::{drive, fill, write_exp, write_log, RowOp, RowWeights, Scratch};
use super::stats::Stats;
use crate::elem::Elem;
use crate::error::{check_len, KernelError};
use crate::parallel::{SendPtr, Shared};
use crate::simd::{Float, SimdVec};
use std::ops::Range;

struct Lse<'a, T: Elem> {
    x: &'a [T],
    cols: usize,
    out: Shared<T>,
}

impl<T: Elem> RowOp<T> for Lse<'_, T> {
    const WRITES: bool = false;
    fn row(&self, r: usize) -> *const T {
        self.x[r * self.cols..].as_ptr()
    }
    fn weights(&self, _r: usize) -> RowWeights<'_, T> {
        RowWeights::None
    }
    fn plain(&self) -> bool {
        true
    }
    fn done(&self, r: usize, s: &Stats, excess: f64) {
        // SAFETY: each row is finished exactly once.
        unsafe { self.out.set(r, T::from_f64(s.m + excess)) }
    }
    #[inline(always)]
    unsafe fn write<V: SimdVec<F = T::F>>(
        &self,
        _: usize,
        _: Range<usize>,
        _: &Stats,
        _: f64,
        _: &mut Scratch<T::F>,
    ) {
    }
}

/// out[r] = log Σ_c e^x[r, c] for the `out.len()` rows of `x` (row-major, `cols` wide).
///
/// An empty row gives −inf, a row with a NaN gives NaN, a row of −inf gives −inf, and a
/// row with +inf gives +inf.
pub fn logsumexp_rows<T: Elem>(x: &[T], cols: usize, out: &mut [T]) -> Result<(), KernelError> {
    let rows = out.len();
    check_len("input", x.len(), rows * cols)?;
    let op = Lse {
        x,
        cols,
        out: Shared::new(out),
    };
    drive(&op, rows, cols);
    Ok(())
}

struct Softmax<'a, T: Elem> {
    x: *const T,
    out: SendPtr<T>,
    cols: usize,
    log: bool,
    /// Row r's softmax times `scale[r]` (the gradient of log-sum-exp), 0 on a row of all
    /// −inf (or none): its log-sum-exp is −inf whatever the row, so its gradient is 0.
    scale: Option<&'a [f64]>,
    _x: std::marker::PhantomData<&'a [T]>,
}

// SAFETY: `x` is only read; `out` is written at disjoint rows/segments (`RowOp::write`).
unsafe impl<T: Elem> Sync for Softmax<'_, T> {}

impl<T: Elem> RowOp<T> for Softmax<'_, T> {
    const WRITES: bool = true;
    fn row(&self, r: usize) -> *const T {
        self.x.wrapping_add(r * self.cols)
    }
    fn weights(&self, _r: usize) -> RowWeights<'_, T> {
        RowWeights::None
    }
    fn plain(&self) -> bool {
        true
    }
    fn done(&self, _r: usize, _s: &Stats, _excess: f64) {}
    #[inline(always)]
    unsafe fn write<V: SimdVec<F = T::F>>(
        &self,
        r: usize,
        range: Range<usize>,
        s: &Stats,
        excess: f64,
        scratch: &mut Scratch<T::F>,
    ) {
        let (x, out) = (self.row(r), self.out.0.wrapping_add(r * self.cols));
        let (m, excess) = (T::F::from_f64(s.m), T::F::from_f64(excess));
        // SAFETY: the row holds `cols` values; this task owns `range` of it.
        unsafe {
            if s.m == f64::INFINITY || s.rest.is_nan() {
                // torch's answer: a +inf or NaN logit makes the whole row NaN.
                fill(out, range, f64::NAN);
            } else if self.log {
                write_log::<T, V>(x, out, range, m, excess, scratch);
            } else if self.scale.is_some() && s.m == f64::NEG_INFINITY {
                fill(out, range, 0.0);
            } else {
                let f = ScaledSoftmax {
                    m,
                    excess,
                    p_scale: self.scale.map_or(T::F::ONE, |s| T::F::from_f64(s[r])),
                    v_scale: T::F::ZERO,
                };
                write_exp::<T, V>(x, out, range, f, RowWeights::None, scratch);
            }
        }
    }
}

/// Writes softmax (or log-softmax, with `log`) of each row of `x` into `out`.
///
/// `x` may be `None` for in-place operation on `out`.
pub fn softmax_rows<T: Elem>(
    x: Option<&[T]>,
    out: &mut [T],
    cols: usize,
    log: bool,
) -> Result<(), KernelError> {
    let rows = out.len().checked_div(cols).unwrap_or(0);
    check_len("output", out.len(), rows * cols)?;
    if let Some(x) = x {
        check_len("input", x.len(), out.len())?;
    }
    let op = Softmax {
        x: x.map_or(out.as_ptr(), |x| x.as_ptr()),
        out: SendPtr(out.as_mut_ptr()),
        cols,
        log,
        scale: None,
        _x: std::marker::PhantomData,
    };
    drive(&op, rows, cols);
    Ok(())
}

/// The gradient of each row's log-sum-exp: `out[r] = scale[r]·softmax(x[r])`, in one pass
/// (read the row, write its gradient); 0 on a row of all −inf, whose log-sum-exp is −inf
/// whatever its values; NaN on a row holding +inf or NaN. Rows: `scale.len()`.
pub fn logsumexp_grad_rows<T: Elem>(
    x: &[T],
    cols: usize,
    scale: &[f64],
    out: &mut [T],
) -> Result<(), KernelError> {
    let rows = scale.len();
    check_len("input", x.len(), rows * cols)?;
    check_len("output", out.len(), rows * cols)?;
    let op = Softmax {
        x: x.as_ptr(),
        out: SendPtr(out.as_mut_ptr()),
        cols,
        log: false,
        scale: Some(scale),
        _x: std::marker::PhantomData,
    };
    drive(&op, rows, cols);
    Ok(())
}
