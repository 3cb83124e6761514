//! Run-time selected SIMD tiers behind one vector trait.
//!
//! Kernels are written once, generic over [`SimdVec`], and instantiated per tier inside a
//! `#[target_feature]` function (see [`Float::dispatch`]), so the one binary uses AVX-512 or
//! AVX2+FMA where the CPU has them, NEON on aarch64, and plain scalar code elsewhere.

use std::sync::atomic::{AtomicU8, Ordering};

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod log;
#[cfg(target_arch = "aarch64")]
mod neon;
mod scalar;

pub use scalar::Scalar;

/// Memory a loop's caller reads next, requested while the loop computes on data already in
/// cache. Without it a block's loads (from DRAM) and its arithmetic (from cache) take turns
/// instead of overlapping, and a core runs at about half its speed.
///
/// `L2` requests the lines into L2 only: for a loop that reads the lines it requests
/// itself, later, in a pattern whose lines would evict one another from L1 (rows a power of
/// two apart share L1 sets).
#[derive(Clone, Copy)]
pub struct Ahead<const L2: bool = false> {
    base: *const u8,
    /// Bytes per element.
    elem: usize,
}

impl<const L2: bool> Ahead<L2> {
    /// Elements of `T` from `p` on (any address: a request never faults).
    pub fn at<T>(p: *const T) -> Self {
        Ahead {
            base: p.cast(),
            elem: size_of::<T>(),
        }
    }

    /// The same stream from element `k` on.
    #[inline(always)]
    pub fn shifted(self, k: usize) -> Self {
        Ahead {
            base: self.base.wrapping_add(k * self.elem),
            elem: self.elem,
        }
    }

    /// Requests the cache line holding element `i`. Loops call it once per vector (one
    /// line of float32 AVX-512 values): no inner loop, so the vector loop stays unrolled.
    #[inline(always)]
    pub fn touch(self, i: usize) {
        prefetch::<L2>(self.base.wrapping_add(i * self.elem));
    }
}

/// The lines of a band of row segments, requested into L2 one per call in memory order,
/// whatever order the caller reads in. A loop that walks a pass of rows down its columns calls
/// it once per vector with the next pass's rows: the memory system then sees one stream at a
/// time, as from a loop over rows.
pub struct RowStream {
    line: *const u8,
    row: *const u8,
    /// Lines left in this row, lines per row, bytes from row to row, rows left.
    left: usize,
    lines: usize,
    step: usize,
    rows: usize,
}

impl RowStream {
    /// `rows` segments of `len` elements from `p` on, `step` elements apart (any address: a
    /// request never faults).
    pub fn new<T>(p: *const T, len: usize, step: usize, rows: usize) -> RowStream {
        let (start, bytes) = (p as usize, len * size_of::<T>());
        let lines = if bytes == 0 {
            0
        } else {
            ((start + bytes - 1) >> 6) - (start >> 6) + 1
        };
        let row = p.cast::<u8>().wrapping_sub(start & 63);
        RowStream {
            line: row,
            row,
            left: lines,
            lines,
            step: step * size_of::<T>(),
            rows: if lines == 0 { 0 } else { rows },
        }
    }

    /// Requests the next line, if any is left.
    #[inline(always)]
    pub fn next(&mut self) {
        if self.rows == 0 {
            return;
        }
        prefetch::<true>(self.line);
        self.left -= 1;
        if self.left == 0 {
            self.rows -= 1;
            self.row = self.row.wrapping_add(self.step);
            self.line = self.row;
            self.left = self.lines;
        } else {
            self.line = self.line.wrapping_add(64);
        }
    }
}

