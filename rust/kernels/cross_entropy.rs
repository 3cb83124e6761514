//! Cross-entropy with torch's semantics on a row-major `rows × classes` matrix of logits:
//! class-index or probability targets, class weights, `ignore_index`, label smoothing; the
//! forward pass, the backward pass from saved log-sum-exps, and both fused in one pass.
//!
//! Per row, with weights v over the classes, loss = Σ v·(lse − x), whose gradient is
//! scale·(A·softmax(x) − v) with A = Σ v. For a class index y and smoothing ε,
//! v = (1 − ε)·w_y·onehot(y) + (ε/C)·w; for probabilities t, v = w·((1 − ε)·t + ε/C).

use super::chunk::ScaledSoftmax;
use super::rows::{drive, fill, rows_as_lanes, write_exp, LaneRows, RowOp, RowWeights, Scratch};
use super::stats::{self, Stats};
use crate::elem::{Elem, Label, LabelVisitor, Labels};
use crate::error::{check_len, KernelError};
use crate::parallel::{for_blocks, SendPtr, Shared};
use crate::simd::{Float, SimdVec};
use std::marker::PhantomData;
use std::ops::Range;

/// What the logits are compared against.
#[derive(Clone, Copy)]
pub enum Target<'a, T> {
    /// One class index per row.
    Index(Labels<'a>),
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
    /// s ≥ 0: each row that is not ignored adds s·lse² to its loss (PaLM's z-loss).
    pub lse_square_scale: f64,
}

impl<F> Default for CeOptions<'_, F> {
    fn default() -> Self {
        CeOptions {
            weight: None,
            ignore_index: -100,
            label_smoothing: 0.0,
            lse_square_scale: 0.0,
        }
    }
}

/// The factor of the fused pass's gradient: that of the mean (1 / this call's denominator),
/// or a given one (1 for the sum, and for `reduction="none"`, whose gradient is that of the
/// sum; 1 / a denominator over many calls, when rows come in chunks).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GradScale {
    Mean,
    Factor(f64),
}

/// The per-row results of a pass: losses (float64), log-sum-exps, and optionally whether each
/// row's class holds the row's maximum (the accuracy of a prediction by the maximum).
pub struct RowResults<'a, F> {
    pub loss: &'a mut [f64],
    pub lse: &'a mut [F],
    pub hits: Option<&'a mut [u8]>,
}

impl<'a, F> RowResults<'a, F> {
    pub fn new(loss: &'a mut [f64], lse: &'a mut [F]) -> Self {
        RowResults {
            loss,
            lse,
            hits: None,
        }
    }

    fn check(&self, rows: usize) -> Result<(), KernelError> {
        check_len("lse", self.lse.len(), rows)?;
        if let Some(h) = &self.hits {
            check_len("hits", h.len(), rows)?;
        }
        Ok(())
    }

    fn outputs<'o, T: Elem<F = F>>(&mut self, grad: Option<GradOut<'o, T>>) -> Outputs<'o, T> {
        Outputs::Rows {
            loss: Shared::new(self.loss),
            lse: Shared::new(self.lse),
            hits: self.hits.as_deref_mut().map(Shared::new),
            grad,
        }
    }
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

/// Where the gradient goes: a separate buffer, or over the logits themselves.
pub enum GradIo<'a, T> {
    Separate { x: &'a [T], grad: &'a mut [T] },
    InPlace(&'a mut [T]),
}

/// Labels per task of the check, a fixed number so the denominator's summation order (and
/// so its value) does not depend on the thread count.
const LABEL_BLOCK: usize = 1 << 15;

/// Checks every class index and returns Σ w_y over the non-ignored ones.
fn check_labels<F: Float>(
    labels: Labels<'_>,
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
            let block = start..labels.len().min(start + LABEL_BLOCK);
            let check = LabelCheck {
                offset: start,
                classes,
                ignore_index,
                weight,
            };
            // SAFETY: each block is written by the one task that owns it.
            unsafe { shared.set(b, labels.visit(block, check)) };
        }
    });
    // The first error by position, else the partial sums in block order.
    partial.into_iter().sum()
}

