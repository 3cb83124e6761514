//! Errors the kernels report instead of panicking; the Python layer turns them into
//! `IndexError` and `ValueError`.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelError {
    /// A class label outside `[0, classes)` that is not `ignore_index`.
    TargetOutOfBounds {
        /// Position of the label in the (flattened) target.
        position: usize,
        value: i128,
        classes: usize,
        ignore_index: i64,
    },
    /// Buffers whose sizes disagree.
    Shape(String),
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::TargetOutOfBounds {
                position,
                value,
                classes,
                ignore_index,
            } => write!(
                f,
                "Target {value} is out of bounds: target[{position}] = {value}, expected a class \
                 index in [0, {classes}) or ignore_index ({ignore_index})"
            ),
            KernelError::Shape(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for KernelError {}

/// Fails unless a buffer holds the expected number of elements.
pub fn check_len(what: &str, got: usize, expected: usize) -> Result<(), KernelError> {
    if got == expected {
        Ok(())
    } else {
        Err(KernelError::Shape(format!(
            "{what} holds {got} elements, expected {expected}"
        )))
    }
}
