//! The thin PyO3 layer: borrows numpy memory without copying (C-contiguous arrays; the Python
//! package makes them so), releases the GIL around every kernel, and turns kernel errors into
//! Python exceptions. Shapes, dtypes and options are validated by the Python package first;
//! what is checked again here becomes a `ValueError`, never a panic.

use crate::elem::Elem;
use crate::error::KernelError;
use crate::kernels::cross_entropy as ce;
use crate::kernels::softmax;
use half::slice::HalfBitsSliceExt;
use half::{bf16, f16};
use numpy::{
    Element, PyArrayDescrMethods, PyReadonlyArray1, PyReadonlyArray2, PyReadwriteArray1,
    PyReadwriteArray2, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyIndexError, PyTypeError, PyValueError};
use pyo3::prelude::*;

fn to_py(e: KernelError) -> PyErr {
    match e {
        KernelError::TargetOutOfBounds {
            position, value, ..
        } => PyIndexError::new_err((e.to_string(), position, value)),
        KernelError::Shape(s) => PyValueError::new_err(s),
    }
}

fn contiguous<T>(r: Result<T, numpy::AsSliceError>, what: &str) -> PyResult<T> {
    r.map_err(|_| PyValueError::new_err(format!("{what} must be C-contiguous")))
}

/// A storage type as numpy holds it: bfloat16 travels as its uint16 bits.
trait NpElem: Elem<F: Element> {
    type Np: Element;
    fn cast(s: &[Self::Np]) -> &[Self];
    fn cast_mut(s: &mut [Self::Np]) -> &mut [Self];
}

macro_rules! np_identity {
    ($($t:ty),*) => {$(
        impl NpElem for $t {
            type Np = $t;
            fn cast(s: &[$t]) -> &[$t] {
                s
            }
            fn cast_mut(s: &mut [$t]) -> &mut [$t] {
                s
            }
        }
    )*};
}
np_identity!(f32, f64, f16);

impl NpElem for bf16 {
    type Np = u16;
    fn cast(s: &[u16]) -> &[bf16] {
        s.reinterpret_cast()
    }
    fn cast_mut(s: &mut [u16]) -> &mut [bf16] {
        s.reinterpret_cast_mut()
    }
}

/// Calls `$f::<T>` for the storage type of the array `$x`.
macro_rules! by_dtype {
    ($x:expr, $f:ident ( $($arg:expr),* )) => {{
        let dt = $x.cast::<PyUntypedArray>()?.dtype();
        let py = $x.py();
        if dt.is_equiv_to(&numpy::dtype::<f32>(py)) {
            $f::<f32>($($arg),*)
        } else if dt.is_equiv_to(&numpy::dtype::<f64>(py)) {
            $f::<f64>($($arg),*)
        } else if dt.is_equiv_to(&numpy::dtype::<f16>(py)) {
            $f::<f16>($($arg),*)
        } else if dt.is_equiv_to(&numpy::dtype::<u16>(py)) {
            $f::<bf16>($($arg),*)
        } else {
            Err(PyTypeError::new_err(format!(
                "unsupported dtype {dt}: expected float32, float64, float16 (or bfloat16 bits)"
            )))
        }
    }};
}

/// Calls `$body` with `$y` bound to the class-index slice of `$target`, for every integer
/// dtype, or returns `None` when `$target` is not an integer array.
macro_rules! by_label {
    ($target:expr, |$y:ident| $body:expr) => {
        by_label!(@each $target, $y, $body; i64, i32, i16, i8, u64, u32, u16, u8)
    };
    (@each $target:expr, $y:ident, $body:expr; $($t:ty),*) => {{
        let t = $target;
        let mut out = None;
        $(
            if out.is_none() {
                if let Ok(a) = t.extract::<PyReadonlyArray1<$t>>() {
                    let $y = contiguous(a.as_slice(), "target")?;
                    out = Some($body);
                }
            }
        )*
        out
    }};
}

fn lse_impl<T: NpElem>(x: &Bound<PyAny>, out: &Bound<PyAny>) -> PyResult<()> {
    let x: PyReadonlyArray2<T::Np> = x.extract()?;
    let mut out: PyReadwriteArray1<T::Np> = out.extract()?;
    let cols = x.shape()[1];
    let xs = T::cast(contiguous(x.as_slice(), "input")?);
    let os = T::cast_mut(contiguous(out.as_slice_mut(), "out")?);
    x.py()
        .detach(|| softmax::logsumexp_rows(xs, cols, os))
        .map_err(to_py)
}