/// The check of one block of labels starting at `offset`: Σ w_y over the non-ignored ones.
struct LabelCheck<'a, F> {
    offset: usize,
    classes: usize,
    ignore_index: i64,
    weight: Option<&'a [F]>,
}

impl<F: Float> LabelCheck<'_, F> {
    fn out_of_range(&self, i: usize, value: i128) -> KernelError {
        KernelError::TargetOutOfBounds {
            position: self.offset + i,
            value,
            classes: self.classes,
            ignore_index: self.ignore_index,
        }
    }
}

impl<F: Float> LabelVisitor<Result<f64, KernelError>> for LabelCheck<'_, F> {
    fn visit<L: Label>(self, labels: &[L]) -> Result<f64, KernelError> {
        let (ignore, classes) = (self.ignore_index as i128, self.classes as i128);
        let bad = |v: i128| (v != ignore) & ((v < 0) | (v >= classes));
        if let Some(w) = self.weight {
            let mut wsum = [0.0; 4];
            for (i, &y) in labels.iter().enumerate() {
                let v: i128 = y.into();
                if bad(v) {
                    return Err(self.out_of_range(i, v));
                }
                if v != ignore {
                    wsum[i % 4] += w[v as usize].to_f64();
                }
            }
            return Ok((wsum[0] + wsum[2]) + (wsum[1] + wsum[3]));
        }
        // Without weights the denominator is a count, taken without a branch per label (the
        // common case: every label valid); only a block that holds a bad label is searched
        // again, for the first.
        let (mut ignored, mut any_bad) = (0usize, false);
        for &y in labels {
            let v: i128 = y.into();
            ignored += (v == ignore) as usize;
            any_bad |= bad(v);
        }
        if any_bad {
            for (i, &y) in labels.iter().enumerate() {
                let v: i128 = y.into();
                if bad(v) {
                    return Err(self.out_of_range(i, v));
                }
            }
        }
        Ok((labels.len() - ignored) as f64)
    }
}

/// Checks `labels` against `classes` (the Python layer's `check_labels`, for losses computed
/// outside the kernels); returns the `mean` denominator Σ w_y over the non-ignored labels.
pub fn check_class_indices<F: Float>(
    labels: Labels<'_>,
    classes: usize,
    ignore_index: i64,
    weight: Option<&[F]>,
) -> Result<f64, KernelError> {
    if let Some(w) = weight {
        check_len("weight", w.len(), classes)?;
    }
    check_labels(labels, classes, ignore_index, weight)
}

/// Where a gradient goes, how each row's is scaled, and the log-sum-exps the forward pass
/// saved (class indices: the backward pass then needs no statistics).
struct GradOut<'a, T: Elem> {
    ptr: SendPtr<T>,
    scale: Scale<'a>,
    saved_lse: Option<&'a [T::F]>,
}

impl<T: Elem> Clone for GradOut<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: Elem> Copy for GradOut<'_, T> {}

/// What a pass over the rows produces.
enum Outputs<'a, T: Elem> {
    /// Per-row losses and log-sum-exps, and the gradient too when fused; optionally whether
    /// each row's class holds the row's maximum (1) or not (0; ignored rows and
    /// probabilities 0).
    Rows {
        loss: Shared<f64>,
        lse: Shared<T::F>,
        hits: Option<Shared<u8>>,
        grad: Option<GradOut<'a, T>>,
    },
    /// The gradient alone (the backward pass).
    Grad(GradOut<'a, T>),
}

