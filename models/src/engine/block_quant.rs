//! Matrix products and row lookups computed straight from a GGUF file's own quantized blocks (Q4_0, Q4_1, Q8_0), or
//! from plain f32 weight rows (F32): the weights stay as stored and nothing is repacked at load. Several activation
//! rows (a prompt) are multiplied in f32, exact against the dequantized weights up to the order of additions; a
//! single row (a decoding step) against quantized blocks is first rounded to 16-bit integers per block of 32 and
//! multiplied in integers (AVX2 on x86, a portable kernel the compiler vectorizes elsewhere). F32 rows are always
//! multiplied in f32.

use tract_nnef::internal::*;

use super::nnef_ops::size_arg;
use super::workers;
use tract_nnef::ser::{invocation, numeric, string, IntoAst};

/// Values per block in every format here.
pub const BLOCK: usize = 32;

/// A GGUF block layout. Each block holds 32 weights as a little-endian f16 scale `d`, for Q4_1 an f16 minimum `m`,
/// then the codes: Q4_0 and Q4_1 pack element j in the low nibble and element j+16 in the high nibble of byte j
/// (values `d * (code - 8)` and `d * code + m`); Q8_0 holds 32 signed bytes (values `d * code`). F32 is not a GGUF
/// block: 32 little-endian f32 values, so that a row of blocks is the weight row as stored.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum BlockFormat {
    Q4_0,
    Q4_1,
    Q8_0,
    F32,
}

impl BlockFormat {
    pub fn parse(name: &str) -> TractResult<BlockFormat> {
        match name {
            "Q4_0" => Ok(BlockFormat::Q4_0),
            "Q4_1" => Ok(BlockFormat::Q4_1),
            "Q8_0" => Ok(BlockFormat::Q8_0),
            "F32" => Ok(BlockFormat::F32),
            other => bail!("unknown block format {other:?} (known: Q4_0, Q4_1, Q8_0, F32)"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BlockFormat::Q4_0 => "Q4_0",
            BlockFormat::Q4_1 => "Q4_1",
            BlockFormat::Q8_0 => "Q8_0",
            BlockFormat::F32 => "F32",
        }
    }

    /// Bytes of one block of 32 weights.
    pub fn block_bytes(self) -> usize {
        match self {
            BlockFormat::Q4_0 => 18,
            BlockFormat::Q4_1 => 20,
            BlockFormat::Q8_0 => 34,
            BlockFormat::F32 => 4 * BLOCK,
        }
    }

    fn codes_at(self) -> usize {
        match self {
            BlockFormat::Q4_1 => 4,
            BlockFormat::Q4_0 | BlockFormat::Q8_0 => 2,
            BlockFormat::F32 => 0,
        }
    }

    /// Whether the weights are quantized codes, which a single activation row meets in integers.
    fn is_quantized(self) -> bool {
        self != BlockFormat::F32
    }

    /// A block's scale and the coefficient of the activations' block sum: every value is `scale * code + offset`.
    fn scale_and_offset(self, block: &[u8]) -> (f32, f32) {
        if self == BlockFormat::F32 {
            return (1.0, 0.0);
        }
        let scale = f16_at(block, 0);
        let offset = match self {
            BlockFormat::Q4_0 => -8.0 * scale,
            BlockFormat::Q4_1 => f16_at(block, 2),
            BlockFormat::Q8_0 | BlockFormat::F32 => 0.0,
        };
        (scale, offset)
    }

    /// A block's 32 codes as f32, in element order; for F32 its values.
    fn codes_f32(self, block: &[u8], out: &mut [f32; BLOCK]) {
        if self == BlockFormat::F32 {
            for (o, bytes) in out.iter_mut().zip(block.chunks_exact(4)) {
                *o = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            }
            return;
        }
        self.codes(block, out)
    }

    /// A quantized block's 32 codes, in element order.
    fn codes<T: From<i8> + From<u8>>(self, block: &[u8], out: &mut [T; BLOCK]) {
        let codes = &block[self.codes_at()..self.block_bytes()];
        match self {
            BlockFormat::F32 => unreachable!("F32 blocks hold values, read by codes_f32"),
            BlockFormat::Q8_0 => out.iter_mut().zip(codes).for_each(|(o, &c)| *o = T::from(c as i8)),
            BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
                for (j, &byte) in codes.iter().enumerate() {
                    out[j] = T::from(byte & 0x0F);
                    out[j + BLOCK / 2] = T::from(byte >> 4);
                }
            }
        }
    }

    /// Dequantizes one row of blocks into `out` (its length is the row's width).
    pub fn dequantize_row(self, row: &[u8], out: &mut [f32]) {
        let mut codes = [0f32; BLOCK];
        for (block, values) in row.chunks_exact(self.block_bytes()).zip(out.chunks_exact_mut(BLOCK)) {
            let (scale, offset) = self.scale_and_offset(block);
            self.codes_f32(block, &mut codes);
            values.iter_mut().zip(&codes).for_each(|(v, &c)| *v = scale * c + offset);
        }
    }
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// The shape of one product: `n` weight rows of `k` values each, in blocks.
#[derive(Clone, Copy, Debug)]
struct Weights<'a> {
    format: BlockFormat,
    blocks: &'a [u8],
    k: usize,
}

impl Weights<'_> {
    fn row_bytes(&self) -> usize {
        self.k / BLOCK * self.format.block_bytes()
    }

    fn row(&self, j: usize) -> &[u8] {
        let bytes = self.row_bytes();
        &self.blocks[j * bytes..(j + 1) * bytes]
    }
}

