//! The kernels: SIMD loops over one chunk (`chunk`), their statistics (`stats`), row driving
//! and threads (`rows`), and the public operations (`softmax`, `cross_entropy`).

pub(crate) mod chunk;
pub mod columns;
pub mod cross_entropy;
pub(crate) mod rows;
pub mod softmax;
pub mod stats;

#[cfg(test)]
mod tests;
