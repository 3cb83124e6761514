//! Cross-entropy with torch's semantics on a row-major `rows × classes` matrix of logits:
//! class-index or probability targets, class weights, `ignore_index`, label smoothing; the
//! forward pass, the backward pass from saved log-sum-exps, and both fused in one pass.
//!
//! Per row, with weights v over the classes, loss = Σ v·(lse − x), whose gradient is
//! scale·(A·softmax(x) − v) with A = Σ v. For a class index y and smoothing ε,
//! v = (1 − ε)·w_y·onehot(y) + (ε/C)·w; for probabilities t, v = w·((1 − ε)·t + ε/C).

use super::rows::{drive, fill, write_exp, RowOp, RowV, Scratch};
use super::stats::{self, Stats};
use crate::elem::{Elem, Label};
use crate::error::{check_len, KernelError};
use crate::parallel::{for_blocks, SendPtr, Shared};
use crate::simd::{Float, SimdVec};
use std::ops::Range;

/// What the logits are compared against.
#[derive(Clone, Copy)]
pub enum Target<'a, T, L> {
    /// One class index per row.
    Index(&'a [L]),
    /// A row of class probabilities per row, shaped like the logits.
    Probs(&'a [T]),
}

/// torch's options of `cross_entropy`.
#[derive(Clone, Copy, Debug)]
pub struct CeOptions<'a, F> {
    /// One weight per class.
    pub weight: Option<&'a [F]>,
    /// Class-index targets equal to this are skipped (loss and gradient 0).
    pub ignore_index: i64,
    /// ε in [0, 1]: the target becomes (1 − ε)·target + ε/C.
    pub label_smoothing: f64,
}

impl<F> Default for CeOptions<'_, F> {
    fn default() -> Self {
        CeOptions {
            weight: None,
            ignore_index: -100,
            label_smoothing: 0.0,
        }
    }
}

/// How per-row losses are reduced (for the gradient's scale).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    None,
    Mean,
    Sum,
}

/// The factor of each row's gradient.
#[derive(Clone, Copy, Debug)]
pub enum Scale<'a> {
    Uniform(f64),
    PerRow(&'a [f64]),
}

impl Scale<'_> {
    fn at(&self, r: usize) -> f64 {
        match self {
            Scale::Uniform(s) => *s,
            Scale::PerRow(s) => s[r],
        }
    }
}

/// Σ of the per-row losses (in row order, float64) and the `mean` denominator: the summed
/// weights of the non-ignored targets for class indices, the row count for probabilities.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CeSummary {
    pub total: f64,
    pub denom: f64,
}

impl CeSummary {
    pub fn reduce(&self, reduction: Reduction) -> f64 {
        match reduction {
            Reduction::Mean => self.total / self.denom,
            _ => self.total,
        }
    }
}

/// Where the gradient goes: a separate buffer, or over the logits themselves.
pub enum GradIo<'a, T> {
    Separate { x: &'a [T], grad: &'a mut [T] },
    InPlace(&'a mut [T]),
}

/// Labels per task of the check, a fixed number so the denominator's summation order (and
/// so its value) does not depend on the thread count.
const LABEL_BLOCK: usize = 1 << 15;

/// Checks every class index and returns Σ w_y over the non-ignored ones.
fn check_labels<L: Label, F: Float>(
    labels: &[L],
    classes: usize,
    ignore_index: i64,
    weight: Option<&[F]>,
) -> Result<f64, KernelError> {
    let blocks = labels.len().div_ceil(LABEL_BLOCK);
    let mut partial = vec![Ok(0.0); blocks];
    let shared = Shared::new(&mut partial);
    for_blocks(blocks, LABEL_BLOCK, |range| {
        for b in range {
            let start = b * LABEL_BLOCK;
            let block = &labels[start..labels.len().min(start + LABEL_BLOCK)];
            let r = check_block(block, start, classes, ignore_index, weight);
            // SAFETY: each block is written by the one task that owns it.
            unsafe { shared.set(b, r) };
        }
    });
    // The first error by position, else the partial sums in block order.
    partial.into_iter().sum()
}

