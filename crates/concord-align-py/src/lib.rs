//! `concord_align`: the alignment crate as a Python module (PyO3, built by maturin as an abi3
//! wheel): MMCS, exact matching with its optimality certificate, activation correlation and
//! the whole weight-space comparison of two SAE folders, as `concord align` computes them.
//!
//! Inputs are copied into the crate's row-major `f32` layout while the GIL is held (so no
//! Python thread can change them under the computation); the work itself runs with the GIL
//! released. The crate's errors become `ValueError`s with its one-line messages; reading a
//! file that is missing or unreadable raises `FileNotFoundError` or `OSError`.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use concord_align::corr::{self, CorrelationSummary, SparseBatch};
use concord_align::output::{self, WeightSpaceOptions};
use concord_align::{CompareOptions, Dict, ScanOptions, synth};
use concord_core::outputs::AlignOutput;
use concord_core::sae::Sae;
use numpy::{
    PyArray1, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

/// Tokens per batch handed to the correlation accumulator, as the CLI streams them from the
/// stores (it buffers and tiles them itself).
const CORR_BATCH: usize = 4096;

fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// A 2-D array-like `(rows, cols)` of float32 or float64 as row-major `f32`, copied; `what`
/// names it in errors. Anything that is not a numpy array goes through `numpy.asarray` first
/// (lists, CPU torch tensors).
fn matrix(what: &str, x: &Bound<'_, PyAny>) -> PyResult<(usize, usize, Vec<f32>)> {
    let array = as_ndarray(x)?;
    if let Ok(a) = array.extract::<PyReadonlyArray2<'_, f32>>() {
        let (rows, cols) = (a.shape()[0], a.shape()[1]);
        // `as_slice` also takes Fortran-ordered memory: only C order is row-major.
        let data = match a.as_slice() {
            Ok(s) if a.is_c_contiguous() => s.to_vec(),
            _ => a.as_array().iter().copied().collect(),
        };
        return Ok((rows, cols, data));
    }
    if let Ok(a) = array.extract::<PyReadonlyArray2<'_, f64>>() {
        let (rows, cols) = (a.shape()[0], a.shape()[1]);
        return Ok((rows, cols, a.as_array().iter().map(|&v| v as f32).collect()));
    }
    Err(PyValueError::new_err(format!(
        "{what}: expected a 2-D float32 or float64 array, got {}",
        describe(&array)?
    )))
}

/// `x` as a numpy array (`numpy.asarray(x)` unless it already is one).
fn as_ndarray<'py>(x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    if x.cast::<PyUntypedArray>().is_ok() {
        return Ok(x.clone());
    }
    let np = x.py().import("numpy")?;
    np.call_method1("asarray", (x,))
}

/// "a 1-D int64 array of shape (5,)" for errors.
fn describe(array: &Bound<'_, PyAny>) -> PyResult<String> {
    let a = array.cast::<PyUntypedArray>()?;
    let shape: Vec<String> = a.shape().iter().map(ToString::to_string).collect();
    let shape = if shape.len() == 1 {
        format!("({},)", shape[0])
    } else {
        format!("({})", shape.join(", "))
    };
    Ok(format!(
        "a {}-D {} array of shape {shape}",
        a.ndim(),
        a.dtype().str()?
    ))
}

/// A dictionary `(n, d)` with unit rows from an array-like; `what` names it in errors.
fn dict(py: Python<'_>, what: &'static str, x: &Bound<'_, PyAny>) -> PyResult<Dict> {
    let (n, d, rows) = matrix(what, x)?;
    py.detach(|| Dict::from_vec(what, rows, n, d))
        .map_err(value_error)
}

/// Mean max cosine similarity of two dictionaries, both ways.
///
/// Args:
///     a: feature directions `(n_a, d)`, float32 or float64 (rows need not be unit length;
///         zero rows have cosine 0 with everything; the crate computes in float32, with
///         float64 norms).
///     b: feature directions `(n_b, d)`.
///
/// Returns:
///     `(a_to_b, b_to_a)`: the mean over rows of `a` of their largest cosine with a row of
///     `b`, and the other way round.
///
/// Raises:
///     ValueError: shapes that differ in `d`, empty or non-finite input, or all rows zero.
#[pyfunction]
fn mmcs(py: Python<'_>, a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<(f64, f64)> {
    let (a, b) = (dict(py, "a", a)?, dict(py, "b", b)?);
    py.detach(|| concord_align::scan(&a, &b, &ScanOptions::default()))
        .map(|s| (s.mmcs_a_to_b(), s.mmcs_b_to_a()))
        .map_err(value_error)
}

