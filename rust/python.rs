//! The thin PyO3 layer: borrows numpy memory without copying (C-contiguous, aligned arrays;
//! the Python package makes them so), releases the GIL around every kernel, and turns kernel
//! errors into Python exceptions. Shapes, dtypes and options are validated by the Python
//! package first; what is checked again here becomes a `ValueError` or `TypeError`, never a
//! panic.
//!
//! Dtypes are dispatched by type: each argument is extracted into an enum of the arrays the
//! kernels take (`#[derive(FromPyObject)]`), and one `match` picks the instantiation.

use crate::elem::{Elem, Labels};
use crate::error::KernelError;
use crate::kernels::columns;
use crate::kernels::cross_entropy::{
    self as ce, CeOptions, GradIo, GradScale, RowResults, Scale, Target,
};
use crate::kernels::softmax;
use half::slice::HalfBitsSliceExt;
use half::{bf16, f16};
use numpy::ndarray::Dimension;
use numpy::{
    Element, Ix1, Ix2, Ix3, PyArray, PyArrayMethods, PyReadonlyArray, PyReadonlyArray1,
    PyReadwriteArray, PyReadwriteArray1, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyIndexError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

fn to_py(e: KernelError) -> PyErr {
    match e {
        // The position and value travel as arguments: the Python package rewords the error
        // in terms of the caller's target shape.
        KernelError::TargetOutOfBounds {
            position, value, ..
        } => PyIndexError::new_err((e.to_string(), position, value)),
        KernelError::Shape(s) => PyValueError::new_err(s),
    }
}

/// Runs a kernel with the GIL released. A panic (a bug: user errors are `KernelError`s) is
/// a `RuntimeError`, not pyo3's `PanicException`, which `except Exception` would miss.
fn run<R: Send>(py: Python<'_>, f: impl FnOnce() -> Result<R, KernelError> + Send) -> PyResult<R> {
    let result = py.detach(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    match result {
        Ok(r) => r.map_err(to_py),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(PyRuntimeError::new_err(format!(
                "mlecore internal error (please report it): {what}"
            )))
        }
    }
}

fn slice<'a, T: Element, D: Dimension>(
    a: &'a PyReadonlyArray<'_, T, D>,
    what: &str,
) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|_| layout_error(what))
}

fn slice_mut<'a, T: Element, D: Dimension>(
    a: &'a mut PyReadwriteArray<'_, T, D>,
    what: &str,
) -> PyResult<&'a mut [T]> {
    a.as_slice_mut().map_err(|_| layout_error(what))
}

fn layout_error(what: &str) -> PyErr {
    PyValueError::new_err(format!("{what} must be C-contiguous and aligned"))
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

/// A matrix of a storage type the kernels take.
#[derive(FromPyObject)]
enum Floats<'py> {
    F32(Bound<'py, PyArray<f32, Ix2>>),
    F64(Bound<'py, PyArray<f64, Ix2>>),
    F16(Bound<'py, PyArray<f16, Ix2>>),
    /// bfloat16, as its bits (numpy has no bfloat16).
    Bf16(Bound<'py, PyArray<u16, Ix2>>),
}

/// A float32 or float64 3-d array (the column kernel's input).
#[derive(FromPyObject)]
enum Wide<'py> {
    F32(Bound<'py, PyArray<f32, Ix3>>),
    F64(Bound<'py, PyArray<f64, Ix3>>),
}

fn unsupported(x: &Bound<PyAny>, ndim: usize, expected: &str) -> PyErr {
    PyTypeError::new_err(match x.cast::<PyUntypedArray>() {
        Ok(a) => format!(
            "unsupported dtype {} or shape: expected a {ndim}-d array of {expected}, got a \
             {}-d array",
            a.dtype(),
            a.ndim()
        ),
        Err(_) => format!(
            "unsupported input: expected a {ndim}-d array of {expected}, got {}",
            x.get_type()
        ),
    })
}

const FLOATS: &str = "float32, float64, float16 (or bfloat16 bits)";

fn floats2<'py>(x: &Bound<'py, PyAny>) -> PyResult<Floats<'py>> {
    x.extract().map_err(|_| unsupported(x, 2, FLOATS))
}

/// An output of element type `E` and dimension `D`, borrowed for writing.
fn output<'py, E: Element, D: Dimension>(
    out: &Bound<'py, PyAny>,
    what: &str,
) -> PyResult<PyReadwriteArray<'py, E, D>> {
    let a = out.cast::<PyArray<E, D>>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{what} must be a {}-d array of {}",
            D::NDIM.unwrap_or(0),
            std::any::type_name::<E>()
        ))
    })?;
    a.try_readwrite()
        .map_err(|e| PyValueError::new_err(format!("{what}: {e}")))
}