fn check_block<L: Label, F: Float>(
    labels: &[L],
    offset: usize,
    classes: usize,
    ignore_index: i64,
    weight: Option<&[F]>,
) -> Result<f64, KernelError> {
    // Without weights the denominator is a count: no chain of float additions.
    let (mut count, mut wsum) = (0usize, [0.0; 4]);
    for (i, &y) in labels.iter().enumerate() {
        let v = y.wide();
        if v == ignore_index as i128 {
            continue;
        }
        if v < 0 || v >= classes as i128 {
            return Err(KernelError::TargetOutOfBounds {
                position: offset + i,
                value: v,
                classes,
                ignore_index,
            });
        }
        count += 1;
        if let Some(w) = weight {
            wsum[i % 4] += w[v as usize].to_f64();
        }
    }
    Ok(match weight {
        None => count as f64,
        Some(_) => (wsum[0] + wsum[2]) + (wsum[1] + wsum[3]),
    })
}

struct Ce<'a, T: Elem, L, const STATS: bool> {
    x: *const T,
    cols: usize,
    target: Target<'a, T, L>,
    weight: Option<&'a [T::F]>,
    /// Σ w (C without weights): the smoothing part of A.
    wsum: f64,
    ignore: i128,
    eps: f64,
    loss: Option<Shared<f64>>,
    lse: Option<Shared<T::F>>,
    grad: Option<(SendPtr<T>, Scale<'a>)>,
    /// Saved log-sum-exps: the backward pass of class-index targets needs no statistics.
    saved_lse: Option<&'a [T::F]>,
}

// SAFETY: `x` and the targets are only read; outputs are written at disjoint rows or
// segments (the `RowOp` contract), through `Shared`/`SendPtr`.
unsafe impl<T: Elem, L: Sync, const S: bool> Sync for Ce<'_, T, L, S> {}

impl<T: Elem, L: Label, const STATS: bool> Ce<'_, T, L, STATS> {
    /// The class of row `r`, `None` when it is ignored (labels were checked already).
    fn class(&self, r: usize) -> Option<usize> {
        match self.target {
            Target::Index(y) => {
                let v = y[r].wide();
                (v != self.ignore).then_some(v as usize)
            }
            Target::Probs(_) => None,
        }
    }

    fn w(&self, c: usize) -> f64 {
        self.weight.map_or(1.0, |w| w[c].to_f64())
    }

    fn smoothing(&self) -> f64 {
        self.eps / self.cols as f64
    }
}