/// Activations: `rows` rows of `k` values, with each row's sums over each block of 32 (what a block's offset
/// multiplies).
struct Activations<'a> {
    values: &'a [f32],
    block_sums: Vec<f32>,
    rows: usize,
    /// A single row (a decoding step; every row on 32-bit ARM) also as 16-bit integers `round(x / scale)` with a
    /// scale per block, for the integer kernels; `None` for several rows, for F32 weights, or when a value is not
    /// finite.
    rounded: Option<(Vec<i16>, Vec<f32>)>,
}

/// Whether several activation rows (a prompt, an audio window) are rounded to integers as a single row is. On
/// 32-bit ARM the compiler does not vectorize f32 arithmetic for NEON (which is not IEEE-exact there), so the f32
/// products ran scalar, some 8 instructions a weight; the integer ones become NEON multiply-adds.
const ROUND_EVERY_ROW: bool = cfg!(target_arch = "arm");

impl<'a> Activations<'a> {
    fn new(values: &'a [f32], k: usize, format: BlockFormat) -> Activations<'a> {
        let block_sums = values.chunks_exact(BLOCK).map(|block| block.iter().sum()).collect();
        let rows = values.len() / k;
        let rounded = if format.is_quantized() && (rows == 1 || ROUND_EVERY_ROW) { round_to_i16(values) } else { None };
        Activations { values, block_sums, rows, rounded }
    }
}

/// `x` as 16-bit integers with one scale per block of 32 (the block's largest magnitude maps to 32767): each value
/// within 2^-16 of its block's largest, far below the f16 precision of the weights' scales.
fn round_to_i16(x: &[f32]) -> Option<(Vec<i16>, Vec<f32>)> {
    let mut rounded = Vec::with_capacity(x.len());
    let mut scales = Vec::with_capacity(x.len() / BLOCK);
    for block in x.chunks_exact(BLOCK) {
        let largest = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        if !largest.is_finite() {
            return None;
        }
        let scale = largest / i16::MAX as f32;
        let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        rounded.extend(block.iter().map(|v| (v * inverse).round_ties_even() as i16));
        scales.push(scale);
    }
    Some((rounded, scales))
}

/// Where the products land: `rows × n`, row-major. Workers write disjoint columns.
#[derive(Clone, Copy)]
struct Output {
    ptr: *mut f32,
    n: usize,
}

// SAFETY: workers write disjoint weight rows' columns of one buffer that outlives them.
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

/// Products below this many multiply-adds stay on the calling thread: sharing them costs more than it saves.
const PARALLEL_MIN_MACS: usize = 200_000;

/// `out[s][j] = Σ_i x[s][i] * w[j][i]` for every activation row `s` of `x` (rows of `k` values) and each of the `n`
/// weight rows held in `blocks`; `out` holds `rows × n` values.
pub fn matmul(format: BlockFormat, blocks: &[u8], k: usize, n: usize, x: &[f32], out: &mut [f32]) -> TractResult<()> {
    let weights = Weights { format, blocks, k };
    ensure!(
        k > 0 && k.is_multiple_of(BLOCK) && x.len().is_multiple_of(k),
        "BlockMatMul: {} activations are not rows of k={k}",
        x.len()
    );
    ensure!(
        blocks.len() == n * weights.row_bytes(),
        "BlockMatMul: {} bytes of {} blocks for {n}×{k} weights",
        blocks.len(),
        format.name()
    );
    ensure!(out.len() == x.len() / k * n, "BlockMatMul: {} outputs for {} rows of {n}", out.len(), x.len() / k);
    product(weights, n, x, out);
    Ok(())
}

fn product(weights: Weights, n: usize, x: &[f32], out: &mut [f32]) {
    let k = weights.k;
    let activations = Activations::new(x, k, weights.format);
    let output = Output { ptr: out.as_mut_ptr(), n };
    let columns = |range: std::ops::Range<usize>| {
        // SAFETY: `out` holds rows × n values and each range of weight rows is written by one worker only.
        unsafe { product_columns(weights, &activations, range, output) }
    };
    let macs = n * k * activations.rows;
    let workers = workers::current();
    if macs < PARALLEL_MIN_MACS || workers.threads() == 1 {
        return columns(0..n);
    }
    // A few pieces per thread, claimed as threads come free; whole tiles of four rows each.
    let chunk = n.div_ceil(workers.threads() * 4).next_multiple_of(4);
    workers.run(n.div_ceil(chunk), &|piece| columns(piece * chunk..((piece + 1) * chunk).min(n)));
}

/// The product kernel block weights get on this CPU, for kernel reports.
pub fn kernel_name() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        return "lookout_block_avx2";
    }
    "lookout_block_portable"
}

/// Computes the columns `range` of every output row.
///
/// # Safety
/// `output` must point at `activations.rows × output.n` values, and no other thread may write these columns.
unsafe fn product_columns(weights: Weights, activations: &Activations, range: std::ops::Range<usize>, output: Output) {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        return avx2::product_columns(weights, activations, range, output);
    }
    portable_product_columns(weights, activations, range, output)
}

unsafe fn portable_product_columns(
    weights: Weights,
    activations: &Activations,
    range: std::ops::Range<usize>,
    output: Output,
) {
    if let Some((x, x_scales)) = &activations.rounded {
        return portable_integer_columns(weights, activations, x, x_scales, range, output);
    }
    let k = weights.k;
    let blocks_per_row = k / BLOCK;
    let term = |codes: &[f32; BLOCK], s: usize, b: usize, scale: f32, offset: f32| {
        let dot = super::attention::dot(codes, &activations.values[s * k + b * BLOCK..s * k + (b + 1) * BLOCK]);
        scale * dot + offset * activations.block_sums[s * blocks_per_row + b]
    };
    each_block_once(
        weights,
        activations.rows,
        range,
        output,
        |block, codes| weights.format.codes_f32(block, codes),
        term,
    )
}

