//! Vector loops over one chunk (≤ `CHUNK` values, resident in L1): the statistics pass and the
//! write pass. Everything here is `#[inline(always)]` so it compiles into the caller's
//! `#[target_feature]` instantiation.

use super::stats::Stats;
use crate::simd::{Ahead, Float, SimdVec};

/// Where the weights v of the weighted sum in [`Stats`] come from, chosen per call so the
/// vector loop has no branch inside.
pub trait VSource<V: SimdVec>: Copy {
    const ACTIVE: bool;
    /// The same weights from lane `k` on.
    fn shifted(self, k: usize) -> Self;
    /// # Safety
    /// Lanes `i..i + LANES` must be in bounds of the source.
    unsafe fn load(&self, i: usize) -> V;
    /// # Safety
    /// Lanes `i..i + n` must be in bounds of the source.
    unsafe fn load_tail(&self, i: usize, n: usize) -> V;
}

/// No weighted sum.
#[derive(Clone, Copy)]
pub struct NoWeights;

/// v = 1 for every class.
#[derive(Clone, Copy)]
pub struct Ones;

/// v = w (class weights).
#[derive(Clone, Copy)]
pub struct ClassWeights<F>(pub *const F);

/// v = a·t + b (soft targets, mixed with label smoothing).
#[derive(Clone, Copy)]
pub struct Soft<F> {
    pub t: *const F,
    pub a: F,
    pub b: F,
}

/// v = w·(a·t + b).
#[derive(Clone, Copy)]
pub struct SoftClass<F> {
    pub t: *const F,
    pub w: *const F,
    pub a: F,
    pub b: F,
}

impl<V: SimdVec> VSource<V> for NoWeights {
    const ACTIVE: bool = false;
    #[inline(always)]
    fn shifted(self, _k: usize) -> Self {
        self
    }
    #[inline(always)]
    unsafe fn load(&self, _i: usize) -> V {
        V::splat(V::F::ZERO)
    }
    #[inline(always)]
    unsafe fn load_tail(&self, _i: usize, _n: usize) -> V {
        V::splat(V::F::ZERO)
    }
}

impl<V: SimdVec> VSource<V> for Ones {
    const ACTIVE: bool = true;
    #[inline(always)]
    fn shifted(self, _k: usize) -> Self {
        self
    }
    #[inline(always)]
    unsafe fn load(&self, _i: usize) -> V {
        V::splat(V::F::ONE)
    }
    #[inline(always)]
    unsafe fn load_tail(&self, _i: usize, n: usize) -> V {
        let ones = [V::F::ONE; 16];
        // SAFETY: `ones` holds at least `n < LANES ≤ 16` elements.
        unsafe { V::load_tail(ones.as_ptr(), n, V::F::ZERO) }
    }
}

impl<V: SimdVec> VSource<V> for ClassWeights<V::F> {
    const ACTIVE: bool = true;
    #[inline(always)]
    fn shifted(self, k: usize) -> Self {
        ClassWeights(self.0.wrapping_add(k))
    }
    #[inline(always)]
    unsafe fn load(&self, i: usize) -> V {
        // SAFETY: the caller keeps `i..i + LANES` in bounds.
        unsafe { V::load(self.0.add(i)) }
    }
    #[inline(always)]
    unsafe fn load_tail(&self, i: usize, n: usize) -> V {
        // SAFETY: the caller keeps `i..i + n` in bounds.
        unsafe { V::load_tail(self.0.add(i), n, V::F::ZERO) }
    }
}

impl<V: SimdVec> VSource<V> for Soft<V::F> {
    const ACTIVE: bool = true;
    #[inline(always)]
    fn shifted(self, k: usize) -> Self {
        Soft {
            t: self.t.wrapping_add(k),
            ..self
        }
    }
    #[inline(always)]
    unsafe fn load(&self, i: usize) -> V {
        // SAFETY: the caller keeps `i..i + LANES` in bounds.
        let t = unsafe { V::load(self.t.add(i)) };
        t.mul_add(V::splat(self.a), V::splat(self.b))
    }
    #[inline(always)]
    unsafe fn load_tail(&self, i: usize, n: usize) -> V {
        // SAFETY: the caller keeps `i..i + n` in bounds.
        let t = unsafe { V::load_tail(self.t.add(i), n, V::F::ZERO) };
        let v = t.mul_add(V::splat(self.a), V::splat(self.b));
        // Lanes past the tail must weigh nothing, whatever b is.
        let mask = [V::F::ONE; 16];
        // SAFETY: `mask` holds at least `n < LANES ≤ 16` elements.
        v.mul(unsafe { V::load_tail(mask.as_ptr(), n, V::F::ZERO) })
    }
}

