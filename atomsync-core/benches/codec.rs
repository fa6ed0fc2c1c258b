//! Encode+decode throughput of the S-expression codec against serde_json on
//! the same data, measured in the same run.
//!
//! Run: `cargo bench -p atomsync-core --bench codec`.

#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::collections::BTreeSet;
use std::hint::black_box;

use atomsync_core::sexpr;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct SmallDoc {
    title: String,
    done: bool,
    tags: BTreeSet<String>,
    id: String,
    created: i64,
}

fn small_docs(n: usize) -> Vec<SmallDoc> {
    (0..n)
        .map(|i| SmallDoc {
            title: format!("Buy milk and call \"Bob\" #{i}"),
            done: i % 3 == 0,
            tags: [
                "home".to_owned(),
                format!("tag-{}", i % 17),
                "errands".to_owned(),
            ]
            .into(),
            id: format!("{:08x}-4a1b-4c2d-8e3f-{:012x}", i * 7919, i * 104_729),
            created: 1_732_000_000_000 + i as i64 * 1_013,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let docs = small_docs(10_000);
    let mut group = c.benchmark_group("10k small documents, encode+decode each");
    group.throughput(Throughput::Elements(docs.len() as u64));
    group.bench_function("atomsync sexpr", |b| {
        b.iter(|| {
            for d in &docs {
                let text = sexpr::to_vec(d).unwrap();
                let back: SmallDoc = sexpr::from_slice(&text).unwrap();
                black_box(back);
            }
        });
    });
    group.bench_function("serde_json", |b| {
        b.iter(|| {
            for d in &docs {
                let text = serde_json::to_vec(d).unwrap();
                let back: SmallDoc = serde_json::from_slice(&text).unwrap();
                black_box(back);
            }
        });
    });
    group.finish();

    let big = small_docs(6_500);
    let size = sexpr::to_vec(&big).unwrap().len();
    let mut group = c.benchmark_group(format!("one {} KB document, encode+decode", size / 1000));
    group.throughput(Throughput::Bytes(size as u64));
    group.bench_function("atomsync sexpr", |b| {
        b.iter(|| {
            let text = sexpr::to_vec(&big).unwrap();
            let back: Vec<SmallDoc> = sexpr::from_slice(&text).unwrap();
            black_box(back);
        });
    });
    group.bench_function("serde_json", |b| {
        b.iter(|| {
            let text = serde_json::to_vec(&big).unwrap();
            let back: Vec<SmallDoc> = serde_json::from_slice(&text).unwrap();
            black_box(back);
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
