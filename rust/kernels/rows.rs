//! Row-wise driving of the chunk loops: storage conversion, splitting long rows into segments
//! when there are few rows, and cutting the rows into tasks for `crate::parallel`. Every
//! row-wise operation (log-sum-exp, softmax, cross-entropy forward, fused gradient) is a
//! [`RowOp`] run by [`drive`].

use super::chunk::{self, ClassWeights, NoWeights, Ones, ScaledSoftmax, Soft, SoftClass};
use super::columns::{excess_lanes, sum_split};
use super::stats::Stats;
use crate::elem::{Buf, Elem, CHUNK};
use crate::parallel::{for_blocks, Shared};
use crate::simd::{self, Ahead, Float, Kernel, SimdVec};
use std::marker::PhantomData;
use std::ops::Range;

/// Rows fewer than this, of at least two segments' length, are split into segments so that
/// every thread gets work. Fixed numbers, not the thread count, decide the split, so results
/// never depend on the thread count.
pub const SPLIT_ROWS: usize = 32;
pub const SEG_LEN: usize = 16 * CHUNK;
/// Rows at most this long, with no weighted sum, are reduced a vector of rows at a time
/// (lanes are rows, transposed into a buffer): a row-at-a-time loop would spend its time on
/// per-row overhead, not arithmetic.
pub const FEW_CLASSES: usize = 32;

/// Segments per row for a `rows × cols` problem.
pub fn segments(rows: usize, cols: usize) -> usize {
    if rows < SPLIT_ROWS && cols >= 2 * SEG_LEN {
        cols.div_ceil(SEG_LEN)
    } else {
        1
    }
}

fn seg_range(cols: usize, nseg: usize, s: usize) -> Range<usize> {
    if nseg == 1 {
        0..cols
    } else {
        s * SEG_LEN..((s + 1) * SEG_LEN).min(cols)
    }
}

/// Per-task scratch chunks for storage types that are converted (float16, bfloat16).
pub struct Scratch<F> {
    x: Buf<F>,
    t: Buf<F>,
    o: Buf<F>,
}

impl<F: Float> Scratch<F> {
    fn new() -> Box<Self> {
        Box::new(Scratch {
            x: [F::ZERO; CHUNK],
            t: [F::ZERO; CHUNK],
            o: [F::ZERO; CHUNK],
        })
    }
}

/// The weights v of a row's weighted sum: none, ones, class weights, soft targets (mixed as
/// a·t + b), or both.
#[derive(Clone, Copy)]
pub enum RowWeights<'a, T: Elem> {
    None,
    Ones,
    Class(&'a [T::F]),
    Soft {
        t: *const T,
        a: T::F,
        b: T::F,
    },
    SoftClass {
        t: *const T,
        w: &'a [T::F],
        a: T::F,
        b: T::F,
    },
}

/// Statistics of `x[range]` (one row starting at `x`).
///
/// # Safety
/// `x` and any target pointer in `v` must be readable over `range`; weights cover `range`.
#[inline(always)]
pub unsafe fn segment_stats<T: Elem, V: SimdVec<F = T::F>>(
    x: *const T,
    range: Range<usize>,
    v: RowWeights<'_, T>,
    scratch: &mut Scratch<T::F>,
) -> Stats {
    let mut s = Stats::EMPTY;
    let mut c0 = range.start;
    while c0 < range.end {
        let n = CHUNK.min(range.end - c0);
        // Whatever follows this chunk in memory (the row's next chunk, or the next row) is
        // what this task most likely reads next.
        let ahead = Ahead::at(x.wrapping_add(c0 + n));
        let floor = T::F::from_f64(s.m);
        // SAFETY: `c0..c0 + n` lies inside `range`, readable by the caller's contract; the
        // same holds for targets and weights.
        let cs = unsafe {
            let xp = T::read(x.add(c0), n, &mut scratch.x);
            match v {
                RowWeights::None => chunk::stats::<V, _>(xp, n, NoWeights, ahead, floor),
                RowWeights::Ones => chunk::stats::<V, _>(xp, n, Ones, ahead, floor),
                RowWeights::Class(w) => {
                    chunk::stats::<V, _>(xp, n, ClassWeights(w.as_ptr().add(c0)), ahead, floor)
                }
                RowWeights::Soft { t, a, b } => {
                    let t = T::read(t.add(c0), n, &mut scratch.t);
                    chunk::stats::<V, _>(xp, n, Soft { t, a, b }, ahead, floor)
                }
                RowWeights::SoftClass { t, w, a, b } => {
                    let t = T::read(t.add(c0), n, &mut scratch.t);
                    let w = w.as_ptr().add(c0);
                    chunk::stats::<V, _>(xp, n, SoftClass { t, w, a, b }, ahead, floor)
                }
            }
        };
        s = if c0 == range.start { cs } else { s.merge(cs) };
        c0 += n;
    }
    s
}

