//! Raw quinn on loopback, the reference for the QUIC transport: one process, a server and a
//! client endpoint on a current-thread tokio runtime, one bidirectional stream.
//! Prints `latency 8 <us> us` (one-way, half a round trip) and `stream <bytes> <MB/s> MB/s`.
//! Usage: quinn_raw [MiB to stream, default 1024]

use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

fn configs() -> (quinn::ServerConfig, quinn::ClientConfig) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let der = CertificateDer::from(cert.der().to_vec());
    let pk = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone()).expect("root");
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(vec![der], pk)
        .expect("server config");
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (
        quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(server).expect("quic server"),
        )),
        quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(client).expect("quic client"),
        )),
    )
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1024);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async move {
        let (sc, cc) = configs();
        let server = quinn::Endpoint::server(sc, "127.0.0.1:0".parse().unwrap()).expect("server");
        let addr = server.local_addr().expect("addr");
        tokio::spawn(async move {
            let conn = server
                .accept()
                .await
                .expect("incoming")
                .await
                .expect("handshake");
            let (mut tx, mut rx) = conn.accept_bi().await.expect("stream");
            // Echo 8-byte pings, then swallow the bulk stream and answer with one byte.
            let mut b = [0u8; 8];
            loop {
                rx.read_exact(&mut b).await.expect("ping");
                if b == [0xff; 8] {
                    break;
                }
                tx.write_all(&b).await.expect("pong");
            }
            let mut buf = vec![0u8; 1 << 20];
            while let Some(n) = rx.read(&mut buf).await.expect("bulk") {
                let _ = n;
            }
            tx.write_all(&[1]).await.expect("done");
            tx.finish().expect("finish");
            let _ = tx.stopped().await;
        });
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("client");
        client.set_default_client_config(cc);
        let conn = client
            .connect(addr, "localhost")
            .expect("connect")
            .await
            .expect("handshake");
        let (mut tx, mut rx) = conn.open_bi().await.expect("stream");
        let iters = 20000;
        let mut b = [0u8; 8];
        let mut t0 = Instant::now();
        for i in 0..iters + 1000 {
            if i == 1000 {
                t0 = Instant::now();
            }
            tx.write_all(&[1u8; 8]).await.expect("ping");
            rx.read_exact(&mut b).await.expect("pong");
        }
        let us = t0.elapsed().as_secs_f64() * 1e6 / (2.0 * iters as f64);
        println!("latency 8 {us:.3} us");
        tx.write_all(&[0xff; 8]).await.expect("end pings");
        let chunk = vec![7u8; 1 << 20];
        let t0 = Instant::now();
        for _ in 0..mib {
            tx.write_all(&chunk).await.expect("bulk");
        }
        tx.finish().expect("finish");
        let mut one = [0u8; 1];
        rx.read_exact(&mut one).await.expect("done");
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "stream {} {:.1} MB/s",
            mib << 20,
            (mib << 20) as f64 / secs / 1e6
        );
    });
}
