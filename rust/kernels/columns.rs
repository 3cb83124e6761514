//! Log-sum-exp across rows: each vector lane is its own reduction, and the loop runs down the
//! reduced axis. Two uses: reducing a leading or middle axis of a C-contiguous array (lanes
//! are adjacent columns), and rows of a few classes (lanes are rows, transposed into a
//! buffer), where a row-at-a-time loop would spend its time on per-row overhead instead of
//! arithmetic.

use super::stats::Stats;
use crate::error::{check_len, KernelError};
use crate::parallel::{for_ranges, Shared};
use crate::simd::{Ahead, Float, Kernel, Scalar, SimdVec};
use std::ops::Range;

/// Steps per block. A block's two passes (maximum, then sum) read it twice, the second time
/// from L1; what is read next is requested from memory during the second.
pub const COL_BLOCK: usize = 32;
/// Vectors side by side in the wide column kernel.
pub const COL_WIDTH: usize = 8;

/// Running statistics of `W·LANES` lanes: the maximum, kept in vectors from block to block,
/// and how many values equal it and the sum of e^(x − m) over the others (see [`Stats`]).
/// Each block sums in vectors; the totals are float64 per lane, since a float32 lane summing a
/// column of a million values would lose digits.
#[derive(Clone, Copy)]
pub struct LaneStats<V, const W: usize> {
    m: [V; W],
    rest: [[f64; 16]; W],
    cnt: [[f64; 16]; W],
}

impl<V: SimdVec, const W: usize> Default for LaneStats<V, W> {
    /// The statistics of no values.
    #[inline(always)]
    fn default() -> Self {
        LaneStats {
            m: [V::splat(V::F::NEG_INF); W],
            rest: [[0.0; 16]; W],
            cnt: [[0.0; 16]; W],
        }
    }
}

impl<V: SimdVec, const W: usize> LaneStats<V, W> {
    /// Folds steps `0..steps` of `W·LANES` adjacent lanes (each step `step` apart) into the
    /// statistics. `ahead`, where the caller reads next in the same layout, is requested from
    /// memory while this block is summed from cache.
    ///
    /// # Safety
    /// `x + k·step + j` must be readable for k < steps, j < W·LANES.
    // The loops over `w` step through parallel arrays at once.
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    pub unsafe fn fold(&mut self, x: *const V::F, steps: usize, step: usize, ahead: Ahead) {
        let (zero, one) = (V::splat(V::F::ZERO), V::splat(V::F::ONE));
        let mut m = self.m;
        for k in 0..steps {
            for (w, mw) in m.iter_mut().enumerate() {
                // SAFETY: in bounds by the caller's contract.
                *mw = mw.max_acc(unsafe { V::load(x.add(k * step + w * V::LANES)) });
            }
        }
        // Usually no maximum rises: one horizontal test for the whole strip.
        let mut rose = zero;
        for w in 0..W {
            rose = rose.add(V::where_eq(self.m[w], m[w], zero, one));
        }
        if rose.reduce_max() > V::F::ZERO {
            for w in 0..W {
                self.rescale(w, m[w]);
            }
        }
        self.m = m;
        let (mut rest, mut cnt) = ([zero; W], [zero; W]);
        for k in 0..steps {
            for w in 0..W {
                let off = k * step + w * V::LANES;
                ahead.touch(off);
                // SAFETY: as above.
                let xv = unsafe { V::load(x.add(off)) };
                let e = xv.sub(m[w]).exp();
                (rest[w], cnt[w]) = rest[w].add_split(cnt[w], e, xv, m[w]);
            }
        }
        for w in 0..W {
            add_lanes(&mut self.rest[w], rest[w]);
            add_lanes(&mut self.cnt[w], cnt[w]);
        }
    }

    /// Where vector `w`'s maximum rises to `new`, the totals so far shrink by e^(old − new)
    /// and the values equal to the old maximum join the rest. Elsewhere (also where both are
    /// −inf) nothing changes.
    #[inline(always)]
    fn rescale(&mut self, w: usize, new: V) {
        let (old, new) = (lanes(self.m[w]), lanes(new));
        for l in 0..V::LANES {
            let (o, n) = (old[l].to_f64(), new[l].to_f64());
            if o != n {
                // From −inf (no finite value yet, as in every fresh lane) the factor is 0:
                // no libm call for it.
                let f = if o == f64::NEG_INFINITY {
                    0.0
                } else {
                    (o - n).exp()
                };
                self.rest[w][l] = (self.rest[w][l] + self.cnt[w][l]) * f;
                self.cnt[w][l] = 0.0;
            }
        }
    }

    /// lse − m of vector `w`'s lanes: [`Stats::l`] for a vector of lanes at once (a scalar
    /// `ln_1p` per lane costs more than the rest of a short reduction).
    #[inline(always)]
    pub fn l(&self, w: usize) -> V {
        let mut u = [V::F::ZERO; 16];
        for (l, u) in u[..V::LANES].iter_mut().enumerate() {
            *u = V::F::from_f64(self.cnt[w][l] - 1.0 + self.rest[w][l]);
        }
        // SAFETY: `u` holds 16 ≥ LANES values.
        unsafe { V::load(u.as_ptr()) }.ln_1p()
    }

