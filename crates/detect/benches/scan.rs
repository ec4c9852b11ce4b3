//! Scanner throughput on chat-like bodies (4 KiB, 64 KiB, 1 MiB) with 100, 1,000 and 10,000 custom phrases,
//! per-chunk cost of streaming 50-byte chunks, and compile time with 10,000 phrases.
//!
//! `cargo bench -p lifeguard-detect --bench scan -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use lifeguard_detect::{CustomRule, DetectorConfig, Scanner};

/// A chat-like body: prose, a little code and JSON, numbers, some non-ASCII, no secrets or attacks.
fn body(len: usize) -> String {
    const PARTS: &[&str] = &[
        "Could you help me plan a three-day trip to Lisbon in May? I'd like museums, food and a day at the beach.\n\n",
        "Sure! Day 1: start at the Belém Tower, then walk to the Jerónimos Monastery and try a pastel de nata.\n",
        "```python\ndef total(items):\n    return sum(i.price * i.qty for i in items)\n```\n",
        "{\"role\": \"user\", \"content\": \"Summarise the quarterly report in five bullet points.\"}\n",
        "Revenue grew 12.5% to 4,210 units in Q3 2024; costs fell by 3% year over year.\n",
        "Über die Brücke gehen wir später — das Café öffnet um 8 Uhr.\n",
        "The meeting moved to Thursday at 10:30 in room B-204; bring the slides and the budget draft.\n",
    ];
    let mut s = String::with_capacity(len + 200);
    let mut i = 0;
    while s.len() < len {
        s.push_str(PARTS[i % PARTS.len()]);
        i += 1;
    }
    let cut = (0..=len.min(s.len()))
        .rev()
        .find(|&c| s.is_char_boundary(c))
        .unwrap_or(0);
    s.truncate(cut);
    s
}

fn config(phrases: usize) -> DetectorConfig {
    let list: Vec<String> = (0..phrases)
        .map(|i| {
            format!(
                "internal codename {i:05} {}",
                ["alpha", "bravo", "delta"][i % 3]
            )
        })
        .collect();
    let refs: Vec<&str> = list.iter().map(String::as_str).collect();
    DetectorConfig {
        custom: vec![CustomRule::phrases("codenames", &refs)],
        ..DetectorConfig::default()
    }
}

fn throughput(c: &mut Criterion) {
    for phrases in [100usize, 1_000, 10_000] {
        let scanner = Scanner::compile(&config(phrases)).expect("compiles");
        let mut g = c.benchmark_group(format!("scan/{phrases}_phrases"));
        for (name, len) in [("4KiB", 4 << 10), ("64KiB", 64 << 10), ("1MiB", 1 << 20)] {
            let text = body(len);
            g.throughput(Throughput::Bytes(text.len() as u64));
            if len >= 1 << 20 {
                g.sample_size(10);
            }
            g.bench_function(name, |b| {
                b.iter(|| black_box(scanner.scan(black_box(&text))))
            });
        }
        g.finish();
    }
}

fn streaming(c: &mut Criterion) {
    let scanner = Scanner::compile(&config(1_000)).expect("compiles");
    let text = body(64 << 10);
    let chunks: Vec<&str> = {
        let mut v = Vec::new();
        let mut at = 0;
        while at < text.len() {
            let mut end = (at + 50).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            v.push(&text[at..end]);
            at = end;
        }
        v
    };
    let mut g = c.benchmark_group("stream");
    g.throughput(Throughput::Elements(chunks.len() as u64));
    // Per-element time = cost of one 50-byte push.
    g.bench_function("push_50B_chunks", |b| {
        b.iter_batched(
            || scanner.stream(),
            |mut st| {
                for ch in &chunks {
                    black_box(st.push(ch));
                }
                st.finish()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn compile(c: &mut Criterion) {
    let cfg = config(10_000);
    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    g.bench_function("10000_phrases", |b| {
        b.iter(|| Scanner::compile(black_box(&cfg)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = throughput, streaming, compile
}
criterion_main!(benches);