fn input<'py, T: Element, D: Dimension>(
    a: &Bound<'py, PyArray<T, D>>,
) -> PyResult<PyReadonlyArray<'py, T, D>> {
    a.try_readonly()
        .map_err(|e| PyValueError::new_err(format!("input: {e}")))
}

fn lse<T: NpElem>(x: &Bound<PyArray<T::Np, Ix2>>, out: &Bound<PyAny>) -> PyResult<()> {
    let xr = input(x)?;
    let mut or = output::<T::Np, Ix1>(out, "out")?;
    let cols = xr.shape()[1];
    let (xs, os) = (
        T::cast(slice(&xr, "input")?),
        T::cast_mut(slice_mut(&mut or, "out")?),
    );
    run(x.py(), || softmax::logsumexp_rows(xs, cols, os))
}

/// logsumexp over the last axis of a C-contiguous 2-D array, into `out` (one per row).
#[pyfunction]
fn logsumexp_rows(x: &Bound<PyAny>, out: &Bound<PyAny>) -> PyResult<()> {
    match floats2(x)? {
        Floats::F32(x) => lse::<f32>(&x, out),
        Floats::F64(x) => lse::<f64>(&x, out),
        Floats::F16(x) => lse::<f16>(&x, out),
        Floats::Bf16(x) => lse::<bf16>(&x, out),
    }
}

fn lse_axis<F: crate::simd::Float + Element>(
    x: &Bound<PyArray<F, Ix3>>,
    out: &Bound<PyAny>,
) -> PyResult<()> {
    let xr = input(x)?;
    let mut or = output::<F, Ix2>(out, "out")?;
    let (outer, steps, inner) = (xr.shape()[0], xr.shape()[1], xr.shape()[2]);
    let (xs, os) = (slice(&xr, "input")?, slice_mut(&mut or, "out")?);
    run(x.py(), || {
        columns::logsumexp_axis(xs, outer, steps, inner, os)
    })
}

/// logsumexp over axis 1 of a C-contiguous 3-D float32/float64 array, into `out` (2-D).
#[pyfunction]
fn logsumexp_axis(x: &Bound<PyAny>, out: &Bound<PyAny>) -> PyResult<()> {
    let wide: Wide = x
        .extract()
        .map_err(|_| unsupported(x, 3, "float32 or float64"))?;
    match wide {
        Wide::F32(x) => lse_axis::<f32>(&x, out),
        Wide::F64(x) => lse_axis::<f64>(&x, out),
    }
}

fn softmax_typed<T: NpElem>(
    x: &Bound<PyArray<T::Np, Ix2>>,
    out: &Bound<PyAny>,
    log: bool,
) -> PyResult<()> {
    let xr = input(x)?;
    let mut or = output::<T::Np, Ix2>(out, "out")?;
    let cols = xr.shape()[1];
    let (xs, os) = (
        T::cast(slice(&xr, "input")?),
        T::cast_mut(slice_mut(&mut or, "out")?),
    );
    crate::memory::advise_huge_pages(os);
    run(x.py(), || softmax::softmax_rows(Some(xs), os, cols, log))
}

