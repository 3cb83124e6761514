//! Memory handed to the kernels, in one form for both front-ends: a numpy array, or a torch
//! tensor's memory as the Python package describes it, the tuple `(address, elements, dtype
//! code, tensor)` (`mlecore.torch._rust` builds it from `data_ptr()`, `numel()` and the dtype, with no
//! numpy view in between). Either becomes a [`Mem`]: where the elements are, how many, and
//! of which type; the kernels then read it as a slice of that type.

use half::{bf16, f16};
use numpy::npyffi::{self, NPY_ARRAY_ALIGNED, NPY_ARRAY_C_CONTIGUOUS, NPY_ARRAY_WRITEABLE};
use numpy::{PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

/// The element types the kernels read or write. The discriminants are the codes of the
/// tuple form, as `mlecore.torch._rust.CODES` sends them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32 = 0,
    F64 = 1,
    F16 = 2,
    Bf16 = 3,
    I64 = 4,
    I32 = 5,
    I16 = 6,
    I8 = 7,
    U64 = 8,
    U32 = 9,
    U16 = 10,
    U8 = 11,
}

const BY_CODE: [Dtype; 12] = [
    Dtype::F32,
    Dtype::F64,
    Dtype::F16,
    Dtype::Bf16,
    Dtype::I64,
    Dtype::I32,
    Dtype::I16,
    Dtype::I8,
    Dtype::U64,
    Dtype::U32,
    Dtype::U16,
    Dtype::U8,
];

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
            Dtype::F16 => "float16",
            Dtype::Bf16 => "bfloat16",
            Dtype::I64 => "int64",
            Dtype::I32 => "int32",
            Dtype::I16 => "int16",
            Dtype::I8 => "int8",
            Dtype::U64 => "uint64",
            Dtype::U32 => "uint32",
            Dtype::U16 => "uint16",
            Dtype::U8 => "uint8",
        }
    }

    /// numpy's (kind, itemsize); bfloat16 never comes from numpy, which has none.
    fn from_numpy(kind: u8, size: usize) -> Option<Dtype> {
        Some(match (kind, size) {
            (b'f', 4) => Dtype::F32,
            (b'f', 8) => Dtype::F64,
            (b'f', 2) => Dtype::F16,
            (b'i', 8) => Dtype::I64,
            (b'i', 4) => Dtype::I32,
            (b'i', 2) => Dtype::I16,
            (b'i', 1) => Dtype::I8,
            (b'u', 8) => Dtype::U64,
            (b'u', 4) => Dtype::U32,
            (b'u', 2) => Dtype::U16,
            (b'u', 1) => Dtype::U8,
            _ => return None,
        })
    }
}

/// A Rust type whose elements a [`Mem`] may hold.
pub trait Stored: Copy {
    const DTYPE: Dtype;
}

macro_rules! stored {
    ($($t:ty => $d:ident),*) => {$(
        impl Stored for $t {
            const DTYPE: Dtype = Dtype::$d;
        }
    )*};
}
stored!(f32 => F32, f64 => F64, f16 => F16, bf16 => Bf16, i64 => I64, i32 => I32,
        i16 => I16, i8 => I8, u64 => U64, u32 => U32, u16 => U16, u8 => U8);

/// Contiguous, aligned elements of one type, owned by a Python object that the caller of the
/// extension holds for the whole call (a numpy array or a torch tensor).
pub struct Mem {
    addr: usize,
    len: usize,
    pub dtype: Dtype,
    writeable: bool,
}

