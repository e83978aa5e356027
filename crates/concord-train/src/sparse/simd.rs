//! The row kernels under the sparse products: AVX-512 where the CPU has it (detected at run
//! time, since the build targets baseline x86-64), portable loops elsewhere.
//!
//! Every kernel works on one contiguous row of length `d` against rows gathered by index from
//! a row-major matrix `(_, d)`. Each output element sums its terms in ascending entry order
//! whatever the instruction set, so results depend only on the data (and on the instruction
//! set, through fused multiply-adds: a machine always picks the same one).

/// The instruction set the kernels run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// Plain loops the compiler vectorises for the build target.
    Portable,
    /// AVX-512F intrinsics with fused multiply-adds (x86-64 only).
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// The best instruction set this CPU runs.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        Isa::Portable
    }

    /// Every instruction set this CPU runs (for tests).
    #[cfg(test)]
    pub fn available() -> Vec<Isa> {
        let mut out = vec![Isa::Portable];
        if Isa::detect() != Isa::Portable {
            out.push(Isa::detect());
        }
        out
    }
}

/// Calls `body(args)`, an `#[inline(always)]` function of plain loops, compiled for AVX-512
/// when the CPU has it, so that its loops vectorise sixteen lanes wide (the build targets
/// baseline x86-64: four). Such loops neither reassociate nor contract floating-point
/// operations, so the results are bitwise those of the baseline build.
macro_rules! wide {
    ($body:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn wide($($arg: $ty),*) -> $ret {
                $body($($arg),*)
            }
            if $crate::sparse::Isa::detect() == $crate::sparse::Isa::Avx512 {
                // SAFETY: `Isa::detect` found AVX-512F on this CPU.
                unsafe { wide($($arg),*) }
            } else {
                $body($($arg),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $body($($arg),*)
        }
    }};
}
pub(crate) use wide;

/// Panics unless every row `idx[e]` of `rows (_, d)` exists: the vector kernels read through
/// raw pointers and rely on it.
fn check_rows(rows: &[f32], d: usize, idx: &[u32]) {
    if let Some(&max) = idx.iter().max() {
        assert!(
            (max as usize + 1) * d <= rows.len(),
            "row {max} out of a ({}, {d}) matrix",
            rows.len() / d.max(1)
        );
    }
}

