//! What only the Swift client does, against the real Swift: re-authentication when a
//! token stops working, nested SLO manifests, Keystone v3, and clear credential errors.

use bytes::Bytes;
use flotilla_common::storage::swift::{SwiftAuth, SwiftConfig, SwiftStore};
use flotilla_common::storage::{RetryPolicy, Secret};
use flotilla_tests::stores::unique_container;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is unset: run the tests with `bash deploy/test.sh` (starts Swift and \
             Keystone), or `SWIFT_KEYSTONE=1 bash deploy/services/up.sh && . deploy/services/env.sh`"
        )
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn v1_store(container: &str) -> SwiftStore {
    SwiftStore::new(SwiftConfig::from_env(container).expect("Swift settings")).expect("store")
}

async fn roundtrip(store: &SwiftStore) {
    store.ensure_container().await.expect("create container");
    let p = Path::from("dir/x");
    store
        .put(&p, Bytes::from_static(b"hello").into())
        .await
        .unwrap();
    assert_eq!(store.get(&p).await.unwrap().bytes().await.unwrap(), "hello");
}

#[test]
fn reauthenticates_when_the_token_is_refused() {
    env("SWIFT_AUTHURL");
    let rt = runtime();
    let store = v1_store(&unique_container("reauth"));
    rt.block_on(async {
        roundtrip(&store).await;
        // The token dies (expiry, revocation): the next requests log in again.
        store.poison_token_for_tests();
        let p = Path::from("after-reauth");
        store
            .put(&p, Bytes::from_static(b"still works").into())
            .await
            .expect("put after re-auth");
        assert_eq!(
            store.get(&p).await.unwrap().bytes().await.unwrap(),
            "still works"
        );
        store.delete_container().await.unwrap();
    });
}

#[test]
fn nested_manifests_when_there_are_more_segments_than_one_manifest_holds() {
    env("SWIFT_AUTHURL");
    let rt = runtime();
    let store = v1_store(&unique_container("nested")).with_max_manifest_segments(3);
    rt.block_on(async {
        store.ensure_container().await.unwrap();
        let p = Path::from("host/big.vol");
        let part = 1 << 20;
        let body: Vec<u8> = (0..10 * part + 123).map(|i| (i * 7 % 251) as u8).collect();
        let mut w =
            WriteMultipart::new_with_chunk_size(store.put_multipart(&p).await.unwrap(), part);
        w.write(&body);
        w.finish().await.expect("complete with nested manifests");
        let got = store.get(&p).await.unwrap();
        assert_eq!(got.meta.size, body.len() as u64);
        assert!(got.bytes().await.unwrap() == body, "content differs");
        let r = store
            .get_range(&p, (3 * part as u64 - 5)..(3 * part as u64 + 5))
            .await
            .unwrap();
        assert_eq!(&r[..], &body[3 * part - 5..3 * part + 5]);
        let names: Vec<String> = store
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(
            names,
            vec!["host/big.vol"],
            "segments and sub-manifests are hidden"
        );
        // Deleting the object deletes its segments and sub-manifests too.
        store.delete(&p).await.unwrap();
        assert!(store.head(&p).await.is_err());
        store.delete_container().await.unwrap();
    });
}

#[test]
fn keystone_v3_password_auth() {
    let auth = SwiftAuth::V3 {
        auth_url: env("SWIFT_KEYSTONE_URL"),
        user: env("SWIFT_KEYSTONE_USER"),
        password: Secret::new(env("SWIFT_KEYSTONE_PASSWORD")),
        user_domain: env("SWIFT_KEYSTONE_DOMAIN"),
        project: env("SWIFT_KEYSTONE_PROJECT"),
        project_domain: env("SWIFT_KEYSTONE_DOMAIN"),
        region: None,
        interface: "public".into(),
    };
    let store = SwiftStore::new(SwiftConfig {
        auth,
        container: unique_container("v3"),
        storage_url_override: None,
        retry: RetryPolicy::default(),
    })
    .unwrap();
    let rt = runtime();
    rt.block_on(async {
        roundtrip(&store).await;
        store.poison_token_for_tests();
        roundtrip(&store).await;
        store.delete_container().await.unwrap();
    });
}

#[test]
fn wrong_password_is_a_credentials_error_naming_the_destination() {
    let auth = SwiftAuth::V1 {
        auth_url: env("SWIFT_AUTHURL"),
        user: env("SWIFT_USERNAME"),
        key: Secret::new("not-the-password"),
    };
    let container = unique_container("badpw");
    let store = SwiftStore::new(SwiftConfig {
        auth,
        container: container.clone(),
        storage_url_override: None,
        retry: RetryPolicy::default(),
    })
    .unwrap();
    let rt = runtime();
    let e = rt
        .block_on(store.get(&Path::from("x")))
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(
            e,
            object_store::Error::Unauthenticated { .. }
                | object_store::Error::PermissionDenied { .. }
        ),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains(&format!("swift://{container}")), "{msg}");
    assert!(
        !msg.contains("not-the-password"),
        "secret in message: {msg}"
    );
}
