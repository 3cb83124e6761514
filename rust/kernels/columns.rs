//! Log-sum-exp across rows: each vector lane is its own reduction, and the loop runs down the
//! reduced axis. Two uses: reducing a leading or middle axis of a C-contiguous array (lanes
//! are adjacent columns), and rows of a few classes (lanes are rows, transposed into a
//! buffer), where a row-at-a-time loop would spend its time on per-row overhead instead of
//! arithmetic.

use super::stats::Stats;
use crate::error::{check_len, KernelError};
use crate::parallel::{for_ranges, Shared};
use crate::simd::{Float, Kernel, Scalar, SimdVec};
use std::ops::Range;

/// Steps per block: a block's two passes (maximum, then sum) re-read it from L1/L2.
pub const COL_BLOCK: usize = 1024;
/// Vectors side by side in the wide column kernel.
pub const COL_WIDTH: usize = 8;

/// Folds the statistics of `W·LANES` adjacent lanes over steps `0..steps` (each `step`
/// apart) into `out`, one entry per lane in lane order; `first` starts `out` afresh.
///
/// # Safety
/// `x + k·step + j` must be readable for k < steps, j < W·LANES.
#[inline(always)]
pub unsafe fn col_stats<V: SimdVec, const W: usize>(
    x: *const V::F,
    steps: usize,
    step: usize,
    out: &mut [Stats],
    first: bool,
) {
    let ninf = V::splat(V::F::NEG_INF);
    let zero = V::splat(V::F::ZERO);
    let mut m = [ninf; W];
    for k in 0..steps {
        for (w, mw) in m.iter_mut().enumerate() {
            // SAFETY: in bounds by the caller's contract.
            *mw = mw.max_acc(unsafe { V::load(x.add(k * step + w * V::LANES)) });
        }
    }
    let (mut acc, mut cnt) = ([zero; W], [zero; W]);
    for k in 0..steps {
        for w in 0..W {
            // SAFETY: as above.
            let xv = unsafe { V::load(x.add(k * step + w * V::LANES)) };
            let e = xv.sub(m[w]).exp();
            (acc[w], cnt[w]) = acc[w].add_split(cnt[w], e, xv, m[w]);
        }
    }
    let mut buf = [[V::F::ZERO; 16]; 3];
    for w in 0..W {
        // SAFETY: each buffer holds 16 ≥ LANES values.
        unsafe {
            m[w].store(buf[0].as_mut_ptr());
            acc[w].store(buf[1].as_mut_ptr());
            cnt[w].store(buf[2].as_mut_ptr());
        }
        for l in 0..V::LANES {
            let mx = buf[0][l].to_f64();
            let s = Stats {
                m: mx,
                cnt: buf[2][l].to_f64(),
                rest: buf[1][l].to_f64(),
                shift: Stats::shift_for(mx),
                dot: 0.0,
                vsum: 0.0,
            };
            let o = &mut out[w * V::LANES + l];
            *o = if first { s } else { o.merge(s) };
        }
    }
}

/// Folds one block of `steps` steps of `width` adjacent columns starting at `x` into `out`:
/// the widest vectors first, then single vectors, then scalar lanes.
///
/// # Safety
/// `x + k·step + c` must be readable for k < steps, c < width.
#[inline(always)]
unsafe fn columns_block<V: SimdVec>(
    x: *const V::F,
    width: usize,
    steps: usize,
    step: usize,
    out: &mut [Stats],
    first: bool,
) {
    let wide = COL_WIDTH * V::LANES;
    let mut c = 0;
    // SAFETY: every access stays inside the block of `width` columns (caller's contract).
    unsafe {
        while c + wide <= width {
            col_stats::<V, COL_WIDTH>(x.add(c), steps, step, &mut out[c..], first);
            c += wide;
        }
        while c + V::LANES <= width {
            col_stats::<V, 1>(x.add(c), steps, step, &mut out[c..], first);
            c += V::LANES;
        }
        while c < width {
            col_stats::<Scalar<V::F>, 1>(x.add(c), steps, step, &mut out[c..], first);
            c += 1;
        }
    }
}

/// Columns per task unit: wide enough for whole cache lines of every step.
const GROUP: usize = 128;

struct Cols<'a, F> {
    x: &'a [F],
    steps: usize,
    inner: usize,
    out: &'a Shared<F>,
    units: Range<usize>,
}

impl<F: Float> Kernel for Cols<'_, F> {
    type F = F;
    type Out = ();
    #[inline(always)]
    fn run<V: SimdVec<F = F>>(self) {
        let groups = self.inner.div_ceil(GROUP);
        let n = self.units.len();
        let mut stats = vec![Stats::EMPTY; n * GROUP];
        // Blocks of steps outermost: the task reads a band of whole rows at a time, so DRAM
        // pages and TLB entries serve every column group before the band is left.
        let mut k0 = 0;
        while k0 < self.steps {
            let kn = COL_BLOCK.min(self.steps - k0);
            for (i, u) in self.units.clone().enumerate() {
                let (o, g) = (u / groups, u % groups);
                let c0 = g * GROUP;
                let width = GROUP.min(self.inner - c0);
                let base = (o * self.steps + k0) * self.inner + c0;
                let out = &mut stats[i * GROUP..(i + 1) * GROUP];
                // SAFETY: columns c0..c0 + width < inner of slab o, steps k0..k0 + kn: inside
                // `x`, whose length was checked.
                unsafe {
                    columns_block::<V>(
                        self.x.as_ptr().add(base),
                        width,
                        kn,
                        self.inner,
                        out,
                        k0 == 0,
                    )
                };
            }
            k0 += kn;
        }
        for (i, u) in self.units.enumerate() {
            let (o, g) = (u / groups, u % groups);
            let c0 = g * GROUP;
            let width = GROUP.min(self.inner - c0);
            for (c, s) in stats[i * GROUP..i * GROUP + width].iter().enumerate() {
                // SAFETY: each (slab, column) belongs to one unit.
                unsafe { self.out.set(o * self.inner + c0 + c, F::from_f64(s.lse())) };
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
    if steps == 0 {
        out.fill(F::NEG_INF);
        return Ok(());
    }
    let units = outer * inner.div_ceil(GROUP);
    let shared = Shared::new(out);
    for_ranges(units, |units| {
        F::dispatch(Cols {
            x,
            steps,
            inner,
            out: &shared,
            units,
        })
    });
    Ok(())
}
