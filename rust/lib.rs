//! mlecore's kernels: log-sum-exp, softmax, log-softmax, NLL and cross-entropy with their
//! gradients, on plain slices. Nothing here knows Python; `python` (behind the feature of the
//! same name) is the thin PyO3 layer.
//!
//! Modules are private to the crate, so that the compiler reports what nothing uses; the
//! public API is what this file re-exports.

pub(crate) mod elem;
pub(crate) mod error;
pub(crate) mod kernels;
pub(crate) mod parallel;
pub(crate) mod simd;

// Fresh-output advice (huge pages) matters for memory the Python layer allocates.
#[cfg(feature = "python")]
mod memory;
#[cfg(feature = "python")]
mod python;

pub use elem::{Elem, LabelVisitor, Labels};
pub use error::KernelError;
pub use kernels::columns::logsumexp_axis;
pub use kernels::cross_entropy::{
    check_class_indices, cross_entropy, cross_entropy_backward, cross_entropy_with_grad, CeOptions,
    CeSummary, GradIo, GradScale, RowResults, Scale, Target,
};
/// The inner loops alone, for `benches/inner.rs`; not part of the API.
#[doc(hidden)]
pub use kernels::inner::{run as inner_loop, Loop};
pub use kernels::softmax::{logsumexp_grad_rows, logsumexp_rows, softmax_rows};
pub use parallel::{follow_threads, num_threads, set_num_threads};
pub use simd::{detected_tier, set_tier, tier, Tier};
