//! Choosing the next token, with llama.cpp's semantics and defaults.
//!
//! Order (llama.cpp's default chain, restricted to what we support):
//! penalties → top-k → top-p → min-p → temperature → draw. A temperature of
//! 0 (or [`SamplingStrategy::Greedy`]) takes the argmax after the penalties.

/// Which family of sampling to use (the tuning guide's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplingStrategy {
    /// Argmax: deterministic.
    Greedy,
    /// Temperature only (top-k/top-p/min-p disabled).
    Temperature,
    /// The full chain with the configured top-k, top-p and min-p.
    TopP,
}

/// How to generate: sampling settings and when to stop.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationConfig {
    pub sampling_strategy: SamplingStrategy,
    /// llama.cpp default 0.8; ≤ 0 means greedy.
    pub temperature: f32,
    /// 40; ≤ 0 disables.
    pub top_k: i32,
    /// 0.95; 1.0 disables.
    pub top_p: f32,
    /// 0.05; 0 disables.
    pub min_p: f32,
    /// 1.0 (off).
    pub repetition_penalty: f32,
    /// Penalties look at the last 64 tokens; 0 disables, -1 = whole context.
    pub repeat_last_n: i32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// `None`: a random seed (reported by the caller).
    pub seed: Option<u64>,
    /// Tokens to generate; `None` = until a stop token or the context is full.
    pub max_tokens: Option<usize>,
    /// Generation stops when the text ends with one of these (not included).
    pub stop: Vec<String>,
    /// Stop (with [`crate::StopReason::Timeout`]) when one token takes longer.
    pub token_timeout: Option<std::time::Duration>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            sampling_strategy: SamplingStrategy::TopP,
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            max_tokens: None,
            stop: Vec::new(),
            token_timeout: None,
        }
    }
}

impl GenerationConfig {
    pub fn greedy() -> Self {
        GenerationConfig {
            sampling_strategy: SamplingStrategy::Greedy,
            temperature: 0.0,
            ..Default::default()
        }
    }

    fn is_greedy(&self) -> bool {
        self.sampling_strategy == SamplingStrategy::Greedy || self.temperature <= 0.0
    }
}

/// A small, fast, seedable generator (xoshiro256**, seeded by SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Samples tokens for one sequence and remembers its recent tokens.
pub struct Sampler {
    cfg: GenerationConfig,
    rng: Rng,
    pub seed: u64,
    history: Vec<u32>,
}

impl Sampler {
    /// A sampler; with no seed configured, one is drawn from the clock.
    pub fn new(cfg: GenerationConfig) -> Sampler {
        let seed = cfg.seed.unwrap_or_else(|| {
            web_time::SystemTime::now()
                .duration_since(web_time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x5eed)
        });
        Sampler {
            rng: Rng::new(seed),
            seed,
            cfg,
            history: Vec::new(),
        }
    }

    pub fn config(&self) -> &GenerationConfig {
        &self.cfg
    }

    /// Records a token (prompt or generated) for the penalties.
    pub fn accept(&mut self, token: u32) {
        self.history.push(token);
    }