/// softmax (or log-softmax) over the last axis of a C-contiguous 2-D array, into `out`.
#[pyfunction]
fn softmax_rows(x: &Bound<PyAny>, out: &Bound<PyAny>, log: bool) -> PyResult<()> {
    match floats2(x)? {
        Floats::F32(x) => softmax_typed::<f32>(&x, out, log),
        Floats::F64(x) => softmax_typed::<f64>(&x, out, log),
        Floats::F16(x) => softmax_typed::<f16>(&x, out, log),
        Floats::Bf16(x) => softmax_typed::<bf16>(&x, out, log),
    }
}

/// Class indices of any integer dtype, borrowed for reading.
#[derive(FromPyObject)]
enum LabelArray<'py> {
    I64(PyReadonlyArray1<'py, i64>),
    I32(PyReadonlyArray1<'py, i32>),
    I16(PyReadonlyArray1<'py, i16>),
    I8(PyReadonlyArray1<'py, i8>),
    U64(PyReadonlyArray1<'py, u64>),
    U32(PyReadonlyArray1<'py, u32>),
    U16(PyReadonlyArray1<'py, u16>),
    U8(PyReadonlyArray1<'py, u8>),
}

impl LabelArray<'_> {
    fn labels(&self) -> PyResult<Labels<'_>> {
        Ok(match self {
            LabelArray::I64(a) => Labels::I64(slice(a, "target")?),
            LabelArray::I32(a) => Labels::I32(slice(a, "target")?),
            LabelArray::I16(a) => Labels::I16(slice(a, "target")?),
            LabelArray::I8(a) => Labels::I8(slice(a, "target")?),
            LabelArray::U64(a) => Labels::U64(slice(a, "target")?),
            LabelArray::U32(a) => Labels::U32(slice(a, "target")?),
            LabelArray::U16(a) => Labels::U16(slice(a, "target")?),
            LabelArray::U8(a) => Labels::U8(slice(a, "target")?),
        })
    }
}

/// Class indices, or anything else (then probabilities of the input's dtype, checked when
/// the input's type is known).
#[derive(FromPyObject)]
enum TargetArray<'py> {
    Index(LabelArray<'py>),
    Probs(Bound<'py, PyAny>),
}

/// A cross-entropy problem in row form, read from the attributes of the Python package's
/// problem object: the same five arguments for the forward, fused and backward kernels.
#[derive(FromPyObject)]
struct CeArgs<'py> {
    #[pyo3(from_py_with = floats2)]
    x: Floats<'py>,
    target: TargetArray<'py>,
    weight: Option<Bound<'py, PyAny>>,
    ignore_index: i64,
    label_smoothing: f64,
    lse_square_scale: f64,
}

/// The arrays of a [`CeArgs`] for storage type `T`, borrowed for reading.
struct CeBorrow<'py, T: NpElem> {
    probs: Option<PyReadonlyArray<'py, T::Np, Ix2>>,
    weight: Option<PyReadonlyArray1<'py, T::F>>,
}

impl<'py, T: NpElem> CeBorrow<'py, T> {
    fn new(args: &CeArgs<'py>) -> PyResult<Self> {
        let probs = match &args.target {
            TargetArray::Index(_) => None,
            TargetArray::Probs(t) => Some(
                t.extract()
                    .map_err(|_| unsupported(t, 2, "class indices or the input's dtype"))?,
            ),
        };
        let weight = match &args.weight {
            None => None,
            Some(w) => Some(w.extract().map_err(|_| {
                PyTypeError::new_err("weight must be a 1-d array of the compute dtype")
            })?),
        };
        Ok(CeBorrow { probs, weight })
    }

    fn target<'a>(&'a self, args: &'a CeArgs<'py>) -> PyResult<Target<'a, T>> {
        Ok(match (&args.target, &self.probs) {
            (TargetArray::Index(y), _) => Target::Index(y.labels()?),
            (_, Some(p)) => Target::Probs(T::cast(slice(p, "target")?)),
            (TargetArray::Probs(_), None) => unreachable!("probabilities are borrowed in new"),
        })
    }

    fn options<'a>(&'a self, args: &CeArgs<'py>) -> PyResult<CeOptions<'a, T::F>> {
        Ok(CeOptions {
            weight: self
                .weight
                .as_ref()
                .map(|w| slice(w, "weight"))
                .transpose()?,
            ignore_index: args.ignore_index,
            label_smoothing: args.label_smoothing,
            lse_square_scale: args.lse_square_scale,
        })
    }
}

/// The per-row outputs of a pass, borrowed for writing: losses (float64), log-sum-exps (of
/// the compute dtype) and, optionally, whether each row's class holds its maximum (uint8).
struct RowOut<'py, F: Element> {
    loss: PyReadwriteArray1<'py, f64>,
    lse: PyReadwriteArray1<'py, F>,
    hits: Option<PyReadwriteArray1<'py, u8>>,
}

impl<'py, F: Element> RowOut<'py, F> {
    fn new(
        loss: &Bound<'py, PyAny>,
        lse: &Bound<'py, PyAny>,
        hits: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Self> {
        Ok(RowOut {
            loss: output::<f64, Ix1>(loss, "loss")?,
            lse: output::<F, Ix1>(lse, "lse")?,
            hits: hits.map(|h| output::<u8, Ix1>(h, "hits")).transpose()?,
        })
    }

    fn results(&mut self) -> PyResult<RowResults<'_, F>> {
        Ok(RowResults {
            loss: slice_mut(&mut self.loss, "loss")?,
            lse: slice_mut(&mut self.lse, "lse")?,
            hits: match &mut self.hits {
                Some(h) => Some(slice_mut(h, "hits")?),
                None => None,
            },
        })
    }
}

fn ce_forward<T: NpElem>(
    x: &Bound<PyArray<T::Np, Ix2>>,
    args: &CeArgs,
    mut out: RowOut<T::F>,
) -> PyResult<(f64, f64)> {
    let xr = input(x)?;
    let cols = xr.shape()[1];
    let xs = T::cast(slice(&xr, "input")?);
    let b = CeBorrow::<T>::new(args)?;
    let (target, opts) = (b.target(args)?, b.options(args)?);
    let results = out.results()?;
    run(x.py(), || {
        ce::cross_entropy(xs, cols, target, &opts, results).map(|s| (s.total, s.denom))
    })
}

/// Cross-entropy forward over rows of `problem` (an object with attributes `x`, `target`,
/// `weight`, `ignore_index`, `label_smoothing`, `lse_square_scale`): per-row losses into
/// `loss` (float64), log-sum-exps into `lse`, and whether each row's class holds the row's
/// maximum into `hits` (uint8) when given; returns (Σ loss, mean denominator).
#[pyfunction]
#[pyo3(signature = (problem, loss, lse, hits=None))]
fn cross_entropy_rows(
    problem: CeArgs,
    loss: &Bound<PyAny>,
    lse: &Bound<PyAny>,
    hits: Option<Bound<PyAny>>,
) -> PyResult<(f64, f64)> {
    let h = hits.as_ref();
    match &problem.x {
        Floats::F32(x) => ce_forward::<f32>(x, &problem, RowOut::new(loss, lse, h)?),
        Floats::F64(x) => ce_forward::<f64>(x, &problem, RowOut::new(loss, lse, h)?),
        Floats::F16(x) => ce_forward::<f16>(x, &problem, RowOut::new(loss, lse, h)?),
        Floats::Bf16(x) => ce_forward::<bf16>(x, &problem, RowOut::new(loss, lse, h)?),
    }
}

/// The fused pass's gradient factor: "mean", "sum" or "none" (torch's reductions; "none"
/// takes the gradient of the sum), or a number (rows in chunks: 1 / the whole denominator).
fn parse_scale(scale: &Bound<PyAny>) -> PyResult<GradScale> {
    if let Ok(f) = scale.extract::<f64>() {
        return Ok(GradScale::Factor(f));
    }
    match scale.extract::<String>()?.as_str() {
        "mean" => Ok(GradScale::Mean),
        "none" | "sum" => Ok(GradScale::Factor(1.0)),
        s => Err(PyValueError::new_err(format!(
            "reduction must be 'none', 'mean' or 'sum', got {s:?}"
        ))),
    }
}

fn ce_fused<T: NpElem>(
    x: &Bound<PyArray<T::Np, Ix2>>,
    args: &CeArgs,
    scale: GradScale,
    grad: Option<&Bound<PyAny>>,
    mut out: RowOut<T::F>,
) -> PyResult<(f64, f64)> {
    let py = x.py();
    let b = CeBorrow::<T>::new(args)?;
    let (target, opts) = (b.target(args)?, b.options(args)?);
    let results = out.results()?;
    let cols = x.shape()[1];
    let fused = |io: GradIo<'_, T>| {
        run(py, || {
            ce::cross_entropy_with_grad(io, cols, target, &opts, scale, results)
                .map(|s| (s.total, s.denom))
        })
    };
    match grad {
        Some(g) => {
            let xr = input(x)?;
            let mut gw = output::<T::Np, Ix2>(g, "out")?;
            let gs = T::cast_mut(slice_mut(&mut gw, "out")?);
            crate::memory::advise_huge_pages(gs);
            fused(GradIo::Separate {
                x: T::cast(slice(&xr, "input")?),
                grad: gs,
            })
        }
        None => {
            let mut xw = x
                .try_readwrite()
                .map_err(|e| PyValueError::new_err(format!("input: {e}")))?;
            fused(GradIo::InPlace(T::cast_mut(slice_mut(&mut xw, "input")?)))
        }
    }
}