/// The kernel of every pass. Not generic over the labels' integer type: a kernel compiled
/// per type (eight of them) multiplied the code built for every tier, and the one branch on
/// the width per row costs nothing beside a row's values. Only rows of few classes, where it
/// would, run on a view compiled per type ([`TypedLabels`]).
struct Ce<'a, T: Elem, const STATS: bool> {
    x: *const T,
    cols: usize,
    target: Target<'a, T>,
    weight: Option<&'a [T::F]>,
    ignore: i128,
    eps: f64,
    /// ε/C: the weight label smoothing puts on every class (worked out once: a division per
    /// row was measurable on rows of few classes).
    smoothing: f64,
    /// (ε/C)·Σ w: the smoothing part of A.
    smoothing_total: f64,
    /// The z-loss's s: its row adds s·lse², its gradient 2·s·lse·softmax.
    z: f64,
    out: Outputs<'a, T>,
}

// SAFETY: `x` and the targets are only read; outputs are written at disjoint rows or
// segments (the `RowOp` contract), through `Shared`/`SendPtr`.
unsafe impl<T: Elem, const S: bool> Sync for Ce<'_, T, S> {}

impl<'a, T: Elem, const STATS: bool> Ce<'a, T, STATS> {
    fn new(
        x: *const T,
        cols: usize,
        target: Target<'a, T>,
        opts: &CeOptions<'a, T::F>,
        out: Outputs<'a, T>,
    ) -> Self {
        let eps = opts.label_smoothing;
        let smoothing = if cols == 0 { 0.0 } else { eps / cols as f64 };
        let wsum = opts
            .weight
            .map_or(cols as f64, |w| w.iter().map(|v| v.to_f64()).sum());
        Ce {
            x,
            cols,
            target,
            weight: opts.weight,
            ignore: opts.ignore_index as i128,
            eps,
            smoothing,
            smoothing_total: smoothing * wsum,
            z: opts.lse_square_scale,
            out,
        }
    }

    /// The class of row `r`, `None` when it is ignored (labels were checked already).
    fn class(&self, r: usize) -> Option<usize> {
        match self.target {
            Target::Index(y) => self.class_of(y.get(r)),
            Target::Probs(_) => None,
        }
    }

    /// The class of label `v`, `None` when it is ignored.
    #[inline(always)]
    fn class_of(&self, v: i128) -> Option<usize> {
        (v != self.ignore).then_some(v as usize)
    }

    fn class_weight(&self, c: usize) -> f64 {
        self.weight.map_or(1.0, |w| w[c].to_f64())
    }

    /// A = Σ v of a row whose class is `y`: (1 − ε)·w_y + (ε/C)·Σ w.
    #[inline(always)]
    fn total_weight(&self, y: usize) -> f64 {
        (1.0 - self.eps) * self.class_weight(y) + self.smoothing_total
    }

    fn grad(&self) -> Option<GradOut<'a, T>> {
        match self.out {
            Outputs::Rows { grad, .. } => grad,
            Outputs::Grad(grad) => Some(grad),
        }
    }
}

