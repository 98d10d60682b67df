//! The AVX-512 kernel of Lookout's own products (1×1 convolutions in [`super::pointwise`], other convolutions of one
//! group in [`super::direct_conv`]): `c[i, j] = epilogue(Σ a[i, kk] · b[kk, j])`, one value of `a` broadcast against sixteen
//! contiguous values of a row of `b`, in tiles of up to twelve rows by 32 columns whose sums stay in registers
//! until the epilogue's steps (bias, activations) are applied. The values of each reduced index `kk` are found
//! through [`KOffsets`] in both operands, so that a convolution reads its input in place: one tap's shifted row of
//! `b` per `kk` when positions are the columns, one tap's value of `a` per `kk` when they are the rows.

use std::arch::x86_64::*;
use std::ops::Range;

use super::epilogue::Step;

pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// Where the values of reduced index `kk` start in an operand, in values from its pointer.
pub trait KOffsets: Copy {
    fn at(&self, kk: usize) -> usize;
}

/// Values of successive `kk` a fixed number of values apart.
#[derive(Clone, Copy)]
pub struct Strided(pub usize);

impl KOffsets for Strided {
    #[inline(always)]
    fn at(&self, kk: usize) -> usize {
        kk * self.0
    }
}

/// Values at the offsets of a table (one per `kk`).
#[derive(Clone, Copy)]
pub struct Table<'a>(pub &'a [usize]);

impl KOffsets for Table<'_> {
    #[inline(always)]
    fn at(&self, kk: usize) -> usize {
        self.0[kk]
    }
}

/// Columns of one tile of `b`: a panel of weights packed for the kernel holds this many columns of each row.
pub const TILE_COLUMNS: usize = 32;

/// One product's operands: `a[i, kk]` at `a + i * a_row + a_k.at(kk)`, row `kk` of `b` at `b_rows.at(kk)` from the
/// pointer a block is given, `c[i, j]` at `c + i * c_row + j * c_col` (stored sixteen values at a time where
/// `c_col` is 1, scattered where it is not: `15 × c_col` must then be below 2³¹), and the
/// epilogue's steps, whose bias is `bias[i]` (`bias_per_row`) or `bias[j]`. Each [`TILE_COLUMNS`] columns of `b`
/// start `b_tile` values after the ones before: [`TILE_COLUMNS`] where its rows hold every column, and `k`
/// times that where `b` is packed in panels of [`TILE_COLUMNS`] columns, each panel's rows one after the other.
#[derive(Clone, Copy)]
pub struct Product<'s, R: KOffsets, A: KOffsets = Strided> {
    pub a: *const f32,
    pub a_row: usize,
    pub a_k: A,
    pub k: usize,
    pub b_rows: R,
    pub b_tile: usize,
    pub c: *mut f32,
    pub c_row: usize,
    pub c_col: usize,
    pub bias: *const f32,
    pub bias_per_row: bool,
    pub steps: &'s [Step],
}

fn mask(columns: usize) -> u16 {
    if columns >= 16 {
        u16::MAX
    } else {
        (1u16 << columns) - 1
    }
}

/// Rows `i0..i0 + R` (those below `row_end`) and columns `j0..j0 + 16 C` (those `masks` keep) of the product; `b`
/// points at column `j0` of `b`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile<B: KOffsets, A: KOffsets, const R: usize, const C: usize, const SCATTER: bool>(
    p: &Product<'_, B, A>,
    b: *const f32,
    i0: usize,
    row_end: usize,
    j0: usize,
    masks: [u16; C],
) {
    let rows = (row_end - i0).min(R);
    // Rows past the end repeat the last one, so that every load stays inside `a`; they are not stored.
    let mut a_rows = [p.a; R];
    for (r, a_row) in a_rows.iter_mut().enumerate() {
        *a_row = p.a.add((i0 + r.min(rows - 1)) * p.a_row);
    }
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mut bv = [_mm512_setzero_ps(); C];
    for kk in 0..p.k {
        let row = b.wrapping_add(p.b_rows.at(kk));
        for c in 0..C {
            bv[c] = _mm512_maskz_loadu_ps(masks[c], row.wrapping_add(16 * c));
        }
        for r in 0..R {
            let a = _mm512_set1_ps(*a_rows[r].add(p.a_k.at(kk)));
            for c in 0..C {
                acc[r][c] = _mm512_fmadd_ps(a, bv[c], acc[r][c]);
            }
        }
    }
    for (r, sums) in acc.iter().enumerate().take(rows) {
        for c in 0..C {
            let bias = || match p.bias_per_row {
                true => _mm512_set1_ps(*p.bias.add(i0 + r)),
                false => _mm512_maskz_loadu_ps(masks[c], p.bias.wrapping_add(j0 + 16 * c)),
            };
            let v = apply_steps(sums[c], p.steps, bias);
            let out = p.c.wrapping_add((i0 + r) * p.c_row + (j0 + 16 * c) * p.c_col);
            if SCATTER {
                scatter(out, p.c_col, masks[c], v);
            } else {
                _mm512_mask_storeu_ps(out, masks[c], v);
            }
        }
    }
}

