//! A standalone server that cannot start says why: a second server on a
//! data directory in use is refused before it opens the database (and the
//! directory is free again once the first stops), and a promotion that
//! fails at start names its cause rather than the database.

use sundial_server::config::Settings;
use sundial_server::server;

fn settings(dir: &std::path::Path) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        ..Settings::default()
    }
}

const KEY: &str = "test-admin-key-0123456789";

#[tokio::test]
async fn a_second_server_on_one_data_directory_is_refused_until_the_first_stops() {
    let dir = tempfile::tempdir().unwrap();
    let first = server::start(settings(dir.path()), Some(KEY.into()))
        .await
        .unwrap();
    let err = server::start(settings(dir.path()), Some(KEY.into()))
        .await
        .err()
        .expect("the second server is refused");
    let text = format!("{err:#}");
    assert!(
        text.contains(&format!(
            "another sundial-server (pid {}) is using the data directory {}",
            std::process::id(),
            dir.path().display()
        )),
        "{text}"
    );
    first.stop().await.unwrap();
    let again = server::start(settings(dir.path()), Some(KEY.into()))
        .await
        .expect("the directory is free once the first server stopped");
    again.stop().await.unwrap();
}

#[tokio::test]
async fn a_failed_first_promotion_names_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let err = server::start(settings(dir.path()), Some("short".into()))
        .await
        .err()
        .expect("a short admin key is refused");
    let text = format!("{err:#}");
    assert!(text.contains("becoming primary over"), "{text}");
    assert!(
        text.contains("SUNDIAL_ADMIN_KEY is shorter than 16 characters"),
        "{text}"
    );
    // Nothing holds the directory after the refusal.
    let ok = server::start(settings(dir.path()), Some(KEY.into()))
        .await
        .unwrap();
    ok.stop().await.unwrap();
}
