//! The kernels as Python calls them: each argument a [`Mem`], each cross-entropy call one
//! [`Problem`] tuple, one `match` on the input's dtype per call.

use super::mem::{Dtype, Mem, Stored};
use super::run;
use crate::elem::{Elem, Labels};
use crate::kernels::columns;
use crate::kernels::cross_entropy::{
    self as ce, CeOptions, GradIo, GradScale, RowResults, Scale, Target,
};
use crate::kernels::softmax;
use half::{bf16, f16};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

/// Runs `$body` with `$T` the storage type of the float dtype `$d`.
macro_rules! by_float {
    ($d:expr, $T:ident => $body:expr) => {
        match $d {
            Dtype::F32 => {
                type $T = f32;
                $body
            }
            Dtype::F64 => {
                type $T = f64;
                $body
            }
            Dtype::F16 => {
                type $T = f16;
                $body
            }
            Dtype::Bf16 => {
                type $T = bf16;
                $body
            }
            d => Err(PyTypeError::new_err(format!(
                "input has dtype {}; the kernels take float32, float64, float16 or bfloat16",
                d.name()
            ))),
        }
    };
}

/// A storage type of the logits, with its compute type.
trait Storage: Elem<F: Stored> + Stored {}
impl<T: Elem<F: Stored> + Stored> Storage for T {}

/// log Σ exp over each row of `cols` values of `x`, one value per row into `out`.
#[pyfunction]
fn logsumexp_rows(py: Python<'_>, x: Mem, cols: usize, out: Mem) -> PyResult<()> {
    by_float!(x.dtype, T => {
        let (xs, os) = (x.slice::<T>("input")?, out.slice_mut::<T>("out")?);
        run(py, || softmax::logsumexp_rows(xs, cols, os))
    })
}

/// log Σ exp over axis 1 of a C-contiguous (outer, steps, inner) float32/float64 array,
/// into `out` of (outer, inner).
#[pyfunction]
fn logsumexp_axis(py: Python<'_>, x: Mem, shape: (usize, usize, usize), out: Mem) -> PyResult<()> {
    let (outer, steps, inner) = shape;
    fn go<F: crate::simd::Float + Stored>(
        py: Python<'_>,
        x: &Mem,
        (outer, steps, inner): (usize, usize, usize),
        out: &Mem,
    ) -> PyResult<()> {
        let (xs, os) = (x.slice::<F>("input")?, out.slice_mut::<F>("out")?);
        run(py, || columns::logsumexp_axis(xs, outer, steps, inner, os))
    }
    match x.dtype {
        Dtype::F32 => go::<f32>(py, &x, (outer, steps, inner), &out),
        Dtype::F64 => go::<f64>(py, &x, (outer, steps, inner), &out),
        d => Err(PyTypeError::new_err(format!(
            "the column kernel takes float32 or float64, got {}",
            d.name()
        ))),
    }
}

/// softmax (or log-softmax) over each row of `cols` values of `x`, into `out`.
#[pyfunction]
fn softmax_rows(py: Python<'_>, x: Mem, cols: usize, out: Mem, log: bool) -> PyResult<()> {
    by_float!(x.dtype, T => {
        let (xs, os) = (x.slice::<T>("input")?, out.slice_mut::<T>("out")?);
        crate::memory::advise_huge_pages(os);
        run(py, || softmax::softmax_rows(Some(xs), os, cols, log))
    })
}

/// The gradient of log-sum-exp over rows of `cols` values: `scale[r]`·softmax(x[r]) into
/// `out` (0 on a row of all −inf); `scale` one float64 per row.
#[pyfunction]
fn logsumexp_grad_rows(py: Python<'_>, x: Mem, cols: usize, scale: Mem, out: Mem) -> PyResult<()> {
    by_float!(x.dtype, T => {
        let (xs, ss) = (x.slice::<T>("input")?, scale.slice::<f64>("scale")?);
        let os = out.slice_mut::<T>("out")?;
        crate::memory::advise_huge_pages(os);
        run(py, || softmax::logsumexp_grad_rows(xs, cols, ss, os))
    })
}

