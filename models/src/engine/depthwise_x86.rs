//! A channel-last depthwise convolution kernel for x86-64 with AVX2 and FMA, offered to tract as its `depthwise_c`
//! routine. tract 0.23.9 writes that routine for aarch64 and wasm only, so on x86 the channel-last depthwise
//! convolutions of the detectors converted from TensorFlow (CenterNet's 26) ran a generic loop that stores every
//! output vector once per tap; this one keeps the sums in registers across the taps. On CPUs with AVX-512, Lookout's
//! own operator ([`super::depthwise`]) takes these convolutions from tract altogether.

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// tract's `depthwise_c` contract (see `tract_linalg::routines::DepthwiseCF32`): `len` output positions of
    /// `channels` channels each; point `i`, channel `c`, is `bias[c]` plus every
    /// `kernel[tap_indices[t] * k_stride + c] * input[i * in_stride + offsets[t] + c]`, added in tap order.
    ///
    /// # Safety
    /// As tract states it: every input, kernel and bias element those indices reach is readable, `channels` values
    /// are writable from `output.offset(i * out_stride)` for every `i` below `len`, and the CPU has AVX2 and FMA
    /// (the routine's declared requirement, which tract checks before choosing it).
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn depthwise_c_f32(
        input: *const f32,
        output: *mut f32,
        kernel: *const f32,
        tap_indices: &[usize],
        offsets: &[isize],
        bias: *const f32,
        channels: usize,
        k_stride: usize,
        len: usize,
        in_stride: isize,
        out_stride: isize,
    ) {
        let taps = tap_indices.len().min(offsets.len());
        // SAFETY: every pointer below stays inside what the contract above makes readable and writable.
        unsafe {
            for i in 0..len as isize {
                let x = input.offset(i * in_stride);
                let y = output.offset(i * out_stride);
                let mut c = 0usize;
                while c + 32 <= channels {
                    let mut sums = [
                        _mm256_loadu_ps(bias.add(c)),
                        _mm256_loadu_ps(bias.add(c + 8)),
                        _mm256_loadu_ps(bias.add(c + 16)),
                        _mm256_loadu_ps(bias.add(c + 24)),
                    ];
                    for t in 0..taps {
                        let k = kernel.add(tap_indices[t] * k_stride + c);
                        let xt = x.offset(offsets[t]).add(c);
                        for (lane, sum) in sums.iter_mut().enumerate() {
                            *sum = _mm256_fmadd_ps(
                                _mm256_loadu_ps(xt.add(8 * lane)),
                                _mm256_loadu_ps(k.add(8 * lane)),
                                *sum,
                            );
                        }
                    }
                    for (lane, sum) in sums.iter().enumerate() {
                        _mm256_storeu_ps(y.add(c + 8 * lane), *sum);
                    }
                    c += 32;
                }
                while c + 8 <= channels {
                    let mut sum = _mm256_loadu_ps(bias.add(c));
                    for t in 0..taps {
                        let k = kernel.add(tap_indices[t] * k_stride + c);
                        sum = _mm256_fmadd_ps(_mm256_loadu_ps(x.offset(offsets[t]).add(c)), _mm256_loadu_ps(k), sum);
                    }
                    _mm256_storeu_ps(y.add(c), sum);
                    c += 8;
                }
                if c < channels {
                    // The last 1 to 7 channels in one masked vector: lanes past `channels` are neither read nor
                    // written.
                    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                    let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((channels - c) as i32), lanes);
                    let mut sum = _mm256_maskload_ps(bias.add(c), mask);
                    for t in 0..taps {
                        let k = _mm256_maskload_ps(kernel.add(tap_indices[t] * k_stride + c), mask);
                        sum = _mm256_fmadd_ps(_mm256_maskload_ps(x.offset(offsets[t]).add(c), mask), k, sum);
                    }
                    _mm256_maskstore_ps(y.add(c), mask, sum);
                }
            }
        }
    }

    inventory::submit! {
        tract_linalg::routines::Routine {
            func: tract_linalg::routines::Func::DepthwiseC,
            arch: Some(tract_linalg::isa::Arch::X86_64),
            isa: tract_linalg::isa::IsaReq::ANY
                .needing(&[tract_linalg::isa::Isa::X86_64Avx2, tract_linalg::isa::Isa::X86_64Fma]),
            boost: 0,
            round_trip: false,
            factory: tract_linalg::routines::RoutineFactory::DepthwiseCF32 {
                name: "lookout_avx2_fma_depthwise_c_f32",
                run: depthwise_c_f32,
            },
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::avx2::depthwise_c_f32;

    /// The kernel against the contract's sum, on channel counts that exercise every loop (32-wide, 8-wide and the
    /// scalar tail), a channel block inside a wider kernel (`k_stride` > `channels`), and strided positions.
    #[test]
    fn the_kernel_computes_the_contracts_sum() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            eprintln!("this CPU has no AVX2 and FMA: the kernel is never chosen here");
            return;
        }
        let value = |i: usize| ((i * 7919) % 113) as f32 / 17.0 - 3.0;
        for (channels, k_stride) in [(1, 1), (7, 7), (8, 8), (45, 45), (64, 72), (96, 96)] {
            let taps = [(0usize, 0isize), (4, k_stride as isize), (8, 3 * k_stride as isize)];
            let (tap_indices, offsets): (Vec<usize>, Vec<isize>) = taps.iter().copied().unzip();
            let (len, in_stride, out_stride) = (5usize, 2 * k_stride as isize, channels as isize + 3);
            let input: Vec<f32> = (0..(len + 4) * 2 * k_stride + channels).map(value).collect();
            let kernel: Vec<f32> = (0..9 * k_stride).map(|i| value(i + 1000)).collect();
            let bias: Vec<f32> = (0..channels).map(|i| value(i + 5000)).collect();
            let mut output = vec![f32::NAN; len * out_stride as usize];
            // SAFETY: the buffers cover every index the contract reaches for these sizes.
            unsafe {
                depthwise_c_f32(
                    input.as_ptr(),
                    output.as_mut_ptr(),
                    kernel.as_ptr(),
                    &tap_indices,
                    &offsets,
                    bias.as_ptr(),
                    channels,
                    k_stride,
                    len,
                    in_stride,
                    out_stride,
                );
            }
            for i in 0..len {
                for c in 0..channels {
                    let expected = taps.iter().fold(bias[c], |sum, &(tap, offset)| {
                        sum + kernel[tap * k_stride + c] * input[(i as isize * in_stride + offset) as usize + c]
                    });
                    let got = output[i * out_stride as usize + c];
                    assert!((got - expected).abs() <= 1e-4 * expected.abs().max(1.0), "{channels} ch, {i},{c}");
                }
            }
        }
    }

    #[test]
    fn tract_chooses_the_kernel_on_a_cpu_with_avx2_and_fma() {
        let chosen = tract_linalg::routines::depthwise_c_f32().is_some();
        assert_eq!(chosen, is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"));
    }
}
