//! The thin PyO3 layer: reads the memory of numpy arrays and torch tensors without copying
//! (C-contiguous and aligned; the Python package makes them so), releases the GIL around
//! every kernel, and turns kernel errors into Python exceptions. Shapes, dtypes and options
//! are validated by the Python package first; what is checked again here becomes a
//! `ValueError` or `TypeError`, never a panic.
//!
//! Every array argument is a [`Mem`] (`mem.rs`): a numpy array or a tensor's (address,
//! elements, dtype code), one form for both front-ends. A call is described once, as the
//! tuple the Python package passes, and one `match` on the input's dtype picks the kernel's
//! instantiation.

mod calls;
mod mem;

use crate::error::KernelError;
use pyo3::exceptions::{PyIndexError, PyRuntimeError, PyValueError};
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

/// Tells the kernels the calling framework's thread count (torch's), used while mlecore has
/// no count of its own (`set_num_threads`, `MLECORE_NUM_THREADS`).
#[pyfunction]
fn follow_threads(n: usize) {
    crate::parallel::follow_threads(n.clamp(1, MAX_THREADS));
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
    calls::register(m)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(follow_threads, m)?)?;
    m.add_function(wrap_pyfunction!(simd_tier, m)?)?;
    m.add_function(wrap_pyfunction!(detected_simd_tier, m)?)?;
    m.add_function(wrap_pyfunction!(set_simd_tier, m)?)?;
    Ok(())
}