/// Asks the memory system for the cache line holding `p`, a hint with no effect on results.
#[inline(always)]
fn prefetch<const L2: bool>(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address; SSE is part of x86_64.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
        if L2 {
            _mm_prefetch::<_MM_HINT_T1>(p.cast())
        } else {
            _mm_prefetch::<_MM_HINT_T0>(p.cast())
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Range reduction and polynomial constants shared by every vector `exp`.
// The ln2/16, ln2/8 and ln2/4 tables serve the x86 tiers only, Cephes' float32 polynomial and
// the float64 one on |r| ≤ ln2/2 NEON only.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) mod consts {
    #[cfg_attr(target_arch = "x86_64", allow(dead_code))]
    pub const LOG2E_F32: f32 = std::f32::consts::LOG2_E;
    /// ln 2 split in two (Cody–Waite): `C1` is exact in few bits, so `n * C1` is exact.
    #[cfg_attr(target_arch = "x86_64", allow(dead_code))]
    pub const LN2_HI_F32: f32 = 0.693_359_4;
    #[cfg_attr(target_arch = "x86_64", allow(dead_code))]
    pub const LN2_LO_F32: f32 = -2.121_944_4e-4;
    /// Below ln(FLT_MIN) the result would be subnormal: it is flushed to zero.
    pub const EXP_LO_F32: f32 = -87.336_54;
    /// Below this e^x rounds to 0 even as a subnormal: `scalef` tiers clamp here, so −inf
    /// needs no separate test.
    pub const EXP_FLOOR_F32: f32 = -104.0;
    /// Cephes `expf` minimax coefficients for e^r ≈ 1 + r + r²·P(r), |r| ≤ ln2/2, evaluated
    /// as (P·r + 1)·r + 1.
    #[cfg_attr(target_arch = "x86_64", allow(dead_code))]
    pub const EXP_P_F32: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];

    /// The AVX-512 float32 `exp` reduces by ln2/16 and looks 2^(j/16) up in one register
    /// (a permute), so a degree-3 polynomial suffices: fewer FMA-pipe operations per value.
    pub const LOG2E_X16_F32: f32 = 16.0 * std::f32::consts::LOG2_E;
    /// ln2/16 split in two: the high part has 12 significant bits, so n·hi is exact for the
    /// |n| ≤ 2401 of the clamped range.
    pub const LN2_16_HI_F32: f32 = f32::from_bits(0x3d31_7000);
    pub const LN2_16_LO_F32: f32 = f32::from_bits(0x3605_fdf4);
    /// 2^(j/16), j = 0..15, rounded to float32.
    pub const EXP2_J16_F32: [u32; 16] = [
        0x3f80_0000,
        0x3f85_aac3,
        0x3f8b_95c2,
        0x3f91_c3d3,
        0x3f98_37f0,
        0x3f9e_f532,
        0x3fa5_fed7,
        0x3fad_583f,
        0x3fb5_04f3,
        0x3fbd_08a4,
        0x3fc5_672a,
        0x3fce_248c,
        0x3fd7_44fd,
        0x3fe0_ccdf,
        0x3fea_c0c7,
        0x3ff5_257d,
    ];
    /// e^r ≈ 1 + r + r²/2 + r³/6 on |r| ≤ ln2/32: truncation below 1e-8 relative.
    pub const EXP_P3_F32: [f32; 2] = [1.0 / 6.0, 0.5];

    /// The AVX2 float32 `exp` reduces by ln2/8 and looks 2^(j/8) up in one register
    /// (`vpermps` takes 8 entries), so a degree-4 polynomial suffices (truncation below 2e-9
    /// relative) instead of Cephes' degree 7: three fewer FMA-pipe operations per vector and a
    /// dependency chain a third shorter.
    pub const LOG2E_X8_F32: f32 = 8.0 * std::f32::consts::LOG2_E;
    /// ln2/8 split in two: the high part has 12 significant bits, so n·hi is exact for the
    /// |n| ≤ 1008 of the clamped range.
    pub const LN2_8_HI_F32: f32 = f32::from_bits(0x3db1_7000);
    pub const LN2_8_LO_F32: f32 = f32::from_bits(0x3685_fdf4);
    /// −1016·ln2/8: clamped here, x·8/ln2 rounds to n = −1016 = 8·(−127), whose 2^(n/8) built
    /// from the table has an exponent field of 0 and a mantissa of 0: exactly 0.
    pub const EXP_ZERO8_F32: f32 = f32::from_bits(0xc2b0_0f34);
    /// e^r − 1 ≈ r + r²·(1/2 + r/6 + r²/24) on |r| ≤ ln2/16.
    pub const EXP_P4_F32: [f32; 3] = [1.0 / 24.0, 1.0 / 6.0, 0.5];
    /// e^r − 1 ≈ r + r²·(c2 + c3·r) on |r| ≤ ln2/16, [c3, c2]: a minimax fit (0.22 ulp of
    /// truncation) for the exp inside sums, where a term's last bits do not matter.
    pub const EXP_P3_SUM_F32: [f32; 2] = [f32::from_bits(0x3e2a_ab2a), f32::from_bits(0x3f00_0439)];
    /// The bits of 2^(j/8) less j·2^20, j = 0..7. With t = 1.5·2^23 + n (n = 8k + j in its
    /// low bits), entry j plus the bits of t shifted left by 20 is 2^(j/8) with k added to
    /// its exponent field: 2^(n/8) in two integer operations after the lookup.
    pub const EXP2_J8_ADJ_F32: [u32; 8] = {
        let mut t = [0u32; 8];
        let mut j = 0;
        while j < 8 {
            t[j] = EXP2_J16_F32[2 * j].wrapping_sub((j as u32) << 20);
            j += 1;
        }
        t
    };

    /// The AVX-512 float64 `exp` uses the same ln2/16 reduction: a degree-7 polynomial then
    /// suffices (truncation below 3e-18) instead of degree 13.
    pub const LOG2E_X16_F64: f64 = 16.0 * std::f64::consts::LOG2_E;
    /// ln2/16 split in two: the high part has 36 significant bits, so n·hi is exact for the
    /// |n| ≤ 17220 of the clamped range.
    pub const LN2_16_HI_F64: f64 = f64::from_bits(0x3fa6_2e42_fefa_0000);
    pub const LN2_16_LO_F64: f64 = f64::from_bits(0x3d3c_f79a_bc9e_3b3a);
    /// 2^(j/16), j = 0..15, rounded to float64.
    pub const EXP2_J16_F64: [u64; 16] = [
        0x3ff0_0000_0000_0000,
        0x3ff0_b558_6cf9_890f,
        0x3ff1_72b8_3c7d_517b,
        0x3ff2_387a_6e75_6238,
        0x3ff3_06fe_0a31_b715,
        0x3ff3_dea6_4c12_3422,
        0x3ff4_bfda_d536_2a27,
        0x3ff5_ab07_dd48_5429,
        0x3ff6_a09e_667f_3bcd,
        0x3ff7_a114_73eb_0187,
        0x3ff8_ace5_422a_a0db,
        0x3ff9_c491_82a3_f090,
        0x3ffa_e89f_995a_d3ad,
        0x3ffc_199b_dd85_529c,
        0x3ffd_5818_dcfb_a487,
        0x3ffe_a4af_a2a4_90da,
    ];
    /// Taylor coefficients 1/7! … 1/2!, 1 of e^r on |r| ≤ ln2/32.
    pub const EXP_P7_F64: [f64; 7] = [
        1.0 / 5040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
    ];

    #[cfg_attr(target_arch = "x86_64", allow(dead_code))]
    pub const LOG2E_F64: f64 = std::f64::consts::LOG2_E;
    pub const LN2_HI_F64: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    pub const LN2_LO_F64: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    pub const EXP_LO_F64: f64 = -708.396_418_532_264;
    pub const EXP_FLOOR_F64: f64 = -746.0;
    /// −1023·ln2: the `exp`s clamp here, where the 2^−1023 they build in the exponent field
    /// is 0.
    pub const EXP_ZERO_F64: f64 = -1023.0 * std::f64::consts::LN_2;
    /// The AVX2 float64 `exp` reduces by ln2/4: x = (n/4)·ln2 + r, |r| ≤ ln2/8, n·hi exact
    /// (hi is LN2_HI_F64/4, 32 significant bits; |n| ≤ 4092 after the clamp).
    pub const LOG2E_X4_F64: f64 = 4.0 * std::f64::consts::LOG2_E;
    pub const LN2_4_HI_F64: f64 = LN2_HI_F64 / 4.0;
    pub const LN2_4_LO_F64: f64 = LN2_LO_F64 / 4.0;
    /// 2^(j/4), j = 0..3, less j·2^50 as integers: the AVX2 `exp` adds n·2^50, whose bits 50
    /// and 51 hold j = n mod 4, to build 2^(n/4) with one integer addition.
    pub const EXP2_J4_F64: [u64; 4] = [
        EXP2_J16_F64[0],
        EXP2_J16_F64[4] - (1 << 50),
        EXP2_J16_F64[8] - (2 << 50),
        EXP2_J16_F64[12] - (3 << 50),
    ];
    /// e^r ≈ 1 + r + r²·P(r) on |r| ≤ ln2/8: P is a degree-6 Chebyshev fit of
    /// (e^r − 1 − r)/r² on that interval (mpmath, 50 digits; rounded to float64, the relative
    /// error of e^r stays below 1.3e-17, a sixteenth of an ulp).
    pub const EXP_P6_F64: [f64; 7] = [
        2.480_520_859_486_822_3e-5,
        1.984_489_118_604_944_4e-4,
        1.388_888_875_293_214e-3,
        8.333_333_197_374_072e-3,
        4.166_666_666_667_942_5e-2,
        1.666_666_666_667_942_8e-1,
        0.5,
    ];
    /// e^r ≈ 1 + r + r²·P(r) on |r| ≤ ln2/2: P is a degree-9 Chebyshev fit of (e^r − 1 − r)/r²
    /// on [−0.35, 0.35] (mpmath, 50 digits; rounded to float64, the relative error of e^r stays
    /// below 2e-17, a sixth of an ulp). Taylor's 1/13! … 1/2! needed two more FMAs per vector.
    #[cfg_attr(target_arch = "x86_64", allow(dead_code))]
    pub const EXP_P_F64: [f64; 10] = [
        2.510_133_585_478_852_2e-8,
        2.762_132_426_931_368_7e-7,
        2.755_726_644_235_342_4e-6,
        2.480_151_867_226_835_5e-5,
        1.984_126_986_436_493_3e-4,
        1.388_888_891_891_890_7e-3,
        8.333_333_333_329_796e-3,
        4.166_666_666_662_068e-2,
        1.666_666_666_666_666_9e-1,
        5.000_000_000_000_001e-1,
    ];
}