/// out[range] = `f` over one row's segment, with the row's weights; `out` may equal `x`.
///
/// # Safety
/// `x` readable and `out` writable over `range`; `weights` as in [`segment_stats`].
#[inline(always)]
pub unsafe fn write_exp<T: Elem, V: SimdVec<F = T::F>>(
    x: *const T,
    out: *mut T,
    range: Range<usize>,
    f: ScaledSoftmax<T::F>,
    weights: RowWeights<'_, T>,
    scratch: &mut Scratch<T::F>,
) {
    let mut c0 = range.start;
    while c0 < range.end {
        let n = CHUNK.min(range.end - c0);
        // SAFETY: `c0..c0 + n` lies inside `range` (the caller's contract).
        unsafe {
            let xp = T::read(x.add(c0), n, &mut scratch.x);
            let op = T::target(out.add(c0), &mut scratch.o);
            match weights {
                RowWeights::None => chunk::write_exp::<V, _>(xp, op, n, f, NoWeights),
                RowWeights::Ones => chunk::write_exp::<V, _>(xp, op, n, f, Ones),
                RowWeights::Class(w) => {
                    let w = ClassWeights(w.as_ptr().add(c0));
                    chunk::write_exp::<V, _>(xp, op, n, f, w)
                }
                RowWeights::Soft { t, a, b } => {
                    let t = T::read(t.add(c0), n, &mut scratch.t);
                    chunk::write_exp::<V, _>(xp, op, n, f, Soft { t, a, b })
                }
                RowWeights::SoftClass { t, w, a, b } => {
                    let t = T::read(t.add(c0), n, &mut scratch.t);
                    let w = w.as_ptr().add(c0);
                    chunk::write_exp::<V, _>(xp, op, n, f, SoftClass { t, w, a, b })
                }
            }
            T::commit(out.add(c0), n, &scratch.o);
        }
        c0 += n;
    }
}

/// out[range] = (x − m) − excess; `out` may equal `x`.
///
/// # Safety
/// `x` readable and `out` writable over `range`.
#[inline(always)]
pub unsafe fn write_log<T: Elem, V: SimdVec<F = T::F>>(
    x: *const T,
    out: *mut T,
    range: Range<usize>,
    m: T::F,
    excess: T::F,
    scratch: &mut Scratch<T::F>,
) {
    let mut c0 = range.start;
    while c0 < range.end {
        let n = CHUNK.min(range.end - c0);
        // SAFETY: `c0..c0 + n` lies inside `range` (the caller's contract).
        unsafe {
            let xp = T::read(x.add(c0), n, &mut scratch.x);
            let op = T::target(out.add(c0), &mut scratch.o);
            chunk::write_log::<V>(xp, op, n, m, excess);
            T::commit(out.add(c0), n, &scratch.o);
        }
        c0 += n;
    }
}

/// out[range] = value.
///
/// # Safety
/// `out` writable over `range`.
pub unsafe fn fill<T: Elem>(out: *mut T, range: Range<usize>, value: f64) {
    let v = T::from_f64(value);
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts_mut(out.add(range.start), range.len()) }.fill(v);
}