/// Fused cross-entropy forward and gradient over the rows of `problem`, the gradient scaled
/// by `scale` ("mean", "sum", "none", or a number). `grad=None` writes the gradient over
/// `problem.x` itself. Returns (Σ loss, mean denominator).
#[pyfunction]
#[pyo3(signature = (problem, scale, grad, loss, lse, hits=None))]
fn cross_entropy_grad_rows(
    problem: CeArgs,
    scale: &Bound<PyAny>,
    grad: Option<Bound<PyAny>>,
    loss: &Bound<PyAny>,
    lse: &Bound<PyAny>,
    hits: Option<Bound<PyAny>>,
) -> PyResult<(f64, f64)> {
    let s = parse_scale(scale)?;
    let (g, h) = (grad.as_ref(), hits.as_ref());
    match &problem.x {
        Floats::F32(x) => ce_fused::<f32>(x, &problem, s, g, RowOut::new(loss, lse, h)?),
        Floats::F64(x) => ce_fused::<f64>(x, &problem, s, g, RowOut::new(loss, lse, h)?),
        Floats::F16(x) => ce_fused::<f16>(x, &problem, s, g, RowOut::new(loss, lse, h)?),
        Floats::Bf16(x) => ce_fused::<bf16>(x, &problem, s, g, RowOut::new(loss, lse, h)?),
    }
}

