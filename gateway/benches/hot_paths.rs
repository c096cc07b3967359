//! Micro-benchmarks of the gateway's hot paths (`cargo bench -p gateway`): encoding a frame per
//! encoding, the route lookup that groups recipients by node, local delivery of one envelope to
//! many sockets' send queues, and the write of queued frames to real TCP sockets over loopback
//! (one `write` per frame, or one vectored write per batch of queued frames).

mod support;

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use gateway::delivery::deliver;
use gateway::hub::SocketHandle;
use gateway::wsio;
use shared::protocol::{decode_server, encode_server, Encoding};
use shared::routing::memory::MemoryRegistry;
use shared::routing::{Envelope, NodeInfo, RouteRegistry};

fn encoding(c: &mut Criterion) {
    let frame = support::message_frame();
    let mut g = c.benchmark_group("encode_frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("json", |b| {
        b.iter(|| wsio::server_frame(Encoding::Json, &frame))
    });
    g.bench_function("msgpack", |b| {
        b.iter(|| wsio::server_frame(Encoding::Msgpack, &frame))
    });
    // What delivery does once per envelope for JSON sockets: the bus carries MessagePack.
    let canonical = encode_server(Encoding::Msgpack, &frame);
    g.bench_function("msgpack_to_json", |b| {
        b.iter(|| {
            let f = decode_server(Encoding::Msgpack, &canonical).unwrap();
            wsio::frame_bytes(
                wsio::data_opcode(Encoding::Json),
                &encode_server(Encoding::Json, &f),
            )
        })
    });
    g.finish();
}

fn route_lookup(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let registry = MemoryRegistry::new();
    let nodes: Vec<NodeInfo> = (0..3)
        .map(|n| NodeInfo {
            node_id: format!("gw-{n}"),
            incarnation: 1,
        })
        .collect();
    let users: Vec<String> = (0..1_000).map(|u| format!("user-{u}")).collect();
    rt.block_on(async {
        for n in &nodes {
            registry.heartbeat(n).await.unwrap();
        }
        for (i, u) in users.iter().enumerate() {
            registry
                .add_routes(&nodes[i % nodes.len()], std::slice::from_ref(u))
                .await
                .unwrap();
        }
    });
    let mut g = c.benchmark_group("route_lookup_and_group_by_node");
    for members in [1usize, 100, 1_000] {
        g.throughput(Throughput::Elements(members as u64));
        g.bench_with_input(BenchmarkId::from_parameter(members), &members, |b, &m| {
            b.iter(|| rt.block_on(registry.lookup(&users[..m])).unwrap())
        });
    }
    g.finish();
}

fn local_delivery(c: &mut Criterion) {
    let node = support::node();
    let mut g = c.benchmark_group("local_delivery");
    for (sockets, encoding) in [
        (100usize, Encoding::Json),
        (1_000, Encoding::Json),
        (10_000, Encoding::Json),
        (1_000, Encoding::Msgpack),
    ] {
        let handles: Vec<Arc<SocketHandle>> = (0..sockets)
            .map(|i| {
                let h = Arc::new(SocketHandle::new(
                    node.hub.next_socket_id(),
                    format!("{encoding:?}-{sockets}-{i}").into(),
                    encoding,
                    0,
                ));
                node.hub.add(h.clone(), 16).unwrap();
                h
            })
            .collect();
        let envelope = Envelope::new(
            handles.iter().map(|h| h.user.to_string()).collect(),
            &support::message_frame(),
        );
        g.throughput(Throughput::Elements(sockets as u64));
        g.bench_function(BenchmarkId::new(format!("{encoding:?}"), sockets), |b| {
            b.iter(|| {
                let queued = deliver(&node, &envelope);
                assert_eq!(queued, sockets);
                // Stand in for the socket tasks taking their frames, so queues never fill.
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

/// What one socket write costs, kernel included: frames written to 100 loopback TCP connections,
/// one `write` each, or 8 queued frames in one `writev` (what a socket task does when frames
/// queue up). On loopback the sender's system call also runs the receiving side's TCP work, as it
/// does in the gateway under the load generator. Only the writes are timed; the reading ends are
/// drained between rounds.
fn socket_write(c: &mut Criterion) {
    use std::io::{IoSlice, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Instant;

    const SOCKETS: usize = 100;
    const BATCH: usize = 8;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let pairs: Vec<(TcpStream, TcpStream)> = (0..SOCKETS)
        .map(|_| {
            let writer = TcpStream::connect(addr).unwrap();
            writer.set_nodelay(true).unwrap();
            let (reader, _) = listener.accept().unwrap();
            reader.set_nonblocking(true).unwrap();
            (writer, reader)
        })
        .collect();
    let frame = wsio::server_frame(Encoding::Json, &support::message_frame());
    let drain = |pairs: &[(TcpStream, TcpStream)]| {
        let mut buf = [0u8; 64 << 10];
        for (_, r) in pairs {
            let mut r: &TcpStream = r;
            while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
        }
    };
    // Writes once to every socket per round; only the writes are timed.
    let rounds = |iters: u64, write: &dyn Fn(&TcpStream)| {
        let mut spent = Duration::ZERO;
        for _ in 0..iters {
            let started = Instant::now();
            for (w, _) in &pairs {
                write(w);
            }
            spent += started.elapsed();
            drain(&pairs);
        }
        spent
    };
    let mut g = c.benchmark_group("socket_write_loopback");
    g.throughput(Throughput::Elements(SOCKETS as u64));
    g.bench_function("one_write_per_frame", |b| {
        b.iter_custom(|iters| rounds(iters, &|mut w: &TcpStream| w.write_all(&frame).unwrap()))
    });
    g.throughput(Throughput::Elements((SOCKETS * BATCH) as u64));
    let slices: Vec<IoSlice> = (0..BATCH).map(|_| IoSlice::new(&frame)).collect();
    g.bench_function(format!("writev_{BATCH}_frames"), |b| {
        b.iter_custom(|iters| {
            rounds(iters, &|mut w: &TcpStream| {
                let n = w.write_vectored(&slices).unwrap();
                assert_eq!(
                    n,
                    frame.len() * BATCH,
                    "a short write would skew the figure"
                );
            })
        })
    });
    g.finish();
}

criterion_group!(
    name = benches;
    config = support::criterion();
    targets = encoding, route_lookup, local_delivery, socket_write
);
criterion_main!(benches);
