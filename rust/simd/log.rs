//! ln(1 + u) over vector lanes, for turning a vector of rows' statistics into their
//! log-sum-exps at once: a scalar `ln_1p` per row costs more than the rest of a short row.

use super::{Float, SimdVec};

/// Cephes `logf` minimax coefficients: ln(1 + x) ≈ x − x²/2 + x³·P(x) on
/// x ∈ [√½ − 1, √2 − 1].
const LOG_P_F32: [f32; 9] = [
    7.037_683_6e-2,
    -1.151_461e-1,
    1.167_699_9e-1,
    -1.242_014_1e-1,
    1.424_932_3e-1,
    -1.666_805_8e-1,
    2.000_071_5e-1,
    -2.499_999_4e-1,
    3.333_333e-1,
];
/// ln 2 split so that k·hi is exact for the small exponents k met here.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// ln(1 + u) in float32 for u ≥ 0 or NaN, given v = 1 + u (rounded) = f·2^k with
/// f ∈ [√½, √2). The rounding error of v is put back through (u − (v − 1))/v, so tiny u keeps
/// its full precision (ln(1 + 4e-18) = 4e-18), and a NaN u makes that term, and the result,
/// NaN.
#[inline(always)]
pub fn ln_1p_f32<V: SimdVec<F = f32>>(u: V, v: V, f: V, k: V) -> V {
    let one = V::splat(1.0);
    let c = u.sub(v.sub(one)).div(v);
    let x = f.sub(one);
    let z = x.mul(x);
    let mut p = V::splat(LOG_P_F32[0]);
    for &coef in &LOG_P_F32[1..] {
        p = p.mul_add(x, V::splat(coef));
    }
    let y = p.mul(x).mul(z);
    let y = k.mul_add(V::splat(LN2_LO), y);
    let y = z.mul_add(V::splat(-0.5), y).add(c);
    k.mul_add(V::splat(LN2_HI), x.add(y))
}

/// ln(1 + u) lane by lane in float64: the tiers without a vector polynomial.
#[inline(always)]
pub fn ln_1p_lanes<V: SimdVec>(u: V) -> V {
    let mut a = [V::F::ZERO; 16];
    // SAFETY: `a` holds 16 ≥ LANES values.
    unsafe { u.store(a.as_mut_ptr()) };
    for v in &mut a[..V::LANES] {
        *v = V::F::from_f64(v.to_f64().ln_1p());
    }
    // SAFETY: as above.
    unsafe { V::load(a.as_ptr()) }
}