/// logsumexp over the last axis of a C-contiguous 2-D array, into `out` (one per row).
#[pyfunction]
fn logsumexp_rows(x: &Bound<PyAny>, out: &Bound<PyAny>) -> PyResult<()> {
    by_dtype!(x, lse_impl(x, out))
}

fn axis_impl<F: crate::simd::Float + Element>(
    x: &Bound<PyAny>,
    out: &Bound<PyAny>,
) -> PyResult<()> {
    let x: numpy::PyReadonlyArray3<F> = x.extract()?;
    let mut out: PyReadwriteArray2<F> = out.extract()?;
    let (outer, steps, inner) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    let xs = contiguous(x.as_slice(), "input")?;
    let os = contiguous(out.as_slice_mut(), "out")?;
    x.py()
        .detach(|| crate::kernels::columns::logsumexp_axis(xs, outer, steps, inner, os))
        .map_err(to_py)
}

/// logsumexp over axis 1 of a C-contiguous 3-D float32/float64 array, into `out` (2-D).
#[pyfunction]
fn logsumexp_axis(x: &Bound<PyAny>, out: &Bound<PyAny>) -> PyResult<()> {
    let dt = x.cast::<PyUntypedArray>()?.dtype();
    if dt.is_equiv_to(&numpy::dtype::<f32>(x.py())) {
        axis_impl::<f32>(x, out)
    } else if dt.is_equiv_to(&numpy::dtype::<f64>(x.py())) {
        axis_impl::<f64>(x, out)
    } else {
        Err(PyTypeError::new_err(format!(
            "unsupported dtype {dt}: expected float32 or float64"
        )))
    }
}

fn softmax_impl<T: NpElem>(x: &Bound<PyAny>, out: &Bound<PyAny>, log: bool) -> PyResult<()> {
    let x: PyReadonlyArray2<T::Np> = x.extract()?;
    let mut out: PyReadwriteArray2<T::Np> = out.extract()?;
    let cols = x.shape()[1];
    let xs = T::cast(contiguous(x.as_slice(), "input")?);
    let os = T::cast_mut(contiguous(out.as_slice_mut(), "out")?);
    crate::memory::advise_huge_pages(os);
    x.py()
        .detach(|| softmax::softmax_rows(Some(xs), os, cols, log))
        .map_err(to_py)
}

/// softmax (or log-softmax) over the last axis of a C-contiguous 2-D array, into `out`.
#[pyfunction]
fn softmax_rows(x: &Bound<PyAny>, out: &Bound<PyAny>, log: bool) -> PyResult<()> {
    by_dtype!(x, softmax_impl(x, out, log))
}

/// Options shared by the cross-entropy entry points.
struct Opts<'py> {
    target: Bound<'py, PyAny>,
    weight: Option<Bound<'py, PyAny>>,
    ignore_index: i64,
    label_smoothing: f64,
}

/// Runs `$call` with `target` (a [`ce::Target`]) and `opts` (a [`ce::CeOptions`]) built
/// from `$o` for storage type `$T`.
macro_rules! with_target {
    ($T:ty, $o:expr, |$target:ident, $opts:ident| $call:expr) => {{
        let o = $o;
        let w: Option<PyReadonlyArray1<<$T as Elem>::F>> =
            o.weight.as_ref().map(|w| w.extract()).transpose()?;
        let w = match &w {
            Some(w) => Some(contiguous(w.as_slice(), "weight")?),
            None => None,
        };
        let $opts = ce::CeOptions {
            weight: w,
            ignore_index: o.ignore_index,
            label_smoothing: o.label_smoothing,
        };
        let labelled = by_label!(&o.target, |y| {
            let $target = ce::Target::<$T, _>::Index(y);
            $call
        });
        match labelled {
            Some(r) => r,
            None => {
                let t: PyReadonlyArray2<<$T as NpElem>::Np> = o.target.extract()?;
                let t = <$T>::cast(contiguous(t.as_slice(), "target")?);
                let $target = ce::Target::<$T, u8>::Probs(t);
                $call
            }
        }
    }};
}

fn run<R: Send>(py: Python<'_>, f: impl FnOnce() -> Result<R, KernelError> + Send) -> PyResult<R> {
    py.detach(f).map_err(to_py)
}

fn summary(s: ce::CeSummary) -> (f64, f64) {
    (s.total, s.denom)
}