/// How the backward pass scales each row's gradient: one factor, or one per row.
struct RowScale<'py> {
    uniform: f64,
    rows: Option<PyReadonlyArray1<'py, f64>>,
}

fn ce_backward<T: NpElem>(
    x: &Bound<PyArray<T::Np, Ix2>>,
    args: &CeArgs,
    lse: &Bound<PyAny>,
    scale: &RowScale,
    grad: &Bound<PyAny>,
) -> PyResult<()> {
    let xr = input(x)?;
    let cols = xr.shape()[1];
    let xs = T::cast(slice(&xr, "input")?);
    let b = CeBorrow::<T>::new(args)?;
    let (target, opts) = (b.target(args)?, b.options(args)?);
    let lse: PyReadonlyArray1<T::F> = lse
        .extract()
        .map_err(|_| PyTypeError::new_err("lse must be a 1-d array of the compute dtype"))?;
    let es = slice(&lse, "lse")?;
    let scale = match &scale.rows {
        Some(r) => Scale::PerRow(slice(r, "grad_output")?),
        None => Scale::Uniform(scale.uniform),
    };
    let mut gw = output::<T::Np, Ix2>(grad, "grad")?;
    let gs = T::cast_mut(slice_mut(&mut gw, "grad")?);
    crate::memory::advise_huge_pages(gs);
    run(x.py(), || {
        ce::cross_entropy_backward(xs, cols, target, &opts, es, scale, gs)
    })
}

