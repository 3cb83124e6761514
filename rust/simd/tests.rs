//! Every tier's vector operations against plain scalar arithmetic, and the vector `exp` and
//! `ln_1p` against float64 on dense sweeps.

use super::*;

/// Every tier this CPU has, each once.
fn tiers() -> Vec<Tier> {
    let mut t: Vec<Tier> = [Tier::Scalar, Tier::Neon, Tier::Avx2, Tier::Avx512]
        .into_iter()
        .map(cap)
        .collect();
    t.dedup();
    t
}

#[derive(Clone, Copy)]
enum Unary {
    Exp,
    ExpInSum,
    Ln1p,
}

impl Unary {
    fn apply<V: SimdVec>(self, v: V) -> V {
        match self {
            Unary::Exp => v.exp(),
            Unary::ExpInSum => v.exp_in_sum(),
            Unary::Ln1p => v.ln_1p(),
        }
    }

    /// Four vectors at once: `exp_many` and `exp_in_sum_many` must give `exp` and `exp_in_sum`.
    fn apply4<V: SimdVec>(self, v: [V; 4]) -> [V; 4] {
        match self {
            Unary::Exp => V::exp_many(v),
            Unary::ExpInSum => V::exp_in_sum_many(v),
            Unary::Ln1p => v.map(V::ln_1p),
        }
    }

    fn reference(self, x: f64) -> f64 {
        match self {
            Unary::Exp | Unary::ExpInSum => x.exp(),
            Unary::Ln1p => x.ln_1p(),
        }
    }
}

/// Applies a vector function to `x` lane-wise (tails included) on one tier, four vectors at a
/// time where `four`.
struct Apply<'a, F> {
    op: Unary,
    four: bool,
    x: &'a [F],
    out: &'a mut [F],
}

impl<F: Float> Kernel for Apply<'_, F> {
    type F = F;
    type Out = ();
    fn run<V: SimdVec<F = F>>(self) {
        let l = V::LANES;
        let mut i = 0;
        // SAFETY: loads and stores stay inside the slices.
        unsafe {
            while self.four && i + 4 * l <= self.x.len() {
                let p = self.x.as_ptr().add(i);
                let v = [0, 1, 2, 3].map(|k| V::load(p.add(k * l)));
                for (k, y) in self.op.apply4(v).into_iter().enumerate() {
                    y.store(self.out.as_mut_ptr().add(i + k * l));
                }
                i += 4 * l;
            }
            while i + l <= self.x.len() {
                self.op
                    .apply(V::load(self.x.as_ptr().add(i)))
                    .store(self.out.as_mut_ptr().add(i));
                i += l;
            }
            let k = self.x.len() - i;
            if k > 0 {
                self.op
                    .apply(V::load_tail(self.x.as_ptr().add(i), k, F::ZERO))
                    .store_tail(self.out.as_mut_ptr().add(i), k);
            }
        }
    }
}

fn apply<F: Float>(tier: Tier, op: Unary, x: &[F]) -> Vec<F> {
    apply_as(tier, op, false, x)
}

fn apply_as<F: Float>(tier: Tier, op: Unary, four: bool, x: &[F]) -> Vec<F> {
    let mut out = vec![F::ZERO; x.len()];
    F::dispatch(
        tier,
        Apply {
            op,
            four,
            x,
            out: &mut out,
        },
    );
    out
}

fn ulp_f32(got: f32, want: f64) -> f64 {
    let w = want as f32;
    if got == w {
        return 0.0;
    }
    let ulp = (f32::from_bits(w.to_bits() + 1) - w) as f64;
    ((got as f64) - want).abs() / ulp
}

fn ulp_f64(got: f64, want: f64) -> f64 {
    if got == want {
        return 0.0;
    }
    let ulp = f64::from_bits(want.to_bits() + 1) - want;
    (got - want).abs() / ulp
}

/// The largest error of `op` over `xs` on `tier`, in units in the last place of `ulp`.
fn worst_ulp<F: Float>(tier: Tier, op: Unary, xs: &[F], ulp: impl Fn(F, f64) -> f64) -> f64 {
    let out = apply(tier, op, xs);
    xs.iter()
        .zip(&out)
        .map(|(&x, &y)| ulp(y, op.reference(x.to_f64())))
        .fold(0.0, f64::max)
}

