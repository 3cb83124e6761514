//! The partial log-sum-exp of a stretch of values, and how two partials merge.
//!
//! A partial keeps the maximum `m`, how many values equal it (`cnt`) and the sum of
//! e^(x − m) over the others (`rest`), so that lse − m = log1p(cnt − 1 + rest) keeps full
//! precision when one term dominates (logsumexp([0, −40]) = 4.25e-18, not 0). It also carries
//! an optional weighted sum Σ v·(x − shift) that cross-entropy needs, shifted by the maximum
//! so that large logits do not cancel.

/// Partial statistics of a stretch of one row. Merging is associative, and kernels merge in a
/// fixed order, so results do not depend on how work was split over threads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    /// The reference of the sums: the maximum over the non-NaN values (−inf when there are
    /// none), or a larger value from earlier in the row (see `chunk::stats`). A row's merged
    /// statistics always hold its true maximum.
    pub m: f64,
    /// How many values equal `m`.
    pub cnt: f64,
    /// Σ e^(x − m) over values ≠ m; NaN when any value is NaN.
    pub rest: f64,
    /// The reference of `dot`: `m` when finite, else 0.
    pub shift: f64,
    /// Σ v·(x − shift), with 0 wherever v = 0.
    pub dot: f64,
    /// Σ v.
    pub vsum: f64,
}

impl Stats {
    /// The statistics of nothing: log-sum-exp −inf.
    pub const EMPTY: Stats = Stats {
        m: f64::NEG_INFINITY,
        cnt: 0.0,
        rest: 0.0,
        shift: 0.0,
        dot: 0.0,
        vsum: 0.0,
    };

    pub fn shift_for(m: f64) -> f64 {
        if m.is_finite() {
            m
        } else {
            0.0
        }
    }

    /// lse − m, at full precision when the maximum dominates.
    pub fn excess(&self) -> f64 {
        (self.cnt - 1.0 + self.rest).ln_1p()
    }

    /// Σ v·(lse − x): the v-weighted negative log-likelihood, computed without cancellation;
    /// `excess` is [`Stats::excess`].
    pub fn weighted_nll(&self, excess: f64) -> f64 {
        if self.vsum == 0.0 {
            // No weight on the row: also when lse is infinite (0·inf would be NaN).
            return -self.dot;
        }
        self.vsum * ((self.m - self.shift) + excess) - self.dot
    }

    /// The statistics of both stretches together.
    pub fn merge(self, o: Stats) -> Stats {
        let m = if o.m > self.m { o.m } else { self.m };
        let shift = Stats::shift_for(m);
        let (ca, ra) = self.rescaled(m);
        let (cb, rb) = o.rescaled(m);
        Stats {
            m,
            cnt: ca + cb,
            rest: ra + rb,
            shift,
            dot: self.rebased_dot(shift) + o.rebased_dot(shift),
            vsum: self.vsum + o.vsum,
        }
    }

    fn rescaled(&self, m: f64) -> (f64, f64) {
        rescaled(self.cnt, self.rest, self.m, m)
    }

    fn rebased_dot(&self, shift: f64) -> f64 {
        if self.vsum == 0.0 {
            self.dot
        } else {
            self.dot + self.vsum * (self.shift - shift)
        }
    }
}

/// `(cnt, rest)` of a partial whose reference was `from`, taken relative to `to` ≥ `from`:
/// where the reference rises, the sums shrink by e^(from − to) and the values equal to the old
/// reference join the rest.
#[inline(always)]
pub fn rescaled(cnt: f64, rest: f64, from: f64, to: f64) -> (f64, f64) {
    if from == to {
        (cnt, rest)
    } else {
        // From −inf (no finite value yet, as in every fresh column lane) the factor is 0: no
        // libm call for it.
        let f = if from == f64::NEG_INFINITY {
            0.0
        } else {
            (from - to).exp()
        };
        (0.0, (cnt + rest) * f)
    }
}

/// Σ xs in a fixed order (eight interleaved running sums, then their sum), so that the result
/// does not depend on the thread count and the summation does not wait on one chain of
/// dependent additions.
pub fn sum(xs: &[f64]) -> f64 {
    let mut acc = [0.0; 8];
    let mut it = xs.chunks_exact(8);
    for c in &mut it {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    for (a, v) in acc.iter_mut().zip(it.remainder()) {
        *a += v;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}