impl<V: SimdVec> VSource<V> for SoftClass<V::F> {
    const ACTIVE: bool = true;
    #[inline(always)]
    fn shifted(self, k: usize) -> Self {
        SoftClass {
            t: self.t.wrapping_add(k),
            w: self.w.wrapping_add(k),
            ..self
        }
    }
    #[inline(always)]
    unsafe fn load(&self, i: usize) -> V {
        // SAFETY: the caller keeps `i..i + LANES` in bounds of both arrays.
        let (t, w) = unsafe { (V::load(self.t.add(i)), V::load(self.w.add(i))) };
        t.mul_add(V::splat(self.a), V::splat(self.b)).mul(w)
    }
    #[inline(always)]
    unsafe fn load_tail(&self, i: usize, n: usize) -> V {
        // SAFETY: the caller keeps `i..i + n` in bounds of both arrays; w's fill of 0 zeroes
        // the lanes past the tail.
        let (t, w) = unsafe {
            (
                V::load_tail(self.t.add(i), n, V::F::ZERO),
                V::load_tail(self.w.add(i), n, V::F::ZERO),
            )
        };
        t.mul_add(V::splat(self.a), V::splat(self.b)).mul(w)
    }
}

/// The statistics of `x[..n]` with weights from `v`, taken relative to max(max x, `floor`).
/// A caller that passes the maximum of the stretches before this one gets statistics that
/// merge with theirs without rescaling (no `exp` per merge) in the common case where the
/// maximum was already seen.
///
/// # Safety
/// `x` must be readable for `n` values and `v` in bounds for `n` lanes.
#[inline(always)]
pub unsafe fn stats<V: SimdVec, S: VSource<V>>(
    x: *const V::F,
    n: usize,
    v: S,
    ahead: Ahead,
    floor: V::F,
) -> Stats {
    let l = V::LANES;
    let ninf = V::F::NEG_INF;
    // Pass 1: the maximum, four accumulators deep.
    let (mut m0, mut m1, mut m2, mut m3) = (
        V::splat(ninf),
        V::splat(ninf),
        V::splat(ninf),
        V::splat(ninf),
    );
    let mut i = 0;
    // SAFETY: every load stays inside `x[..n]`.
    unsafe {
        while i + 4 * l <= n {
            m0 = m0.max_acc(V::load(x.add(i)));
            m1 = m1.max_acc(V::load(x.add(i + l)));
            m2 = m2.max_acc(V::load(x.add(i + 2 * l)));
            m3 = m3.max_acc(V::load(x.add(i + 3 * l)));
            i += 4 * l;
        }
        while i + l <= n {
            m0 = m0.max_acc(V::load(x.add(i)));
            i += l;
        }
        if i < n {
            m0 = m0.max_acc(V::load_tail(x.add(i), n - i, ninf));
        }
    }
    let top = m0.max_acc(m1).max_acc(m2.max_acc(m3)).reduce_max();
    // SAFETY: the caller's contract, passed on.
    unsafe {
        if floor > top {
            // Below the floor, no value equals the reference: no comparison in pass 2.
            spans::<V, S, false>(x, n, v, ahead, floor)
        } else {
            spans::<V, S, true>(x, n, v, ahead, top)
        }
    }
}

/// Values per partial sum of pass 2. A sum's rounding error grows with the terms each
/// accumulator takes, and a chunk gives each up to 1024 on the narrowest float64 vectors:
/// float64 chunks are summed in spans of about the square root of that many steps, whose
/// partial sums then add in float64 (logsumexp([0, 70000 × (−30)]) was 18 ulp off on AVX2
/// and 40 on the scalar tier in one span). float32 results are not held to their last few
/// bits, and their hot loop stays one span per chunk.
const fn sum_span(lanes: usize, bytes: usize) -> usize {
    let steps = crate::elem::CHUNK / (2 * lanes);
    if bytes < 8 {
        return crate::elem::CHUNK;
    }
    let mut b = 1;
    while b * b < steps {
        b *= 2;
    }
    2 * lanes * b
}