/// A floating-point compute type of the kernels: `f32` or `f64`.
pub trait Float:
    Copy
    + Send
    + Sync
    + PartialOrd
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INF: Self;
    fn to_f64(self) -> f64;
    fn from_f64(x: f64) -> Self;
    /// Scalar e^x with the same edge semantics as [`SimdVec::exp`].
    fn exp_scalar(self) -> Self;
    /// Runs `k` with the vector type of `tier` (or of the widest tier the CPU has, if lower).
    /// Kernels read [`tier`] once per call and pass it to every task.
    fn dispatch<K: Kernel<F = Self>>(tier: Tier, k: K) -> K::Out;
}

/// A vector of `LANES` floats of one tier.
///
/// # Safety
/// Implementations use instructions of their tier. A type is only instantiated by
/// [`Float::dispatch`] after run-time detection found the tier's features, so its methods may
/// assume those features are present.
pub unsafe trait SimdVec: Copy {
    type F: Float;
    const LANES: usize;
    fn splat(x: Self::F) -> Self;
    /// # Safety
    /// `p` must be valid for reading `LANES` elements.
    unsafe fn load(p: *const Self::F) -> Self;
    /// Loads `n < LANES` elements and fills the other lanes with `fill`.
    /// # Safety
    /// `p` must be valid for reading `n` elements.
    unsafe fn load_tail(p: *const Self::F, n: usize, fill: Self::F) -> Self;
    /// Lane l = `*p.add(l * stride)`: one value from each of `LANES` rows `stride` apart, as
    /// when rows of a few classes are transposed so that lanes are rows. Tiers with a gather
    /// instruction use it; a loop of loads elsewhere.
    /// # Safety
    /// `p.add(l * stride)` must be readable for every l < LANES, and `stride · LANES` must be
    /// below 2^31 (gathers take 32-bit offsets).
    #[inline(always)]
    unsafe fn load_strided(p: *const Self::F, stride: usize) -> Self {
        let mut u = [Self::F::ZERO; 16];
        for (l, u) in u[..Self::LANES].iter_mut().enumerate() {
            // SAFETY: the caller's contract.
            *u = unsafe { *p.add(l * stride) };
        }
        // SAFETY: `u` holds 16 ≥ LANES values.
        unsafe { Self::load(u.as_ptr()) }
    }
    /// # Safety
    /// `p` must be valid for writing `LANES` elements.
    unsafe fn store(self, p: *mut Self::F);
    /// # Safety
    /// `p` must be valid for writing `n < LANES` elements.
    unsafe fn store_tail(self, p: *mut Self::F, n: usize);
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn div(self, o: Self) -> Self;
    /// `self * b + c`, fused where the tier has FMA.
    fn mul_add(self, b: Self, c: Self) -> Self;
    /// Lane-wise maximum that never lets a NaN of `x` into the accumulator `self`.
    fn max_acc(self, x: Self) -> Self;
    /// e^x for x ≤ 0: NaN stays NaN, −inf gives 0, and so does anything below the normal
    /// range (a tier with cheap subnormals may return the subnormal value instead).
    fn exp(self) -> Self;
    /// e^x for x ≤ 0 where the result is only added into a sum that holds a 1 (the term of the
    /// maximum): NaN stays NaN and −inf gives 0, but a term below the normal range may come
    /// out as any value from 0 to twice the smallest normal number (2^−125 in float32) instead
    /// of 0 or its subnormal. n such terms move a sum ≥ 1 by at most that much each, far below
    /// its last bit; `tests::exp_in_sum_f32_on_a_dense_sweep` and `_f64_` measure the bound.
    #[inline(always)]
    fn exp_in_sum(self) -> Self {
        self.exp()
    }
    /// [`exp`](Self::exp) of K vectors, interleaved where the tier needs it (see
    /// [`exp_in_sum_many`](Self::exp_in_sum_many)).
    #[inline(always)]
    fn exp_many<const K: usize>(x: [Self; K]) -> [Self; K] {
        // A loop, not `x.map(..)`: a closure may stay a call outside the `#[target_feature]`
        // code.
        let mut out = x;
        for v in &mut out {
            *v = v.exp();
        }
        out
    }
    /// [`exp_in_sum`](Self::exp_in_sum) of K vectors. A tier whose out-of-order window is too
    /// small to overlap one vector's long dependency chain with the next ones' interleaves the
    /// K chains step by step in program order instead.
    #[inline(always)]
    fn exp_in_sum_many<const K: usize>(x: [Self; K]) -> [Self; K] {
        let mut out = x;
        for v in &mut out {
            *v = v.exp_in_sum();
        }
        out
    }
    /// `v * d`, but exactly 0 where `v == 0` (so 0 · ±inf = 0, as 0·log 0 = 0).
    fn mul_nonzero(v: Self, d: Self) -> Self;
    /// Per lane: `self + e` where `x != m` (NaN counts as unequal), and `cnt + 1` where
    /// `x == m`: one comparison serves both.
    fn add_split(self, cnt: Self, e: Self, x: Self, m: Self) -> (Self, Self);
    /// Per lane: `then` where `a == b` (−inf equals −inf; NaN equals nothing), else
    /// `otherwise`.
    fn where_eq(a: Self, b: Self, then: Self, otherwise: Self) -> Self;
    fn reduce_sum(self) -> f64;
    fn reduce_max(self) -> Self::F;
    /// ln(1 + x) for x ≥ 0 or NaN. Float32 vector tiers evaluate a polynomial (within 2 ulp,
    /// tested); the others take each lane's float64 `ln_1p`.
    #[inline(always)]
    fn ln_1p(self) -> Self {
        log::ln_1p_lanes(self)
    }
}

