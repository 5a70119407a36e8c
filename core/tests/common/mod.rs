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
