//! The tiny fixture model (`models/tiny-bitnet-i2s.gguf`, random weights,
//! used by tests) is exactly what the fixture generator writes for the tiny
//! I2_S preset, so it can always be regenerated and never drifts.
//! `BITNET_BLESS=1 cargo test -p bitnet-rt --test bundled` rewrites it.

use bitnet::fixture::FixtureConfig;
use bitnet::GgmlType;

#[test]
fn bundled_model_matches_the_generator() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/tiny-bitnet-i2s.gguf"
    );
    let expected = FixtureConfig::tiny(GgmlType::I2_S).to_bytes().unwrap();
    if std::env::var_os("BITNET_BLESS").is_some() {
        std::fs::write(path, &expected).unwrap();
    }
    let actual = std::fs::read(path).unwrap();
    assert!(
        actual == expected,
        "{path} differs from the generator's output; rerun with BITNET_BLESS=1"
    );
}