fn ce_impl<T: NpElem>(
    x: &Bound<PyAny>,
    o: &Opts,
    loss: &Bound<PyAny>,
    lse: &Bound<PyAny>,
) -> PyResult<(f64, f64)> {
    let py = x.py();
    let xa: PyReadonlyArray2<T::Np> = x.extract()?;
    let cols = xa.shape()[1];
    let xs = T::cast(contiguous(xa.as_slice(), "input")?);
    let mut loss: PyReadwriteArray1<f64> = loss.extract()?;
    let mut lse: PyReadwriteArray1<T::F> = lse.extract()?;
    let (ls, es) = (
        contiguous(loss.as_slice_mut(), "loss")?,
        contiguous(lse.as_slice_mut(), "lse")?,
    );
    with_target!(T, o, |target, opts| run(py, || {
        ce::cross_entropy(xs, cols, target, &opts, ls, es).map(summary)
    }))
}

/// Cross-entropy forward over rows: per-row losses into `loss` (float64), log-sum-exps into
/// `lse`; returns (Σ loss, mean denominator).
#[pyfunction]
#[pyo3(signature = (x, target, weight, ignore_index, label_smoothing, loss, lse))]
fn cross_entropy_rows(
    x: &Bound<PyAny>,
    target: Bound<PyAny>,
    weight: Option<Bound<PyAny>>,
    ignore_index: i64,
    label_smoothing: f64,
    loss: &Bound<PyAny>,
    lse: &Bound<PyAny>,
) -> PyResult<(f64, f64)> {
    let o = Opts {
        target,
        weight,
        ignore_index,
        label_smoothing,
    };
    by_dtype!(x, ce_impl(x, &o, loss, lse))
}

fn parse_reduction(s: &str) -> PyResult<ce::Reduction> {
    match s {
        "none" => Ok(ce::Reduction::None),
        "mean" => Ok(ce::Reduction::Mean),
        "sum" => Ok(ce::Reduction::Sum),
        _ => Err(PyValueError::new_err(format!(
            "reduction must be 'none', 'mean' or 'sum', got {s:?}"
        ))),
    }
}

#[allow(clippy::too_many_arguments)]
fn ce_grad_impl<T: NpElem>(
    x: &Bound<PyAny>,
    o: &Opts,
    reduction: ce::Reduction,
    grad: Option<&Bound<PyAny>>,
    loss: &Bound<PyAny>,
    lse: &Bound<PyAny>,
) -> PyResult<(f64, f64)> {
    let py = x.py();
    let mut loss: PyReadwriteArray1<f64> = loss.extract()?;
    let mut lse: PyReadwriteArray1<T::F> = lse.extract()?;
    let (ls, es) = (
        contiguous(loss.as_slice_mut(), "loss")?,
        contiguous(lse.as_slice_mut(), "lse")?,
    );
    match grad {
        Some(g) => {
            let xa: PyReadonlyArray2<T::Np> = x.extract()?;
            let cols = xa.shape()[1];
            let xs = T::cast(contiguous(xa.as_slice(), "input")?);
            let mut ga: PyReadwriteArray2<T::Np> = g
                .extract()
                .map_err(|e| PyValueError::new_err(format!("out: {e}")))?;
            let gs = T::cast_mut(contiguous(ga.as_slice_mut(), "out")?);
            crate::memory::advise_huge_pages(gs);
            with_target!(T, o, |target, opts| run(py, || {
                let io = ce::GradIo::Separate { x: xs, grad: gs };
                ce::cross_entropy_with_grad(io, cols, target, &opts, reduction, ls, es).map(summary)
            }))
        }
        None => {
            let mut xa: PyReadwriteArray2<T::Np> = x.extract()?;
            let cols = xa.shape()[1];
            let xs = T::cast_mut(contiguous(xa.as_slice_mut(), "input")?);
            with_target!(T, o, |target, opts| run(py, || {
                let io = ce::GradIo::InPlace(xs);
                ce::cross_entropy_with_grad(io, cols, target, &opts, reduction, ls, es).map(summary)
            }))
        }
    }
}

/// Fused cross-entropy forward and gradient over rows. `grad=None` writes the gradient over
/// `x` itself. Returns (Σ loss, mean denominator).
#[pyfunction]
#[pyo3(signature = (x, target, weight, ignore_index, label_smoothing, reduction, grad, loss, lse))]
#[allow(clippy::too_many_arguments)]
fn cross_entropy_grad_rows(
    x: &Bound<PyAny>,
    target: Bound<PyAny>,
    weight: Option<Bound<PyAny>>,
    ignore_index: i64,
    label_smoothing: f64,
    reduction: &str,
    grad: Option<Bound<PyAny>>,
    loss: &Bound<PyAny>,
    lse: &Bound<PyAny>,
) -> PyResult<(f64, f64)> {
    let reduction = parse_reduction(reduction)?;
    let o = Opts {
        target,
        weight,
        ignore_index,
        label_smoothing,
    };
    by_dtype!(x, ce_grad_impl(x, &o, reduction, grad.as_ref(), loss, lse))
}

