//! Helpers shared by the integration tests.

/// A JSON array of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("an array of ids")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

/// KL(p ‖ q) in nats between the softmax distributions of two logit rows.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn kl_divergence(p: &[f32], q: &[f32]) -> f64 {
    let logp = |l: &[f32]| {
        let m = l.iter().fold(f32::NEG_INFINITY, |x, &v| x.max(v)) as f64;
        let z = l.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln() + m;
        l.iter().map(|&v| v as f64 - z).collect::<Vec<f64>>()
    };
    let (lp, lq) = (logp(p), logp(q));
    lp.iter().zip(&lq).map(|(x, y)| x.exp() * (x - y)).sum()
}

/// Two logit tables compared row by row: the sum and worst of the KL
/// divergences, the rows compared, and the rows whose argmax agrees.
#[allow(dead_code)] // not every test binary that includes this module uses it
#[derive(Default)]
pub struct Closeness {
    pub kl_sum: f64,
    pub worst_kl: f64,
    pub n: usize,
    pub agree: usize,
}

#[allow(dead_code)]
impl Closeness {
    /// Adds every `vocab`-wide row of `a` against the same row of `b`.
    pub fn add(&mut self, a: &[f32], b: &[f32], vocab: usize) {
        for (la, lb) in a.chunks_exact(vocab).zip(b.chunks_exact(vocab)) {
            let kl = kl_divergence(la, lb);
            self.kl_sum += kl;
            self.worst_kl = self.worst_kl.max(kl);
            self.n += 1;
            self.agree += usize::from(bitnet::sampler::argmax(la) == bitnet::sampler::argmax(lb));
        }
    }

    pub fn mean_kl(&self) -> f64 {
        self.kl_sum / self.n as f64
    }
}