/// Sums `term(codes, s, b, scale, offset)` over the blocks `b` of each weight row in `range`, for every activation
/// row `s`, into the output: each weight block is decoded (by `decode`) once for all the activation rows.
unsafe fn each_block_once<T: Copy + Default>(
    weights: Weights,
    rows: usize,
    range: std::ops::Range<usize>,
    output: Output,
    decode: impl Fn(&[u8], &mut [T; BLOCK]),
    term: impl Fn(&[T; BLOCK], usize, usize, f32, f32) -> f32,
) {
    let mut codes = [T::default(); BLOCK];
    let mut totals = vec![0f32; rows];
    for j in range {
        totals.fill(0.0);
        for (b, block) in weights.row(j).chunks_exact(weights.format.block_bytes()).enumerate() {
            let (scale, offset) = weights.format.scale_and_offset(block);
            decode(block, &mut codes);
            for (s, total) in totals.iter_mut().enumerate() {
                *total += term(&codes, s, b, scale, offset);
            }
        }
        for (s, total) in totals.iter().enumerate() {
            *output.ptr.add(s * output.n + j) = *total;
        }
    }
}

/// Activation rows rounded to 16-bit integers against weight rows `range`: each block's 32 products summed exactly
/// in 32-bit integers (a widening multiply-add the compiler vectorizes, NEON's `smlal` on ARM), then scaled.
unsafe fn portable_integer_columns(
    weights: Weights,
    activations: &Activations,
    x: &[i16],
    x_scales: &[f32],
    range: std::ops::Range<usize>,
    output: Output,
) {
    let blocks_per_row = weights.k / BLOCK;
    let mut codes = [0i16; BLOCK];
    // The products of block `at` (row-major over activation rows and their blocks) with the decoded weight block.
    let term = |codes: &[i16; BLOCK], at: usize, scale: f32, offset: f32| {
        let dot: i32 = codes.iter().zip(&x[at * BLOCK..(at + 1) * BLOCK]).map(|(&c, &v)| c as i32 * v as i32).sum();
        scale * x_scales[at] * dot as f32 + offset * activations.block_sums[at]
    };
    if activations.rows == 1 {
        // A decoding step: the total stays in a register, and the compiler fuses decoding a block with its products
        // (the loop over rows below cost the q4 decoder 8-22% more instructions a token on armv7, and reaching the
        // activation blocks through its indexing 957 instead of 571 million on aarch64).
        let sums = &activations.block_sums[..blocks_per_row];
        let x_scales = &x_scales[..blocks_per_row];
        for j in range {
            let mut total = 0f32;
            let blocks = weights.row(j).chunks_exact(weights.format.block_bytes());
            for (((block, x), x_scale), sum) in blocks.zip(x.chunks_exact(BLOCK)).zip(x_scales).zip(sums) {
                let (scale, offset) = weights.format.scale_and_offset(block);
                weights.format.codes(block, &mut codes);
                let dot: i32 = codes.iter().zip(x).map(|(&c, &v)| c as i32 * v as i32).sum();
                total += scale * x_scale * dot as f32 + offset * sum;
            }
            *output.ptr.add(j) = total;
        }
        return;
    }
    let decode = |block: &[u8], codes: &mut [i16; BLOCK]| weights.format.codes(block, codes);
    let term = |codes: &[i16; BLOCK], s: usize, b: usize, scale: f32, offset: f32| {
        term(codes, s * blocks_per_row + b, scale, offset)
    };
    each_block_once(weights, activations.rows, range, output, decode, term)
}

#[cfg(target_arch = "x86_64")]
// Index loops over const-sized arrays of registers, which the compiler unrolls into registers.
#[allow(clippy::needless_range_loop)]
mod avx2 {
    use super::{Activations, BlockFormat, Output, Weights, BLOCK};
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn product_columns(
        weights: Weights,
        activations: &Activations,
        range: std::ops::Range<usize>,
        output: Output,
    ) {
        match weights.format {
            BlockFormat::Q4_0 => columns::<Q4_0>(weights, activations, range, output),
            BlockFormat::Q4_1 => columns::<Q4_1>(weights, activations, range, output),
            BlockFormat::Q8_0 => columns::<Q8_0>(weights, activations, range, output),
            BlockFormat::F32 => prompt_columns::<F32>(weights, activations, range, output),
        }
    }

    const Q4_0: u8 = 0;
    const Q4_1: u8 = 1;
    const Q8_0: u8 = 2;
    const F32: u8 = 3;

    const fn format_of(code: u8) -> BlockFormat {
        match code {
            Q4_0 => BlockFormat::Q4_0,
            Q4_1 => BlockFormat::Q4_1,
            Q8_0 => BlockFormat::Q8_0,
            _ => BlockFormat::F32,
        }
    }

