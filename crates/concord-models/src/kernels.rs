//! Fused element-wise kernels on the memory of contiguous CPU tensors (f32 and bf16): residual
//! add + RMSNorm, RMSNorm, SiLU(gate) * up, residual add + LayerNorm and rotary embeddings.
//!
//! libtorch runs each of these as a chain of ops, every one a full pass over the activations
//! (and, in bf16, a cast to f32 and back); on a small CPU these passes cost more than the matrix
//! products. Here each row is read once (twice for the norms, from L1) and written once.
//!
//! Numerics follow the libtorch op sequence each kernel replaces, rounding for rounding: the
//! math is f32, and every intermediate libtorch stores in the compute dtype is rounded to it
//! here too (bf16: round to nearest even, as `c10::BFloat16`). `exp` is the algorithm of
//! libtorch's vectorised CPU kernels (SLEEF's `expf_u10`), so the results agree with libtorch's
//! to the last bit or so, the order of the sums in the norms' reductions aside.
//!
//! GELU stays with libtorch: its kernel is already one in-place pass, and its vectorised `erf`
//! is not one we could reproduce to within a bf16 ulp where `1 + erf` cancels (x < -3).
//!
//! Vectorisation: the row loops are plain Rust that LLVM vectorises; they are compiled three
//! times (AVX-512, AVX2 + FMA, and portable) and picked at run time. Rows are split across
//! rayon threads when libtorch's intra-op thread count for the calling thread is above one.

use std::ops::Range;

use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use crate::Result;

/// An element type of the activations: loaded to f32, stored back with libtorch's rounding.
trait Elem: Copy + Send + Sync + 'static {
    const KIND: Kind;
    fn load(self) -> f32;
    fn store(x: f32) -> Self;
}

impl Elem for f32 {
    const KIND: Kind = Kind::Float;
    #[inline(always)]
    fn load(self) -> f32 {
        self
    }
    #[inline(always)]
    fn store(x: f32) -> f32 {
        x
    }
}

/// bf16 as its bits.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(transparent)]
struct Bf16(u16);

impl Elem for Bf16 {
    const KIND: Kind = Kind::BFloat16;
    #[inline(always)]
    fn load(self) -> f32 {
        f32::from_bits(u32::from(self.0) << 16)
    }
    /// Round to nearest even; NaN to the canonical quiet NaN (`c10::round_to_nearest_even`).
    #[inline(always)]
    fn store(x: f32) -> Bf16 {
        let u = x.to_bits();
        let rounded = (u.wrapping_add(((u >> 16) & 1) + 0x7fff) >> 16) as u16;
        Bf16(if x.is_nan() { 0x7fc0 } else { rounded })
    }
}

/// libtorch's vectorised `exp` (SLEEF `expf_u10`, with FMA where the CPU has it).
#[inline(always)]
fn exp(d: f32) -> f32 {
    const R_LN2: f32 = std::f32::consts::LOG2_E;
    const L2U: f32 = 0.693_145_75;
    const L2L: f32 = 1.428_606_8e-6;
    let q = (d * R_LN2).round_ties_even();
    let s = q.mul_add(-L2U, d);
    let s = q.mul_add(-L2L, s);
    let mut u = 0.000_198_527_62_f32;
    u = u.mul_add(s, 0.001_393_043_6);
    u = u.mul_add(s, 0.008_333_361);
    u = u.mul_add(s, 0.041_666_485);
    u = u.mul_add(s, 0.166_666_67);
    u = u.mul_add(s, 0.5);
    u = 1.0 + (s * s).mul_add(u, s);
    // ldexp in two halves, as SLEEF does, so that 2^q never overflows on the way. q is an
    // integer; only |q| <= 150 gives a result that is kept (d in [-104, 100]), so it is clamped
    // (which also maps NaN to a number) and turned into an i32 through the float's bits: the
    // exact conversion for |q| < 2^22, and one that vectorises (`as i32` saturates lane by
    // lane in scalar code).
    // Not `clamp`: it keeps NaN, and the conversion below needs a number.
    #[allow(clippy::manual_clamp)]
    let q = q.max(-256.0).min(256.0);
    let q = (q + 12_582_912.0).to_bits() as i32 - 0x4b40_0000;
    let (a, b) = (q >> 1, q - (q >> 1));
    let pow2 = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    u = u * pow2(a) * pow2(b);
    if d < -104.0 {
        u = 0.0;
    }
    if d > 100.0 {
        u = f32::INFINITY;
    }
    u
}

