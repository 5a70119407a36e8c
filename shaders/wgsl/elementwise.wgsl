// Elementwise ops on f32 activations.
//   glu: out = act(gate) * up, act 0 = ReLU² (2B4T), 1 = SiLU (as the CPU:
//        g / (1 + exp(-g))).
//   add: out += y (the residual).

struct Params {
    n: u32,
    act: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + lid;
}

@compute @workgroup_size(64)
fn glu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= p.n {
        return;
    }
    let g = a[i];
    var act: f32;
    if p.act == 0u {
        let r = max(g, 0.0);
        act = r * r;
    } else {
        act = g / (1.0 + exp(-g));
    }
    out[i] = act * b[i];
}

@compute @workgroup_size(64)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= p.n {
        return;
    }
    out[i] = out[i] + a[i];
}