    /// Chooses the next token from `logits` (modified in place).
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        self.apply_penalties(logits);
        if self.cfg.is_greedy() {
            return argmax(logits);
        }
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let filtering = self.cfg.sampling_strategy == SamplingStrategy::TopP;
        if filtering {
            if self.cfg.top_k > 0 {
                cand.truncate(self.cfg.top_k as usize);
            }
            if self.cfg.top_p < 1.0 {
                let probs = softmax(&cand);
                let mut cum = 0.0;
                let mut keep = cand.len();
                for (i, p) in probs.iter().enumerate() {
                    cum += p;
                    if cum >= self.cfg.top_p as f64 {
                        keep = i + 1;
                        break;
                    }
                }
                cand.truncate(keep.max(1));
            }
            if self.cfg.min_p > 0.0 {
                let floor = cand[0].1 + self.cfg.min_p.ln();
                let keep = cand.iter().take_while(|c| c.1 >= floor).count();
                cand.truncate(keep.max(1));
            }
        }
        for c in cand.iter_mut() {
            c.1 /= self.cfg.temperature;
        }
        let probs = softmax(&cand);
        let r = self.rng.next_f64();
        let mut cum = 0.0;
        for (c, p) in cand.iter().zip(&probs) {
            cum += p;
            if r < cum {
                return c.0;
            }
        }
        cand[cand.len() - 1].0
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let c = &self.cfg;
        let n = match c.repeat_last_n {
            0 => return,
            n if n < 0 => self.history.len(),
            n => (n as usize).min(self.history.len()),
        };
        if c.repetition_penalty == 1.0 && c.presence_penalty == 0.0 && c.frequency_penalty == 0.0 {
            return;
        }
        let mut counts: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
        for &t in &self.history[self.history.len() - n..] {
            *counts.entry(t).or_default() += 1;
        }
        for (&t, &count) in &counts {
            let Some(l) = logits.get_mut(t as usize) else {
                continue;
            };
            if *l > 0.0 {
                *l /= c.repetition_penalty;
            } else {
                *l *= c.repetition_penalty;
            }
            *l -= count as f32 * c.frequency_penalty + c.presence_penalty;
        }
    }
}

/// Index of the largest value (the first at a tie).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best as u32
}

fn softmax(cand: &[(u32, f32)]) -> Vec<f64> {
    let max = cand.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.1)) as f64;
    let e: Vec<f64> = cand.iter().map(|c| (c.1 as f64 - max).exp()).collect();
    let total: f64 = e.iter().sum();
    e.iter().map(|v| v / total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(GenerationConfig::greedy());
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.0, 3.0]), 1);
    }

    #[test]
    fn fixed_seed_repeats() {
        let cfg = GenerationConfig {
            seed: Some(7),
            top_k: 0,
            min_p: 0.0,
            top_p: 1.0,
            ..Default::default()
        };
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let draw = |cfg: &GenerationConfig| {
            let mut s = Sampler::new(cfg.clone());
            (0..20)
                .map(|_| s.sample(&mut logits.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(&cfg), draw(&cfg));
        assert_ne!(
            draw(&cfg),
            draw(&GenerationConfig {
                seed: Some(8),
                ..cfg.clone()
            })
        );
    }

    #[test]
    fn filters_keep_the_right_support() {
        let logits = [5.0f32, 4.0, 1.0, 0.0, -1.0];
        let draws = |cfg: GenerationConfig| {
            let mut s = Sampler::new(GenerationConfig {
                seed: Some(1),
                ..cfg
            });
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..2000 {
                seen.insert(s.sample(&mut logits.clone()));
            }
            seen.into_iter().collect::<Vec<_>>()
        };
        let base = GenerationConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        };
        assert_eq!(
            draws(GenerationConfig {
                top_k: 2,
                ..base.clone()
            }),
            [0, 1]
        );
        // p(0) ≈ 0.72, p(0)+p(1) ≈ 0.99: top-p 0.9 keeps two tokens.
        assert_eq!(
            draws(GenerationConfig {
                top_p: 0.9,
                ..base.clone()
            }),
            [0, 1]
        );
        // min-p 0.1: keep logits ≥ 5 + ln 0.1 ≈ 2.7.
        assert_eq!(
            draws(GenerationConfig {
                min_p: 0.1,
                ..base.clone()
            }),
            [0, 1]
        );
        assert_eq!(draws(base).len(), 5);
    }

    #[test]
    fn repetition_penalty_touches_only_the_last_n() {
        let cfg = GenerationConfig {
            repetition_penalty: 2.0,
            repeat_last_n: 2,
            ..GenerationConfig::greedy()
        };
        let mut s = Sampler::new(cfg);
        for t in [0, 1, 2] {
            s.accept(t);
        }
        let mut logits = [4.0f32, 4.0, 4.0, -1.0];
        s.apply_penalties(&mut logits);
        assert_eq!(logits, [4.0, 2.0, 2.0, -1.0]);
    }
}
