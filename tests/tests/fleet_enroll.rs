//! Enrollment and identities against a real `flotilla serve` process: a token works
//! once, expired and reused tokens are refused, the admin service needs the admin
//! certificate, the agent session needs the host's own certificate; refusals are
//! audited.

use flotilla_common::proto::v1 as pb;
use flotilla_coordinator::catalog::Catalog;
use flotilla_coordinator::pki;
use flotilla_tests::bins::Cmd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct Coordinator {
    child: Child,
    url: String,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(dir: &Path) -> Coordinator {
    let port = free_port();
    let child = Command::new(flotilla_tests::bins::coordinator_bin())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start flotilla serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "coordinator did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Coordinator {
        child,
        url: format!("https://127.0.0.1:{port}"),
    }
}

async fn channel(url: &str, dir: &Path, identity: Option<(String, String)>) -> Channel {
    let ca = std::fs::read_to_string(dir.join("pki/ca.pem")).unwrap();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(url.to_string())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

fn token(dir: &Path, url: &str, ttl: &str) -> String {
    let out = Cmd::coordinator()
        .args([
            "token",
            "create",
            "--labels",
            "role=web,env=prod",
            "--ttl",
            ttl,
            "--json",
        ])
        .args(["--coordinator", url, "--dir"])
        .arg(dir)
        .run();
    out.assert_success();
    let v: serde_json::Value = serde_json::from_str(&out.stdout_str()).unwrap();
    v["token"].as_str().unwrap().to_string()
}

fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

#[test]
fn enrollment_tokens_and_identities() {
    flotilla_common::storage::ensure_tls_provider();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("coord");
    Cmd::coordinator()
        .arg("init")
        .arg("--dir")
        .arg(&dir)
        .run()
        .assert_success();
    let coord = start(&dir);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tok = token(&dir, &coord.url, "10m");
    let short = token(&dir, &coord.url, "1s");

    rt.block_on(async {
        let anon = channel(&coord.url, &dir, None).await;
        let mut agent = pb::agent_service_client::AgentServiceClient::new(anon.clone());
        let (key_pem, csr) = pki::agent_key_and_csr().unwrap();
        let req = |token: &str| pb::EnrollRequest {
            token: token.to_string(),
            hostname: "Web-01.example".into(),
            labels: [("site".to_string(), "ams".to_string())].into(),
            csr_der: csr.clone(),
            agent_version: "test".into(),
            signing_public_key: String::new(),
        };
        let resp = agent.enroll(req(&tok)).await.expect("enroll").into_inner();
        assert_eq!(resp.host_id, "web-01-example");
        assert_eq!(
            pki::identity_of(&resp.certificate_der).unwrap(),
            pki::Identity::Host("web-01-example".into())
        );
        // The same token again: refused.
        let e = agent.enroll(req(&tok)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("already used"), "{}", e.message());
        // An expired token: refused.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let e = agent.enroll(req(&short)).await.unwrap_err();
        assert!(e.message().contains("expired"), "{}", e.message());
        let e = agent.enroll(req("flt1-made-up")).await.unwrap_err();
        assert!(e.message().contains("unknown"), "{}", e.message());
        // A CSR that is garbage: refused, nothing enrolled.
        let t2 = token(&dir, &coord.url, "10m");
        let mut bad = req(&t2);
        bad.csr_der = b"garbage".to_vec();
        assert_eq!(agent.enroll(bad).await.unwrap_err().code(), tonic::Code::InvalidArgument);

        // Admin service without the admin certificate: refused.
        let mut admin_anon = pb::admin_service_client::AdminServiceClient::new(anon.clone());
        let e = admin_anon.list_hosts(pb::ListHostsRequest::default()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);

        // With the host's certificate: the session works, the admin service does not.
        let host_identity = (der_to_pem(&resp.certificate_der), key_pem.clone());
        let host_ch = channel(&coord.url, &dir, Some(host_identity)).await;
        let mut admin_as_host = pb::admin_service_client::AdminServiceClient::new(host_ch.clone());
        let e = admin_as_host.list_hosts(pb::ListHostsRequest::default()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        let mut session_client = pb::agent_service_client::AgentServiceClient::new(host_ch);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(pb::AgentMessage {
            body: Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat { seq: 7, sent_at_ms: 0 })),
        })
        .await
        .unwrap();
        let outbound = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let mut inbound = session_client.session(outbound).await.expect("session").into_inner();
        let first = inbound.message().await.unwrap().unwrap();
        assert!(matches!(first.body, Some(pb::coordinator_message::Body::Welcome(w)) if w.host_id == "web-01-example"));
        let second = inbound.message().await.unwrap().unwrap();
        assert!(matches!(second.body, Some(pb::coordinator_message::Body::HeartbeatAck(a)) if a.seq == 7));
        drop(tx);

        // A session without a certificate: refused.
        let mut anon_agent = pb::agent_service_client::AgentServiceClient::new(anon);
        let e = anon_agent
            .session(futures::stream::empty::<pb::AgentMessage>())
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);

        // The admin sees exactly one host, with the token's and the agent's labels.
        let admin_ch = channel(
            &coord.url,
            &dir,
            Some((
                std::fs::read_to_string(dir.join("pki/admin.pem")).unwrap(),
                std::fs::read_to_string(dir.join("pki/admin.key")).unwrap(),
            )),
        )
        .await;
        let mut admin = pb::admin_service_client::AdminServiceClient::new(admin_ch);
        let hosts = admin.list_hosts(pb::ListHostsRequest::default()).await.unwrap().into_inner().hosts;
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].labels.get("role").map(String::as_str), Some("web"));
        assert_eq!(hosts[0].labels.get("site").map(String::as_str), Some("ams"));
    });

    // A client certificate from another CA does not get through TLS.
    let other = tmp.path().join("other");
    Cmd::coordinator()
        .arg("init")
        .arg("--dir")
        .arg(&other)
        .run()
        .assert_success();
    let foreign = (
        std::fs::read_to_string(other.join("pki/admin.pem")).unwrap(),
        std::fs::read_to_string(other.join("pki/admin.key")).unwrap(),
    );
    rt.block_on(async {
        let ch = channel(&coord.url, &dir, Some(foreign)).await;
        let mut admin = pb::admin_service_client::AdminServiceClient::new(ch);
        assert!(
            admin
                .list_hosts(pb::ListHostsRequest::default())
                .await
                .is_err()
        );
    });

    // A certificate naming an enrolled host that is not the one issued to it (a twin
    // signed by the same CA, e.g. from a stolen CA key or a replayed CSR): refused.
    let (twin_key, twin_csr) = pki::agent_key_and_csr().unwrap();
    let twin_cert = pki::Authority::load(&dir.join("pki"))
        .unwrap()
        .sign_agent(&twin_csr, "web-01-example")
        .unwrap();
    rt.block_on(async {
        let ch = channel(&coord.url, &dir, Some((der_to_pem(&twin_cert), twin_key))).await;
        let mut agent = pb::agent_service_client::AgentServiceClient::new(ch);
        let e = agent
            .session(futures::stream::pending::<pb::AgentMessage>())
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(
            e.message().contains("not the one issued"),
            "{}",
            e.message()
        );
    });

    // The refusals are in the audit log.
    drop(coord);
    let catalog = Catalog::open(&dir.join("catalog")).unwrap();
    let log: Vec<String> = catalog
        .audit_log()
        .unwrap()
        .into_iter()
        .map(|e| format!("{} {} {}", e.actor, e.action, e.outcome))
        .collect();
    for needle in [
        "token already used",
        "token expired",
        "unknown token",
        "no admin certificate",
        "not an admin certificate",
        "no host certificate",
        "certificate not the enrolled one",
        "enrolled as web-01-example",
    ] {
        assert!(log.iter().any(|l| l.contains(needle)), "{needle}: {log:#?}");
    }
}