/// Sum of squares over a row in 16 lanes (vectorised; the order differs from libtorch's).
#[inline(always)]
fn sum_squares(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for j in 0..16 {
            acc[j] += c[j] * c[j];
        }
    }
    let mut tail = 0f32;
    for &x in chunks.remainder() {
        tail += x * x;
    }
    acc.iter().sum::<f32>() + tail
}

/// Sum over a row in 16 lanes.
#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for j in 0..16 {
            acc[j] += c[j];
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// The per-kernel work on a range of rows, compiled once per instruction set.
trait Rows: Sync {
    fn rows(&self, range: Range<usize>);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,bmi2")]
unsafe fn rows_avx512<R: Rows>(r: &R, range: Range<usize>) {
    r.rows(range)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,bmi2")]
unsafe fn rows_avx2<R: Rows>(r: &R, range: Range<usize>) {
    r.rows(range)
}

/// Runs `r` over `n` rows on the best instruction set, split across threads when libtorch may
/// use more than one on this thread and the work is large enough to pay for it.
fn run<R: Rows>(r: &R, n: usize, row_len: usize) {
    let one = |range: Range<usize>| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("bmi2")
            {
                // SAFETY: the CPU has every feature the function enables.
                return unsafe { rows_avx512(r, range) };
            }
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("bmi2")
            {
                // SAFETY: as above.
                return unsafe { rows_avx2(r, range) };
            }
        }
        r.rows(range)
    };
    let threads = usize::try_from(tch::get_num_threads()).unwrap_or(1).max(1);
    if threads == 1 || n < 2 || n * row_len < 1 << 16 {
        return one(0..n);
    }
    let per = n.div_ceil(threads);
    (0..threads)
        .into_par_iter()
        .for_each(|t| one((t * per).min(n)..((t + 1) * per).min(n)));
}

/// A raw pointer to tensor memory that rows on other threads write disjoint parts of.
#[derive(Clone, Copy, Debug)]
struct Ptr<E>(*mut E);
// SAFETY: every kernel writes disjoint rows through it, and the tensor outlives the kernel.
unsafe impl<E: Send> Send for Ptr<E> {}
// SAFETY: as above.
unsafe impl<E: Sync> Sync for Ptr<E> {}

/// The element pointer of `t` if it is a contiguous CPU tensor of kind `E`.
fn ptr<E: Elem>(t: &Tensor) -> Option<Ptr<E>> {
    (t.device() == Device::Cpu && t.kind() == E::KIND && t.is_contiguous())
        .then(|| Ptr(t.data_ptr().cast::<E>()))
}

fn last_dim(xs: &Tensor) -> usize {
    xs.size().last().copied().unwrap_or(0).max(0) as usize
}

fn numel(xs: &Tensor) -> usize {
    xs.size().iter().product::<i64>().max(0) as usize
}

/// The pointer of an optional second input: `Some(None)` when there is none, `None` when it
/// is there but not a contiguous CPU tensor of kind `E` (the kernel does not apply).
fn optional_ptr<E: Elem>(ys: Option<&Tensor>) -> Option<Option<Ptr<E>>> {
    match ys {
        Some(ys) => ptr::<E>(ys).map(Some),
        None => Some(None),
    }
}

/// A norm's input rows: `x`, or `x + y` rounded to the dtype as libtorch's add (written to
/// `sum` when given).
struct Residual<E> {
    x: Ptr<E>,
    y: Option<Ptr<E>>,
    sum: Option<Ptr<E>>,
}

impl<E: Elem> Residual<E> {
    /// Loads row `r` (`d` values) into `buf` as f32.
    #[inline(always)]
    fn load(&self, r: usize, d: usize, buf: &mut [f32]) {
        // SAFETY: row `r` exists in every tensor; `sum` is a fresh tensor written by rows
        // disjoint per call.
        let x = unsafe { std::slice::from_raw_parts(self.x.0.add(r * d), d) };
        let buf = &mut buf[..d];
        match self.y {
            Some(y) => {
                // SAFETY: as above.
                let y = unsafe { std::slice::from_raw_parts(y.0.add(r * d), d) };
                for ((b, x), y) in buf.iter_mut().zip(x).zip(y) {
                    *b = round::<E>(x.load() + y.load());
                }
                if let Some(sum) = self.sum {
                    // SAFETY: as above.
                    let s = unsafe { std::slice::from_raw_parts_mut(sum.0.add(r * d), d) };
                    store_row(buf, s);
                }
            }
            None => {
                for (b, x) in buf.iter_mut().zip(x) {
                    *b = x.load();
                }
            }
        }
    }
}

