//! Next-token choice: greedy, or seeded temperature + top-p (nucleus) sampling, reproducible for a given seed.

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability adds up to at least this (1.0 keeps all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Sampling {
        Sampling { temperature: 0.0, top_p: 1.0, seed: 0 }
    }
}

impl Sampling {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=5.0).contains(&self.temperature) || !self.temperature.is_finite() {
            return Err(format!("temperature {} is outside 0..=5", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p {} is outside (0, 1]", self.top_p));
        }
        Ok(())
    }
}

/// A sampler with its own random stream (SplitMix64).
pub struct Sampler {
    sampling: Sampling,
    state: u64,
    /// Reused by every choice, so sampling allocates nothing after the first token.
    candidates: Vec<(u32, f64)>,
}

impl Sampler {
    pub fn new(sampling: Sampling) -> Sampler {
        Sampler { sampling, state: sampling.seed, candidates: Vec::new() }
    }

    fn next_unit(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The chosen token id among `logits` (NaN logits are never chosen).
    pub fn choose(&mut self, logits: &[f32]) -> u32 {
        let argmax = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.is_nan())
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i as u32);
        if self.sampling.temperature == 0.0 {
            return argmax;
        }
        let max = logits[argmax as usize];
        let temperature = self.sampling.temperature;
        let mut candidates = std::mem::take(&mut self.candidates);
        candidates.clear();
        candidates.reserve(logits.len());
        candidates.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, l)| (i as u32, (((l - max) / temperature) as f64).exp()))
                .filter(|(_, p)| *p > 1e-12),
        );
        // Unstable sorting works in place; ties are broken by id so the order stays deterministic.
        candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let total: f64 = candidates.iter().map(|(_, p)| p).sum();
        let mut kept = 0.0;
        let mut cut = candidates.len();
        for (i, (_, p)) in candidates.iter().enumerate() {
            kept += p / total;
            if kept >= self.sampling.top_p as f64 {
                cut = i + 1;
                break;
            }
        }
        candidates.truncate(cut);
        let mass: f64 = candidates.iter().map(|(_, p)| p).sum();
        let mut target = self.next_unit() * mass;
        let mut chosen = candidates.last().map_or(argmax, |(id, _)| *id);
        for (id, p) in &candidates {
            target -= p;
            if target <= 0.0 {
                chosen = *id;
                break;
            }
        }
        self.candidates = candidates;
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_largest_and_sampling_repeats_per_seed() {
        let logits = [0.1, 3.0, 2.9, -1.0, f32::NAN];
        assert_eq!(Sampler::new(Sampling::default()).choose(&logits), 1);
        let warm = Sampling { temperature: 1.0, top_p: 1.0, seed: 7 };
        let draw = |s: Sampling| {
            (0..50).map(|_| 0).scan(Sampler::new(s), |sm, _: i32| Some(sm.choose(&logits))).collect::<Vec<_>>()
        };
        assert_eq!(draw(warm), draw(warm));
        let picks = draw(warm);
        assert!(picks.contains(&1) && picks.contains(&2), "both likely tokens drawn: {picks:?}");
        assert!(!picks.contains(&4));
        let nucleus = Sampling { top_p: 0.4, ..warm };
        assert!(draw(nucleus).iter().all(|id| *id == 1), "top-p 0.4 keeps only the top token");
    }
}
