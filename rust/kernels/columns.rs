//! Log-sum-exp across rows: each vector lane is its own reduction, and the loop runs down the
//! reduced axis. Two uses: reducing a leading or middle axis of a C-contiguous array (lanes
//! are adjacent columns), and rows of a few classes (lanes are rows, transposed into a
//! buffer), where a row-at-a-time loop would spend its time on per-row overhead instead of
//! arithmetic.

use super::stats::{self, Stats};
use crate::error::{check_len, KernelError};
use crate::parallel::{for_blocks, for_ranges, Shared};
use crate::simd::{Ahead, Float, Kernel, RowStream, Scalar, SimdVec};
use std::ops::Range;

/// Steps per block: the statistics of a block are settled (and, where its values reach the
/// maximum, summed again from cache) as a whole.
pub const COL_BLOCK: usize = 32;
/// Steps per pass across a band: few enough rows at a time that the hardware prefetcher
/// follows every one of them (at 32 rows a core reads DRAM at half the speed of one stream).
pub const COL_PASS: usize = 8;
/// Bytes ahead in each row that a pass requests while it computes.
const READ_AHEAD: usize = 2048;
/// Vectors side by side in the wide column kernel.
pub const COL_WIDTH: usize = 2;

/// Running statistics of `W·LANES` lanes: the maximum, kept in vectors from block to block,
/// and how many values equal it and the sum of e^(x − m) over the others (see [`Stats`]).
/// A block is summed in vectors; the totals are float64 per lane, since a float32 lane summing
/// a column of a million values would lose digits.
///
/// Once every lane has a maximum, a block is read once: its sums are taken relative to the
/// maxima so far while its own maxima are found. They stand where the block stays below those
/// maxima, the usual case once a column's largest values have been seen (then no value equals
/// the maximum, and none needs counting). A vector where the block reaches its maximum is
/// summed again, relative to the new one, from cache.
#[derive(Clone, Copy)]
pub struct LaneStats<V, const W: usize> {
    m: [V; W],
    /// The block's maxima and sums relative to `m` so far (the sums only when `ready`).
    b: [V; W],
    part: [V; W],
    /// Every lane has a finite or +inf maximum, so sums relative to it mean something.
    ready: bool,
    rest: [[f64; 16]; W],
    cnt: [[f64; 16]; W],
}

impl<V: SimdVec, const W: usize> Default for LaneStats<V, W> {
    /// The statistics of no values.
    #[inline(always)]
    fn default() -> Self {
        let ninf = V::splat(V::F::NEG_INF);
        LaneStats {
            m: [ninf; W],
            b: [ninf; W],
            part: [V::splat(V::F::ZERO); W],
            ready: false,
            rest: [[0.0; 16]; W],
            cnt: [[0.0; 16]; W],
        }
    }
}

/// lse − m = ln(1 + (cnt − 1 + rest)) of a vector of lanes, lane l's count and rest being
/// `cnt_rest(l)`: [`Stats::excess`] for a vector of lanes at once, the argument formed in
/// float64 as there (a scalar `ln_1p` per lane costs more than the rest of a short
/// reduction).
#[inline(always)]
pub fn excess_lanes<V: SimdVec>(cnt_rest: impl Fn(usize) -> (f64, f64)) -> V {
    let mut u = [V::F::ZERO; 16];
    for (l, u) in u[..V::LANES].iter_mut().enumerate() {
        let (cnt, rest) = cnt_rest(l);
        *u = V::F::from_f64(cnt - 1.0 + rest);
    }
    // SAFETY: `u` holds 16 ≥ LANES values.
    unsafe { V::load(u.as_ptr()) }.ln_1p()
}