impl<T: Elem, const STATS: bool> RowOp<T> for Ce<'_, T, STATS> {
    const WRITES: bool = true;
    const STATS: bool = STATS;

    fn row(&self, r: usize) -> *const T {
        self.x.wrapping_add(r * self.cols)
    }

    fn weights(&self, r: usize) -> RowWeights<'_, T> {
        match self.target {
            Target::Index(_) if self.eps == 0.0 => RowWeights::None,
            Target::Index(_) => self.weight.map_or(RowWeights::Ones, RowWeights::Class),
            Target::Probs(t) => {
                let t = t.as_ptr().wrapping_add(r * self.cols);
                let (a, b) = (
                    T::F::from_f64(1.0 - self.eps),
                    T::F::from_f64(self.smoothing),
                );
                match self.weight {
                    Some(w) => RowWeights::SoftClass { t, w, a, b },
                    None => RowWeights::Soft { t, a, b },
                }
            }
        }
    }

    fn plain(&self) -> bool {
        matches!(self.target, Target::Index(_)) && self.eps == 0.0
    }

    #[inline(always)]
    fn done(&self, r: usize, s: &Stats, excess: f64) {
        let Outputs::Rows {
            loss, lse, hits, ..
        } = &self.out
        else {
            return;
        };
        let lse_r = s.m + excess;
        // SAFETY: each row is finished exactly once.
        unsafe { lse.set(r, T::F::from_f64(lse_r)) };
        let mut hit = false;
        let value = match self.target {
            Target::Probs(_) => s.weighted_nll(excess),
            Target::Index(_) => match self.class(r) {
                None => 0.0,
                Some(y) => {
                    // SAFETY: y < cols (checked labels), so this reads inside the row.
                    let xy = unsafe { *self.row(r).add(y) }.to_f64();
                    hit = xy == s.m;
                    let nll = (1.0 - self.eps) * self.class_weight(y) * ((s.m - xy) + excess);
                    let value = if self.eps > 0.0 {
                        nll + self.smoothing * s.weighted_nll(excess)
                    } else {
                        nll
                    };
                    // Rows of total weight 0 contribute nothing, also when all −inf (0·NaN);
                    // tested only off the common path, where the value is not finite.
                    if !value.is_finite() && !poisoned(s.m, excess) && self.total_weight(y) == 0.0 {
                        0.0
                    } else {
                        value
                    }
                }
            },
        };
        let ignored = matches!(self.target, Target::Index(_)) && self.class(r).is_none();
        let value = if self.z > 0.0 && !ignored {
            value + self.z * lse_r * lse_r
        } else {
            value
        };
        // A row holding +inf or NaN is NaN (its value can come out ±inf otherwise).
        let value = if !value.is_finite() && poisoned(s.m, excess) {
            f64::NAN
        } else {
            value
        };
        if let Some(hits) = hits {
            let hit = hit && !poisoned(s.m, excess);
            // SAFETY: each row is finished exactly once.
            unsafe { hits.set(r, hit as u8) };
        }
        // SAFETY: each row is finished exactly once.
        unsafe { loss.set(r, value) };
    }

    #[inline(always)]
    fn writes(&self) -> bool {
        self.grad().is_some()
    }

    #[inline(always)]
    unsafe fn lanes<V: SimdVec<F = T::F>>(
        &self,
        cols: usize,
        units: Range<usize>,
        scratch: &mut Scratch<T::F>,
    ) -> usize {
        match self.target {
            Target::Index(y) => {
                let lanes = TypedLanes::<T, V, STATS> {
                    ce: self,
                    cols,
                    units,
                    scratch,
                    _v: PhantomData,
                };
                y.visit(0..y.len(), lanes)
            }
            // Probabilities never take this path (not `plain`): every row is left to the
            // row-at-a-time loop.
            Target::Probs(_) => units.start,
        }
    }

    #[inline(always)]
    unsafe fn write<V: SimdVec<F = T::F>>(
        &self,
        r: usize,
        range: Range<usize>,
        s: &Stats,
        excess: f64,
        scratch: &mut Scratch<T::F>,
    ) {
        // SAFETY: the caller's contract.
        unsafe { self.write_for::<V>(r, range, s, excess, self.class(r), scratch) }
    }
}

