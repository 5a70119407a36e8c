//! Helpers shared by the integration tests.
// Not every test binary that includes this module uses all of it.
#![allow(dead_code)]

/// A JSON array of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("an array of ids")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

/// KL(p ‖ q) in nats between the softmax distributions of two logit rows.
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
#[derive(Default)]
pub struct Closeness {
    pub kl_sum: f64,
    pub worst_kl: f64,
    pub n: usize,
    pub agree: usize,
}

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

/// The resident size, in bytes, of the mapping that holds `ptr`, from
/// `/proc/self/smaps`.
#[cfg(target_os = "linux")]
pub fn resident_bytes_of_mapping(ptr: *const u8) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let addr = ptr as u64;
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                inside = (a..b).contains(&addr);
                continue;
            }
        }
        if inside && line.starts_with("Rss:") {
            let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            return kb * 1024;
        }
    }
    panic!("no mapping holds {ptr:?}");
}