/// A computation generic over the vector type, run by [`Float::dispatch`].
pub trait Kernel {
    type F: Float;
    type Out;
    fn run<V: SimdVec<F = Self::F>>(self) -> Self::Out;
}

/// The instruction-set tiers, widest last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Tier {
    Scalar = 1,
    Neon = 2,
    Avx2 = 3,
    Avx512 = 4,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Scalar => "scalar",
            Tier::Neon => "neon",
            Tier::Avx2 => "avx2+fma",
            Tier::Avx512 => "avx512",
        }
    }

    pub fn from_name(s: &str) -> Option<Tier> {
        match s {
            "scalar" => Some(Tier::Scalar),
            "neon" => Some(Tier::Neon),
            "avx2" | "avx2+fma" => Some(Tier::Avx2),
            "avx512" => Some(Tier::Avx512),
            _ => None,
        }
    }

    fn from_u8(v: u8) -> Tier {
        match v {
            4 => Tier::Avx512,
            3 => Tier::Avx2,
            2 => Tier::Neon,
            _ => Tier::Scalar,
        }
    }
}

/// The widest tier this CPU supports, detected once per process: every kernel task asks
/// ([`cap`]), and an atomic, unlike a once-cell, cannot be left locked by a `fork()`.
pub fn detected_tier() -> Tier {
    static DETECTED: AtomicU8 = AtomicU8::new(0);
    match DETECTED.load(Ordering::Relaxed) {
        0 => {
            let t = detect();
            DETECTED.store(t as u8, Ordering::Relaxed);
            t
        }
        v => Tier::from_u8(v),
    }
}