/// An exact maximum-weight matching of two dictionaries on cosine similarity.
#[pyclass(frozen, module = "concord_align")]
struct Matching {
    /// Matched features of `a`, ascending, `(min(n_a, n_b),)` int64.
    #[pyo3(get)]
    rows: Py<PyArray1<i64>>,
    /// The feature of `b` matched to each of `rows`, `(min(n_a, n_b),)` int64.
    #[pyo3(get)]
    cols: Py<PyArray1<i64>>,
    /// The cosine of each matched pair, `(min(n_a, n_b),)` float32.
    #[pyo3(get)]
    cosines: Py<PyArray1<f32>>,
    /// The sum of the matched cosines (computed in float64).
    #[pyo3(get)]
    objective: f64,
    /// The mean matched cosine: `objective / min(n_a, n_b)`.
    #[pyo3(get)]
    mean_cos: f64,
    /// Whether the matching is proven optimal over all pairs (always, for the dense solver).
    #[pyo3(get)]
    optimal: bool,
    /// `"dense"` or `"sparse"` (candidate graph priced with the dual variables).
    #[pyo3(get)]
    method: &'static str,
    /// MMCS both ways `(a_to_b, b_to_a)`, from the same pass over the cosines.
    #[pyo3(get)]
    mmcs: (f64, f64),
    /// The optimality certificate: `primal`, `dual`, `gap_bound`, `max_violation`, `rounds`,
    /// `candidate_edges`, `priced_rows`, `priced_cols`.
    #[pyo3(get)]
    certificate: Py<PyDict>,
}

#[pymethods]
impl Matching {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Matching(pairs={}, mean_cos={:.6}, optimal={}, method='{}')",
            self.rows.bind(py).len(),
            self.mean_cos,
            if self.optimal { "True" } else { "False" },
            self.method
        )
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        self.rows.bind(py).len()
    }
}

/// The exact maximum-weight one-to-one matching of two dictionaries on cosine similarity,
/// as `concord align` computes it.
///
/// Every feature of the smaller side is matched to a distinct feature of the larger side so
/// that the sum of cosines is maximal: `scipy.optimize.linear_sum_assignment(a @ b.T,
/// maximize=True)` on the unit rows, without forming the matrix for large inputs. Up to
/// about 4 M pairs the dense solver runs on the full matrix; beyond, the sparse solver runs on
/// each row's and column's best candidates and prices every pair with the dual variables
/// until none violates them, which proves the matching optimal (`optimal`; the numbers are in
/// `certificate`).
///
/// Args:
///     a: feature directions `(n_a, d)`, float32 or float64 (computed in float32, as
///         `mmcs`).
///     b: feature directions `(n_b, d)`.
///
/// Returns:
///     Matching: `rows`, `cols`, `cosines` (each `(min(n_a, n_b),)`), `objective`,
///     `mean_cos`, `optimal`, `method`, `mmcs`, `certificate`.
///
/// Raises:
///     ValueError: shapes that differ in `d`, empty or non-finite input, or all rows zero.
#[pyfunction]
#[pyo3(name = "match")]
fn match_(py: Python<'_>, a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<Matching> {
    let (a, b) = (dict(py, "a", a)?, dict(py, "b", b)?);
    let opts = CompareOptions {
        encoder: false,
        ..CompareOptions::default()
    };
    let cmp = py
        .detach(|| concord_align::compare_dicts(&a, &b, None, &opts))
        .map_err(value_error)?;
    let pairs = &cmp.matches.decoder;
    let summary = &cmp.matching.decoder;
    let objective: f64 = pairs.iter().map(|p| f64::from(p.cos)).sum();
    let certificate = pythonize(py, &summary.certificate)?.cast_into::<PyDict>()?;
    Ok(Matching {
        rows: PyArray1::from_iter(py, pairs.iter().map(|p| i64::from(p.a))).unbind(),
        cols: PyArray1::from_iter(py, pairs.iter().map(|p| i64::from(p.b))).unbind(),
        cosines: PyArray1::from_iter(py, pairs.iter().map(|p| p.cos)).unbind(),
        objective,
        mean_cos: objective / pairs.len().max(1) as f64,
        optimal: summary.optimal,
        method: match summary.method {
            concord_align::Method::Dense => "dense",
            concord_align::Method::Sparse => "sparse",
        },
        mmcs: (cmp.mmcs.decoder.a_to_b, cmp.mmcs.decoder.b_to_a),
        certificate: certificate.unbind(),
    })
}