/// `out (d) += sum_e coef[e] * rows[idx[e]]` with `rows (_, d)` row-major, `d = out.len()`.
pub(crate) fn axpy_gather(isa: Isa, out: &mut [f32], rows: &[f32], idx: &[u32], coef: &[f32]) {
    let d = out.len();
    assert_eq!(idx.len(), coef.len());
    check_rows(rows, d, idx);
    match isa {
        Isa::Portable => {
            for (&j, &c) in idx.iter().zip(coef) {
                let r = &rows[j as usize * d..][..d];
                out.iter_mut().zip(r).for_each(|(o, r)| *o += c * r);
            }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` only comes from `Isa::detect` on a CPU with AVX-512F, and
        // every gathered row lies inside `rows` (checked above).
        Isa::Avx512 => unsafe { avx512::axpy_gather(out, rows, idx, coef) },
    }
}

/// `out[e] = <a, rows[idx[e]]>` with `rows (_, d)` row-major, `d = a.len()`.
pub(crate) fn dot_gather(isa: Isa, a: &[f32], rows: &[f32], idx: &[u32], out: &mut [f32]) {
    let d = a.len();
    assert_eq!(idx.len(), out.len());
    check_rows(rows, d, idx);
    match isa {
        Isa::Portable => {
            for (&j, o) in idx.iter().zip(out.iter_mut()) {
                *o = dot(a, &rows[j as usize * d..][..d]);
            }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `axpy_gather`.
        Isa::Avx512 => unsafe { avx512::dot_gather(a, rows, idx, out) },
    }
}

/// Writes the column index and value of each positive entry of `row` into `col`, `val`
/// (ascending columns) and returns how many there were. Panics if they do not fit.
pub(crate) fn compress_positive(isa: Isa, row: &[f32], col: &mut [u32], val: &mut [f32]) -> usize {
    assert_eq!(col.len(), val.len());
    match isa {
        Isa::Portable => {
            let mut k = 0;
            for (j, &x) in row.iter().enumerate() {
                if x > 0.0 {
                    col[k] = j as u32;
                    val[k] = x;
                    k += 1;
                }
            }
            k
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` only comes from `Isa::detect` on a CPU with AVX-512F.
        Isa::Avx512 => unsafe { avx512::compress_positive(row, col, val) },
    }
}

/// The dot product in sixteen lanes summed pairwise at the end, as the AVX-512 kernel does.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let (at, bt) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in at.iter().zip(bt).enumerate() {
        acc[l] += x * y;
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Accumulator registers per pass over the entries: 12 of the 32 vector registers hold a
    /// 192-value slice of the output row (576 = 3 passes), the rest take the loads.
    const MAX_V: usize = 12;

    /// The lanes `0..n` of a vector, `n < 16`.
    fn low_mask(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// # Safety
    /// The CPU has AVX-512F; every `idx[e]` addresses a whole row of `rows (_, out.len())`;
    /// `idx` and `coef` have one length.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn axpy_gather(out: &mut [f32], rows: &[f32], idx: &[u32], coef: &[f32]) {
        let d = out.len();
        let full = d / 16;
        let (o, r) = (out.as_mut_ptr(), rows.as_ptr());
        let mut v0 = 0;
        // SAFETY (all calls below): each pass covers vectors `v0..v0 + V` of the row, inside
        // `0..d`, and the caller's contract covers the gathered rows.
        while v0 < full {
            let nv = (full - v0).min(MAX_V);
            macro_rules! pass {
                ($($v:literal)*) => {
                    match nv {
                        $($v => unsafe { axpy_pass::<$v>(o.add(16 * v0), r.add(16 * v0), d, idx, coef) },)*
                        _ => unreachable!(),
                    }
                };
            }
            pass!(1 2 3 4 5 6 7 8 9 10 11 12);
            v0 += nv;
        }
        let tail = d % 16;
        if tail > 0 {
            let m = low_mask(tail);
            let (o, r) = unsafe { (o.add(16 * full), r.add(16 * full)) };
            unsafe {
                let mut acc = _mm512_maskz_loadu_ps(m, o);
                for (&j, &c) in idx.iter().zip(coef) {
                    let x = _mm512_maskz_loadu_ps(m, r.add(j as usize * d));
                    acc = _mm512_fmadd_ps(_mm512_set1_ps(c), x, acc);
                }
                _mm512_mask_storeu_ps(o, m, acc);
            }
        }
    }

    /// `V` vectors of the output row at `o`, held in registers over all the entries.
    ///
    /// # Safety
    /// As [`axpy_gather`], for the `16 * V` values from `o` and from each row start at `r`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn axpy_pass<const V: usize>(
        o: *mut f32,
        r: *const f32,
        d: usize,
        idx: &[u32],
        coef: &[f32],
    ) {
        unsafe {
            let mut acc = [_mm512_setzero_ps(); V];
            for (v, a) in acc.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(o.add(16 * v));
            }
            for (&j, &c) in idx.iter().zip(coef) {
                let row = r.add(j as usize * d);
                let cv = _mm512_set1_ps(c);
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(cv, _mm512_loadu_ps(row.add(16 * v)), *a);
                }
            }
            for (v, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(o.add(16 * v), *a);
            }
        }
    }

    /// # Safety
    /// The CPU has AVX-512F; every `idx[e]` addresses a whole row of `rows (_, a.len())`;
    /// `idx` and `out` have one length.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_gather(a: &[f32], rows: &[f32], idx: &[u32], out: &mut [f32]) {
        let d = a.len();
        let full = d / 16;
        let tail = d % 16;
        let m = low_mask(tail);
        let (ap, rp) = (a.as_ptr(), rows.as_ptr());
        // Four entries at a time share the loads of `a` and keep four FMA chains in flight;
        // each entry still sums its vectors in order, so grouping does not change results.
        let mut e = 0;
        while e + 4 <= idx.len() {
            // SAFETY: the caller's contract covers the four rows and `a`.
            unsafe {
                let r = [0, 1, 2, 3].map(|k| rp.add(idx[e + k] as usize * d));
                let mut acc = [_mm512_setzero_ps(); 4];
                for v in 0..full {
                    let x = _mm512_loadu_ps(ap.add(16 * v));
                    for k in 0..4 {
                        acc[k] = _mm512_fmadd_ps(x, _mm512_loadu_ps(r[k].add(16 * v)), acc[k]);
                    }
                }
                if tail > 0 {
                    let x = _mm512_maskz_loadu_ps(m, ap.add(16 * full));
                    for k in 0..4 {
                        let y = _mm512_maskz_loadu_ps(m, r[k].add(16 * full));
                        acc[k] = _mm512_fmadd_ps(x, y, acc[k]);
                    }
                }
                for k in 0..4 {
                    out[e + k] = _mm512_reduce_add_ps(acc[k]);
                }
            }
            e += 4;
        }
        for (&j, o) in idx[e..].iter().zip(&mut out[e..]) {
            // SAFETY: as above, for one row.
            unsafe {
                let r = rp.add(j as usize * d);
                let mut acc = _mm512_setzero_ps();
                for v in 0..full {
                    let x = _mm512_loadu_ps(ap.add(16 * v));
                    acc = _mm512_fmadd_ps(x, _mm512_loadu_ps(r.add(16 * v)), acc);
                }
                if tail > 0 {
                    let x = _mm512_maskz_loadu_ps(m, ap.add(16 * full));
                    let y = _mm512_maskz_loadu_ps(m, r.add(16 * full));
                    acc = _mm512_fmadd_ps(x, y, acc);
                }
                *o = _mm512_reduce_add_ps(acc);
            }
        }
    }

    /// # Safety
    /// The CPU has AVX-512F; `col` and `val` have one length.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn compress_positive(row: &[f32], col: &mut [u32], val: &mut [f32]) -> usize {
        let n = row.len();
        let cap = col.len();
        let zero = _mm512_setzero_ps();
        let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let mut k = 0;
        let mut j = 0;
        while j + 16 <= n {
            // SAFETY: `j + 16 <= n` values of `row` are read; `k + cnt <= cap` values of
            // `col` and `val` are written (asserted first).
            unsafe {
                let x = _mm512_loadu_ps(row.as_ptr().add(j));
                let mask = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, zero);
                if mask != 0 {
                    let cnt = mask.count_ones() as usize;
                    assert!(k + cnt <= cap, "more positive entries than room");
                    let store = low_mask(cnt);
                    let ids = _mm512_add_epi32(iota, _mm512_set1_epi32(j as i32));
                    _mm512_mask_storeu_ps(
                        val.as_mut_ptr().add(k),
                        store,
                        _mm512_maskz_compress_ps(mask, x),
                    );
                    _mm512_mask_storeu_epi32(
                        col.as_mut_ptr().add(k).cast::<i32>(),
                        store,
                        _mm512_maskz_compress_epi32(mask, ids),
                    );
                    k += cnt;
                }
            }
            j += 16;
        }
        for (jj, &x) in row.iter().enumerate().skip(j) {
            if x > 0.0 {
                col[k] = jj as u32;
                val[k] = x;
                k += 1;
            }
        }
        k
    }
}
