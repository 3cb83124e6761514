//! The kernels: SIMD loops over one chunk (`chunk`), the partial log-sum-exp and its merge
//! (`stats`), row driving and segment splitting (`rows`), reductions down a leading axis and
//! rows of few classes (`columns`), and the public operations (`softmax`, `cross_entropy`).
//! Threads come from `crate::parallel`.

pub(crate) mod chunk;
pub(crate) mod columns;
pub(crate) mod cross_entropy;
pub(crate) mod inner;
pub(crate) mod rows;
pub(crate) mod softmax;
pub(crate) mod stats;

#[cfg(test)]
mod tests;