/// Any serde value as the Python object `json.loads` makes of its JSON.
fn pythonize<'py>(py: Python<'py>, value: &impl serde::Serialize) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(value).map_err(value_error)?;
    py.import("json")?.call_method1("loads", (text,))
}

/// A 1-D numpy array of an element type scipy uses for the parts of a CSR matrix.
enum Column<'py> {
    I32(PyReadonlyArray1<'py, i32>),
    I64(PyReadonlyArray1<'py, i64>),
    F32(PyReadonlyArray1<'py, f32>),
    F64(PyReadonlyArray1<'py, f64>),
}

/// Entries `r` of `a` through `f` (`None` when `f` refuses one).
fn map_range<T: numpy::Element + Copy, U>(
    a: &PyReadonlyArray1<'_, T>,
    r: Range<usize>,
    f: impl Fn(T) -> Option<U>,
) -> Option<Vec<U>> {
    match a.as_slice() {
        Ok(s) => s[r].iter().map(|&v| f(v)).collect(),
        Err(_) => {
            let len = r.len();
            a.as_array()
                .iter()
                .skip(r.start)
                .take(len)
                .map(|&v| f(v))
                .collect()
        }
    }
}

impl<'py> Column<'py> {
    fn new(what: &str, x: &Bound<'py, PyAny>) -> PyResult<Column<'py>> {
        let array = as_ndarray(x)?;
        if let Ok(a) = array.extract() {
            return Ok(Column::I32(a));
        }
        if let Ok(a) = array.extract() {
            return Ok(Column::I64(a));
        }
        if let Ok(a) = array.extract() {
            return Ok(Column::F32(a));
        }
        if let Ok(a) = array.extract() {
            return Ok(Column::F64(a));
        }
        Err(PyValueError::new_err(format!(
            "{what}: expected a 1-D int32, int64, float32 or float64 array, got {}",
            describe(&array)?
        )))
    }

    fn len(&self) -> usize {
        match self {
            Column::I32(a) => a.len(),
            Column::I64(a) => a.len(),
            Column::F32(a) => a.len(),
            Column::F64(a) => a.len(),
        }
    }

    /// Entries `r` as integers of type `U` (`None`: a float column, or an entry that is
    /// negative or too large).
    fn ints<U: TryFrom<i64>>(&self, r: Range<usize>) -> Option<Vec<U>> {
        match self {
            Column::I32(a) => map_range(a, r, |v| U::try_from(i64::from(v)).ok()),
            Column::I64(a) => map_range(a, r, |v| U::try_from(v).ok()),
            Column::F32(_) | Column::F64(_) => None,
        }
    }

    /// Entries `r` as `u32` feature indices (`None`: a float column, or an entry that is
    /// negative or too large). The check and the conversion are separate passes, each of
    /// which vectorises; a checked conversion per entry does not.
    fn indices(&self, r: Range<usize>) -> Option<Vec<u32>> {
        fn cast<T: numpy::Element + Copy>(
            a: &PyReadonlyArray1<'_, T>,
            r: Range<usize>,
            bad: impl Fn(T) -> bool,
            cast: impl Fn(T) -> u32,
        ) -> Option<Vec<u32>> {
            match a.as_slice() {
                Ok(s) => {
                    let s = &s[r];
                    let any_bad = s.iter().fold(false, |acc, &v| acc | bad(v));
                    (!any_bad).then(|| s.iter().map(|&v| cast(v)).collect())
                }
                Err(_) => map_range(a, r, |v| (!bad(v)).then(|| cast(v))),
            }
        }
        match self {
            Column::I32(a) => cast(a, r, |v| v < 0, |v| v as u32),
            Column::I64(a) => cast(
                a,
                r,
                |v| !(0..=i64::from(u32::MAX)).contains(&v),
                |v| v as u32,
            ),
            Column::F32(_) | Column::F64(_) => None,
        }
    }

    /// Entries `r` as `f32` (`None`: an integer column).
    fn floats(&self, r: Range<usize>) -> Option<Vec<f32>> {
        match self {
            Column::F32(a) => match a.as_slice() {
                Ok(s) => Some(s[r].to_vec()),
                Err(_) => map_range(a, r, Some),
            },
            Column::F64(a) => map_range(a, r, |v| Some(v as f32)),
            Column::I32(_) | Column::I64(_) => None,
        }
    }
}

/// Codes `(tokens, features)` as batches of `CORR_BATCH` tokens, copied in one pass: from a
/// scipy sparse matrix (any format; CSR read as it is) or a dense 2-D array. Returns the
/// number of features, of tokens and the batches.
fn codes(what: &str, x: &Bound<'_, PyAny>) -> PyResult<(usize, usize, Vec<SparseBatch>)> {
    let sparse = x
        .py()
        .import("scipy.sparse")
        .ok()
        .map(|sp| {
            sp.call_method1("issparse", (x,))
                .and_then(|r| r.is_truthy())
        })
        .transpose()?
        .unwrap_or(false);
    let chunks = |tokens: usize| {
        (0..tokens)
            .step_by(CORR_BATCH)
            .map(move |start| start..(start + CORR_BATCH).min(tokens))
    };
    if !sparse {
        let (tokens, n, data) = matrix(what, x)?;
        let batches = chunks(tokens)
            .map(|r| SparseBatch::from_dense(&data[r.start * n..r.end * n], r.len(), n))
            .collect();
        return Ok((n, tokens, batches));
    }
    let mut csr = x.call_method0("tocsr")?;
    if !csr.getattr("has_canonical_format")?.is_truthy()? {
        // Summing duplicates works in place: do it on a copy, not on the caller's matrix.
        csr = csr.call_method0("copy")?;
        csr.call_method0("sum_duplicates")?;
    }
    let (tokens, n): (usize, usize) = csr.getattr("shape")?.extract()?;
    let column = |part: &str| Column::new(&format!("{what}.{part}"), &csr.getattr(part)?);
    let (indptr, indices, data) = (column("indptr")?, column("indices")?, column("data")?);
    let bad = |reason: &str| PyValueError::new_err(format!("{what}: {reason}"));
    let indptr: Vec<usize> = indptr
        .ints(0..indptr.len())
        .ok_or_else(|| bad("indptr holds a negative entry or is not integer"))?;
    if indptr.len() != tokens + 1
        || indptr.first() != Some(&0)
        || indptr.windows(2).any(|w| w[0] > w[1])
        || indptr[tokens] > indices.len().min(data.len())
    {
        return Err(bad(&format!(
            "indptr ({} entries) must start at 0, not decrease and end within indices and \
             data ({} and {} entries) for {tokens} rows",
            indptr.len(),
            indices.len(),
            data.len()
        )));
    }
    let batches = chunks(tokens)
        .map(|r| {
            let (lo, hi) = (indptr[r.start], indptr[r.end]);
            Ok(SparseBatch {
                indptr: indptr[r.start..=r.end].iter().map(|p| p - lo).collect(),
                indices: indices
                    .indices(lo..hi)
                    .ok_or_else(|| bad("indices hold a negative or too large entry"))?,
                values: data
                    .floats(lo..hi)
                    .ok_or_else(|| bad("data is not float32 or float64"))?,
            })
        })
        .collect::<PyResult<_>>()?;
    Ok((n, tokens, batches))
}

/// Activation correlation of two SAEs' features on the same tokens (centred Pearson), both
/// ways, streamed over the nonzero codes: the `(n_a, n_b)` correlation matrix is never formed.
///
/// Args:
///     codes_a: activations `(tokens, n_a)`: a scipy sparse matrix (CSR, or any format
///         scipy converts to CSR) or a dense float32/float64 array.
///     codes_b: activations `(tokens, n_b)` on the same tokens.
///
/// Returns:
///     dict: `a_to_b`, `b_to_a` (mean over live features of their largest correlation on
///     the other side), `tokens`, `alive_a`, `alive_b`, `dead_a`, `dead_b` (features never
///     active or constant, left out), and per feature `best_a` `(n_a,)` int64 (the most
///     correlated feature of `b`, -1 when dead), `best_rho_a` `(n_a,)` float32 (its
///     correlation, NaN when dead), `best_b`, `best_rho_b` likewise.
///
/// Raises:
///     ValueError: different token counts, feature indices out of range, non-finite values.
#[pyfunction]
fn correlate<'py>(
    py: Python<'py>,
    codes_a: &Bound<'py, PyAny>,
    codes_b: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    let (n_a, tokens_a, a) = codes("codes_a", codes_a)?;
    let (n_b, tokens_b, b) = codes("codes_b", codes_b)?;
    if tokens_a != tokens_b {
        return Err(value_error(concord_align::Error::TokenCountMismatch {
            batch: 0,
            a_tokens: tokens_a,
            b_tokens: tokens_b,
        }));
    }
    let summary = py
        .detach(|| corr::correlate(n_a, n_b, a.iter().zip(&b)))
        .map_err(value_error)?;
    correlation_dict(py, &summary)
}

fn correlation_dict<'py>(py: Python<'py>, s: &CorrelationSummary) -> PyResult<Bound<'py, PyDict>> {
    let out = pythonize(py, s)?.cast_into::<PyDict>()?;
    for (name, best) in [("a", &s.best_a), ("b", &s.best_b)] {
        let idx = best.iter().map(|b| b.map_or(-1, |(j, _)| i64::from(j)));
        let rho = best.iter().map(|b| b.map_or(f32::NAN, |(_, r)| r));
        out.set_item(format!("best_{name}"), PyArray1::from_iter(py, idx))?;
        out.set_item(format!("best_rho_{name}"), PyArray1::from_iter(py, rho))?;
    }
    Ok(out)
}

/// Why an SAE could not be read, as the Python exception a user expects.
fn read_error(path: &Path, e: &concord_core::Error) -> PyErr {
    let msg = format!("cannot read SAE {}: {e}", path.display());
    match e {
        concord_core::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(msg)
        }
        concord_core::Error::Io { .. } => PyOSError::new_err(msg),
        _ => PyValueError::new_err(msg),
    }
}