impl<T: Elem, const STATS: bool> Ce<'_, T, STATS> {
    /// [`RowOp::write`] for row `r` of class `class` (`None`: ignored, or probabilities).
    ///
    /// # Safety
    /// As [`RowOp::write`].
    #[inline(always)]
    unsafe fn write_for<V: SimdVec<F = T::F>>(
        &self,
        r: usize,
        range: Range<usize>,
        s: &Stats,
        excess: f64,
        class: Option<usize>,
        scratch: &mut Scratch<T::F>,
    ) {
        let Some(grad) = self.grad() else {
            return;
        };
        let (x, g) = (self.row(r), grad.ptr.0.wrapping_add(r * self.cols));
        let scale = grad.scale.at(r);
        let (m, excess) = match grad.saved_lse {
            Some(lse) => (lse[r].to_f64(), 0.0),
            None => (s.m, excess),
        };
        let ignored = class.is_none() && matches!(self.target, Target::Index(_));
        if ignored || poisoned(m, excess) {
            let value = if ignored { 0.0 } else { f64::NAN };
            // SAFETY: the row holds `cols` values; this task owns `range` of it.
            unsafe { fill(g, range, value) };
            return;
        }
        // The gradient is scale·(A·softmax(x) − v), with A = Σ v: for a class index y,
        // v = (1 − ε)·w_y·onehot(y) + (ε/C)·w; for probabilities, v = w·((1 − ε)·t + ε/C).
        let (a, v_scale, hot) = match class {
            Some(y) => {
                let wy = (1.0 - self.eps) * self.class_weight(y);
                (
                    wy + self.smoothing_total,
                    scale * self.smoothing,
                    Some((y, scale * wy)),
                )
            }
            None => (s.vsum, scale, None),
        };
        // The z-loss s·lse² adds 2·s·lse·softmax: to A.
        let a = if self.z > 0.0 {
            a + 2.0 * self.z * (m + excess)
        } else {
            a
        };
        // A row of total weight A = 0 contributes nothing: its softmax term is 0, also where
        // the softmax is undefined (all −inf), so the reference moves to +inf, where every
        // e^(x − m) is 0.
        let zero = a == 0.0;
        let f = ScaledSoftmax {
            m: T::F::from_f64(if zero { f64::INFINITY } else { m }),
            excess: T::F::from_f64(if zero { 0.0 } else { excess }),
            p_scale: T::F::from_f64(scale * a),
            v_scale: T::F::from_f64(v_scale),
        };
        // SAFETY: as above; a class `y` is inside the row.
        unsafe {
            write_exp::<T, V>(x, g, range.clone(), f, self.weights(r), scratch);
            if let Some((y, hot)) = hot {
                if range.contains(&y) {
                    let gy = g.add(y);
                    *gy = T::from_f64((*gy).to_f64() - hot);
                }
            }
        }
    }
}

/// [`Ce`]'s rows of few classes run on [`TypedLabels`]: the labels' type chosen once per
/// call ([`Labels::visit`]).
struct TypedLanes<'c, 'a, T: Elem, V, const STATS: bool> {
    ce: &'c Ce<'a, T, STATS>,
    cols: usize,
    units: Range<usize>,
    scratch: &'c mut Scratch<T::F>,
    _v: PhantomData<V>,
}

impl<T: Elem, V: SimdVec<F = T::F>, const STATS: bool> LabelVisitor<usize>
    for TypedLanes<'_, '_, T, V, STATS>
{
    #[inline(always)]
    fn visit<L: Label>(self, labels: &[L]) -> usize {
        let typed = TypedLabels {
            ce: self.ce,
            labels,
        };
        // SAFETY: `Ce::lanes`' contract, which reached here: rows `units` hold `cols` values.
        unsafe { rows_as_lanes::<T, _, V>(&typed, self.cols, self.units, self.scratch) }
    }
}

/// [`Ce`] with its labels of one integer type `L`, for rows of few classes: per row of ten
/// classes a branch on the labels' width was a measurable share of the work. Everything but
/// reading a label is `Ce`'s.
struct TypedLabels<'c, 'a, T: Elem, L, const STATS: bool> {
    ce: &'c Ce<'a, T, STATS>,
    labels: &'c [L],
}

impl<T: Elem, L: Label, const STATS: bool> RowOp<T> for TypedLabels<'_, '_, T, L, STATS> {
    const WRITES: bool = true;
    const STATS: bool = STATS;

    fn row(&self, r: usize) -> *const T {
        self.ce.row(r)
    }

