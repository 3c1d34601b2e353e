//! Raw quinn, the reference for the QUIC transport: a server and a client endpoint on a
//! current-thread tokio runtime, one bidirectional stream. Prints `latency 8 <us> us`
//! (one-way, half a round trip) and `stream <bytes> <MB/s> MB/s`.
//! Usage: quinn_raw [MiB]                        both in one process, on loopback
//!        quinn_raw server ADDR:PORT CERTFILE    (e.g. in one network namespace)
//!        quinn_raw client ADDR:PORT CERTFILE [MiB]   (in another)

use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

fn client_config(cert: Vec<u8>) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(cert)).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client).expect("quic client"),
    ))
}

/// A server configuration, a client configuration trusting it, and its certificate.
fn configs_with_cert() -> (quinn::ServerConfig, quinn::ClientConfig, Vec<u8>) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let der = CertificateDer::from(cert.der().to_vec());
    let pk = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], pk)
        .expect("server config");
    (
        quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(server).expect("quic server"),
        )),
        client_config(der.to_vec()),
        der.to_vec(),
    )
}

/// Echo 8-byte pings, then swallow the bulk stream and answer with one byte.
async fn serve(server: quinn::Endpoint) {
    let conn = server
        .accept()
        .await
        .expect("incoming")
        .await
        .expect("handshake");
    let (mut tx, mut rx) = conn.accept_bi().await.expect("stream");
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
}

/// Ping-pong 8 bytes, then stream `mib` MiB; print both figures.
async fn measure(cc: quinn::ClientConfig, addr: std::net::SocketAddr, mib: usize) {
    let bind = if addr.ip().is_loopback() {
        "127.0.0.1:0"
    } else {
        "0.0.0.0:0"
    };
    let mut client = quinn::Endpoint::client(bind.parse().unwrap()).expect("client");
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
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> Option<T> {
    args.get(i).and_then(|a| a.parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    match args.get(1).map(String::as_str) {
        // Two processes (e.g. in two network namespaces); the server's certificate goes
        // through a file both can read.
        Some("server") => {
            let addr: std::net::SocketAddr = arg(&args, 2).expect("server ADDR:PORT CERTFILE");
            let (sc, _, cert) = configs_with_cert();
            std::fs::write(args.get(3).expect("server ADDR:PORT CERTFILE"), cert)
                .expect("writing the certificate");
            rt.block_on(
                async move { serve(quinn::Endpoint::server(sc, addr).expect("server")).await },
            );
        }
        Some("client") => {
            let addr: std::net::SocketAddr =
                arg(&args, 2).expect("client ADDR:PORT CERTFILE [MiB]");
            let cert = std::fs::read(args.get(3).expect("client ADDR:PORT CERTFILE"))
                .expect("reading the certificate");
            let mib = arg(&args, 4).unwrap_or(1024);
            rt.block_on(measure(client_config(cert), addr, mib));
        }
        _ => {
            let mib = arg(&args, 1).unwrap_or(1024);
            rt.block_on(async move {
                let (sc, cc, _) = configs_with_cert();
                let server =
                    quinn::Endpoint::server(sc, "127.0.0.1:0".parse().unwrap()).expect("server");
                let addr = server.local_addr().expect("addr");
                tokio::spawn(serve(server));
                measure(cc, addr, mib).await;
            });
        }
    }
}
