//! The mapping step on its own: a 20-field VRL mapping over a 1 KiB order event,
//! against the floor of any JSON-to-JSON step — parsing the same body and writing it
//! back. The target is under 20 µs per event.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switchyard_core::{
    catalog::Mapping,
    mapping::{CompiledMapping, Event, Output},
};
use switchyard_tests::workload::{PROGRAM, payload};

fn bench(c: &mut Criterion) {
    let body = payload();
    let mapping = Mapping {
        name: "order".into(),
        version: 1,
        description: String::new(),
        program: PROGRAM.into(),
        input_schema: None,
        output_schema: None,
    };
    let compiled = CompiledMapping::compile(&mapping).expect("the benchmark mapping compiles");
    let Ok(Output::Body(out)) = compiled.apply(&Event::parse(&body).unwrap()) else {
        panic!("the benchmark mapping maps the payload")
    };
    let out: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(out.as_object().map(|o| o.len()), Some(20));

    let mut group = c.benchmark_group("mapping");
    group.throughput(Throughput::Elements(1));
    group.bench_function("json_roundtrip_baseline", |b| {
        b.iter(|| {
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
            serde_json::to_vec(&value).unwrap()
        })
    });
    group.bench_function("vrl_20_fields_1kib", |b| {
        b.iter(|| {
            let mut event = Event::parse(&body).unwrap();
            compiled.apply_last(&mut event).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