/// Reads an SAE as `concord align` does, whatever package wrote it
/// (`concord_core::interop::load`): a SAELens folder, a sparsify hook folder, or a
/// dictionary_learning `ae.pt` (or a folder holding one).
fn load(path: &Path) -> PyResult<Sae> {
    concord_core::interop::load(path, "", "").map_err(|e| read_error(path, &e))
}

/// Compares two SAEs by their weights as `concord align --a A --b B` does, and returns the
/// same record as its JSON output.
///
/// Decoders (rows of `W_dec`, `(d_sae, d_in)`) and encoders (columns of `W_enc`,
/// `(d_in, d_sae)`) are compared: MMCS both ways, the exact matching (with its shared
/// fractions, shared-fraction curve and optimality flag), zero features, nulls when asked,
/// and feature families when the sizes differ. The activation part of `concord align`
/// (`--acts-a`, `--acts-b`) is not computed here: `correlation` is `{}`.
///
/// Args:
///     sae_a: an SAE: a SAELens-layout folder (`cfg.json`, `sae_weights.safetensors`), as
///         `concord train` writes and SAELens saves; a sparsify hook folder (`cfg.json`,
///         `sae.safetensors`); or a dictionary_learning `ae.pt` (or a folder holding one).
///     sae_b: the second SAE; its `d_in` must equal `sae_a`'s.
///     null_seeds: seeds of each null computed for this pair (`--null`; 0: none).
///     family_threshold: decoder cosine above which a feature of the larger SAE joins a
///         family of the smaller's (`--family-threshold`).
///
/// Returns:
///     dict: `a`, `b`, `d_in_a`, `d_in_b`, `d_sae_a`, `d_sae_b`, `mmcs`, `matching`,
///     `families`, `zero_features` (when there are any), `null`, `correlation`,
///     `by_frequency`, `examples`, `seconds`.
///
/// Raises:
///     FileNotFoundError: a path or one of its files is missing.
///     ValueError: an unreadable SAE, or SAEs of different widths.
#[pyfunction]
#[pyo3(signature = (sae_a, sae_b, *, null_seeds = 0, family_threshold = 0.5))]
#[expect(
    clippy::needless_pass_by_value,
    reason = "pyo3 hands extracted arguments over by value"
)]
fn compare<'py>(
    py: Python<'py>,
    sae_a: PathBuf,
    sae_b: PathBuf,
    null_seeds: usize,
    family_threshold: f32,
) -> PyResult<Bound<'py, PyAny>> {
    let start = Instant::now();
    let out = py.detach(|| -> PyResult<AlignOutput> {
        let (a, b) = (load(&sae_a)?, load(&sae_b)?);
        if a.cfg.d_in != b.cfg.d_in {
            return Err(PyValueError::new_err(format!(
                "dimension mismatch: {} has d_in = {}, {} has d_in = {}",
                sae_a.display(),
                a.cfg.d_in,
                sae_b.display(),
                b.cfg.d_in
            )));
        }
        let mut out = AlignOutput {
            a: sae_a.display().to_string(),
            b: sae_b.display().to_string(),
            d_in_a: a.cfg.d_in,
            d_in_b: b.cfg.d_in,
            d_sae_a: a.cfg.d_sae,
            d_sae_b: b.cfg.d_sae,
            ..AlignOutput::default()
        };
        let opts = WeightSpaceOptions {
            null_seeds,
            family_threshold,
        };
        output::weight_space(&mut out, &a.weights, &b.weights, &opts).map_err(value_error)?;
        out.seconds = start.elapsed().as_secs_f64();
        Ok(out)
    })?;
    pythonize(py, &out)
}