    fn weights(&self, r: usize) -> RowWeights<'_, T> {
        self.ce.weights(r)
    }

    fn plain(&self) -> bool {
        self.ce.plain()
    }

    #[inline(always)]
    fn done(&self, r: usize, s: &Stats, excess: f64) {
        self.ce.done(r, s, excess)
    }

    #[inline(always)]
    fn writes(&self) -> bool {
        self.ce.writes()
    }

    /// Class indices without weights, smoothing or z-loss, the common case of rows of few
    /// classes: [`RowOp::done`]'s arithmetic on that path, with the per-row branches and the
    /// per-row `Stats` left out (they took most of the time of rows of ten classes).
    // Its end repeats `Ce::done`'s on purpose: one shared `#[inline(always)]` helper for both,
    // or `Ce::done` reading its row's class once, each built to 2% more instructions on (65536,
    // 10) float32 forward passes (callgrind, AVX2 tier), the few-class path's whole cost.
    #[inline(always)]
    fn done_lanes(&self, r: usize, lanes: &LaneRows<T::F>) {
        let ce = self.ce;
        let plain = ce.eps == 0.0 && ce.weight.is_none() && ce.z == 0.0;
        let (
            Outputs::Rows {
                loss, lse, hits, ..
            },
            true,
        ) = (&ce.out, plain)
        else {
            return lanes.each_done(self, r);
        };
        let mut row = ce.row(r);
        for (l, &label) in self.labels[r..r + lanes.n].iter().enumerate() {
            let (m, excess) = (lanes.m[l].to_f64(), lanes.excess[l]);
            // SAFETY: each row is finished exactly once.
            unsafe { lse.set(r + l, T::F::from_f64(m + excess)) };
            let at = row;
            row = row.wrapping_add(ce.cols);
            let (value, hit) = match ce.class_of(label.into()) {
                None => (0.0, false),
                Some(y) => {
                    // SAFETY: the labels were checked, so y < cols: inside row r + l.
                    let xy = unsafe { *at.add(y) }.to_f64();
                    ((m - xy) + excess, xy == m)
                }
            };
            let bad = poisoned(m, excess);
            let value = if !value.is_finite() && bad {
                f64::NAN
            } else {
                value
            };
            if let Some(hits) = hits {
                // SAFETY: as above.
                unsafe { hits.set(r + l, (hit && !bad) as u8) };
            }
            // SAFETY: as above.
            unsafe { loss.set(r + l, value) };
        }
    }

    #[inline(always)]
    unsafe fn write<V: SimdVec<F = T::F>>(
        &self,
        r: usize,
        range: Range<usize>,
        s: &Stats,
        excess: f64,
        scratch: &mut Scratch<T::F>,
    ) {
        let class = self.ce.class_of(self.labels[r].into());
        // SAFETY: the caller's contract.
        unsafe { self.ce.write_for::<V>(r, range, s, excess, class, scratch) }
    }
}

/// A row holding +inf or NaN, from its statistics (or its saved log-sum-exp): its loss and
/// gradient are NaN, on both backends (torch gives NaN losses and gradients there too).
fn poisoned(m: f64, excess: f64) -> bool {
    m == f64::INFINITY || m.is_nan() || excess.is_nan()
}

struct Checked {
    rows: usize,
    denom: f64,
}

/// Validates sizes and labels; returns the row count and the `mean` denominator.
fn check<T: Elem>(
    x_len: usize,
    cols: usize,
    rows: usize,
    target: &Target<'_, T>,
    opts: &CeOptions<'_, T::F>,
) -> Result<Checked, KernelError> {
    check_len("input", x_len, rows * cols)?;
    if let Some(w) = opts.weight {
        check_len("weight", w.len(), cols)?;
    }
    if !(opts.lse_square_scale >= 0.0 && opts.lse_square_scale.is_finite()) {
        return Err(KernelError::Shape(format!(
            "lse_square_scale must be a finite number ≥ 0, got {}",
            opts.lse_square_scale
        )));
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
            check_labels(*y, cols, opts.ignore_index, opts.weight)?
        }
        Target::Probs(t) => {
            check_len("target", t.len(), rows * cols)?;
            rows as f64
        }
    };
    Ok(Checked { rows, denom })
}

