//! One conformance suite for every storage backend: the same operations, the same
//! expectations, against a local directory, Azurite and a real Swift.

use bytes::Bytes;
use flotilla_tests::stores::{Service, TestStore};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    WriteMultipart,
};
use std::sync::Arc;

fn data(len: usize, seed: u8) -> Bytes {
    // Deterministic, not compressible by accident, different per seed.
    let mut x = 0x9e3779b9u32 ^ seed as u32;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

async fn names(store: &Arc<dyn ObjectStore>, prefix: Option<&str>) -> Vec<String> {
    let prefix = prefix.map(Path::from);
    let mut v: Vec<String> = store
        .list(prefix.as_ref())
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .expect("list");
    v.sort();
    v
}

async fn put_get_head(store: Arc<dyn ObjectStore>) {
    let p = Path::from("dir/object.bin");
    let body = data(100_000, 1);
    store.put(&p, body.clone().into()).await.expect("put");
    let got = store.get(&p).await.expect("get");
    assert_eq!(got.meta.size, body.len() as u64);
    assert_eq!(got.bytes().await.expect("body"), body);
    let head = store.head(&p).await.expect("head");
    assert_eq!(head.size, body.len() as u64);
    assert_eq!(head.location, p);
    let age = chrono::Utc::now() - head.last_modified;
    assert!(
        age.num_seconds().abs() < 300,
        "last_modified {}",
        head.last_modified
    );
    // Empty objects are objects too.
    let e = Path::from("empty");
    store.put(&e, PutPayload::new()).await.expect("put empty");
    assert_eq!(store.get(&e).await.unwrap().bytes().await.unwrap().len(), 0);
    // Missing objects are NotFound, for get and head alike.
    for r in [
        store.get(&Path::from("missing")).await.map(|_| ()),
        store.head(&Path::from("missing")).await.map(|_| ()),
    ] {
        assert!(
            matches!(r, Err(object_store::Error::NotFound { .. })),
            "{r:?}"
        );
    }
}

async fn ranged_get(store: Arc<dyn ObjectStore>) {
    let p = Path::from("ranged");
    let body = data(1 << 20, 2);
    store.put(&p, body.clone().into()).await.unwrap();
    let cases: Vec<(GetRange, std::ops::Range<usize>)> = vec![
        (GetRange::Bounded(0..1), 0..1),
        (GetRange::Bounded(1000..70_000), 1000..70_000),
        (GetRange::Offset(1_000_000), 1_000_000..body.len()),
        // (Suffix ranges are not used: Azure has none.)
        // Past the end: clamped to the object.
        (
            GetRange::Bounded(1_048_000..2_000_000),
            1_048_000..body.len(),
        ),
    ];
    for (range, expect) in cases {
        let opts = GetOptions {
            range: Some(range.clone()),
            ..Default::default()
        };
        let got = store
            .get_opts(&p, opts)
            .await
            .unwrap_or_else(|e| panic!("{range:?}: {e}"));
        assert_eq!(
            got.meta.size,
            body.len() as u64,
            "{range:?}: size is the object's"
        );
        assert_eq!(
            got.range,
            expect.start as u64..expect.end as u64,
            "{range:?}"
        );
        assert_eq!(got.bytes().await.unwrap(), body.slice(expect), "{range:?}");
    }
    let r = store.get_range(&p, 2_000_000..2_000_010).await;
    assert!(r.is_err(), "a range starting past the end is an error");
    // Conditional reads: ETag match / mismatch.
    let meta = store.head(&p).await.unwrap();
    if let Some(etag) = meta.e_tag.clone() {
        let ok = GetOptions {
            if_match: Some(etag.clone()),
            ..Default::default()
        };
        store
            .get_opts(&p, ok)
            .await
            .expect("if-match with the current etag");
        let stale = GetOptions {
            if_match: Some("\"0000\"".into()),
            ..Default::default()
        };
        let r = store.get_opts(&p, stale).await;
        assert!(
            matches!(r, Err(object_store::Error::Precondition { .. })),
            "{r:?}"
        );
    }
}

async fn list_prefix_and_pages(store: Arc<dyn ObjectStore>) {
    // More objects than one listing page of the Swift client under test (7).
    let mut expect_a = vec![];
    for i in 0..23 {
        let name = format!("a/{i:03}");
        store
            .put(
                &Path::from(name.as_str()),
                Bytes::from(vec![i as u8; i]).into(),
            )
            .await
            .unwrap();
        expect_a.push(name);
    }
    for name in ["b/1", "b/sub/2", "ab", "top"] {
        store
            .put(&Path::from(name), Bytes::from_static(b"x").into())
            .await
            .unwrap();
    }
    assert_eq!(
        names(&store, Some("a")).await,
        expect_a,
        "prefix is a directory, not a string prefix"
    );
    assert_eq!(names(&store, Some("b")).await, vec!["b/1", "b/sub/2"]);
    assert_eq!(names(&store, Some("nothing")).await, Vec::<String>::new());
    let all = names(&store, None).await;
    assert_eq!(all.len(), 23 + 4, "{all:?}");
    // Sizes come with the listing.
    let sized: Vec<_> = store
        .list(Some(&Path::from("a")))
        .try_collect()
        .await
        .unwrap();
    for m in sized {
        let i: u64 = m.location.filename().unwrap().parse().unwrap();
        assert_eq!(m.size, i);
    }
    let d = store.list_with_delimiter(None).await.unwrap();
    let mut objs: Vec<String> = d.objects.iter().map(|m| m.location.to_string()).collect();
    objs.sort();
    let mut dirs: Vec<String> = d.common_prefixes.iter().map(|p| p.to_string()).collect();
    dirs.sort();
    assert_eq!(objs, vec!["ab", "top"]);
    assert_eq!(dirs, vec!["a", "b"]);
    let d = store
        .list_with_delimiter(Some(&Path::from("b")))
        .await
        .unwrap();
    assert_eq!(d.objects.len(), 1);
    assert_eq!(d.common_prefixes, vec![Path::from("b/sub")]);
}

async fn delete(store: Arc<dyn ObjectStore>) {
    let p = Path::from("to-delete");
    store
        .put(&p, Bytes::from_static(b"bye").into())
        .await
        .unwrap();
    store.delete(&p).await.expect("delete");
    let r = store.get(&p).await;
    assert!(
        matches!(r, Err(object_store::Error::NotFound { .. })),
        "{r:?}"
    );
    assert_eq!(names(&store, None).await, Vec::<String>::new());
}

async fn large_multipart(store: Arc<dyn ObjectStore>) {
    let p = Path::from("big/volume.gpg");
    let body = data(21 << 20, 3);
    let upload = store.put_multipart(&p).await.expect("start multipart");
    let mut w = WriteMultipart::new_with_chunk_size(upload, 5 << 20);
    for chunk in body.chunks(1 << 20) {
        w.wait_for_capacity(3).await.unwrap();
        w.write(chunk);
    }
    w.finish().await.expect("complete multipart");
    let got = store.get(&p).await.unwrap();
    assert_eq!(got.meta.size, body.len() as u64);
    let got = got.bytes().await.unwrap();
    assert!(
        got == body,
        "multipart object differs from what was written"
    );
    // Ranged reads across part boundaries.
    let r = store
        .get_range(&p, (5 << 20) - 10..(5 << 20) + 10)
        .await
        .unwrap();
    assert_eq!(r, body.slice((5 << 20) - 10..(5 << 20) + 10));
    // The listing shows one object: no parts or segments.
    assert_eq!(names(&store, None).await, vec!["big/volume.gpg"]);
    // An aborted upload leaves nothing visible.
    let q = Path::from("big/aborted.gpg");
    let mut upload = store.put_multipart(&q).await.unwrap();
    upload.put_part(data(5 << 20, 4).into()).await.unwrap();
    upload.abort().await.expect("abort");
    assert!(store.head(&q).await.is_err());
    assert_eq!(names(&store, None).await, vec!["big/volume.gpg"]);
    // Deleting the large object removes it entirely.
    store.delete(&p).await.unwrap();
    assert!(store.head(&p).await.is_err());
}

async fn overwrite_rules(store: Arc<dyn ObjectStore>) {
    let p = Path::from("manifest");
    store
        .put(&p, Bytes::from_static(b"one").into())
        .await
        .unwrap();
    // Overwrite (the default) replaces.
    store
        .put(&p, Bytes::from_static(b"two").into())
        .await
        .unwrap();
    assert_eq!(store.get(&p).await.unwrap().bytes().await.unwrap(), "two");
    // Create refuses an existing object and leaves it as it was.
    let create = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let r = store
        .put_opts(&p, Bytes::from_static(b"three").into(), create.clone())
        .await;
    assert!(
        matches!(r, Err(object_store::Error::AlreadyExists { .. })),
        "{r:?}"
    );
    assert_eq!(store.get(&p).await.unwrap().bytes().await.unwrap(), "two");
    // Create of a new object works.
    store
        .put_opts(
            &Path::from("fresh"),
            Bytes::from_static(b"new").into(),
            create,
        )
        .await
        .expect("create new object");
    assert_eq!(
        store
            .get(&Path::from("fresh"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        "new"
    );
}

async fn names_with_special_characters(store: Arc<dyn ObjectStore>) {
    // Duplicity's object names have ':' and '.', and users' prefixes may have spaces.
    for name in [
        "duplicity-full.20261122T101500Z.vol1.difftar.gpg",
        "with space/and+plus",
        "ünïcode/名前",
    ] {
        let p = Path::from(name);
        store
            .put(&p, Bytes::from(name.as_bytes().to_vec()).into())
            .await
            .unwrap();
        assert_eq!(
            store.get(&p).await.unwrap().bytes().await.unwrap(),
            name.as_bytes()
        );
    }
    let all = names(&store, None).await;
    for name in ["with space/and+plus", "ünïcode/名前"] {
        assert!(
            all.contains(&Path::from(name).to_string()),
            "{name}: {all:?}"
        );
    }
}

macro_rules! conformance {
    ($($service:ident => $variant:expr),* $(,)?) => {
        $(
            mod $service {
                use super::*;
                fn run<F, Fut>(case: &str, f: F)
                where
                    F: FnOnce(Arc<dyn ObjectStore>) -> Fut,
                    Fut: std::future::Future<Output = ()>,
                {
                    let ts = TestStore::new($variant, case);
                    let store = ts.open();
                    ts.rt.block_on(f(store));
                }
                #[test] fn put_get_head() { run("pgh", super::put_get_head) }
                #[test] fn ranged_get() { run("range", super::ranged_get) }
                #[test] fn list_prefix_and_pages() { run("list", super::list_prefix_and_pages) }
                #[test] fn delete() { run("delete", super::delete) }
                #[test] fn large_multipart() { run("multipart", super::large_multipart) }
                #[test] fn overwrite_rules() { run("overwrite", super::overwrite_rules) }
                #[test] fn names_with_special_characters() { run("names", super::names_with_special_characters) }
            }
        )*
    };
}

conformance! {
    file => Service::File,
    azurite => Service::Azurite,
    swift => Service::Swift,
}