fn ce_back_impl<T: NpElem>(
    x: &Bound<PyAny>,
    o: &Opts,
    lse: &Bound<PyAny>,
    scale: f64,
    scale_rows: Option<&Bound<PyAny>>,
    grad: &Bound<PyAny>,
) -> PyResult<()> {
    let py = x.py();
    let xa: PyReadonlyArray2<T::Np> = x.extract()?;
    let cols = xa.shape()[1];
    let xs = T::cast(contiguous(xa.as_slice(), "input")?);
    let lse: PyReadonlyArray1<T::F> = lse.extract()?;
    let es = contiguous(lse.as_slice(), "lse")?;
    let rows: Option<PyReadonlyArray1<f64>> = scale_rows.map(|s| s.extract()).transpose()?;
    let rs = match &rows {
        Some(r) => Some(contiguous(r.as_slice(), "grad_output")?),
        None => None,
    };
    let mut ga: PyReadwriteArray2<T::Np> = grad.extract()?;
    let gs = T::cast_mut(contiguous(ga.as_slice_mut(), "grad")?);
    crate::memory::advise_huge_pages(gs);
    let scale = rs.map_or(ce::Scale::Uniform(scale), ce::Scale::PerRow);
    with_target!(T, o, |target, opts| run(py, || {
        ce::cross_entropy_backward(xs, cols, target, &opts, es, scale, gs)
    }))
}

/// Cross-entropy gradient over rows from saved log-sum-exps, scaled by `scale` or by
/// `scale_rows` (one factor per row), into `grad`.
#[pyfunction]
#[pyo3(signature = (x, target, weight, ignore_index, label_smoothing, lse, scale, scale_rows, grad))]
#[allow(clippy::too_many_arguments)]
fn cross_entropy_backward_rows(
    x: &Bound<PyAny>,
    target: Bound<PyAny>,
    weight: Option<Bound<PyAny>>,
    ignore_index: i64,
    label_smoothing: f64,
    lse: &Bound<PyAny>,
    scale: f64,
    scale_rows: Option<Bound<PyAny>>,
    grad: &Bound<PyAny>,
) -> PyResult<()> {
    let o = Opts {
        target,
        weight,
        ignore_index,
        label_smoothing,
    };
    by_dtype!(
        x,
        ce_back_impl(x, &o, lse, scale, scale_rows.as_ref(), grad)
    )
}

/// Sets the number of threads the kernels use.
#[pyfunction]
fn set_num_threads(n: usize) -> PyResult<()> {
    if n == 0 {
        return Err(PyValueError::new_err(
            "the number of threads must be at least 1",
        ));
    }
    crate::parallel::set_num_threads(n);
    Ok(())
}

/// The number of threads the kernels use.
#[pyfunction]
fn get_num_threads() -> usize {
    crate::parallel::num_threads()
}

/// The SIMD tier in use ("avx512", "avx2+fma" or "scalar").
#[pyfunction]
fn simd_tier() -> &'static str {
    crate::simd::tier().name()
}

/// The widest SIMD tier this CPU supports.
#[pyfunction]
fn detected_simd_tier() -> &'static str {
    crate::simd::detected_tier().name()
}

/// Uses the named tier (or the widest the CPU has, if lower); returns the tier in use.
#[pyfunction]
fn set_simd_tier(name: &str) -> PyResult<&'static str> {
    let t = crate::simd::Tier::from_name(name).ok_or_else(|| {
        PyValueError::new_err(format!(
            "unknown SIMD tier {name:?}: expected 'avx512', 'avx2', 'neon' or 'scalar'"
        ))
    })?;
    Ok(crate::simd::set_tier(t).name())
}

#[pymodule]
fn _mlecore(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(logsumexp_rows, m)?)?;
    m.add_function(wrap_pyfunction!(logsumexp_axis, m)?)?;
    m.add_function(wrap_pyfunction!(softmax_rows, m)?)?;
    m.add_function(wrap_pyfunction!(cross_entropy_rows, m)?)?;
    m.add_function(wrap_pyfunction!(cross_entropy_grad_rows, m)?)?;
    m.add_function(wrap_pyfunction!(cross_entropy_backward_rows, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(simd_tier, m)?)?;
    m.add_function(wrap_pyfunction!(detected_simd_tier, m)?)?;
    m.add_function(wrap_pyfunction!(set_simd_tier, m)?)?;
    Ok(())
}