impl<V: SimdVec, const W: usize> LaneStats<V, W> {
    /// Reads steps `0..steps` into the open block, requesting one line of `next` (what the
    /// caller reads after these steps) per vector.
    ///
    /// # Safety
    /// `x + k·step + j` must be readable for k < steps, j < W·LANES.
    // The loops over `w` step through parallel arrays at once.
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn read(&mut self, x: *const V::F, steps: usize, step: usize, next: &mut RowStream) {
        let (m, mut b, mut part) = (self.m, self.b, self.part);
        // Two requests per vector, both into L2 (rows a power of two apart would evict one
        // another from L1): the same rows further on, and the next pass's rows in memory
        // order.
        let ahead = Ahead::<true>::at(x.wrapping_add(READ_AHEAD / size_of::<V::F>()));
        if self.ready {
            for k in 0..steps {
                let mut d = m;
                for w in 0..W {
                    ahead.touch(k * step + w * V::LANES);
                    next.next();
                    // SAFETY: in bounds by the caller's contract.
                    let xv = unsafe { V::load(x.add(k * step + w * V::LANES)) };
                    b[w] = b[w].max_acc(xv);
                    d[w] = xv.sub(m[w]);
                }
                // The W exponentials in one call: a tier may interleave them.
                let e = V::exp_in_sum_many(d);
                for w in 0..W {
                    part[w] = part[w].add(e[w]);
                }
            }
        } else {
            for k in 0..steps {
                for w in 0..W {
                    next.next();
                    // SAFETY: as above.
                    b[w] = b[w].max_acc(unsafe { V::load(x.add(k * step + w * V::LANES)) });
                }
            }
        }
        (self.b, self.part) = (b, part);
    }

    /// Closes the block of steps `0..steps` from `x`, all of them read: its sums join the
    /// totals, or are taken again where it reaches the maximum.
    ///
    /// # Safety
    /// `x + k·step + j` must be readable for k < steps, j < W·LANES.
    #[inline(always)]
    unsafe fn settle(&mut self, x: *const V::F, steps: usize, step: usize) {
        let (zero, one, ninf) = (V::splat(V::F::ZERO), V::splat(V::F::ONE), V::F::NEG_INF);
        let mut unready = zero;
        for w in 0..W {
            let top = self.m[w].max_acc(self.b[w]);
            // Where the block reaches the maximum, a value may equal it: summed apart.
            let reach = V::where_eq(self.b[w], top, one, zero).reduce_max() > V::F::ZERO;
            if !self.ready || reach {
                if V::where_eq(self.m[w], top, zero, one).reduce_max() > V::F::ZERO {
                    self.rescale(w, top);
                }
                self.m[w] = top;
                // SAFETY: the caller's contract, for vector w's lanes.
                let (r, c) = unsafe { sum_split(x.add(w * V::LANES), steps, step, top) };
                add_lanes(&mut self.rest[w], r);
                add_lanes(&mut self.cnt[w], c);
            } else {
                add_lanes(&mut self.rest[w], self.part[w]);
            }
            unready = unready.add(V::where_eq(self.m[w], V::splat(ninf), one, zero));
            self.b[w] = V::splat(ninf);
            self.part[w] = zero;
        }
        self.ready = unready.reduce_max() == V::F::ZERO;
    }

    /// Where vector `w`'s maximum rises to `new`, the totals so far shrink by e^(old − new)
    /// and the values equal to the old maximum join the rest. Elsewhere (also where both are
    /// −inf) nothing changes.
    #[inline(always)]
    fn rescale(&mut self, w: usize, new: V) {
        let (old, new) = (lanes(self.m[w]), lanes(new));
        for l in 0..V::LANES {
            (self.cnt[w][l], self.rest[w][l]) = stats::rescaled(
                self.cnt[w][l],
                self.rest[w][l],
                old[l].to_f64(),
                new[l].to_f64(),
            );
        }
    }

    /// lse − m of vector `w`'s lanes.
    #[inline(always)]
    pub fn excess(&self, w: usize) -> V {
        excess_lanes(|l| (self.cnt[w][l], self.rest[w][l]))
    }

    /// The log-sum-exp of every lane, in lane order, into `out[..W·LANES]`.
    #[inline(always)]
    pub fn write_lse(&self, out: &mut [V::F]) {
        let out = &mut out[..W * V::LANES];
        for w in 0..W {
            // SAFETY: `out` holds W·LANES values.
            unsafe {
                self.m[w]
                    .add(self.excess(w))
                    .store(out.as_mut_ptr().add(w * V::LANES))
            };
        }
    }