fn detect() -> Tier {
    #[cfg(target_arch = "x86_64")]
    {
        if avx512::supported() {
            return Tier::Avx512;
        }
        if avx2::supported() {
            return Tier::Avx2;
        }
    }
    #[cfg(target_arch = "aarch64")]
    return Tier::Neon;
    #[allow(unreachable_code)]
    Tier::Scalar
}

/// The widest tier this CPU has that is no wider than `t` (x86 CPUs with AVX-512 also have
/// AVX2; aarch64 has NEON; every CPU has the scalar tier).
fn cap(t: Tier) -> Tier {
    let d = detected_tier();
    let has = |x: Tier| x == Tier::Scalar || x == d || (x == Tier::Avx2 && d == Tier::Avx512);
    [Tier::Avx512, Tier::Avx2, Tier::Neon]
        .into_iter()
        .find(|&x| x <= t && has(x))
        .unwrap_or(Tier::Scalar)
}

static ACTIVE: AtomicU8 = AtomicU8::new(0);

/// The tier in use: the detected one unless lowered by [`set_tier`] or `MLECORE_SIMD`.
pub fn tier() -> Tier {
    match ACTIVE.load(Ordering::Relaxed) {
        0 => {
            let detected = detected_tier();
            let chosen = std::env::var("MLECORE_SIMD")
                .ok()
                .and_then(|s| Tier::from_name(&s))
                .map_or(detected, cap);
            ACTIVE.store(chosen as u8, Ordering::Relaxed);
            chosen
        }
        v => Tier::from_u8(v),
    }
}