    /// A single activation row (decoding) takes four weight rows at a time, so that each activation block is loaded
    /// once for four rows and four sums advance together; Q8_0 weights (the output head's table) are read one row
    /// at a time, which streamed faster from memory than four rows side by side when measured. Several activation
    /// rows (a prompt, an audio window) go through [`prompt_columns`].
    #[inline(always)]
    unsafe fn columns<const F: u8>(
        weights: Weights,
        activations: &Activations,
        range: std::ops::Range<usize>,
        output: Output,
    ) {
        if let Some((x, scale)) = &activations.rounded {
            let scale = scale.as_slice();
            if F == Q8_0 {
                for j in range {
                    integer_tile::<F, 1>(weights, activations, x, scale, j, output);
                }
                return;
            }
            let mut j = range.start;
            while j + 4 <= range.end {
                integer_tile::<F, 4>(weights, activations, x, scale, j, output);
                j += 4;
            }
            for j in j..range.end {
                integer_tile::<F, 1>(weights, activations, x, scale, j, output);
            }
            return;
        }
        prompt_columns::<F>(weights, activations, range, output);
    }

    /// The activation rows one pass over a worker's weight rows keeps: as many as fit in about 192 KiB, within the
    /// L2 cache, so that each panel of dequantized weights serves all of them from there.
    const CHUNK_BYTES: usize = 192 * 1024;

    /// Several activation rows: panels of four weight rows are dequantized to f32 once per chunk of activation rows,
    /// then multiplied as tiles of four weight rows × three activation rows whose twelve sums stay in registers.
    /// F32 weight rows are their own panel, for any number of activation rows.
    #[inline(always)]
    unsafe fn prompt_columns<const F: u8>(
        weights: Weights,
        activations: &Activations,
        range: std::ops::Range<usize>,
        output: Output,
    ) {
        let (k, rows) = (weights.k, activations.rows);
        let chunk = (CHUNK_BYTES / (k * 4)).max(3) / 3 * 3;
        let mut dequantized = vec![0f32; if F == F32 { 0 } else { 4 * k }];
        for first in (0..rows).step_by(chunk) {
            let chunk_rows = first..(first + chunk).min(rows);
            let mut j = range.start;
            while j < range.end {
                let count = (range.end - j).min(4);
                // F32 rows are read in place, unaligned: a row of blocks holds the row's values.
                let panel = if F == F32 {
                    weights.blocks.as_ptr().add(j * weights.row_bytes()) as *const f32
                } else {
                    dequantize_panel::<F>(weights, j, count, &mut dequantized);
                    dequantized.as_ptr()
                };
                let x = activations.values;
                match count {
                    4 => panel_rows::<4>(panel, x, k, j, chunk_rows.clone(), output),
                    3 => panel_rows::<3>(panel, x, k, j, chunk_rows.clone(), output),
                    2 => panel_rows::<2>(panel, x, k, j, chunk_rows.clone(), output),
                    _ => panel_rows::<1>(panel, x, k, j, chunk_rows.clone(), output),
                }
                j += count;
            }
        }
    }

    /// Weight rows `first_row..first_row + count` as f32 values into `panel` (rows of k), as `dequantize_row` gives
    /// them.
    #[inline(always)]
    unsafe fn dequantize_panel<const F: u8>(weights: Weights, first_row: usize, count: usize, panel: &mut [f32]) {
        let format = format_of(F);
        let row_bytes = weights.row_bytes();
        for r in 0..count {
            let row = weights.blocks.as_ptr().add((first_row + r) * row_bytes);
            let out = panel.as_mut_ptr().add(r * weights.k);
            if format == BlockFormat::F32 {
                std::ptr::copy_nonoverlapping(row, out as *mut u8, row_bytes);
                continue;
            }
            for b in 0..weights.k / BLOCK {
                let block = row.add(b * format.block_bytes());
                // Both f16 header values at once (for Q4_0 and Q8_0 the second is the first codes, unused).
                let header = _mm_cvtph_ps(_mm_cvtsi32_si128((block as *const i32).read_unaligned()));
                let offset = match format {
                    BlockFormat::Q4_0 => -8.0 * _mm_cvtss_f32(header),
                    BlockFormat::Q4_1 => _mm_cvtss_f32(_mm_movehdup_ps(header)),
                    BlockFormat::Q8_0 | BlockFormat::F32 => 0.0,
                };
                let (scale, offset) = (_mm256_broadcastss_ps(header), _mm256_set1_ps(offset));
                for (q, codes) in widen(format, block).into_iter().enumerate() {
                    _mm256_storeu_ps(out.add(b * BLOCK + q * 8), _mm256_fmadd_ps(codes, scale, offset));
                }
            }
        }
    }

    /// The `R` panel rows (output columns `j..j + R`) against activation rows `rows`, three at a time.
    #[inline(always)]
    unsafe fn panel_rows<const R: usize>(
        panel: *const f32,
        x: &[f32],
        k: usize,
        j: usize,
        rows: std::ops::Range<usize>,
        output: Output,
    ) {
        let mut s = rows.start;
        while s + 3 <= rows.end {
            panel_tile::<R, 3>(panel, x, k, j, s, output);
            s += 3;
        }
        match rows.end - s {
            2 => panel_tile::<R, 2>(panel, x, k, j, s, output),
            1 => panel_tile::<R, 1>(panel, x, k, j, s, output),
            _ => {}
        }
    }

    /// `R` panel rows × activation rows `first..first + T`: R × T sums of eight lanes each, added up at the end.
    #[inline(always)]
    unsafe fn panel_tile<const R: usize, const T: usize>(
        panel: *const f32,
        x: &[f32],
        k: usize,
        j: usize,
        first: usize,
        output: Output,
    ) {
        let (w, x) = (panel, x.as_ptr().add(first * k));
        let mut acc = [[_mm256_setzero_ps(); T]; R];
        let mut xs = [_mm256_setzero_ps(); T];
        for i in (0..k).step_by(8) {
            for t in 0..T {
                xs[t] = _mm256_loadu_ps(x.add(t * k + i));
            }
            for r in 0..R {
                let weight = _mm256_loadu_ps(w.add(r * k + i));
                for t in 0..T {
                    acc[r][t] = _mm256_fmadd_ps(weight, xs[t], acc[r][t]);
                }
            }
        }
        for r in 0..R {
            for t in 0..T {
                *output.ptr.add((first + t) * output.n + j + r) = horizontal_sum(acc[r][t]);
            }
        }
    }