    /// The statistics of every lane, in lane order, into `out[..W·LANES]`.
    #[inline(always)]
    pub fn write(&self, out: &mut [Stats]) {
        for w in 0..W {
            let m = lanes(self.m[w]);
            for (l, o) in out[w * V::LANES..(w + 1) * V::LANES].iter_mut().enumerate() {
                let m = m[l].to_f64();
                *o = Stats {
                    m,
                    cnt: self.cnt[w][l],
                    rest: self.rest[w][l],
                    shift: Stats::shift_for(m),
                    dot: 0.0,
                    vsum: 0.0,
                };
            }
        }
    }
}

/// Σ e^(x − m) over x ≠ m and how many x = m, lane by lane, over `steps` vectors `step` apart.
///
/// # Safety
/// `x + k·step + j` must be readable for k < steps, j < LANES.
#[inline(always)]
pub unsafe fn sum_split<V: SimdVec>(x: *const V::F, steps: usize, step: usize, m: V) -> (V, V) {
    let zero = V::splat(V::F::ZERO);
    let (mut rest, mut cnt) = (zero, zero);
    for k in 0..steps {
        // SAFETY: in bounds by the caller's contract.
        let xv = unsafe { V::load(x.add(k * step)) };
        (rest, cnt) = rest.add_split(cnt, xv.sub(m).exp_in_sum(), xv, m);
    }
    (rest, cnt)
}

/// A vector's lanes in an array (the first LANES of 16).
#[inline(always)]
fn lanes<V: SimdVec>(v: V) -> [V::F; 16] {
    let mut a = [V::F::ZERO; 16];
    // SAFETY: `a` holds 16 ≥ LANES values.
    unsafe { v.store(a.as_mut_ptr()) };
    a
}

/// total[l] += v[l] in float64, lane by lane.
#[inline(always)]
fn add_lanes<V: SimdVec>(total: &mut [f64; 16], v: V) {
    for (t, x) in total[..V::LANES].iter_mut().zip(&lanes(v)[..V::LANES]) {
        *t += x.to_f64();
    }
}

/// Runs `body` on every strip `s` of `strips` in column order, `c` its first column.
macro_rules! each_strip {
    ($strips:expr, $iter:ident, |$s:ident, $c:ident| $body:expr) => {{
        let mut $c = 0;
        for $s in $strips.wide.$iter() {
            $body;
            $c += COL_WIDTH * V::LANES;
        }
        for $s in $strips.one.$iter() {
            $body;
            $c += V::LANES;
        }
        for $s in $strips.scalar.$iter() {
            $body;
            $c += 1;
        }
    }};
}

/// The running statistics of a band of adjacent columns, split into strips of the widest
/// vectors, then single vectors, then scalar lanes.
struct Strips<V: SimdVec> {
    wide: Vec<LaneStats<V, COL_WIDTH>>,
    one: Vec<LaneStats<V, 1>>,
    scalar: Vec<LaneStats<Scalar<V::F>, 1>>,
}

/// How many strips of each kind `width` columns take.
fn strip_counts(width: usize, lanes: usize) -> (usize, usize, usize) {
    let wide = width / (COL_WIDTH * lanes);
    let rest = width - wide * COL_WIDTH * lanes;
    (wide, rest / lanes, rest % lanes)
}

impl<V: SimdVec> Strips<V> {
    fn new(width: usize) -> Self {
        let (w, o, s) = strip_counts(width, V::LANES);
        Strips {
            wide: vec![LaneStats::default(); w],
            one: vec![LaneStats::default(); o],
            scalar: vec![LaneStats::default(); s],
        }
    }

