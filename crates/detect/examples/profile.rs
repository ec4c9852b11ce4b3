//! Scan a generated 1 MiB chat-like body in a loop (for `perf record`):
//! `cargo run --release -p lifeguard-detect --example profile -- [phrases] [iterations]`

use lifeguard_detect::{CustomRule, DetectorConfig, Scanner};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let phrases = args.first().copied().unwrap_or(10_000);
    let iters = args.get(1).copied().unwrap_or(20);
    let list: Vec<String> = (0..phrases)
        .map(|i| {
            format!(
                "internal codename {i:05} {}",
                ["alpha", "bravo", "delta"][i % 3]
            )
        })
        .collect();
    let refs: Vec<&str> = list.iter().map(String::as_str).collect();
    let mode = std::env::var("MODE").unwrap_or_default();
    let mut cfg = DetectorConfig {
        custom: vec![CustomRule::phrases("codenames", &refs)],
        ..DetectorConfig::default()
    };
    if mode.contains("nopii") {
        cfg.pii_types.clear();
    }
    if mode.contains("nosecrets") {
        cfg.secrets = false;
    }
    let scanner = Scanner::compile(&cfg).expect("compiles");
    let parts = [
        "Could you help me plan a three-day trip to Lisbon in May? I'd like museums, food and a day at the beach.\n\n",
        "Sure! Day 1: start at the Belém Tower, then walk to the Jerónimos Monastery and try a pastel de nata.\n",
        "```python\ndef total(items):\n    return sum(i.price * i.qty for i in items)\n```\n",
        "{\"role\": \"user\", \"content\": \"Summarise the quarterly report in five bullet points.\"}\n",
        "Revenue grew 12.5% to 4,210 units in Q3 2024; costs fell by 3% year over year.\n",
        "Über die Brücke gehen wir später — das Café öffnet um 8 Uhr.\n",
        "The meeting moved to Thursday at 10:30 in room B-204; bring the slides and the budget draft.\n",
    ];
    let mut text = String::new();
    let mut i = 0;
    let size: usize = std::env::var("SIZE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1 << 20);
    while text.len() < size {
        text.push_str(parts[i % parts.len()]);
        i += 1;
    }
    let t = std::time::Instant::now();
    let mut n = 0;
    for _ in 0..iters {
        n += if mode.contains("findings") {
            scanner.findings(&text).len()
        } else {
            scanner.scan(&text).findings.len()
        };
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{n} findings, {:.1} MB/s",
        (text.len() * iters) as f64 / 1e6 / secs
    );
}