#[test]
fn exp_f32_within_2_ulp_on_a_dense_sweep() {
    // Every 61st float in [−87.33, 0] (about 18 million values): tails of all widths too.
    let lo = consts::EXP_LO_F32;
    let xs: Vec<f32> = (0u32..)
        .map(|k| -f32::from_bits(k * 61))
        .take_while(|&x| x >= lo)
        .collect();
    for tier in tiers() {
        let worst = worst_ulp(tier, Unary::Exp, &xs, ulp_f32);
        eprintln!("exp f32 {tier:?}: max {worst:.3} ulp");
        assert!(worst <= 2.0, "{tier:?}: {worst} ulp");
    }
}

#[test]
fn exp_f64_within_2_ulp() {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let xs: Vec<f64> = (0..400_000)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            consts::EXP_LO_F64 * (s >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect();
    for tier in tiers() {
        let worst = worst_ulp(tier, Unary::Exp, &xs, ulp_f64);
        eprintln!("exp f64 {tier:?}: max {worst:.3} ulp");
        assert!(worst <= 2.0, "{tier:?}: {worst} ulp");
    }
}

#[test]
fn exp_edge_values() {
    for tier in tiers() {
        let x = [
            f32::NEG_INFINITY,
            f32::NAN,
            -100.0,
            -87.4,
            0.0,
            -0.0,
            1e-30,
            -1.0,
            -2.0,
        ];
        let out = apply(tier, Unary::Exp, &x);
        assert_eq!(out[0], 0.0, "{tier:?}");
        assert!(out[1].is_nan(), "{tier:?}");
        // Below the normal range: 0, or the subnormal value where the tier has it.
        assert!(out[2] == 0.0 || (out[2] as f64 / (-100f64).exp() - 1.0).abs() < 0.1);
        assert!(out[3] == 0.0 || (out[3] as f64 / (-87.4f64).exp() - 1.0).abs() < 1e-3);
        assert_eq!(out[4], 1.0, "{tier:?}");
        assert_eq!(out[5], 1.0, "{tier:?}");
        assert!((out[7] - (-1f32).exp()).abs() < 2e-7, "{tier:?}");

        let x = [f64::NEG_INFINITY, f64::NAN, -800.0, 0.0, -1.0];
        // −800 is below even the subnormal range: exactly 0 on every tier.
        let out = apply(tier, Unary::Exp, &x);
        assert_eq!(out[0], 0.0);
        assert!(out[1].is_nan());
        assert_eq!(out[2], 0.0);
        assert_eq!(out[3], 1.0);
        assert!((out[4] - (-1f64).exp()).abs() < 1e-16);
    }
}

/// Σ xs, compensated (Neumaier): exact to about one rounding of the total, so that two sums
/// compare their terms, not their additions' rounding.
fn exact_sum(xs: impl Iterator<Item = f64>) -> f64 {
    let (mut s, mut c) = (0.0f64, 0.0f64);
    for x in xs {
        let t = s + x;
        c += if s.abs() >= x.abs() {
            (s - t) + x
        } else {
            (x - t) + s
        };
        s = t;
    }
    s + c
}

/// `exp_in_sum` over `xs` (≤ 0) on every tier, one and four vectors at a time: within 2 ulp
/// where `exp` must be (from `exp_lo` up), in [0, `tiny`] below; exactly 0 at −inf, NaN at NaN.
/// Then the sum 1 + Σ e^x (the kernels' sums hold a 1: the maximum's term) against float64,
/// within the bound those give: 2 ulp of each normal term plus `tiny` per other term.
/// `ulp_of_1` is the spacing of the type's values just above 1.
fn exp_in_sum_bound<F: Float>(xs: &[F], exp_lo: f64, tiny: f64, ulp_of_1: f64) {
    let mut with_edges = xs.to_vec();
    with_edges.extend([F::NEG_INF, F::from_f64(f64::NAN)]);
    let want: Vec<f64> = xs.iter().map(|x| x.to_f64().exp()).collect();
    // 2 ulp of w: an ulp is at most ulp_of_1·w.
    let per_term = |x: f64, w: f64| {
        if x >= exp_lo {
            2.0 * ulp_of_1 * w
        } else {
            tiny
        }
    };
    let bound = exact_sum(xs.iter().zip(&want).map(|(x, &w)| per_term(x.to_f64(), w)));
    let total = 1.0 + exact_sum(want.iter().copied());
    for tier in tiers() {
        let one = apply(tier, Unary::ExpInSum, &with_edges);
        for four in [false, true] {
            let got = apply_as(tier, Unary::ExpInSum, four, &with_edges);
            let n = xs.len();
            assert_eq!(got[n].to_f64(), 0.0, "{tier:?}: e^-inf");
            assert!(got[n + 1].to_f64().is_nan(), "{tier:?}: e^NaN");
            for ((x, y), w) in xs.iter().zip(&got).zip(&want) {
                let (x, y) = (x.to_f64(), y.to_f64());
                if x >= exp_lo {
                    assert!(
                        (y - w).abs() <= per_term(x, *w),
                        "{tier:?}: e^{x} = {y}, not {w}"
                    );
                } else {
                    assert!((0.0..=tiny).contains(&y), "{tier:?}: e^{x} = {y}");
                }
            }
            let sum = 1.0 + exact_sum(got[..n].iter().map(|y| y.to_f64()));
            let err = (sum - total).abs();
            eprintln!(
                "exp_in_sum {}-bit {tier:?} four={four}: |error of the sum| {err:.3e} ≤ \
                 bound {bound:.3e}, {:.3} ulp of the sum",
                size_of::<F>() * 8,
                err / (ulp_of_1 * total)
            );
            assert!(err <= bound, "{tier:?}: {err} > {bound}");
            // Four at a time gives what one at a time does, bit for bit.
            let same =
                |a: &[F], b: &[F]| a.iter().zip(b).all(|(a, b)| a == b || a.to_f64().is_nan());
            assert!(same(&got, &one), "{tier:?}: exp_in_sum_many");
            let exps = apply(tier, Unary::Exp, &with_edges);
            let exps4 = apply_as(tier, Unary::Exp, four, &with_edges);
            assert!(same(&exps4, &exps), "{tier:?}: exp_many");
        }
    }
}

#[test]
fn exp_in_sum_f32_on_a_dense_sweep() {
    // Every 61st float in [−110, 0]: past the clamp, through the range where only a bound
    // holds, to 0.
    let xs: Vec<f32> = (0u32..)
        .map(|k| -f32::from_bits(k * 61))
        .take_while(|&x| x >= -110.0)
        .collect();
    let lo = consts::EXP_LO_F32 as f64;
    exp_in_sum_bound(&xs, lo, f32::MIN_POSITIVE as f64, f32::EPSILON as f64);
}

#[test]
fn exp_in_sum_f64_on_a_dense_sweep() {
    // 400 000 points in [−760, 0], and 20 000 more across EXP_LO and the clamp below it.
    let mut xs: Vec<f64> = (0..400_000)
        .map(|k| -760.0 * k as f64 / 400_000.0)
        .collect();
    let edge = consts::EXP_LO_F64;
    xs.extend((0..20_000).map(|k| edge + 1.0 - 2.0 * k as f64 / 20_000.0));
    let tiny = 2.0 * f64::MIN_POSITIVE;
    exp_in_sum_bound(&xs, consts::EXP_LO_F64, tiny, f64::EPSILON);
}

#[test]
fn ln_1p_f32_within_2_ulp_on_a_dense_sweep() {
    // Every 97th float in [0, 64]: from the subnormals through 1 + u rounding to 1, to the
    // largest u of rows of 32 classes. Tails of all widths too.
    let xs: Vec<f32> = (0u32..)
        .map(|k| f32::from_bits(k * 97))
        .take_while(|&x| x <= 64.0)
        .collect();
    for tier in tiers() {
        let worst = worst_ulp(tier, Unary::Ln1p, &xs, ulp_f32);
        eprintln!("ln_1p f32 {tier:?}: max {worst:.3} ulp");
        assert!(worst <= 2.0, "{tier:?}: {worst} ulp");
    }
}

#[test]
fn ln_1p_edge_values() {
    for tier in tiers() {
        let x = [0.0, 4.25e-18, 1e-30, f32::NAN, 1.0, 31.0];
        let out = apply(tier, Unary::Ln1p, &x);
        assert_eq!(out[0], 0.0, "{tier:?}");
        assert_eq!(out[1], 4.25e-18, "{tier:?}");
        assert_eq!(out[2], 1e-30, "{tier:?}");
        assert!(out[3].is_nan(), "{tier:?}");
        assert!((out[4] - std::f32::consts::LN_2).abs() <= 6e-8, "{tier:?}");
        assert!((out[5] - 32f32.ln()).abs() <= 4e-7, "{tier:?}");
        // Float64 lanes take float64's own ln_1p.
        let x = [0.0, 4.25e-18, f64::NAN, 0.5, 31.0];
        let out = apply(tier, Unary::Ln1p, &x);
        for (g, w) in out.iter().zip(x) {
            assert!(*g == w.ln_1p() || (g.is_nan() && w.is_nan()), "{tier:?}");
        }
    }
}

/// The masked and horizontal operations on one vector, compared with scalar loops.
struct Ops<'a, F> {
    x: &'a [F],
    m: F,
    res: &'a mut Vec<f64>,
}