    /// Reads steps `0..steps` of the band's columns, starting at `x`, into the open block.
    ///
    /// # Safety
    /// `x + k·step + c` must be readable for k < steps and every column c of the band.
    #[inline(always)]
    unsafe fn read(&mut self, x: *const V::F, steps: usize, step: usize, next: &mut RowStream) {
        // SAFETY: every strip lies inside the band (caller's contract).
        each_strip!(self, iter_mut, |s, c| unsafe {
            s.read(x.add(c), steps, step, next)
        });
    }

    /// Closes the block of steps `0..steps` from `x`, all of them read.
    ///
    /// # Safety
    /// As [`read`](Self::read).
    #[inline(always)]
    unsafe fn settle(&mut self, x: *const V::F, steps: usize, step: usize) {
        // SAFETY: every strip lies inside the band (caller's contract).
        each_strip!(self, iter_mut, |s, c| unsafe {
            s.settle(x.add(c), steps, step)
        });
    }

    /// Every column's log-sum-exp, in column order.
    #[inline(always)]
    fn write_lse(&self, out: &mut [V::F]) {
        each_strip!(self, iter, |s, c| s.write_lse(&mut out[c..]));
    }

    /// Every column's statistics, in column order.
    #[inline(always)]
    fn write(&self, out: &mut [Stats]) {
        each_strip!(self, iter, |s, c| s.write(&mut out[c..]));
    }
}

/// Steps per band. A long reduction is cut into bands of this many steps, reduced apart and
/// merged in band order, so that each task can read whole rows; the cut depends on the shape
/// alone, never on the thread count, so neither do the results.
const BAND: usize = 8192;

/// Columns per task unit, at most: the running statistics of one unit (30–60 bytes a column)
/// stay in L2.
const MAX_GROUP: usize = 4096;

/// How the work is cut: `bands` bands of steps per slab, each cut into units of `group`
/// columns. Units are as wide as there are enough of them for every thread to take two:
/// the wider a task's rows, the faster a core reads them. Columns never interact, so the width
/// changes no result.
struct Layout {
    bands: usize,
    group: usize,
    groups: usize,
}

impl Layout {
    fn new(outer: usize, steps: usize, inner: usize) -> Layout {
        let bands = steps.div_ceil(BAND);
        let per_slab = (2 * crate::parallel::num_threads()).div_ceil(outer * bands);
        let group = inner
            .div_ceil(per_slab)
            .next_multiple_of(128)
            .min(MAX_GROUP);
        Layout {
            bands,
            group,
            groups: inner.div_ceil(group),
        }
    }
}

/// Where a task's results go: the log-sum-exp itself when a reduction is one band, else the
/// statistics of each band, merged afterwards.
enum Sink<'a, F> {
    Lse(&'a Shared<F>),
    Bands(&'a Shared<Stats>),
}

struct Cols<'a, F> {
    x: &'a [F],
    steps: usize,
    inner: usize,
    layout: &'a Layout,
    sink: &'a Sink<'a, F>,
    units: Range<usize>,
}

impl<F: Float> Cols<'_, F> {
    /// Reduces steps `k` of columns `cols` of slab `o` (a band of whole rows), and hands the
    /// results to the sink at index `at` on.
    #[inline(always)]
    fn band<V: SimdVec<F = F>>(&self, o: usize, k: Range<usize>, cols: Range<usize>, at: usize) {
        let mut strips = Strips::<V>::new(cols.len());
        let base = |k: usize| (o * self.steps + k) * self.inner + cols.start;
        let x = self.x.as_ptr();
        // Each block is read `COL_PASS` rows at a time across the band, then settled.
        let mut k0 = k.start;
        while k0 < k.end {
            let kn = COL_BLOCK.min(k.end - k0);
            let mut p0 = k0;
            while p0 < k0 + kn {
                let pn = COL_PASS.min(k0 + kn - p0);
                // The pass after this one, requested while this one computes.
                let after = (p0 + pn)..k.end.min(p0 + pn + COL_PASS);
                let mut next = RowStream::new(
                    x.wrapping_add(base(after.start)),
                    cols.len(),
                    self.inner,
                    after.len(),
                );
                // SAFETY: steps p0..p0 + pn of columns `cols` of slab o lie inside `x`,
                // whose length was checked.
                unsafe { strips.read(x.add(base(p0)), pn, self.inner, &mut next) };
                p0 += pn;
            }
            // SAFETY: as above, steps k0..k0 + kn.
            unsafe { strips.settle(x.add(base(k0)), kn, self.inner) };
            k0 += kn;
        }
        match self.sink {
            Sink::Lse(out) => {
                let mut lse = vec![F::ZERO; cols.len()];
                strips.write_lse(&mut lse);
                for (c, v) in lse.into_iter().enumerate() {
                    // SAFETY: each index belongs to one unit.
                    unsafe { out.set(at + c, v) };
                }
            }
            Sink::Bands(out) => {
                let mut st = vec![Stats::EMPTY; cols.len()];
                strips.write(&mut st);
                for (c, v) in st.into_iter().enumerate() {
                    // SAFETY: as above.
                    unsafe { out.set(at + c, v) };
                }
            }
        }
    }
}