/// Cross-entropy gradient over the rows of `problem` from saved log-sum-exps, scaled by
/// `scale` or by `scale_rows` (one factor per row), into `grad`.
#[pyfunction]
#[pyo3(signature = (problem, lse, scale, scale_rows, grad))]
fn cross_entropy_backward_rows(
    problem: CeArgs,
    lse: &Bound<PyAny>,
    scale: f64,
    scale_rows: Option<PyReadonlyArray1<f64>>,
    grad: &Bound<PyAny>,
) -> PyResult<()> {
    let s = RowScale {
        uniform: scale,
        rows: scale_rows,
    };
    match &problem.x {
        Floats::F32(x) => ce_backward::<f32>(x, &problem, lse, &s, grad),
        Floats::F64(x) => ce_backward::<f64>(x, &problem, lse, &s, grad),
        Floats::F16(x) => ce_backward::<f16>(x, &problem, lse, &s, grad),
        Floats::Bf16(x) => ce_backward::<bf16>(x, &problem, lse, &s, grad),
    }
}

/// Checks class indices against `classes` (for losses computed outside the kernels); returns
/// the `mean` denominator: the summed `weight` (float64) of the non-ignored labels, or their
/// count.
#[pyfunction]
#[pyo3(signature = (target, classes, ignore_index, weight=None))]
fn check_labels(
    py: Python<'_>,
    target: LabelArray,
    classes: usize,
    ignore_index: i64,
    weight: Option<PyReadonlyArray1<f64>>,
) -> PyResult<f64> {
    let labels = target.labels()?;
    let w = weight.as_ref().map(|w| slice(w, "weight")).transpose()?;
    run(py, || {
        ce::check_class_indices(labels, classes, ignore_index, w)
    })
}

/// The most threads `set_num_threads` takes: beyond every machine's cores, short of what
/// would exhaust a process's resources.
const MAX_THREADS: usize = 4096;

/// Sets the number of threads the kernels use: at least 1, at most [`MAX_THREADS`].
#[pyfunction]
fn set_num_threads(n: &Bound<PyAny>) -> PyResult<()> {
    let max = MAX_THREADS;
    match n.extract::<usize>() {
        Ok(k) if (1..=max).contains(&k) => {
            crate::parallel::set_num_threads(k);
            Ok(())
        }
        _ => Err(PyValueError::new_err(format!(
            "the number of threads must be an int, at least 1 and at most {max}, got {n}"
        ))),
    }
}

/// The number of threads the kernels use.
#[pyfunction]
fn get_num_threads() -> usize {
    crate::parallel::num_threads()
}

/// The SIMD tier in use ("avx512", "avx2+fma", "neon" or "scalar").
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
    m.add_function(wrap_pyfunction!(check_labels, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(simd_tier, m)?)?;
    m.add_function(wrap_pyfunction!(detected_simd_tier, m)?)?;
    m.add_function(wrap_pyfunction!(set_simd_tier, m)?)?;
    Ok(())
}
