#![cfg(feature = "wgpu")]
use std::sync::Arc;
use bitnet::backend::cpu::CpuBackend;
use bitnet::backend::{Backend, KvType};
use bitnet::fixture::FixtureConfig;
use bitnet::gguf::GgufFile;
use bitnet::model::BitNet;
use bitnet::{DeviceChoice, GgmlType, WgpuBackend};

#[test]
fn smoke() {
    for ty in [GgmlType::I2_S, GgmlType::TQ2_0] {
    let file = Arc::new(GgufFile::from_vec(FixtureConfig::tiny(ty).to_bytes().unwrap()).unwrap());
    let cpu = BitNet::load(file.clone(), CpuBackend::new()).unwrap();
    let gpu = BitNet::load(file, WgpuBackend::new(DeviceChoice::Wgpu(None)).unwrap()).unwrap();
    eprintln!("{}", gpu.backend().name());
    let p = [496u32, 10, 200, 3, 77, 300, 5];
    for kv in [KvType::F32, KvType::F16] {
    let a = cpu.forward(&mut cpu.new_session(64, kv), &p, true).unwrap();
    let mut gs = gpu.new_session(64, kv);
    let b = gpu.forward(&mut gs, &p, true).unwrap();
    let md = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let mx = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    eprintln!("{ty:?} {kv:?} max diff {md} of {mx}; {:?} vs {:?}", &a[..4], &b[..4]);
    let c = gpu.forward(&mut gs, &[7], false).unwrap();
    let mut cs = cpu.new_session(64, kv);
    cpu.forward(&mut cs, &p, false).unwrap();
    let d = cpu.forward(&mut cs, &[7], false).unwrap();
    let md = d.iter().zip(&c).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    eprintln!("decode max diff {md}");
    }
    }
}