/// `x` rounded to the element type and back (exact for f32).
#[inline(always)]
fn round<E: Elem>(x: f32) -> f32 {
    E::store(x).load()
}

/// Stores f32 values to the element type: a plain map, one vector loop.
#[inline(always)]
fn store_row<E: Elem>(src: &[f32], dst: &mut [E]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = E::store(s);
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm, with or without a residual add in front.

struct RmsNorm<E> {
    input: Residual<E>,
    w: Ptr<E>,
    out: Ptr<E>,
    d: usize,
    eps: f32,
}

impl<E: Elem> Rows for RmsNorm<E> {
    #[inline(always)]
    fn rows(&self, range: Range<usize>) {
        let d = self.d;
        // SAFETY: the weight has `d` elements; rows are disjoint per call.
        let w = unsafe { std::slice::from_raw_parts(self.w.0, d) };
        let mut buf = vec![0f32; d];
        for r in range {
            // SAFETY: row `r` exists in `out`, a fresh tensor.
            let out = unsafe { std::slice::from_raw_parts_mut(self.out.0.add(r * d), d) };
            self.input.load(r, d, &mut buf);
            let var = sum_squares(&buf) / d as f32;
            let rstd = 1.0 / (var + self.eps).sqrt();
            for (b, w) in buf.iter_mut().zip(w) {
                *b = w.load() * round::<E>(*b * rstd);
            }
            store_row(&buf, out);
        }
    }
}

/// RMSNorm as transformers' `LlamaRMSNorm` computes it (in f32, rounded to the input's dtype,
/// then scaled by `w`). `xs`: `(..., d)`; `w`: `(d,)`; returns `(..., d)`. `None` when the
/// tensors are not contiguous CPU f32 or bf16 of one kind.
pub(crate) fn rms_norm(xs: &Tensor, w: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    rms_norm_impl(xs, None, w, eps).map(|r| r.map(|(_, out)| out))
}

/// `xs + ys` (rounded to the dtype, as libtorch's add) and the RMSNorm of that sum: returns
/// `(sum, normed)`, both `(..., d)`.
pub(crate) fn add_rms_norm(
    xs: &Tensor,
    ys: &Tensor,
    w: &Tensor,
    eps: f64,
) -> Result<Option<(Tensor, Tensor)>> {
    if xs.size() != ys.size() {
        return Ok(None);
    }
    rms_norm_impl(xs, Some(ys), w, eps).map(|r| r.and_then(|(sum, out)| Some((sum?, out))))
}

fn rms_norm_impl(
    xs: &Tensor,
    ys: Option<&Tensor>,
    w: &Tensor,
    eps: f64,
) -> Result<Option<(Option<Tensor>, Tensor)>> {
    match xs.kind() {
        Kind::Float => rms_norm_typed::<f32>(xs, ys, w, eps),
        Kind::BFloat16 => rms_norm_typed::<Bf16>(xs, ys, w, eps),
        _ => Ok(None),
    }
}

fn rms_norm_typed<E: Elem>(
    xs: &Tensor,
    ys: Option<&Tensor>,
    w: &Tensor,
    eps: f64,
) -> Result<Option<(Option<Tensor>, Tensor)>> {
    let d = last_dim(xs);
    let (Some(x), Some(wp)) = (ptr::<E>(xs), ptr::<E>(w)) else {
        return Ok(None);
    };
    if d == 0 || numel(w) != d {
        return Ok(None);
    }
    let Some(y) = optional_ptr::<E>(ys) else {
        return Ok(None);
    };
    let out = xs.f_empty_like()?;
    let sum = match ys {
        Some(_) => Some(xs.f_empty_like()?),
        None => None,
    };
    let k = RmsNorm {
        input: Residual {
            x,
            y,
            sum: sum.as_ref().and_then(ptr::<E>),
        },
        w: wp,
        out: ptr::<E>(&out).expect("a fresh contiguous tensor"),
        d,
        eps: eps as f32,
    };
    run(&k, numel(xs) / d, d);
    Ok(Some((sum, out)))
}

// ---------------------------------------------------------------------------------------------
// SiLU(gate) * up.

struct SiluMul<E> {
    gu: Ptr<E>,
    out: Ptr<E>,
    m: usize,
}

impl<E: Elem> Rows for SiluMul<E> {
    #[inline(always)]
    fn rows(&self, range: Range<usize>) {
        let m = self.m;
        for r in range {
            // SAFETY: row `r` of `(rows, 2m)` and of the fresh `(rows, m)` output.
            let gu = unsafe { std::slice::from_raw_parts(self.gu.0.add(r * 2 * m), 2 * m) };
            let out = unsafe { std::slice::from_raw_parts_mut(self.out.0.add(r * m), m) };
            let (gate, up) = gu.split_at(m);
            for i in 0..m {
                let g = gate[i].load();
                let silu = E::store(g / (1.0 + exp(-g)));
                out[i] = E::store(silu.load() * up[i].load());
            }
        }
    }
}

/// `silu(gate) * up` for `gu` = `[gate, up]` stacked on the last dimension: `(..., 2m)` ->
/// `(..., m)`, rounded as libtorch's `silu` then `mul_`.
pub(crate) fn silu_mul(gu: &Tensor) -> Result<Option<Tensor>> {
    match gu.kind() {
        Kind::Float => silu_mul_typed::<f32>(gu),
        Kind::BFloat16 => silu_mul_typed::<Bf16>(gu),
        _ => Ok(None),
    }
}

fn silu_mul_typed<E: Elem>(gu: &Tensor) -> Result<Option<Tensor>> {
    let two_m = last_dim(gu);
    let Some(p) = ptr::<E>(gu) else {
        return Ok(None);
    };
    if two_m == 0 || !two_m.is_multiple_of(2) {
        return Ok(None);
    }
    let m = two_m / 2;
    let mut size = gu.size();
    if let Some(last) = size.last_mut() {
        *last = m as i64;
    }
    let out = Tensor::f_empty(size, (E::KIND, Device::Cpu))?;
    let k = SiluMul {
        gu: p,
        out: ptr::<E>(&out).expect("a fresh contiguous tensor"),
        m,
    };
    run(&k, numel(gu) / two_m, two_m);
    Ok(Some(out))
}

// ---------------------------------------------------------------------------------------------
// LayerNorm, with or without a residual add in front.

struct LayerNorm<E> {
    input: Residual<E>,
    w: Ptr<E>,
    b: Ptr<E>,
    out: Ptr<E>,
    d: usize,
    eps: f32,
}

impl<E: Elem> Rows for LayerNorm<E> {
    #[inline(always)]
    fn rows(&self, range: Range<usize>) {
        let d = self.d;
        // SAFETY: weight and bias have `d` elements.
        let w = unsafe { std::slice::from_raw_parts(self.w.0, d) };
        let b = unsafe { std::slice::from_raw_parts(self.b.0, d) };
        let mut buf = vec![0f32; d];
        let mut dev = vec![0f32; d];
        for r in range {
            // SAFETY: row `r` exists in `out`, a fresh tensor.
            let out = unsafe { std::slice::from_raw_parts_mut(self.out.0.add(r * d), d) };
            self.input.load(r, d, &mut buf);
            let mean = sum(&buf) / d as f32;
            for i in 0..d {
                dev[i] = buf[i] - mean;
            }
            let var = sum_squares(&dev) / d as f32;
            let scale = 1.0 / (var + self.eps).sqrt();
            let bias = -mean * scale;
            // libtorch's `(x * scale + bias) * gamma + beta`, without FMA.
            for ((x, w), b) in buf.iter_mut().zip(w).zip(b) {
                *x = (*x * scale + bias) * w.load() + b.load();
            }
            store_row(&buf, out);
        }
    }
}

/// LayerNorm over the last dimension of `xs + ys` (the sum rounded to the dtype first, as
/// libtorch's add) or of `xs`. `xs`, `ys`: `(..., d)`; `w`, `b`: `(d,)`; returns `(..., d)`.
pub(crate) fn layer_norm(
    xs: &Tensor,
    ys: Option<&Tensor>,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
) -> Result<Option<Tensor>> {
    if ys.is_some_and(|ys| ys.size() != xs.size()) {
        return Ok(None);
    }
    match xs.kind() {
        Kind::Float => layer_norm_typed::<f32>(xs, ys, w, b, eps),
        Kind::BFloat16 => layer_norm_typed::<Bf16>(xs, ys, w, b, eps),
        _ => Ok(None),
    }
}

fn layer_norm_typed<E: Elem>(
    xs: &Tensor,
    ys: Option<&Tensor>,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
) -> Result<Option<Tensor>> {
    let d = last_dim(xs);
    let (Some(x), Some(wp), Some(bp)) = (ptr::<E>(xs), ptr::<E>(w), ptr::<E>(b)) else {
        return Ok(None);
    };
    if d == 0 || numel(w) != d || numel(b) != d {
        return Ok(None);
    }
    let Some(y) = optional_ptr::<E>(ys) else {
        return Ok(None);
    };
    let out = xs.f_empty_like()?;
    let k = LayerNorm {
        input: Residual { x, y, sum: None },
        w: wp,
        b: bp,
        out: ptr::<E>(&out).expect("a fresh contiguous tensor"),
        d,
        eps: eps as f32,
    };
    run(&k, numel(xs) / d, d);
    Ok(Some(out))
}

// ---------------------------------------------------------------------------------------------
// Rotary embeddings, written heads-first.

struct Rope<E> {
    /// `(batch, seq, row)` with the heads to rotate at the start of each row.
    xs: Ptr<E>,
    row: usize,
    cos: Ptr<E>,
    sin: Ptr<E>,
    /// `(batch, heads, seq, head_dim)`.
    out: Ptr<E>,
    seq: usize,
    heads: usize,
    hd: usize,
}

impl<E: Elem> Rows for Rope<E> {
    #[inline(always)]
    fn rows(&self, range: Range<usize>) {
        let (seq, heads, hd) = (self.seq, self.heads, self.hd);
        let half = hd / 2;
        // `range` runs over (batch, seq) positions.
        for r in range {
            let (b, t) = (r / seq, r % seq);
            // SAFETY: position `r` exists in `xs`; the tables have `seq * hd` elements.
            let x = unsafe { std::slice::from_raw_parts(self.xs.0.add(r * self.row), heads * hd) };
            let cos = unsafe { std::slice::from_raw_parts(self.cos.0.add(t * hd), hd) };
            let sin = unsafe { std::slice::from_raw_parts(self.sin.0.add(t * hd), hd) };
            for h in 0..heads {
                let xh = &x[h * hd..(h + 1) * hd];
                // SAFETY: `(b, h, t)` of the fresh output; each position is one call's.
                let out = unsafe {
                    std::slice::from_raw_parts_mut(
                        self.out.0.add(((b * heads + h) * seq + t) * hd),
                        hd,
                    )
                };
                // [x2, x1] * [-sin, sin] (rounded, as `mul_`), then + x * cos (`addcmul_`):
                // one vector loop per half.
                let (x1, x2) = xh.split_at(half);
                let (o1, o2) = out.split_at_mut(half);
                for (o, x, rot, s, c) in [(o1, x1, x2, 0), (o2, x2, x1, half)]
                    .map(|(o, x, rot, at)| (o, x, rot, &sin[at..at + half], &cos[at..at + half]))
                {
                    for ((((o, x), rot), s), c) in o.iter_mut().zip(x).zip(rot).zip(s).zip(c) {
                        let a = round::<E>(rot.load() * s.load());
                        *o = E::store(a + x.load() * c.load());
                    }
                }
            }
        }
    }
}

/// Rotary embeddings (`rotate_half` convention; `None` unless the rotary dimension is the whole
/// `head_dim`) on the first `heads` heads of each row of `xs` `(batch, seq, row)` (row >= heads * head_dim, the
/// heads at its start); `cos`, `sin`: `(seq, 1, head_dim)` as [`super::arch::AttnCtx`] holds
/// them (`sin`'s first half negated). Returns `(batch, heads, seq, head_dim)`, contiguous.
pub(crate) fn rope(
    xs: &Tensor,
    heads: usize,
    head_dim: usize,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<Option<Tensor>> {
    if last_dim(cos) != head_dim {
        return Ok(None);
    }
    match xs.kind() {
        Kind::Float => rope_typed::<f32>(xs, heads, cos, sin),
        Kind::BFloat16 => rope_typed::<Bf16>(xs, heads, cos, sin),
        _ => Ok(None),
    }
}

fn rope_typed<E: Elem>(
    xs: &Tensor,
    heads: usize,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<Option<Tensor>> {
    let (Some(x), Some(c), Some(s)) = (ptr::<E>(xs), ptr::<E>(cos), ptr::<E>(sin)) else {
        return Ok(None);
    };
    let Ok((b, seq, row)) = xs.size3() else {
        return Ok(None);
    };
    let hd = last_dim(cos);
    let (b, seq, row) = (b as usize, seq as usize, row as usize);
    if hd == 0
        || !hd.is_multiple_of(2)
        || heads * hd > row
        || numel(cos) != seq * hd
        || numel(sin) != seq * hd
    {
        return Ok(None);
    }
    let out = Tensor::f_empty(
        [b as i64, heads as i64, seq as i64, hd as i64],
        (E::KIND, Device::Cpu),
    )?;
    let k = Rope {
        xs: x,
        row,
        cos: c,
        sin: s,
        out: ptr::<E>(&out).expect("a fresh contiguous tensor"),
        seq,
        heads,
        hd,
    };
    run(&k, b * seq, heads * hd);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    //! Each kernel against the libtorch op sequence it replaces, on odd widths: bf16 within one
    //! ulp of bf16, f32 within 1e-6 relative (plus 1e-6 absolute near zero).

    use super::*;

    fn input(shape: &[i64], seed: i64, kind: Kind) -> Tensor {
        tch::manual_seed(seed);
        (Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 2.0).to_kind(kind)
    }

    /// Largest error in units of the tolerance: bf16 ulps of the expected value, or f32
    /// relative error against 1e-6.
    fn check(got: &Tensor, want: &Tensor, what: &str) {
        assert_eq!(got.size(), want.size(), "{what}: shape");
        assert_eq!(got.kind(), want.kind(), "{what}: kind");
        let g = Vec::<f32>::try_from(got.to_kind(Kind::Float).reshape([-1])).unwrap();
        let w = Vec::<f32>::try_from(want.to_kind(Kind::Float).reshape([-1])).unwrap();
        for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
            let ok = a == b
                || (a.is_nan() && b.is_nan())
                || match want.kind() {
                    Kind::BFloat16 => {
                        // One bf16 ulp at b's magnitude (2^-7 relative at worst).
                        let ulp = if b == 0.0 {
                            f32::MIN_POSITIVE
                        } else {
                            2f32.powi(b.abs().log2().floor() as i32 - 7)
                        };
                        (a - b).abs() <= ulp
                    }
                    _ => (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                };
            assert!(ok, "{what}: element {i}: got {a}, libtorch {b}");
        }
    }

    const SHAPES: [[i64; 3]; 3] = [[2, 3, 37], [1, 5, 577], [3, 2, 13]];

    #[test]
    fn rms_norm_matches_libtorch() {
        for kind in [Kind::Float, Kind::BFloat16] {
            for (s, shape) in SHAPES.iter().enumerate() {
                let d = shape[2];
                let xs = input(shape, s as i64, kind);
                let ys = input(shape, 10 + s as i64, kind);
                let w = input(&[d], 20 + s as i64, kind);
                let eps = 1e-5;
                // The sequence in `Llama::rms_norm`, and the residual add before it.
                let reference = |x: &Tensor| {
                    let f = x.to_kind(Kind::Float);
                    let var = f.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
                    (f * (var + eps).rsqrt()).to_kind(kind) * &w
                };
                let got = rms_norm(&xs, &w, eps).unwrap().expect("applies");
                check(
                    &got,
                    &reference(&xs),
                    &format!("rms_norm {kind:?} {shape:?}"),
                );
                let (sum, got) = add_rms_norm(&xs, &ys, &w, eps).unwrap().expect("applies");
                let want_sum = &xs + &ys;
                check(&sum, &want_sum, &format!("add {kind:?} {shape:?}"));
                check(
                    &got,
                    &reference(&want_sum),
                    &format!("add_rms_norm {kind:?} {shape:?}"),
                );
            }
        }
    }

    #[test]
    fn silu_mul_matches_libtorch() {
        for kind in [Kind::Float, Kind::BFloat16] {
            for (s, shape) in SHAPES.iter().enumerate() {
                let m = shape[2];
                let gu = input(&[shape[0], shape[1], 2 * m], s as i64, kind);
                // Where exp under- and overflows, NaN and infinities.
                let extremes = [
                    -1e30, -150.0, -101.0, -99.0, -88.0, 87.0, 89.0, 103.0, 105.0, 1e30,
                ];
                let extremes =
                    [&extremes[..], &[f64::NAN, f64::INFINITY, f64::NEG_INFINITY]].concat();
                let n = (extremes.len() as i64).min(m);
                gu.narrow(-1, 0, n)
                    .select(0, 0)
                    .select(0, 0)
                    .copy_(&Tensor::from_slice(&extremes[..n as usize]).to_kind(kind));
                let want = gu.narrow(-1, 0, m).silu() * gu.narrow(-1, m, m);
                let got = silu_mul(&gu).unwrap().expect("applies");
                check(&got, &want, &format!("silu_mul {kind:?} {shape:?}"));
            }
        }
    }

    #[test]
    fn layer_norm_matches_libtorch() {
        for kind in [Kind::Float, Kind::BFloat16] {
            for (s, shape) in SHAPES.iter().enumerate() {
                let d = shape[2];
                let xs = input(shape, s as i64, kind);
                let ys = input(shape, 10 + s as i64, kind);
                let w = input(&[d], 20 + s as i64, kind);
                let b = input(&[d], 30 + s as i64, kind);
                let eps = 1e-12;
                let reference = |x: &Tensor| x.layer_norm([d], Some(&w), Some(&b), eps, false);
                let got = layer_norm(&xs, None, &w, &b, eps)
                    .unwrap()
                    .expect("applies");
                check(
                    &got,
                    &reference(&xs),
                    &format!("layer_norm {kind:?} {shape:?}"),
                );
                let got = layer_norm(&xs, Some(&ys), &w, &b, eps)
                    .unwrap()
                    .expect("applies");
                check(
                    &got,
                    &reference(&(&xs + &ys)),
                    &format!("add_layer_norm {kind:?} {shape:?}"),
                );
            }
        }
    }

    #[test]
    fn rope_matches_libtorch() {
        for kind in [Kind::Float, Kind::BFloat16] {
            for (s, &(b, seq, heads, extra, hd)) in
                [(2, 7, 3, 5, 8), (1, 9, 4, 0, 64), (3, 5, 1, 3, 6)]
                    .iter()
                    .enumerate()
            {
                let row = heads * hd + extra;
                let xs = input(&[b, seq, row], s as i64, kind);
                let ctx = crate::arch::AttnCtx::new(
                    &Tensor::ones([b, seq], (Kind::Int64, Device::Cpu)),
                    true,
                )
                .unwrap()
                .with_rope(seq, hd, 10000.0, kind, Device::Cpu)
                .unwrap();
                let (cos, sin) = (ctx.cos.as_ref().unwrap(), ctx.sin.as_ref().unwrap());
                let want = ctx
                    .rope(&xs.narrow(-1, 0, heads * hd).view([b, seq, heads, hd]))
                    .unwrap()
                    .transpose(1, 2)
                    .contiguous();
                let got = rope(&xs, heads as usize, hd as usize, cos, sin)
                    .unwrap()
                    .expect("applies");
                check(
                    &got,
                    &want,
                    &format!("rope {kind:?} {b}x{seq}x{heads}x{hd}"),
                );
            }
        }
    }

    #[test]
    fn bf16_rounding_is_nearest_even() {
        for x in [
            1.0f32,
            1.0 + 1.0 / 256.0, // halfway between two bf16: rounds down to even
            1.0 + 3.0 / 256.0, // halfway: rounds up to even
            -3.5e-3,
            65504.0,
            f32::INFINITY,
            1e-40,
        ] {
            let ours = Bf16::store(x).0;
            assert_eq!(ours, half::bf16::from_f32(x).to_bits(), "{x}");
        }
        assert_eq!(Bf16::store(f32::NAN).0, 0x7fc0);
    }
}