impl<'py> FromPyObject<'_, 'py> for Mem {
    type Error = PyErr;

    fn extract(ob: Borrowed<'_, 'py, PyAny>) -> PyResult<Mem> {
        if let Ok(a) = ob.cast::<PyUntypedArray>() {
            return from_array(&a);
        }
        // The fourth item is the tensor itself: the tuple, an argument of the call, keeps
        // the memory alive until the kernel returns, even when it was a temporary.
        let (addr, len, code, _owner): (usize, usize, usize, Bound<'py, PyAny>) =
            ob.extract().map_err(|_| {
                PyTypeError::new_err(format!(
                    "expected a numpy array or (address, elements, dtype code, owner), got {}",
                    ob.get_type()
                ))
            })?;
        let dtype = *BY_CODE
            .get(code)
            .ok_or_else(|| PyValueError::new_err(format!("unknown dtype code {code}")))?;
        Ok(Mem {
            addr,
            len,
            dtype,
            writeable: true,
        })
    }
}

fn from_array(a: &Bound<'_, PyUntypedArray>) -> PyResult<Mem> {
    let descr = a.dtype();
    let dtype = Dtype::from_numpy(descr.kind(), descr.itemsize())
        .filter(|_| descr.is_native_byteorder() != Some(false))
        .ok_or_else(|| {
            PyTypeError::new_err(format!(
                "unsupported dtype {descr}: the kernels take native float16/32/64 or integers"
            ))
        })?;
    // SAFETY: `a` is a live numpy array (checked by the cast), so its object holds the
    // array's fields.
    let fields = unsafe { &*npyffi::_PyArray_GET_ITEM_DATA(a.as_array_ptr()) };
    let flags = fields.flags;
    if flags & NPY_ARRAY_C_CONTIGUOUS == 0 || flags & NPY_ARRAY_ALIGNED == 0 {
        return Err(PyValueError::new_err(
            "arrays must be C-contiguous and aligned",
        ));
    }
    Ok(Mem {
        addr: fields.data as usize,
        len: a.len(),
        dtype,
        writeable: flags & NPY_ARRAY_WRITEABLE != 0,
    })
}

impl Mem {
    fn expect(&self, dtype: Dtype, what: &str) -> PyResult<()> {
        if self.dtype != dtype {
            return Err(PyTypeError::new_err(format!(
                "{what} must hold {}, got {}",
                dtype.name(),
                self.dtype.name()
            )));
        }
        let align = match dtype {
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
            Dtype::F32 | Dtype::I32 | Dtype::U32 => 4,
            Dtype::F16 | Dtype::Bf16 | Dtype::I16 | Dtype::U16 => 2,
            Dtype::I8 | Dtype::U8 => 1,
        };
        if self.len > 0 && (self.addr == 0 || !self.addr.is_multiple_of(align)) {
            return Err(PyValueError::new_err(format!(
                "{what} must be aligned to {align} bytes"
            )));
        }
        Ok(())
    }

    /// The elements, read as `E` (a `TypeError` when they are of another type).
    pub fn slice<E: Stored>(&self, what: &str) -> PyResult<&[E]> {
        self.expect(E::DTYPE, what)?;
        if self.len == 0 {
            return Ok(&[]);
        }
        // SAFETY: the address holds `len` initialized, aligned (checked) elements of type
        // `E` (checked), owned by an object that lives through the call: numpy's flags say
        // so for an array (an argument of the call); for the tuple form it is
        // `mlecore.torch._rust.mem`'s contract (a contiguous tensor of that dtype, which the
        // tuple itself holds).
        Ok(unsafe { std::slice::from_raw_parts(self.addr as *const E, self.len) })
    }

    /// The elements, written as `E`. Each output is taken once per call, and the Python
    /// package never passes memory that overlaps another argument (its `out=` checks), so
    /// the slice aliases nothing the kernel reads.
    #[allow(clippy::mut_from_ref)]
    pub fn slice_mut<E: Stored>(&self, what: &str) -> PyResult<&mut [E]> {
        self.expect(E::DTYPE, what)?;
        if !self.writeable {
            return Err(PyValueError::new_err(format!("{what} is read-only")));
        }
        if self.len == 0 {
            return Ok(&mut []);
        }
        // SAFETY: as in `slice`, and the memory is writeable (checked) and referenced by no
        // other argument of the call (the contract above).
        Ok(unsafe { std::slice::from_raw_parts_mut(self.addr as *mut E, self.len) })
    }
}