impl<F: Float> Kernel for Ops<'_, F> {
    type F = F;
    type Out = ();
    fn run<V: SimdVec<F = F>>(self) {
        self.res.push(V::LANES as f64);
        for n in 1..=V::LANES.min(self.x.len()) {
            // SAFETY: n ≤ x.len() elements are read.
            let v = unsafe {
                if n == V::LANES {
                    V::load(self.x.as_ptr())
                } else {
                    V::load_tail(self.x.as_ptr(), n, F::NEG_INF)
                }
            };
            let mv = V::splat(self.m);
            let ones = V::splat(F::ONE);
            let zero = V::splat(F::ZERO);
            let (sum, eq) = zero.add_split(zero, ones, v, mv);
            self.res.push(eq.reduce_sum());
            self.res.push(sum.reduce_sum());
            self.res
                .push(V::splat(F::NEG_INF).max_acc(v).reduce_max().to_f64());
            self.res.push(V::mul_nonzero(v, ones).reduce_sum());
        }
    }
}

#[test]
fn masked_and_horizontal_ops_agree_across_tiers() {
    let x: Vec<f32> = vec![
        3.0,
        -1.0,
        3.0,
        0.0,
        f32::NAN,
        2.5,
        3.0,
        -7.0,
        1.0,
        0.0,
        3.0,
        -2.0,
        0.5,
        0.25,
        3.0,
        1.5,
    ];
    // What a vector of `l` lanes holding x[..n] and −inf fill should give.
    let want_for = |l: usize| {
        let mut want = vec![l as f64];
        for n in 1..=l {
            let s: Vec<f32> = (0..l)
                .map(|i| if i < n { x[i] } else { f32::NEG_INFINITY })
                .collect();
            want.push(s.iter().filter(|&&v| v == 3.0).count() as f64);
            want.push(s.iter().filter(|&&v| v != 3.0).count() as f64);
            want.push(
                s.iter()
                    .filter(|v| !v.is_nan())
                    .fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64,
            );
            want.push(s.iter().filter(|&&v| v != 0.0).map(|&v| v as f64).sum());
        }
        want
    };
    for tier in tiers() {
        let mut res = Vec::new();
        f32::dispatch(
            tier,
            Ops {
                x: &x,
                m: 3.0,
                res: &mut res,
            },
        );
        let want = want_for(res[0] as usize);
        assert_eq!(res.len(), want.len());
        for (i, (g, w)) in res.iter().zip(&want).enumerate() {
            assert!(
                g == w || (g.is_nan() && w.is_nan()),
                "{tier:?} #{i}: {g} vs {w}"
            );
        }
    }
}