/// Uses `t`, or the detected tier if the CPU lacks `t`; returns the tier now in use.
/// Tests use it to check every tier against the scalar reference.
pub fn set_tier(t: Tier) -> Tier {
    let chosen = cap(t);
    ACTIVE.store(chosen as u8, Ordering::Relaxed);
    chosen
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INF: Self = f32::NEG_INFINITY;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn exp_scalar(self) -> Self {
        if self < consts::EXP_LO_F32 {
            0.0
        } else {
            self.exp()
        }
    }
    fn dispatch<K: Kernel<F = Self>>(tier: Tier, k: K) -> K::Out {
        match cap(tier) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `cap` returns only tiers this CPU has.
            Tier::Avx512 => unsafe { avx512::run_f32(k) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Tier::Avx2 => unsafe { avx2::run_f32(k) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: NEON is part of every aarch64 CPU.
            Tier::Neon => unsafe { neon::run_f32(k) },
            _ => k.run::<Scalar<f32>>(),
        }
    }
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INF: Self = f64::NEG_INFINITY;
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn exp_scalar(self) -> Self {
        if self < consts::EXP_LO_F64 {
            0.0
        } else {
            self.exp()
        }
    }
    fn dispatch<K: Kernel<F = Self>>(tier: Tier, k: K) -> K::Out {
        match cap(tier) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `cap` returns only tiers this CPU has.
            Tier::Avx512 => unsafe { avx512::run_f64(k) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Tier::Avx2 => unsafe { avx2::run_f64(k) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: NEON is part of every aarch64 CPU.
            Tier::Neon => unsafe { neon::run_f64(k) },
            _ => k.run::<Scalar<f64>>(),
        }
    }
}

#[cfg(test)]
mod tests;
