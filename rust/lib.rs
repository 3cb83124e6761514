//! mlecore's kernels: log-sum-exp, softmax, log-softmax, NLL and cross-entropy with their
//! gradients, on plain slices. Nothing here knows Python; `python` (behind the feature of the
//! same name) is the thin PyO3 layer.

pub mod elem;
pub mod error;
pub mod kernels;
pub mod memory;
pub mod parallel;
pub mod simd;

#[cfg(feature = "python")]
mod python;

pub use elem::{Elem, Label};
pub use error::KernelError;
pub use kernels::columns::logsumexp_axis;
pub use kernels::cross_entropy::{
    cross_entropy, cross_entropy_backward, cross_entropy_with_grad, CeOptions, CeSummary, GradIo,
    Reduction, Scale, Target,
};
pub use kernels::softmax::{logsumexp_rows, softmax_rows};
pub use parallel::{num_threads, set_num_threads};
pub use simd::{detected_tier, set_tier, tier, Tier};