/// A row-wise operation: statistics per row, then per-row results and optionally a write
/// pass over the row.
pub trait RowOp<T: Elem>: Sync {
    /// Whether [`RowOp::write`] writes anything (then it runs while the row is in cache).
    const WRITES: bool;
    /// Whether rows need statistics at all (a backward pass from saved log-sum-exps doesn't).
    const STATS: bool = true;
    /// Row `r` of the input.
    fn row(&self, r: usize) -> *const T;
    /// The weights of row `r`'s weighted sum.
    fn weights(&self, r: usize) -> RowWeights<'_, T>;
    /// True when [`RowOp::weights`] is `RowWeights::None` for every row.
    fn plain(&self) -> bool;
    /// Records per-row results from the row's complete statistics; `excess` is
    /// `s.excess()`, computed once per row by the driver (a logarithm per row is much of the
    /// cost of short rows).
    fn done(&self, r: usize, s: &Stats, excess: f64);
    /// [`RowOp::done`] for the rows of a vector of lanes (rows of few classes): an operation
    /// may finish them together, without a `Stats` per row.
    #[inline(always)]
    fn done_lanes(&self, r: usize, lanes: &LaneRows<T::F>) {
        lanes.each_done(self, r);
    }
    /// Rows `units` of few classes a vector of rows at a time ([`rows_as_lanes`]); returns
    /// the first row left for the row-at-a-time loop. An operation may run it on a view of
    /// itself compiled for its data (cross-entropy: for its labels' integer type).
    ///
    /// # Safety
    /// As [`rows_as_lanes`].
    #[inline(always)]
    unsafe fn lanes<V: SimdVec<F = T::F>>(
        &self,
        cols: usize,
        units: Range<usize>,
        scratch: &mut Scratch<T::F>,
    ) -> usize
    where
        Self: Sized,
    {
        // SAFETY: the caller's contract.
        unsafe { rows_as_lanes::<T, Self, V>(self, cols, units, scratch) }
    }
    /// Whether this run writes anything (with [`RowOp::WRITES`], an operation that may or
    /// may not have an output to write says which at run time).
    #[inline(always)]
    fn writes(&self) -> bool {
        Self::WRITES
    }
    /// Writes row `r`'s outputs over `range` (the whole row, or one segment). Implementations
    /// must be `#[inline(always)]`, so that the vector code lands in the caller's
    /// `#[target_feature]` instantiation instead of a call per intrinsic.
    ///
    /// # Safety
    /// Each `(r, range)` is written by one task only.
    unsafe fn write<V: SimdVec<F = T::F>>(
        &self,
        r: usize,
        range: Range<usize>,
        s: &Stats,
        excess: f64,
        scratch: &mut Scratch<T::F>,
    );
}

/// The statistics of up to 16 rows of few classes reduced side by side, lane l being row
/// r + l: the maximum, how many values equal it, the sum of e^(x − m) over the others, and
/// lse − m.
pub struct LaneRows<F> {
    pub n: usize,
    pub m: [F; 16],
    pub cnt: [F; 16],
    pub rest: [F; 16],
    pub excess: [f64; 16],
}

impl<F: Float> LaneRows<F> {
    /// Lane `l`'s statistics.
    #[inline(always)]
    pub fn stats(&self, l: usize) -> Stats {
        let m = self.m[l].to_f64();
        Stats {
            m,
            cnt: self.cnt[l].to_f64(),
            rest: self.rest[l].to_f64(),
            shift: Stats::shift_for(m),
            dot: 0.0,
            vsum: 0.0,
        }
    }

    /// [`RowOp::done`] row by row: the default of [`RowOp::done_lanes`].
    #[inline(always)]
    pub fn each_done<T: Elem<F = F>, O: RowOp<T> + ?Sized>(&self, op: &O, r: usize) {
        for l in 0..self.n {
            op.done(r + l, &self.stats(l), self.excess[l]);
        }
    }
}