/// Pass 2 over `x[..n]` in spans of [`sum_span`] values, their statistics added in float64.
///
/// # Safety
/// As [`stats`].
#[inline(always)]
unsafe fn spans<V: SimdVec, S: VSource<V>, const COUNT: bool>(
    x: *const V::F,
    n: usize,
    v: S,
    ahead: Ahead,
    m: V::F,
) -> Stats {
    let span = const { sum_span(V::LANES, size_of::<V::F>()) };
    let mut s: Option<Stats> = None;
    let mut start = 0;
    // One call site, so that the loop is compiled once into the caller.
    loop {
        let len = span.min(n - start);
        // SAFETY: each span lies inside `x[..n]`, and so do the lanes of `v` (shifted with
        // it).
        let part = unsafe {
            sums::<V, S, COUNT>(x.add(start), len, v.shifted(start), ahead.shifted(start), m)
        };
        s = Some(match s {
            None => part,
            Some(s) => Stats {
                cnt: s.cnt + part.cnt,
                rest: s.rest + part.rest,
                dot: s.dot + part.dot,
                vsum: s.vsum + part.vsum,
                ..s
            },
        });
        start += len;
        if start >= n {
            return s.unwrap_or(Stats::EMPTY);
        }
    }
}

/// Pass 2 of [`stats`] (from L1): Σ e^(x − m) over x ≠ m, how many x = m (when `COUNT`; else
/// no x equals m), and the weighted sum.
///
/// # Safety
/// As [`stats`].
#[inline(always)]
unsafe fn sums<V: SimdVec, S: VSource<V>, const COUNT: bool>(
    x: *const V::F,
    n: usize,
    v: S,
    ahead: Ahead,
    m: V::F,
) -> Stats {
    let l = V::LANES;
    let ninf = V::F::NEG_INF;
    let shift = V::F::from_f64(Stats::shift_for(m.to_f64()));
    let (mv, sv) = (V::splat(m), V::splat(shift));
    let zero = V::splat(V::F::ZERO);
    let (mut a0, mut a1, mut d0, mut s0) = (zero, zero, zero, zero);
    let mut cnt = zero;
    let mut i = 0;
    // SAFETY: every load stays inside `x[..n]` and the lanes of `v` the caller vouched for.
    unsafe {
        // Four vectors a step: a tier may interleave their exponentials (`exp_in_sum_many`).
        while i + 4 * l <= n {
            let mut xs = [zero; 4];
            let mut ds = [zero; 4];
            for k in 0..4 {
                // One request per cache line: an AVX2 vector is half of one.
                if (k * l * size_of::<V::F>()) % 64 == 0 {
                    ahead.touch(i + k * l);
                }
                xs[k] = V::load(x.add(i + k * l));
                ds[k] = xs[k].sub(mv);
            }
            let es = V::exp_in_sum_many(ds);
            for k in 0..4 {
                let vv = if S::ACTIVE {
                    Some(v.load(i + k * l))
                } else {
                    None
                };
                let acc = if k % 2 == 0 { &mut a0 } else { &mut a1 };
                *acc = stats_add::<V, COUNT>(
                    *acc, &mut cnt, &mut d0, &mut s0, es[k], xs[k], vv, mv, sv,
                );
            }
            i += 4 * l;
        }
        while i + l <= n {
            ahead.touch(i);
            let x0 = V::load(x.add(i));
            let v0 = if S::ACTIVE { Some(v.load(i)) } else { None };
            a0 = stats_step::<V, COUNT>(a0, &mut cnt, &mut d0, &mut s0, x0, v0, mv, sv);
            i += l;
        }
        if i < n {
            let k = n - i;
            let x0 = V::load_tail(x.add(i), k, ninf);
            let v0 = if S::ACTIVE {
                Some(v.load_tail(i, k))
            } else {
                None
            };
            a0 = stats_step::<V, COUNT>(a0, &mut cnt, &mut d0, &mut s0, x0, v0, mv, sv);
        }
    }
    let mut count = if COUNT { cnt.reduce_sum() } else { 0.0 };
    if COUNT && m == ninf {
        // The −inf fill lanes of the tail equal the maximum here: they are not values.
        count -= (n.next_multiple_of(l) - n) as f64;
    }
    Stats {
        m: m.to_f64(),
        cnt: count,
        rest: a0.add(a1).reduce_sum(),
        shift: shift.to_f64(),
        dot: if S::ACTIVE { d0.reduce_sum() } else { 0.0 },
        vsum: if S::ACTIVE { s0.reduce_sum() } else { 0.0 },
    }
}

/// One vector of the statistics pass. A function, not a closure, so that it is certain to be
/// inlined into the `#[target_feature]` caller.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn stats_step<V: SimdVec, const COUNT: bool>(
    acc: V,
    cnt: &mut V,
    d: &mut V,
    s: &mut V,
    xv: V,
    vv: Option<V>,
    mv: V,
    sv: V,
) -> V {
    let e = xv.sub(mv).exp_in_sum();
    stats_add::<V, COUNT>(acc, cnt, d, s, e, xv, vv, mv, sv)
}