impl<T: Elem, L: Label, const STATS: bool> RowOp<T> for Ce<'_, T, L, STATS> {
    const WRITES: bool = true;
    const STATS: bool = STATS;

    fn row(&self, r: usize) -> *const T {
        self.x.wrapping_add(r * self.cols)
    }

    fn v(&self, r: usize) -> RowV<'_, T> {
        match self.target {
            Target::Index(_) if self.eps == 0.0 => RowV::None,
            Target::Index(_) => self.weight.map_or(RowV::Ones, RowV::W),
            Target::Probs(t) => {
                let t = t.as_ptr().wrapping_add(r * self.cols);
                let (a, b) = (
                    T::F::from_f64(1.0 - self.eps),
                    T::F::from_f64(self.smoothing()),
                );
                match self.weight {
                    Some(w) => RowV::TW { t, w, a, b },
                    None => RowV::T { t, a, b },
                }
            }
        }
    }

    fn plain(&self) -> bool {
        matches!(self.target, Target::Index(_)) && self.eps == 0.0
    }

    #[inline(always)]
    fn done(&self, r: usize, s: &Stats, l: f64) {
        if let Some(lse) = &self.lse {
            // SAFETY: each row is finished exactly once.
            unsafe { lse.set(r, T::F::from_f64(s.m + l)) };
        }
        let Some(loss) = &self.loss else { return };
        let value = match self.target {
            Target::Probs(_) => s.weighted_nll(l),
            Target::Index(_) => match self.class(r) {
                None => 0.0,
                Some(y) => {
                    // SAFETY: y < cols (checked labels), so this reads inside the row.
                    let xy = unsafe { *self.row(r).add(y) }.to_f64();
                    let nll = (1.0 - self.eps) * self.w(y) * ((s.m - xy) + l);
                    if self.eps > 0.0 {
                        nll + self.smoothing() * s.weighted_nll(l)
                    } else {
                        nll
                    }
                }
            },
        };
        // SAFETY: each row is finished exactly once.
        unsafe { loss.set(r, value) };
    }

    #[inline(always)]
    unsafe fn write<V: SimdVec<F = T::F>>(
        &self,
        r: usize,
        range: Range<usize>,
        s: &Stats,
        l: f64,
        sc: &mut Scratch<T::F>,
    ) {
        let Some((g, scale)) = &self.grad else { return };
        let (x, g) = (self.row(r), g.0.wrapping_add(r * self.cols));
        let scale = scale.at(r);
        let (m, l) = match self.saved_lse {
            Some(lse) => (lse[r].to_f64(), 0.0),
            None => (s.m, l),
        };
        let f = T::F::from_f64;
        match self.target {
            Target::Probs(_) => {
                // SAFETY: the row holds `cols` values; this task owns `range` of it.
                unsafe {
                    write_exp::<T, V>(
                        x,
                        g,
                        range,
                        f(m),
                        f(l),
                        f(scale * s.vsum),
                        f(scale),
                        self.v(r),
                        sc,
                    )
                };
            }
            Target::Index(_) => match self.class(r) {
                // SAFETY: as above.
                None => unsafe { fill(g, range, 0.0) },
                Some(y) => {
                    let a = (1.0 - self.eps) * self.w(y) + self.smoothing() * self.wsum;
                    let k2 = scale * self.smoothing();
                    // SAFETY: as above; `y` is inside the row.
                    unsafe {
                        write_exp::<T, V>(
                            x,
                            g,
                            range.clone(),
                            f(m),
                            f(l),
                            f(scale * a),
                            f(k2),
                            self.v(r),
                            sc,
                        );
                        if range.contains(&y) {
                            let gy = g.add(y);
                            let hot = scale * (1.0 - self.eps) * self.w(y);
                            *gy = T::from_f64((*gy).to_f64() - hot);
                        }
                    }
                }
            },
        }
    }
}

struct Checked {
    rows: usize,
    denom: f64,
}

/// Validates sizes and labels; returns the row count and the `mean` denominator.
fn check<T: Elem, L: Label>(
    x_len: usize,
    cols: usize,
    rows: usize,
    target: &Target<'_, T, L>,
    opts: &CeOptions<'_, T::F>,
) -> Result<Checked, KernelError> {
    check_len("input", x_len, rows * cols)?;
    if let Some(w) = opts.weight {
        check_len("weight", w.len(), cols)?;
    }
    if !(0.0..=1.0).contains(&opts.label_smoothing) {
        return Err(KernelError::Shape(format!(
            "label_smoothing must be in [0, 1], got {}",
            opts.label_smoothing
        )));
    }
    let denom = match target {
        Target::Index(y) => {
            check_len("target", y.len(), rows)?;
            check_labels(y, cols, opts.ignore_index, opts.weight)?
        }
        Target::Probs(t) => {
            check_len("target", t.len(), rows * cols)?;
            rows as f64
        }
    };
    Ok(Checked { rows, denom })
}

fn op<'a, T: Elem, L: Label, const STATS: bool>(
    x: *const T,
    cols: usize,
    target: Target<'a, T, L>,
    opts: &CeOptions<'a, T::F>,
) -> Ce<'a, T, L, STATS> {
    Ce {
        x,
        cols,
        target,
        weight: opts.weight,
        wsum: opts
            .weight
            .map_or(cols as f64, |w| w.iter().map(|v| v.to_f64()).sum()),
        ignore: opts.ignore_index as i128,
        eps: opts.label_smoothing,
        loss: None,
        lse: None,
        grad: None,
        saved_lse: None,
    }
}