enum Phase<'a> {
    /// Whole rows: statistics, results and the write pass while the row is hot.
    Rows,
    /// Segment statistics into a buffer of `rows × nseg`.
    SegStats(&'a Shared<Stats>),
    /// The write pass per segment, from merged row statistics and their excess.
    SegWrite(&'a [(Stats, f64)]),
}

struct Pass<'a, T: Elem, O: RowOp<T>> {
    op: &'a O,
    cols: usize,
    nseg: usize,
    units: Range<usize>,
    phase: &'a Phase<'a>,
    _t: PhantomData<T>,
}

impl<T: Elem, O: RowOp<T>> Kernel for Pass<'_, T, O> {
    type F = T::F;
    type Out = ();
    #[inline(always)]
    fn run<V: SimdVec<F = T::F>>(self) {
        let mut scratch = Scratch::<T::F>::new();
        let (op, cols, nseg) = (self.op, self.cols, self.nseg);
        for u in self.units.clone() {
            let (r, seg) = (u / nseg, u % nseg);
            let range = seg_range(cols, nseg, seg);
            // SAFETY: rows hold `cols` values and targets/weights match (checked by the
            // public entry points); each unit belongs to exactly one task.
            unsafe {
                match self.phase {
                    Phase::Rows => {
                        let (s, excess) = if O::STATS {
                            let s = segment_stats::<T, V>(
                                op.row(r),
                                range.clone(),
                                op.weights(r),
                                &mut scratch,
                            );
                            (s, s.excess())
                        } else {
                            (Stats::EMPTY, 0.0)
                        };
                        op.done(r, &s, excess);
                        if O::WRITES {
                            op.write::<V>(r, range, &s, excess, &mut scratch);
                        }
                    }
                    Phase::SegStats(out) => out.set(
                        u,
                        segment_stats::<T, V>(op.row(r), range, op.weights(r), &mut scratch),
                    ),
                    Phase::SegWrite(merged) => {
                        let (s, excess) = &merged[r];
                        op.write::<V>(r, range, s, *excess, &mut scratch)
                    }
                }
            }
        }
    }
}

/// Rows of few classes, a vector of rows at a time ([`rows_as_lanes`]); the rows left over
/// (fewer than a vector) go through [`Pass`]. A kernel of its own: compiled into the same
/// function as the long-row loops, its loop ran a fifth slower.
struct Lanes<'a, T: Elem, O: RowOp<T>> {
    op: &'a O,
    cols: usize,
    units: Range<usize>,
    _t: PhantomData<T>,
}

impl<T: Elem, O: RowOp<T>> Kernel for Lanes<'_, T, O> {
    type F = T::F;
    type Out = usize;
    #[inline(always)]
    fn run<V: SimdVec<F = T::F>>(self) -> usize {
        let mut scratch = Scratch::<T::F>::new();
        // SAFETY: rows hold `cols` values (checked by the entry points).
        unsafe { self.op.lanes::<V>(self.cols, self.units, &mut scratch) }
    }
}

fn few_classes<T: Elem, O: RowOp<T>>(op: &O, cols: usize) -> bool {
    cols > 0 && cols <= FEW_CLASSES && op.plain()
}