/// The sums of [`stats_step`] given the vector's e^(x − m).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn stats_add<V: SimdVec, const COUNT: bool>(
    acc: V,
    cnt: &mut V,
    d: &mut V,
    s: &mut V,
    e: V,
    xv: V,
    vv: Option<V>,
    mv: V,
    sv: V,
) -> V {
    if let Some(vv) = vv {
        *d = d.add(V::mul_nonzero(vv, xv.sub(sv)));
        *s = s.add(vv);
    }
    if COUNT {
        let (acc, c) = acc.add_split(*cnt, e, xv, mv);
        *cnt = c;
        acc
    } else {
        acc.add(e)
    }
}

/// A softmax scaled and shifted by weights: p_scale·e^((x − m) − excess) − v_scale·v, with
/// excess = lse − m. Softmax itself is p_scale = 1, v_scale = 0; every cross-entropy
/// gradient is scale·(A·softmax(x) − v).
#[derive(Clone, Copy, Debug)]
pub struct ScaledSoftmax<F> {
    pub m: F,
    pub excess: F,
    pub p_scale: F,
    pub v_scale: F,
}

/// out = `f` over `n` values with weights `v`. `out` may be `x` itself.
///
/// # Safety
/// `x` readable and `out` writable for `n` values; `v` in bounds for `n` lanes.
#[inline(always)]
pub unsafe fn write_exp<V: SimdVec, S: VSource<V>>(
    x: *const V::F,
    out: *mut V::F,
    n: usize,
    f: ScaledSoftmax<V::F>,
    v: S,
) {
    let lanes = V::LANES;
    let f = ScaledSoftmax {
        m: V::splat(f.m),
        excess: V::splat(f.excess),
        p_scale: V::splat(f.p_scale),
        v_scale: V::splat(f.v_scale),
    };
    let mut i = 0;
    // SAFETY: every access stays inside `[..n]`; each lane is read before it is written, so
    // `out == x` is fine.
    unsafe {
        // Four vectors a step: a tier may interleave their exponentials (`exp_many`).
        while i + 4 * lanes <= n {
            let mut a = [f.m; 4];
            for (k, a) in a.iter_mut().enumerate() {
                *a = V::load(x.add(i + k * lanes)).sub(f.m).sub(f.excess);
            }
            let e = V::exp_many(a);
            for (k, e) in e.into_iter().enumerate() {
                scaled_term::<V, S>(e, v.load(i + k * lanes), f).store(out.add(i + k * lanes));
            }
            i += 4 * lanes;
        }
        while i + lanes <= n {
            exp_term::<V, S>(V::load(x.add(i)), v.load(i), f).store(out.add(i));
            i += lanes;
        }
        if i < n {
            let k = n - i;
            let xv = V::load_tail(x.add(i), k, V::F::ZERO);
            exp_term::<V, S>(xv, v.load_tail(i, k), f).store_tail(out.add(i), k);
        }
    }
}

#[inline(always)]
fn exp_term<V: SimdVec, S: VSource<V>>(xv: V, vv: V, f: ScaledSoftmax<V>) -> V {
    scaled_term::<V, S>(xv.sub(f.m).sub(f.excess).exp(), vv, f)
}

/// p_scale·e − v_scale·v, given e = e^((x − m) − excess).
#[inline(always)]
fn scaled_term<V: SimdVec, S: VSource<V>>(e: V, vv: V, f: ScaledSoftmax<V>) -> V {
    let p = e.mul(f.p_scale);
    if S::ACTIVE {
        p.sub(vv.mul(f.v_scale))
    } else {
        p
    }
}

/// out = (x − m) − excess over `n` values: log-softmax. `out` may be `x` itself.
///
/// # Safety
/// `x` readable and `out` writable for `n` values.
#[inline(always)]
pub unsafe fn write_log<V: SimdVec>(
    x: *const V::F,
    out: *mut V::F,
    n: usize,
    m: V::F,
    excess: V::F,
) {
    let lanes = V::LANES;
    let (mv, excess_v) = (V::splat(m), V::splat(excess));
    let mut i = 0;
    // SAFETY: every access stays inside `[..n]`, each lane read before written.
    unsafe {
        while i + lanes <= n {
            V::load(x.add(i)).sub(mv).sub(excess_v).store(out.add(i));
            i += lanes;
        }
        if i < n {
            let k = n - i;
            V::load_tail(x.add(i), k, V::F::ZERO)
                .sub(mv)
                .sub(excess_v)
                .store_tail(out.add(i), k);
        }
    }
}