    /// The log-sum-exp of every lane, in lane order, into `out[..W·LANES]`.
    #[inline(always)]
    pub fn write_lse(&self, out: &mut [V::F]) {
        let out = &mut out[..W * V::LANES];
        for w in 0..W {
            // SAFETY: `out` holds W·LANES values.
            unsafe {
                self.m[w]
                    .add(self.l(w))
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

    /// Folds steps `0..steps` of the band's columns, starting at `x`.
    ///
    /// # Safety
    /// `x + k·step + c` must be readable for k < steps and every column c of the band.
    #[inline(always)]
    unsafe fn fold(&mut self, x: *const V::F, steps: usize, step: usize, ahead: Ahead) {
        let mut c = 0;
        // SAFETY: every strip lies inside the band (caller's contract).
        unsafe {
            // Each strip requests the one after it; the band's last strip, `ahead`.
            let strips = self.wide.len() + self.one.len() + self.scalar.len();
            let mut i = 0;
            let mut next = |c: usize| {
                i += 1;
                if i < strips {
                    Ahead::at(x.wrapping_add(c))
                } else {
                    ahead
                }
            };
            for s in &mut self.wide {
                let a = next(c + COL_WIDTH * V::LANES);
                s.fold(x.add(c), steps, step, a);
                c += COL_WIDTH * V::LANES;
            }
            for s in &mut self.one {
                let a = next(c + V::LANES);
                s.fold(x.add(c), steps, step, a);
                c += V::LANES;
            }
            for s in &mut self.scalar {
                let a = next(c + 1);
                s.fold(x.add(c), steps, step, a);
                c += 1;
            }
        }
    }

    /// Every column's log-sum-exp, in column order.
    #[inline(always)]
    fn write_lse(&self, out: &mut [V::F]) {
        let mut c = 0;
        for s in &self.wide {
            s.write_lse(&mut out[c..]);
            c += COL_WIDTH * V::LANES;
        }
        for s in &self.one {
            s.write_lse(&mut out[c..]);
            c += V::LANES;
        }
        for s in &self.scalar {
            s.write_lse(std::slice::from_mut(&mut out[c]));
            c += 1;
        }
    }
}

/// Columns per task unit, at most: a block's rows are then read in runs of 4 KiB (float32).
const MAX_GROUP: usize = 1024;

/// Columns per task unit: whole cache lines of every step, as wide as `MAX_GROUP` when there
/// are enough units for every thread. Columns never interact, so the width changes no result.
fn group_width(outer: usize, inner: usize) -> usize {
    let tasks = 2 * crate::parallel::num_threads();
    let per_task = (outer * inner).div_ceil(tasks).div_ceil(outer);
    per_task.next_multiple_of(128).min(MAX_GROUP)
}

struct Cols<'a, F> {
    x: &'a [F],
    steps: usize,
    inner: usize,
    group: usize,
    out: &'a Shared<F>,
    units: Range<usize>,
}

impl<F: Float> Kernel for Cols<'_, F> {
    type F = F;
    type Out = ();
    #[inline(always)]
    fn run<V: SimdVec<F = F>>(self) {
        let group = self.group;
        let groups = self.inner.div_ceil(group);
        // Unit u: slab o, columns c0..c0 + width.
        let unit = |u: usize| {
            let (o, c0) = (u / groups, (u % groups) * group);
            (o, c0, group.min(self.inner - c0))
        };
        let base = |u: usize, k0: usize| {
            let (o, c0, _) = unit(u);
            (o * self.steps + k0) * self.inner + c0
        };
        let mut strips: Vec<Strips<V>> =
            self.units.clone().map(|u| Strips::new(unit(u).2)).collect();
        // Blocks of steps outermost: the task reads a band of whole rows at a time, so DRAM
        // pages and TLB entries serve every column group before the band is left.
        let mut k0 = 0;
        while k0 < self.steps {
            let kn = COL_BLOCK.min(self.steps - k0);
            for (u, s) in self.units.clone().zip(&mut strips) {
                // The next unit of this block, or the first of the next block.
                let next = if u + 1 < self.units.end {
                    base(u + 1, k0)
                } else {
                    base(self.units.start, k0 + kn)
                };
                let ahead = Ahead::at(self.x.as_ptr().wrapping_add(next));
                // SAFETY: columns c0..c0 + width < inner of slab o, steps k0..k0 + kn: inside
                // `x`, whose length was checked.
                unsafe { s.fold(self.x.as_ptr().add(base(u, k0)), kn, self.inner, ahead) };
            }
            k0 += kn;
        }
        let mut lse = vec![F::ZERO; group];
        for (u, s) in self.units.zip(&strips) {
            let (o, c0, width) = unit(u);
            s.write_lse(&mut lse);
            for (c, v) in lse[..width].iter().enumerate() {
                // SAFETY: each (slab, column) belongs to one unit.
                unsafe { self.out.set(o * self.inner + c0 + c, *v) };
            }
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
        _ => {
            let group = group_width(outer, inner);
            let units = outer * inner.div_ceil(group);
            let shared = Shared::new(out);
            for_ranges(units, |units| {
                F::dispatch(Cols {
                    x,
                    steps,
                    inner,
                    group,
                    out: &shared,
                    units,
                })
            });
        }
    }
    Ok(())
}