/// Every `load_strided` of `x` with `stride` and each start below it, lanes in order.
struct Strided<'a, F> {
    x: &'a [F],
    stride: usize,
    out: &'a mut Vec<F>,
}

impl<F: Float> Kernel for Strided<'_, F> {
    type F = F;
    type Out = usize;
    fn run<V: SimdVec<F = F>>(self) -> usize {
        let mut lanes = [F::ZERO; 16];
        for k in 0..self.stride {
            assert!(k + (V::LANES - 1) * self.stride < self.x.len());
            // SAFETY: the largest offset read is inside `x` (asserted); `lanes` holds 16.
            unsafe {
                V::load_strided(self.x.as_ptr().add(k), self.stride).store(lanes.as_mut_ptr())
            };
            self.out.extend_from_slice(&lanes[..V::LANES]);
        }
        V::LANES
    }
}

fn strided_loads_match<F: Float>() {
    // Distinct values, NaN and the infinities among them, so a lane from the wrong place shows.
    let x: Vec<F> = (0..16 * 40)
        .map(|i| match i % 97 {
            5 => F::from_f64(f64::NAN),
            6 => F::from_f64(f64::INFINITY),
            7 => F::NEG_INF,
            _ => F::from_f64(i as f64 * 0.5 - 100.0),
        })
        .collect();
    for tier in tiers() {
        for stride in 1..=33 {
            let mut out = Vec::new();
            let lanes = F::dispatch(
                tier,
                Strided {
                    x: &x,
                    stride,
                    out: &mut out,
                },
            );
            for k in 0..stride {
                for l in 0..lanes {
                    let (got, want) = (out[k * lanes + l], x[k + l * stride]);
                    assert!(
                        got.to_f64().to_bits() == want.to_f64().to_bits(),
                        "{tier:?} stride {stride} start {k} lane {l}"
                    );
                }
            }
        }
    }
}

#[test]
fn strided_loads_take_one_value_per_row() {
    strided_loads_match::<f32>();
    strided_loads_match::<f64>();
}