    /// Weight rows `first_row..first_row + R` against the single activation row rounded to 16-bit integers: each
    /// block's 32 products are summed exactly in 32-bit integers (`madd`), then scaled by both blocks' scales.
    #[inline(always)]
    unsafe fn integer_tile<const F: u8, const R: usize>(
        weights: Weights,
        activations: &Activations,
        x: &[i16],
        x_scales: &[f32],
        first_row: usize,
        output: Output,
    ) {
        let format = format_of(F);
        let blocks_per_row = weights.k / BLOCK;
        let row_bytes = weights.row_bytes();
        let rows = weights.blocks.as_ptr().add(first_row * row_bytes);
        // Prefetch the same block of the next tile's rows: one tile ahead of every row read.
        let ahead = R * row_bytes;
        let mut acc = [_mm256_setzero_ps(); R];
        let mut offsets = [0f32; R];
        let x = x.as_ptr();
        for b in 0..blocks_per_row {
            let x_low = _mm256_loadu_si256(x.add(b * BLOCK) as *const __m256i);
            let x_high = _mm256_loadu_si256(x.add(b * BLOCK + 16) as *const __m256i);
            let sum = activations.block_sums[b];
            let x_scale = _mm256_set1_ps(x_scales[b]);
            for r in 0..R {
                let block = rows.add(r * row_bytes + b * format.block_bytes());
                _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(ahead) as *const i8);
                let header = _mm_cvtph_ps(_mm_cvtsi32_si128((block as *const i32).read_unaligned()));
                let (low, high) = widen_i16(format, block);
                let dot = _mm256_add_epi32(_mm256_madd_epi16(low, x_low), _mm256_madd_epi16(high, x_high));
                let scale = _mm256_mul_ps(_mm256_broadcastss_ps(header), x_scale);
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[r]);
                match format {
                    BlockFormat::Q4_0 => offsets[r] += -8.0 * _mm_cvtss_f32(header) * sum,
                    BlockFormat::Q4_1 => offsets[r] += _mm_cvtss_f32(_mm_movehdup_ps(header)) * sum,
                    BlockFormat::Q8_0 | BlockFormat::F32 => {}
                }
            }
        }
        for r in 0..R {
            *output.ptr.add(first_row + r) = horizontal_sum(acc[r]) + offsets[r];
        }
    }

    /// A block's codes as two vectors of sixteen i16: elements 0..16 and 16..32.
    #[inline(always)]
    unsafe fn widen_i16(format: BlockFormat, block: *const u8) -> (__m256i, __m256i) {
        match format {
            BlockFormat::F32 => unreachable!("activations meet F32 rows in f32"),
            BlockFormat::Q8_0 => (
                _mm256_cvtepi8_epi16(_mm_loadu_si128(block.add(2) as *const __m128i)),
                _mm256_cvtepi8_epi16(_mm_loadu_si128(block.add(18) as *const __m128i)),
            ),
            BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
                let packed = _mm_loadu_si128(block.add(format.codes_at()) as *const __m128i);
                let mask = _mm_set1_epi8(0x0F);
                let low = _mm_and_si128(packed, mask);
                let high = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
                (_mm256_cvtepu8_epi16(low), _mm256_cvtepu8_epi16(high))
            }
        }
    }

    /// A block's 32 codes as four vectors of eight f32, in element order.
    #[inline(always)]
    unsafe fn widen(format: BlockFormat, block: *const u8) -> [__m256; 4] {
        let to_f32 = |v: __m128i, signed: bool| {
            _mm256_cvtepi32_ps(if signed { _mm256_cvtepi8_epi32(v) } else { _mm256_cvtepu8_epi32(v) })
        };
        match format {
            BlockFormat::Q8_0 => {
                let low = _mm_loadu_si128(block.add(2) as *const __m128i);
                let high = _mm_loadu_si128(block.add(18) as *const __m128i);
                [
                    to_f32(low, true),
                    to_f32(_mm_srli_si128(low, 8), true),
                    to_f32(high, true),
                    to_f32(_mm_srli_si128(high, 8), true),
                ]
            }
            BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
                let packed = _mm_loadu_si128(block.add(format.codes_at()) as *const __m128i);
                let mask = _mm_set1_epi8(0x0F);
                let low = _mm_and_si128(packed, mask);
                let high = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
                [
                    to_f32(low, false),
                    to_f32(_mm_srli_si128(low, 8), false),
                    to_f32(high, false),
                    to_f32(_mm_srli_si128(high, 8), false),
                ]
            }
            BlockFormat::F32 => std::array::from_fn(|q| _mm256_loadu_ps((block as *const f32).add(q * 8))),
        }
    }

    #[inline(always)]
    unsafe fn horizontal_sum(v: __m256) -> f32 {
        let pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pair = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
    }
}

/// `y = x · wᵀ` with `w` held as GGUF blocks: input 0 is f32 `[…, k]`, input 1 the constant u8 blocks
/// `[n, k / 32 * block_bytes]`; the output is f32 `[…, n]`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct BlockMatMul {
    pub format: BlockFormat,
    pub k: usize,
    pub n: usize,
}