/// Stores sixteen values `column` values apart from `out` (those `mask` keeps).
#[target_feature(enable = "avx512f")]
#[inline(never)]
unsafe fn scatter(out: *mut f32, column: usize, mask: u16, v: __m512) {
    let lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    let offsets = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(column as i32));
    _mm512_mask_i32scatter_ps::<4>(out, mask, offsets, v);
}

/// `steps` on sixteen sums; `bias` gives their bias values, read only if a step adds them. Always inlined into the
/// AVX-512 kernels that call it, whose target features its intrinsics then take.
///
/// # Safety
/// The CPU has AVX-512F.
#[inline(always)]
pub unsafe fn apply_steps(mut v: __m512, steps: &[Step], bias: impl Fn() -> __m512) -> __m512 {
    let constant = |bits: u32| _mm512_set1_ps(f32::from_bits(bits));
    for step in steps {
        v = match *step {
            Step::Bias => _mm512_add_ps(v, bias()),
            Step::Scale(a) => _mm512_mul_ps(v, constant(a)),
            Step::Shift(b) => _mm512_add_ps(v, constant(b)),
            Step::Leaky(alpha) => {
                _mm512_mask_mul_ps(v, _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, _mm512_setzero_ps()), v, constant(alpha))
            }
            Step::Max(x) => _mm512_max_ps(v, constant(x)),
            Step::Min(x) => _mm512_min_ps(v, constant(x)),
            Step::Gate([shift, lo, hi]) => {
                let gate = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(v, constant(shift)), constant(lo)), constant(hi));
                _mm512_mul_ps(v, gate)
            }
        };
    }
    v
}

/// Rows `i0..i0 + R` over the columns `columns`; `b` points at column `columns.start`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn row_block<B: KOffsets, A: KOffsets, const R: usize, const SCATTER: bool>(
    p: &Product<'_, B, A>,
    b: *const f32,
    i0: usize,
    row_end: usize,
    columns: Range<usize>,
) {
    let at = |j: usize| b.wrapping_add((j - columns.start) / TILE_COLUMNS * p.b_tile);
    let mut j = columns.start;
    while j + TILE_COLUMNS <= columns.end {
        tile::<B, A, R, 2, SCATTER>(p, at(j), i0, row_end, j, [u16::MAX; 2]);
        j += TILE_COLUMNS;
    }
    let left = columns.end - j;
    let b = at(j);
    if left > 16 {
        tile::<B, A, R, 2, SCATTER>(p, b, i0, row_end, j, [u16::MAX, mask(left - 16)]);
    } else if left > 0 {
        tile::<B, A, R, 1, SCATTER>(p, b, i0, row_end, j, [mask(left)]);
    }
}

/// Every row of `rows` over the columns `columns` (twelve rows at a time, or eight or four where fewer than
/// twelve would leave a block of four or fewer); `b` points at column `columns.start`.
///
/// # Safety
/// The CPU has AVX-512F; `a` holds every row of `rows` over `k`, every row `b_rows` gives holds the columns, `c`
/// and `bias` hold every value written or read, and no other thread writes these values of `c`.
#[target_feature(enable = "avx512f")]
pub unsafe fn block<B: KOffsets, A: KOffsets>(
    p: &Product<'_, B, A>,
    b: *const f32,
    rows: Range<usize>,
    columns: Range<usize>,
) {
    if p.c_col == 1 {
        rows_of::<B, A, false>(p, b, rows, columns)
    } else {
        rows_of::<B, A, true>(p, b, rows, columns)
    }
}

/// [`block`], its outputs stored or scattered. Each kind is a function of its own, so that the kernels inlined
/// into one do not weigh on the other's (the stored kind ran three times slower beside an inlined scattered one).
#[target_feature(enable = "avx512f")]
#[inline(never)]
unsafe fn rows_of<B: KOffsets, A: KOffsets, const SCATTER: bool>(
    p: &Product<'_, B, A>,
    b: *const f32,
    rows: Range<usize>,
    columns: Range<usize>,
) {
    let mut i = rows.start;
    while i < rows.end {
        let left = rows.end - i;
        if left > 16 || (9..=12).contains(&left) {
            row_block::<B, A, 12, SCATTER>(p, b, i, rows.end, columns.clone());
            i += 12;
        } else if left > 4 {
            row_block::<B, A, 8, SCATTER>(p, b, i, rows.end, columns.clone());
            i += 8;
        } else {
            row_block::<B, A, 4, SCATTER>(p, b, i, rows.end, columns.clone());
            i += 4;
        }
    }
}