/// Runs the kernel over `rows` rows.
fn run<'a, T: Elem, const STATS: bool>(
    x: *const T,
    cols: usize,
    target: Target<'a, T>,
    opts: &CeOptions<'a, T::F>,
    out: Outputs<'a, T>,
    rows: usize,
) {
    drive(&Ce::<T, STATS>::new(x, cols, target, opts, out), rows, cols);
}

fn summary(loss: &[f64], denom: f64) -> CeSummary {
    CeSummary {
        total: stats::sum(loss),
        denom,
    }
}

/// Per-row losses and log-sum-exps into `out`; returns the losses' sum and the `mean`
/// denominator. Rows: `out.loss.len()`.
pub fn cross_entropy<T: Elem>(
    x: &[T],
    cols: usize,
    target: Target<'_, T>,
    opts: &CeOptions<'_, T::F>,
    mut out: RowResults<'_, T::F>,
) -> Result<CeSummary, KernelError> {
    let c = check(x.len(), cols, out.loss.len(), &target, opts)?;
    out.check(c.rows)?;
    run::<T, true>(x.as_ptr(), cols, target, opts, out.outputs(None), c.rows);
    Ok(summary(out.loss, c.denom))
}

/// The forward pass and the gradient of the loss (of the sum of the per-row losses, times
/// `scale`) in one pass: each row's gradient is written while the row is in cache.
pub fn cross_entropy_with_grad<T: Elem>(
    io: GradIo<'_, T>,
    cols: usize,
    target: Target<'_, T>,
    opts: &CeOptions<'_, T::F>,
    scale: GradScale,
    mut out: RowResults<'_, T::F>,
) -> Result<CeSummary, KernelError> {
    let (x, g, len) = match io {
        GradIo::Separate { x, grad } => {
            check_len("gradient buffer", grad.len(), x.len())?;
            (x.as_ptr(), grad.as_mut_ptr(), x.len())
        }
        GradIo::InPlace(x) => (x.as_ptr(), x.as_mut_ptr(), x.len()),
    };
    let c = check(len, cols, out.loss.len(), &target, opts)?;
    out.check(c.rows)?;
    let factor = match scale {
        GradScale::Mean => 1.0 / c.denom,
        GradScale::Factor(f) => f,
    };
    let grad = GradOut {
        ptr: SendPtr(g),
        scale: Scale::Uniform(factor),
        saved_lse: None,
    };
    run::<T, true>(x, cols, target, opts, out.outputs(Some(grad)), c.rows);
    Ok(summary(out.loss, c.denom))
}

/// The gradient with respect to the logits, given each row's factor (`scale`) and the
/// log-sum-exps saved by the forward pass. Rows: `lse.len()`.
pub fn cross_entropy_backward<T: Elem>(
    x: &[T],
    cols: usize,
    target: Target<'_, T>,
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
    let ptr = SendPtr(grad.as_mut_ptr());
    match target {
        Target::Index(_) => {
            let out = Outputs::Grad(GradOut {
                ptr,
                scale,
                saved_lse: Some(lse),
            });
            run::<T, false>(x.as_ptr(), cols, target, opts, out, c.rows);
        }
        Target::Probs(_) => {
            // A = Σ v needs the targets' pass anyway, so the statistics are recomputed.
            let out = Outputs::Grad(GradOut {
                ptr,
                scale,
                saved_lse: None,
            });
            run::<T, true>(x.as_ptr(), cols, target, opts, out, c.rows);
        }
    }
    Ok(())
}