fn labels<'a>(m: &'a Mem, what: &str) -> PyResult<Labels<'a>> {
    Ok(match m.dtype {
        Dtype::I64 => Labels::I64(m.slice(what)?),
        Dtype::I32 => Labels::I32(m.slice(what)?),
        Dtype::I16 => Labels::I16(m.slice(what)?),
        Dtype::I8 => Labels::I8(m.slice(what)?),
        Dtype::U64 => Labels::U64(m.slice(what)?),
        Dtype::U32 => Labels::U32(m.slice(what)?),
        Dtype::U16 => Labels::U16(m.slice(what)?),
        Dtype::U8 => Labels::U8(m.slice(what)?),
        d => {
            return Err(PyTypeError::new_err(format!(
                "{what} must hold class indices (an integer dtype), got {}",
                d.name()
            )))
        }
    })
}

/// A cross-entropy problem in row form, the tuple `(x, (rows, cols), target, weight,
/// ignore_index, label_smoothing, lse_square_scale)`: `x` rows of `cols` logits, `target`
/// one class index per row or probabilities of `x`'s dtype, `weight` one per class of the
/// compute dtype. The forward, fused and backward kernels all take it.
#[derive(FromPyObject)]
struct Problem(Mem, (usize, usize), Mem, Option<Mem>, i64, f64, f64);

impl Problem {
    fn rows(&self) -> usize {
        self.1 .0
    }

    fn cols(&self) -> usize {
        self.1 .1
    }

    fn target<T: Storage>(&self) -> PyResult<Target<'_, T>> {
        let t = &self.2;
        if t.dtype == T::DTYPE {
            return Ok(Target::Probs(t.slice("target")?));
        }
        labels(t, "target").map(Target::Index).map_err(|_| {
            PyTypeError::new_err(format!(
                "target must hold class indices or probabilities of the input's dtype {}, \
                 got {}",
                T::DTYPE.name(),
                t.dtype.name()
            ))
        })
    }

    fn options<T: Storage>(&self) -> PyResult<CeOptions<'_, T::F>> {
        Ok(CeOptions {
            weight: self.3.as_ref().map(|w| w.slice("weight")).transpose()?,
            ignore_index: self.4,
            label_smoothing: self.5,
            lse_square_scale: self.6,
        })
    }
}

/// The per-row outputs of a pass: losses (float64), log-sum-exps (of the compute dtype) and,
/// optionally, whether each row's class holds its maximum (uint8). A loss or log-sum-exp
/// output the caller does not want (`None`) is a scratch buffer here.
struct RowOut<F> {
    loss: Option<Vec<f64>>,
    lse: Option<Vec<F>>,
}

impl<F: Stored + Default> RowOut<F> {
    fn results<'a>(
        &'a mut self,
        rows: usize,
        loss: &'a Option<Mem>,
        lse: &'a Option<Mem>,
        hits: &'a Option<Mem>,
    ) -> PyResult<RowResults<'a, F>> {
        let loss = match loss {
            Some(m) => m.slice_mut("loss")?,
            None => self.loss.insert(vec![0.0; rows]).as_mut_slice(),
        };
        let lse = match lse {
            Some(m) => m.slice_mut("lse")?,
            None => self.lse.insert(vec![F::default(); rows]).as_mut_slice(),
        };
        let hits = hits.as_ref().map(|h| h.slice_mut("hits")).transpose()?;
        Ok(RowResults { loss, lse, hits })
    }
}