impl Op for BlockMatMul {
    fn name(&self) -> StaticName {
        "BlockMatMul".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{} weights, k={}, n={}", self.format.name(), self.k, self.n)])
    }

    op_as_typed_op!();
}

impl EvalOp for BlockMatMul {
    op_out_of_plan!();

    fn eval(&self, _: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = inputs[0].try_as_plain_ram()?;
        let x = x.as_slice::<f32>()?;
        let blocks = inputs[1].try_as_plain_ram()?;
        let blocks = blocks.as_slice::<u8>()?;
        let mut shape: TVec<usize> = inputs[0].shape().into();
        ensure!(shape.last() == Some(&self.k), "BlockMatMul: input shape {shape:?} does not end in k={}", self.k);
        *shape.last_mut().unwrap() = self.n;
        let mut out = Tensor::zero::<f32>(&shape)?;
        {
            let mut plain = out.try_as_plain_ram_mut()?;
            matmul(self.format, blocks, self.k, self.n, x, plain.as_slice_mut::<f32>()?)?;
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for BlockMatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            self.k > 0 && self.k.is_multiple_of(BLOCK),
            "BlockMatMul: k={} is not a positive multiple of {BLOCK}",
            self.k
        );
        ensure!(inputs[0].datum_type == f32::datum_type(), "BlockMatMul takes f32 activations");
        ensure!(inputs[1].datum_type == u8::datum_type(), "BlockMatMul takes u8 blocks");
        let mut shape = inputs[0].shape.to_tvec();
        ensure!(shape.last() == Some(&self.k.to_dim()), "BlockMatMul: input {:?} does not end in k={}", shape, self.k);
        *shape.last_mut().unwrap() = self.n.to_dim();
        Ok(tvec!(f32::fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let rows: TDim = inputs[0].shape.iter().rev().skip(1).product();
        Ok(tvec!((Cost::FMA(f32::datum_type()), rows * self.n * self.k)))
    }

    as_op!();
}

/// Rows of a table held as GGUF blocks, dequantized: input 0 the constant u8 blocks `[rows, k / 32 * block_bytes]`,
/// input 1 integer indices `[…]`; the output is f32 `[…, k]`. An index outside the table is an error.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct BlockGather {
    pub format: BlockFormat,
    pub k: usize,
}

impl Op for BlockGather {
    fn name(&self) -> StaticName {
        "BlockGather".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{} rows, k={}", self.format.name(), self.k)])
    }

    op_as_typed_op!();
}

impl EvalOp for BlockGather {
    op_out_of_plan!();