impl<F: Float> Kernel for Cols<'_, F> {
    type F = F;
    type Out = ();
    #[inline(always)]
    fn run<V: SimdVec<F = F>>(self) {
        let Layout {
            bands,
            group,
            groups,
        } = *self.layout;
        // Unit u: column group u % groups of slab u / groups, itself band b of slab o. The
        // task's units of one slab are adjacent columns: one band, read together.
        let mut u = self.units.start;
        while u < self.units.end {
            let slab = u / groups;
            let end = self.units.end.min((slab + 1) * groups);
            let (o, b) = (slab / bands, slab % bands);
            let k = b * BAND..self.steps.min((b + 1) * BAND);
            let cols = (u % groups) * group..self.inner.min((end - slab * groups) * group);
            let at = match self.sink {
                Sink::Lse(_) => o * self.inner,
                Sink::Bands(_) => slab * self.inner,
            } + cols.start;
            self.band::<V>(o, k, cols, at);
            u = end;
        }
    }
}

/// out[o, i] = log Σ_k e^x[o, k, i] for a C-contiguous `outer × steps × inner` array: the
/// reduction of a leading or middle axis, read in place.
pub fn logsumexp_axis<F: Float>(
    x: &[F],
    outer: usize,
    steps: usize,
    inner: usize,
    out: &mut [F],
) -> Result<(), KernelError> {
    check_len("input", x.len(), outer * steps * inner)?;
    check_len("output", out.len(), outer * inner)?;
    match steps {
        0 => out.fill(F::NEG_INF),
        // The log-sum-exp of one value is that value (NaN and ±inf included).
        1 => out.copy_from_slice(x),
        // No column (outer or inner is 0): nothing to write, and no layout to cut.
        _ if out.is_empty() => {}
        _ => {
            let layout = Layout::new(outer, steps, inner);
            let bands = layout.bands;
            let units = outer * bands * layout.groups;
            let shared = Shared::new(out);
            let tier = crate::simd::tier();
            let run = |sink: &Sink<F>| {
                for_ranges(units, |units| {
                    F::dispatch(
                        tier,
                        Cols {
                            x,
                            steps,
                            inner,
                            layout: &layout,
                            sink,
                            units,
                        },
                    )
                })
            };
            if bands == 1 {
                run(&Sink::Lse(&shared));
            } else {
                let mut parts = vec![Stats::EMPTY; outer * bands * inner];
                run(&Sink::Bands(&Shared::new(&mut parts)));
                // Bands merge in order: the result is the same for every thread count.
                let parts = &parts;
                for_blocks(outer * inner, bands, |r| {
                    for i in r {
                        let (o, c) = (i / inner, i % inner);
                        let at = |b: usize| parts[(o * bands + b) * inner + c];
                        let s = (1..bands).fold(at(0), |s, b| s.merge(at(b)));
                        // SAFETY: each index belongs to one range.
                        unsafe { shared.set(i, F::from_f64(s.m + s.excess())) };
                    }
                });
            }
        }
    }
    Ok(())
}