/// Rows `units` taken a vector of rows at a time (lane l = row r + l), for rows of few
/// classes; returns the first row left for the row-at-a-time loop.
///
/// # Safety
/// Every row of `units` holds `cols` values; `T` is `T::F` (native).
#[inline(always)]
pub unsafe fn rows_as_lanes<T: Elem, O: RowOp<T>, V: SimdVec<F = T::F>>(
    op: &O,
    cols: usize,
    units: Range<usize>,
    scratch: &mut Scratch<T::F>,
) -> usize {
    let lanes = V::LANES;
    // The rows transposed, class-major: the two passes then read whole vectors from L1.
    let mut buf = [T::F::ZERO; 16 * FEW_CLASSES];
    let zero = T::F::ZERO;
    let mut st = LaneRows {
        n: lanes,
        m: [zero; 16],
        cnt: [zero; 16],
        rest: [zero; 16],
        excess: [0.0; 16],
    };
    let mut r = units.start;
    while r + lanes <= units.end {
        // SAFETY: rows r..r + LANES exist, each `cols` ≤ FEW_CLASSES native values (so the
        // strided offsets fit in 32 bits); `buf` holds 16 · FEW_CLASSES ≥ LANES · cols values.
        unsafe {
            let x = op.row(r) as *const T::F;
            // The rows four vectors of rows on, one request per vector of values: the
            // strided loads alone leave the memory system idle between them.
            let ahead = Ahead::<false>::at(x.wrapping_add(4 * lanes * cols));
            let b = buf.as_mut_ptr();
            let mut m = V::splat(T::F::NEG_INF);
            for k in 0..cols {
                ahead.touch(k * lanes);
                let v = V::load_strided(x.add(k), cols);
                v.store(b.add(k * lanes));
                m = m.max_acc(v);
            }
            let (rest, cnt) = sum_split::<V>(b, cols, lanes, m);
            m.store(st.m.as_mut_ptr());
            cnt.store(st.cnt.as_mut_ptr());
            rest.store(st.rest.as_mut_ptr());
            let mut u = [zero; 16];
            excess_lanes::<V>(|l| (st.cnt[l].to_f64(), st.rest[l].to_f64())).store(u.as_mut_ptr());
            for (e, u) in st.excess.iter_mut().zip(&u).take(lanes) {
                *e = u.to_f64();
            }
        }
        op.done_lanes(r, &st);
        if O::WRITES && op.writes() {
            for l in 0..lanes {
                // SAFETY: row r + l holds `cols` values and is this task's alone.
                unsafe { op.write::<V>(r + l, 0..cols, &st.stats(l), st.excess[l], scratch) };
            }
        }
        r += lanes;
    }
    r
}

/// Runs `op` over `rows` rows of `cols` values on mlecore's threads.
pub fn drive<T: Elem, O: RowOp<T>>(op: &O, rows: usize, cols: usize) {
    let nseg = if O::STATS { segments(rows, cols) } else { 1 };
    let tier = simd::tier();
    let run = |phase: &Phase, units: usize, unit_elems: usize| {
        for_blocks(units, unit_elems, |units| {
            T::F::dispatch(
                tier,
                Pass {
                    op,
                    cols,
                    nseg,
                    units,
                    phase,
                    _t: PhantomData::<T>,
                },
            )
        })
    };
    // The constants first, as conditions of their own: the compiler then builds the lanes
    // kernel only for the operations and types that can take it.
    if O::STATS && T::NATIVE && nseg == 1 && few_classes::<T, O>(op, cols) {
        for_blocks(rows, cols, |units| {
            let end = units.end;
            let lanes = Lanes {
                op,
                cols,
                units,
                _t: PhantomData::<T>,
            };
            let start = T::F::dispatch(tier, lanes);
            if start < end {
                let rest = Pass {
                    op,
                    cols,
                    nseg,
                    units: start..end,
                    phase: &Phase::Rows,
                    _t: PhantomData::<T>,
                };
                T::F::dispatch(tier, rest)
            }
        });
        return;
    }
    if nseg == 1 {
        run(&Phase::Rows, rows, cols.max(1));
        return;
    }
    let mut seg = vec![Stats::EMPTY; rows * nseg];
    run(
        &Phase::SegStats(&Shared::new(&mut seg)),
        rows * nseg,
        SEG_LEN,
    );
    // Merged in segment order, on one thread: the same result for every thread count.
    let merged: Vec<(Stats, f64)> = seg
        .chunks(nseg)
        .map(|c| {
            let s = c[1..].iter().fold(c[0], |a, b| a.merge(*b));
            (s, s.excess())
        })
        .collect();
    for (r, (s, excess)) in merged.iter().enumerate() {
        op.done(r, s, *excess);
    }
    if O::WRITES {
        run(&Phase::SegWrite(&merged), rows * nseg, SEG_LEN);
    }
}