/// Cross-entropy forward over the rows of `problem`: per-row losses into `loss` (float64),
/// log-sum-exps into `lse`, and whether each row's class holds the row's maximum into
/// `hits` (uint8), each when given; returns (Σ loss, mean denominator).
#[pyfunction]
#[pyo3(signature = (problem, loss=None, lse=None, hits=None))]
fn cross_entropy_rows(
    py: Python<'_>,
    problem: Problem,
    loss: Option<Mem>,
    lse: Option<Mem>,
    hits: Option<Mem>,
) -> PyResult<(f64, f64)> {
    let (x, rows, cols) = (&problem.0, problem.rows(), problem.cols());
    by_float!(x.dtype, T => {
        let xs = x.slice::<T>("input")?;
        let (target, opts) = (problem.target::<T>()?, problem.options::<T>()?);
        let mut scratch = RowOut { loss: None, lse: None };
        let results = scratch.results(rows, &loss, &lse, &hits)?;
        run(py, || {
            ce::cross_entropy(xs, cols, target, &opts, results).map(|s| (s.total, s.denom))
        })
    })
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

/// Fused cross-entropy forward and gradient over the rows of `problem`, the gradient scaled
/// by `scale` ("mean", "sum", "none", or a number) into `grad`; `grad=None` writes it over
/// the logits themselves. Returns (Σ loss, mean denominator).
#[pyfunction]
#[pyo3(signature = (problem, scale, grad, loss=None, lse=None, hits=None))]
fn cross_entropy_grad_rows(
    py: Python<'_>,
    problem: Problem,
    scale: &Bound<PyAny>,
    grad: Option<Mem>,
    loss: Option<Mem>,
    lse: Option<Mem>,
    hits: Option<Mem>,
) -> PyResult<(f64, f64)> {
    let s = parse_scale(scale)?;
    let (x, rows, cols) = (&problem.0, problem.rows(), problem.cols());
    by_float!(x.dtype, T => {
        let (target, opts) = (problem.target::<T>()?, problem.options::<T>()?);
        let mut scratch = RowOut { loss: None, lse: None };
        let results = scratch.results(rows, &loss, &lse, &hits)?;
        let io = match &grad {
            Some(g) => {
                let gs = g.slice_mut::<T>("out")?;
                crate::memory::advise_huge_pages(gs);
                GradIo::Separate { x: x.slice::<T>("input")?, grad: gs }
            }
            None => GradIo::InPlace(x.slice_mut::<T>("input")?),
        };
        run(py, || {
            ce::cross_entropy_with_grad(io, cols, target, &opts, s, results)
                .map(|s| (s.total, s.denom))
        })
    })
}

/// Cross-entropy gradient over the rows of `problem` from saved log-sum-exps, scaled by
/// `scale` or by `scale_rows` (one float64 factor per row), into `grad`.
#[pyfunction]
#[pyo3(signature = (problem, lse, scale, scale_rows, grad))]
fn cross_entropy_backward_rows(
    py: Python<'_>,
    problem: Problem,
    lse: Mem,
    scale: f64,
    scale_rows: Option<Mem>,
    grad: Mem,
) -> PyResult<()> {
    let x = &problem.0;
    by_float!(x.dtype, T => {
        let xs = x.slice::<T>("input")?;
        let (target, opts) = (problem.target::<T>()?, problem.options::<T>()?);
        let es = lse.slice::<<T as Elem>::F>("lse")?;
        let scale = match &scale_rows {
            Some(r) => Scale::PerRow(r.slice("grad_output")?),
            None => Scale::Uniform(scale),
        };
        let gs = grad.slice_mut::<T>("grad")?;
        crate::memory::advise_huge_pages(gs);
        run(py, || {
            ce::cross_entropy_backward(xs, problem.cols(), target, &opts, es, scale, gs)
        })
    })
}

/// Checks class indices against `classes` (for losses computed outside the kernels); returns
/// the `mean` denominator: the summed `weight` (float64) of the non-ignored labels, or their
/// count.
#[pyfunction]
#[pyo3(signature = (target, classes, ignore_index, weight=None))]
fn check_labels(
    py: Python<'_>,
    target: Mem,
    classes: usize,
    ignore_index: i64,
    weight: Option<Mem>,
) -> PyResult<f64> {
    let labels = labels(&target, "target")?;
    let w = weight
        .as_ref()
        .map(|w| w.slice::<f64>("weight"))
        .transpose()?;
    run(py, || {
        ce::check_class_indices(labels, classes, ignore_index, w)
    })
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(logsumexp_rows, m)?)?;
    m.add_function(wrap_pyfunction!(logsumexp_axis, m)?)?;
    m.add_function(wrap_pyfunction!(softmax_rows, m)?)?;
    m.add_function(wrap_pyfunction!(logsumexp_grad_rows, m)?)?;
    m.add_function(wrap_pyfunction!(cross_entropy_rows, m)?)?;
    m.add_function(wrap_pyfunction!(cross_entropy_grad_rows, m)?)?;
    m.add_function(wrap_pyfunction!(cross_entropy_backward_rows, m)?)?;
    m.add_function(wrap_pyfunction!(check_labels, m)?)?;
    Ok(())
}