    fn eval(&self, _: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let blocks = inputs[0].try_as_plain_ram()?;
        let blocks = blocks.as_slice::<u8>()?;
        ensure!(
            self.k > 0 && self.k.is_multiple_of(BLOCK),
            "BlockGather: k={} is not a positive multiple of {BLOCK}",
            self.k
        );
        let weights = Weights { format: self.format, blocks, k: self.k };
        let table_rows = blocks.len() / weights.row_bytes();
        let ids = inputs[1].cast_to::<i64>()?;
        let ids = ids.try_as_plain_ram()?;
        let ids = ids.as_slice::<i64>()?;
        let mut shape: TVec<usize> = inputs[1].shape().into();
        shape.push(self.k);
        let mut out = Tensor::zero::<f32>(&shape)?;
        {
            let mut plain = out.try_as_plain_ram_mut()?;
            let rows = plain.as_slice_mut::<f32>()?.chunks_exact_mut(self.k);
            for (&id, out_row) in ids.iter().zip(rows) {
                ensure!(
                    (0..table_rows as i64).contains(&id),
                    "BlockGather: index {id} outside a table of {table_rows} rows"
                );
                self.format.dequantize_row(weights.row(id as usize), out_row);
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for BlockGather {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            self.k > 0 && self.k.is_multiple_of(BLOCK),
            "BlockGather: k={} is not a positive multiple of {BLOCK}",
            self.k
        );
        ensure!(inputs[0].datum_type == u8::datum_type(), "BlockGather takes u8 blocks");
        let mut shape = inputs[1].shape.to_tvec();
        shape.push(self.k.to_dim());
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

/// Adds both operators' NNEF forms to `registry`.
pub fn register_nnef(registry: &mut Registry) {
    registry.register_dumper(dump_matmul);
    registry.register_primitive(
        "lookout_block_matmul",
        &[
            TypeName::Scalar.tensor().named("input"),
            TypeName::Integer.tensor().named("blocks"),
            TypeName::String.named("format"),
            TypeName::Integer.named("k"),
            TypeName::Integer.named("n"),
        ],
        &[("output", TypeName::Scalar.tensor())],
        load_matmul,
    );
    registry.register_dumper(dump_gather);
    registry.register_primitive(
        "lookout_block_gather",
        &[
            TypeName::Integer.tensor().named("blocks"),
            TypeName::Integer.tensor().named("indices"),
            TypeName::String.named("format"),
            TypeName::Integer.named("k"),
        ],
        &[("output", TypeName::Scalar.tensor())],
        load_gather,
    );
}

fn dump_matmul(ast: &mut IntoAst, node: &TypedNode, op: &BlockMatMul) -> TractResult<Option<Arc<RValue>>> {
    let input = ast.mapping[&node.inputs[0]].clone();
    let blocks = ast.mapping[&node.inputs[1]].clone();
    let attributes = [("format", string(op.format.name())), ("k", numeric(op.k)), ("n", numeric(op.n))];
    Ok(Some(invocation("lookout_block_matmul", &[input, blocks], &attributes)))
}

fn load_matmul(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    let input = invocation.named_arg_as(builder, "input")?;
    let blocks = invocation.named_arg_as(builder, "blocks")?;
    let format = BlockFormat::parse(&invocation.named_arg_as::<String>(builder, "format")?)?;
    let k = size_arg(builder, invocation, "k")?;
    let n = size_arg(builder, invocation, "n")?;
    builder.wire(BlockMatMul { format, k, n }, &[input, blocks])
}

fn dump_gather(ast: &mut IntoAst, node: &TypedNode, op: &BlockGather) -> TractResult<Option<Arc<RValue>>> {
    let blocks = ast.mapping[&node.inputs[0]].clone();
    let indices = ast.mapping[&node.inputs[1]].clone();
    let attributes = [("format", string(op.format.name())), ("k", numeric(op.k))];
    Ok(Some(invocation("lookout_block_gather", &[blocks, indices], &attributes)))
}

fn load_gather(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    let blocks = invocation.named_arg_as(builder, "blocks")?;
    let indices = invocation.named_arg_as(builder, "indices")?;
    let format = BlockFormat::parse(&invocation.named_arg_as::<String>(builder, "format")?)?;
    let k = size_arg(builder, invocation, "k")?;
    builder.wire(BlockGather { format, k }, &[blocks, indices])
}

/// The ONNX forms, `LookoutBlockMatMul(x, blocks)` and `LookoutBlockGather(blocks, indices)` in the `ai.lookout`
/// domain, with attributes `format` (`Q4_0`, `Q4_1`, `Q8_0`, `F32`), `K` and, for the product, `N`.
pub mod onnx {
    use super::{BlockFormat, BlockGather, BlockMatMul};
    use tract_onnx::model::{OnnxOpRegister, ParsingContext};
    use tract_onnx::pb::NodeProto;
    use tract_onnx::tract_hir::internal::*;

    pub fn register(register: &mut OnnxOpRegister) {
        register.insert("LookoutBlockMatMul", parse_matmul);
        register.insert("LookoutBlockGather", parse_gather);
    }

    fn parse_matmul(_: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
        let format = BlockFormat::parse(node.get_attr::<&str>("format")?)?;
        let op = BlockMatMul { format, k: node.get_attr("K")?, n: node.get_attr("N")? };
        Ok((expand(Parsed::MatMul(op)), vec![]))
    }

    fn parse_gather(_: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
        let format = BlockFormat::parse(node.get_attr::<&str>("format")?)?;
        Ok((expand(Parsed::Gather(BlockGather { format, k: node.get_attr("K")? })), vec![]))
    }

    #[derive(Debug, Clone)]
    enum Parsed {
        MatMul(BlockMatMul),
        Gather(BlockGather),
    }

    impl Expansion for Parsed {
        fn name(&self) -> StaticName {
            match self {
                Parsed::MatMul(_) => "LookoutBlockMatMul".into(),
                Parsed::Gather(_) => "LookoutBlockGather".into(),
            }
        }

        fn rules<'r, 'p: 'r, 's: 'r>(
            &'s self,
            s: &mut Solver<'r>,
            inputs: &'p [TensorProxy],
            outputs: &'p [TensorProxy],
        ) -> InferenceResult {
            check_input_arity(inputs, 2)?;
            check_output_arity(outputs, 1)?;
            s.equals(&outputs[0].datum_type, f32::datum_type())?;
            match self {
                Parsed::MatMul(op) => {
                    let n = op.n.to_dim();
                    s.equals(&outputs[0].rank, &inputs[0].rank)?;
                    s.given(&inputs[0].rank, move |s, rank| {
                        let rank = rank as usize;
                        for axis in 0..rank - 1 {
                            s.equals(&outputs[0].shape[axis], &inputs[0].shape[axis])?;
                        }
                        s.equals(&outputs[0].shape[rank - 1], n.clone())
                    })
                }
                Parsed::Gather(op) => {
                    let k = op.k.to_dim();
                    s.equals(&outputs[0].rank, inputs[1].rank.bex() + 1)?;
                    s.given(&inputs[1].rank, move |s, rank| {
                        let rank = rank as usize;
                        for axis in 0..rank {
                            s.equals(&outputs[0].shape[axis], &inputs[1].shape[axis])?;
                        }
                        s.equals(&outputs[0].shape[rank], k.clone())
                    })
                }
            }
        }

        fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
            match self {
                Parsed::MatMul(op) => model.wire_node(prefix, op.clone(), inputs),
                Parsed::Gather(op) => model.wire_node(prefix, op.clone(), inputs),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of every format with pseudo-random scales and codes, and their dequantized values.
    fn random_blocks(format: BlockFormat, n: usize, k: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        let mut blocks = Vec::new();
        for _ in 0..n * k / BLOCK {
            if format == BlockFormat::F32 {
                blocks.extend((0..BLOCK).flat_map(|_| ((next() % 2001) as f32 / 20000.0 - 0.05).to_le_bytes()));
                continue;
            }
            let scale = f16::from_f32((next() % 1000) as f32 / 20000.0 + 0.001);
            blocks.extend_from_slice(&scale.to_bits().to_le_bytes());
            if format == BlockFormat::Q4_1 {
                blocks.extend_from_slice(&f16::from_f32(-((next() % 100) as f32) / 1000.0).to_bits().to_le_bytes());
            }
            let code_bytes = format.block_bytes() - format.codes_at();
            blocks.extend((0..code_bytes).map(|_| next() as u8));
        }
        let mut values = vec![0f32; n * k];
        let row_bytes = k / BLOCK * format.block_bytes();
        for (row, out) in blocks.chunks_exact(row_bytes).zip(values.chunks_exact_mut(k)) {
            format.dequantize_row(row, out);
        }
        (blocks, values)
    }

    fn reference(values: &[f32], n: usize, k: usize, x: &[f32]) -> Vec<f32> {
        let rows = x.len() / k;
        let mut out = vec![0f32; rows * n];
        for s in 0..rows {
            for j in 0..n {
                out[s * n + j] = (0..k).map(|i| x[s * k + i] as f64 * values[j * k + i] as f64).sum::<f64>() as f32;
            }
        }
        out
    }

    fn block_largest(x: &[f32], i: usize) -> f32 {
        x[i / BLOCK * BLOCK..(i / BLOCK + 1) * BLOCK].iter().fold(0f32, |m, v| m.max(v.abs()))
    }

    #[test]
    fn dequantized_blocks_follow_the_gguf_layout() {
        // Q4_1: d = 0.5, m = -1, byte j holds element j (low nibble) and element j + 16 (high nibble).
        let mut block = vec![];
        block.extend_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        block.extend_from_slice(&f16::from_f32(-1.0).to_bits().to_le_bytes());
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = [0f32; BLOCK];
        BlockFormat::Q4_1.dequantize_row(&block, &mut out);
        assert_eq!(out[0], -1.0);
        assert_eq!(out[3], 0.5);
        assert_eq!(out[16], 6.5);
        assert_eq!(out[31], -1.0);
        // Q8_0: signed codes; Q4_0: codes centred on 8.
        let mut q8 = f16::from_f32(0.25).to_bits().to_le_bytes().to_vec();
        q8.extend((0..32).map(|j: i32| (j - 16) as i8 as u8));
        BlockFormat::Q8_0.dequantize_row(&q8, &mut out);
        assert_eq!((out[0], out[16], out[31]), (-4.0, 0.0, 3.75));
        let mut q4 = f16::from_f32(2.0).to_bits().to_le_bytes().to_vec();
        q4.extend(std::iter::repeat_n(0x80, 16));
        BlockFormat::Q4_0.dequantize_row(&q4, &mut out);
        assert_eq!((out[0], out[16]), (-16.0, 0.0));
        // F32: the values themselves, little-endian.
        let values: Vec<f32> = (0..32).map(|j| j as f32 * -0.375).collect();
        let f32_block: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        BlockFormat::F32.dequantize_row(&f32_block, &mut out);
        assert_eq!(out.as_slice(), values.as_slice());
    }

    #[test]
    fn products_equal_the_dequantized_weights_for_every_format_and_row_count() {
        // 37 weight rows: nine panels of four and one of one; 2048 values a row: chunks of 24 activation rows.
        let shapes: [(usize, usize, &[usize]); 2] = [(37, 96, &[1, 2, 3, 4, 9]), (5, 2048, &[26])];
        for (format, (n, k, row_counts)) in [BlockFormat::Q4_0, BlockFormat::Q4_1, BlockFormat::Q8_0, BlockFormat::F32]
            .into_iter()
            .flat_map(|format| shapes.map(|shape| (format, shape)))
        {
            let (blocks, values) = random_blocks(format, n, k, 7);
            for &rows in row_counts {
                let x: Vec<f32> = (0..rows * k).map(|i| ((i * 7919) % 201) as f32 / 100.0 - 1.0).collect();
                let expected = reference(&values, n, k, &x);
                let weights = Weights { format, blocks: &blocks, k };
                let mut fast = vec![0f32; rows * n];
                product(weights, n, &x, &mut fast);
                let mut portable = vec![0f32; rows * n];
                let activations = Activations::new(&x, k, format);
                unsafe {
                    portable_product_columns(weights, &activations, 0..n, Output { ptr: portable.as_mut_ptr(), n })
                };
                for (index, ((f, p), e)) in fast.iter().zip(&portable).zip(&expected).enumerate() {
                    // A single row against quantized blocks is rounded to 16 bits per block: each value moves by at
                    // most half a step, 1/65534 of its block's largest magnitude.
                    let (s, j) = (index / n, index % n);
                    let rounding: f32 = if format.is_quantized() && (rows == 1 || ROUND_EVERY_ROW) {
                        (0..k)
                            .map(|i| values[j * k + i].abs() * block_largest(&x[s * k..(s + 1) * k], i) / 65534.0)
                            .sum()
                    } else {
                        0.0
                    };
                    let tolerance = 1e-4 * (1.0 + e.abs()) + rounding;
                    assert!((f - e).abs() <= tolerance, "{format:?} rows={rows}: {f} vs {e}");
                    assert!((p - e).abs() <= tolerance, "{format:?} rows={rows} portable: {p} vs {e}");
                }
            }
        }
    }

    #[test]
    fn gather_refuses_indices_outside_the_table() {
        let (blocks, values) = random_blocks(BlockFormat::Q8_0, 5, 64, 3);
        let op = BlockGather { format: BlockFormat::Q8_0, k: 64 };
        let table = Tensor::from_shape(&[5, 2 * 34], &blocks).unwrap().into_tvalue();
        let run = |ids: &[i64]| op.eval(&EvalContext::out_of_plan(), tvec!(table.clone(), tensor1(ids).into_tvalue()));
        let rows = run(&[4, 0]).unwrap();
        let rows = rows[0].try_as_plain_ram().unwrap();
        assert_eq!(rows.as_slice::<f32>().unwrap(), [&values[4 * 64..], &values[..64]].concat());
        assert!(run(&[5]).unwrap_err().to_string().contains("outside a table of 5 rows"));
        assert!(run(&[-1]).is_err());
    }
}