fn summary(loss: &[f64], denom: f64) -> CeSummary {
    CeSummary {
        total: stats::sum(loss),
        denom,
    }
}

/// Per-row losses into `loss` (float64) and log-sum-exps into `lse`; returns their sum and
/// the `mean` denominator. Rows: `loss.len()`.
pub fn cross_entropy<T: Elem, L: Label>(
    x: &[T],
    cols: usize,
    target: Target<'_, T, L>,
    opts: &CeOptions<'_, T::F>,
    loss: &mut [f64],
    lse: &mut [T::F],
) -> Result<CeSummary, KernelError> {
    let c = check(x.len(), cols, loss.len(), &target, opts)?;
    check_len("lse", lse.len(), c.rows)?;
    let mut ce = op::<T, L, true>(x.as_ptr(), cols, target, opts);
    ce.loss = Some(Shared::new(loss));
    ce.lse = Some(Shared::new(lse));
    drive(&ce, c.rows, cols);
    Ok(summary(loss, c.denom))
}

/// The forward pass and the gradient of the `reduction`-reduced loss (of the sum for
/// `Reduction::None`) in one pass: each row's gradient is written while the row is in cache.
pub fn cross_entropy_with_grad<T: Elem, L: Label>(
    io: GradIo<'_, T>,
    cols: usize,
    target: Target<'_, T, L>,
    opts: &CeOptions<'_, T::F>,
    reduction: Reduction,
    loss: &mut [f64],
    lse: &mut [T::F],
) -> Result<CeSummary, KernelError> {
    let (x, g, len) = match io {
        GradIo::Separate { x, grad } => {
            check_len("gradient buffer", grad.len(), x.len())?;
            (x.as_ptr(), grad.as_mut_ptr(), x.len())
        }
        GradIo::InPlace(x) => (x.as_ptr(), x.as_mut_ptr(), x.len()),
    };
    let c = check(len, cols, loss.len(), &target, opts)?;
    check_len("lse", lse.len(), c.rows)?;
    let scale = match reduction {
        Reduction::Mean => 1.0 / c.denom,
        _ => 1.0,
    };
    let mut ce = op::<T, L, true>(x, cols, target, opts);
    ce.loss = Some(Shared::new(loss));
    ce.lse = Some(Shared::new(lse));
    ce.grad = Some((SendPtr(g), Scale::Uniform(scale)));
    drive(&ce, c.rows, cols);
    Ok(summary(loss, c.denom))
}

/// The gradient with respect to the logits, given each row's factor (`scale`) and the
/// log-sum-exps saved by the forward pass. Rows: `lse.len()`.
pub fn cross_entropy_backward<T: Elem, L: Label>(
    x: &[T],
    cols: usize,
    target: Target<'_, T, L>,
    opts: &CeOptions<'_, T::F>,
    lse: &[T::F],
    scale: Scale<'_>,
    grad: &mut [T],
) -> Result<(), KernelError> {
    let c = check(x.len(), cols, lse.len(), &target, opts)?;
    check_len("gradient buffer", grad.len(), x.len())?;
    if let Scale::PerRow(s) = scale {
        check_len("grad_output", s.len(), c.rows)?;
    }
    let g = SendPtr(grad.as_mut_ptr());
    match target {
        Target::Index(_) => {
            let mut ce = op::<T, L, false>(x.as_ptr(), cols, target, opts);
            ce.grad = Some((g, scale));
            ce.saved_lse = Some(lse);
            drive(&ce, c.rows, cols);
        }
        Target::Probs(_) => {
            // A = Σ v needs the targets' pass anyway, so the statistics are recomputed.
            let mut ce = op::<T, L, true>(x.as_ptr(), cols, target, opts);
            ce.grad = Some((g, scale));
            drive(&ce, c.rows, cols);
        }
    }
    Ok(())
}
