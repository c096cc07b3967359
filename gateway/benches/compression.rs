//! Micro-benchmarks of permessage-deflate (`cargo bench -p gateway --bench compression`): the
//! cost of compressing one delivery once (a typical chat `message` frame and a 1 KiB push event,
//! JSON and MessagePack), and local delivery of one envelope to 1,000 sockets that negotiated
//! the extension (one compression shared by all) beside the same delivery uncompressed. Prints
//! the bytes on the wire of each frame, compressed and not, before the timings.

mod support;

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use gateway::deflate;
use gateway::delivery::deliver;
use gateway::hub::SocketHandle;
use gateway::wsio::{data_opcode, Outgoing};
use shared::protocol::{encode_server, Encoding, ServerFrame};
use shared::routing::Envelope;

/// A backend push of about 1 KiB as JSON: an order update with a few line items, the kind of
/// structured event with repeated keys that push traffic carries.
fn event_frame() -> ServerFrame {
    const NAMES: [&str; 8] = [
        "espresso beans 1kg",
        "oat milk",
        "paper filters",
        "grinder brush",
        "travel mug",
        "descaler",
        "milk jug 350ml",
        "tamper 58mm",
    ];
    let items: Vec<serde_json::Value> = (0..8)
        .map(|i| {
            serde_json::json!({
                "sku": format!("SKU-{:05}", 31_337 + i * 7),
                "name": NAMES[i],
                "quantity": 1 + i % 3,
                "unit_price_cents": 1_299 + i * 250,
                "status": if i % 2 == 0 { "packed" } else { "awaiting_stock" },
            })
        })
        .collect();
    ServerFrame::Event {
        event: serde_json::json!({
            "kind": "order.updated",
            "order_id": "ord_01HZX3K9M2Q8T5V7W4Y6",
            "customer_id": "cus_8841207",
            "updated_at_ms": 1_790_000_123_456u64,
            "shipping": {"method": "standard", "eta_days": 3, "city": "Lyon", "country": "FR"},
            "items": items,
            "total_cents": 14_242,
            "currency": "EUR",
        }),
    }
}

fn negotiated() -> deflate::Negotiated {
    deflate::negotiate(std::iter::once(
        &b"permessage-deflate; client_max_window_bits"[..],
    ))
    .expect("the browser offer")
    .negotiated
}

fn compress_once(c: &mut Criterion) {
    let deflate = Some(negotiated());
    let mut g = c.benchmark_group("compress_frame");
    g.throughput(Throughput::Elements(1));
    for (name, frame) in [
        ("message", support::message_frame()),
        ("event_1k", event_frame()),
    ] {
        for encoding in [Encoding::Json, Encoding::Msgpack] {
            let payload = encode_server(encoding, &frame);
            let plain = Outgoing::new(data_opcode(encoding), &payload, 0).for_socket(None);
            let z = Outgoing::new(data_opcode(encoding), &payload, 0).for_socket(deflate);
            eprintln!(
                "wire bytes {name}/{encoding:?}: {} plain, {} compressed ({:.0} %)",
                plain.len(),
                z.len(),
                100.0 * z.len() as f64 / plain.len() as f64
            );
            g.bench_function(BenchmarkId::new(name, format!("{encoding:?}")), |b| {
                b.iter(|| Outgoing::new(data_opcode(encoding), &payload, 0).for_socket(deflate))
            });
        }
    }
    g.finish();
}

fn delivery_to_deflate_sockets(c: &mut Criterion) {
    let node = support::node();
    const SOCKETS: usize = 1_000;
    let mut g = c.benchmark_group("local_delivery_1000");
    g.throughput(Throughput::Elements(SOCKETS as u64));
    for (label, deflate) in [("plain", None), ("deflate", Some(negotiated()))] {
        let handles: Vec<Arc<SocketHandle>> = (0..SOCKETS)
            .map(|i| {
                let h = Arc::new(
                    SocketHandle::new(
                        node.hub.next_socket_id(),
                        format!("{label}-{i}").into(),
                        Encoding::Json,
                        0,
                    )
                    .with_deflate(deflate),
                );
                node.hub.add(h.clone(), 16).unwrap();
                h
            })
            .collect();
        let envelope = Envelope::new(
            handles.iter().map(|h| h.user.to_string()).collect(),
            &support::message_frame(),
        );
        g.bench_function(BenchmarkId::new("message_json", label), |b| {
            b.iter(|| {
                assert_eq!(deliver(&node, &envelope), SOCKETS);
                for h in &handles {
                    h.writer.drop_queued();
                }
            })
        });
        for h in &handles {
            node.hub.remove(h);
        }
    }
    g.finish();
}

criterion_group!(
    name = benches;
    config = support::criterion();
    targets = compress_once, delivery_to_deflate_sockets
);
criterion_main!(benches);