/// A 2-D float32 array `(rows, cols)` from row-major data.
fn array2<'py>(
    py: Python<'py>,
    data: &[f32],
    rows: usize,
    cols: usize,
) -> PyResult<Bound<'py, PyAny>> {
    PyArray1::from_slice(py, data)
        .reshape([rows, cols])
        .map(Bound::into_any)
}

/// Reads an SAE as `compare` does.
///
/// Args:
///     path: a SAELens-layout folder, a sparsify hook folder, or a dictionary_learning
///         `ae.pt` (or a folder holding one).
///
/// Returns:
///     dict: `cfg` (the parsed `cfg.json`), `W_enc` `(d_in, d_sae)`, `b_enc` `(d_sae,)`,
///     `W_dec` `(d_sae, d_in)`, `b_dec` `(d_in,)`, all float32, and `threshold` `(d_sae,)`
///     for JumpReLU SAEs (else None).
///
/// Raises:
///     FileNotFoundError: the path or one of its files is missing.
///     ValueError: an unreadable SAE.
#[pyfunction]
#[expect(
    clippy::needless_pass_by_value,
    reason = "pyo3 hands extracted arguments over by value"
)]
fn load_sae(py: Python<'_>, path: PathBuf) -> PyResult<Bound<'_, PyDict>> {
    let sae = py.detach(|| load(&path))?;
    let (d_in, d_sae) = (sae.cfg.d_in, sae.cfg.d_sae);
    let w = &sae.weights;
    let out = PyDict::new(py);
    out.set_item("cfg", pythonize(py, &sae.cfg)?)?;
    out.set_item("W_enc", array2(py, &w.w_enc, d_in, d_sae)?)?;
    out.set_item("b_enc", PyArray1::from_slice(py, &w.b_enc))?;
    out.set_item("W_dec", array2(py, &w.w_dec, d_sae, d_in)?)?;
    out.set_item("b_dec", PyArray1::from_slice(py, &w.b_dec))?;
    out.set_item(
        "threshold",
        w.threshold.as_deref().map(|t| PyArray1::from_slice(py, t)),
    )?;
    Ok(out)
}

/// A seeded SAE-like pair of dictionaries (the crate's test and benchmark generator): a share
/// of `b`'s rows are noisy copies of `a`'s rows, some in clusters (split features), the rest
/// isotropic random; `b`'s rows are shuffled.
///
/// Args:
///     n_a: rows of `a`.
///     n_b: rows of `b`.
///     d: width.
///     seed: the seed; the same seed gives the same pair on every machine.
///
/// Returns:
///     `(a, b)`: float32 arrays `(n_a, d)` and `(n_b, d)` with unit rows.
#[pyfunction]
#[pyo3(signature = (n_a, n_b, d, seed = 0))]
fn sae_like_pair<'py>(
    py: Python<'py>,
    n_a: usize,
    n_b: usize,
    d: usize,
    seed: u64,
) -> PyResult<Bound<'py, PyTuple>> {
    let (a, b) = py
        .detach(|| synth::sae_like_pair(n_a, n_b, d, &synth::SaeLike::default(), seed))
        .map_err(value_error)?;
    PyTuple::new(
        py,
        [array2(py, &a.rows, a.n, d)?, array2(py, &b.rows, b.n, d)?],
    )
}

/// MMCS, exact matching with an optimality certificate, activation correlation and SAE
/// comparison from Concord's alignment crate (pure Rust; the GIL is released while it works).
#[pymodule]
#[pyo3(name = "concord_align")]
fn py_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(mmcs, m)?)?;
    m.add_function(wrap_pyfunction!(match_, m)?)?;
    m.add_function(wrap_pyfunction!(correlate, m)?)?;
    m.add_function(wrap_pyfunction!(compare, m)?)?;
    m.add_function(wrap_pyfunction!(load_sae, m)?)?;
    m.add_function(wrap_pyfunction!(sae_like_pair, m)?)?;
    m.add_class::<Matching>()?;
    Ok(())
}
