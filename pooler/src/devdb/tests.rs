use std::time::Duration;

use super::*;

async fn connect_as(
    pg: &ThrowawayPostgres,
    dbname: &str,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = pg.config(dbname);
    config.user(user).password(password);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

#[tokio::test]
async fn started_cluster_accepts_the_superuser_password_and_rejects_others() {
    let pg = ThrowawayPostgres::start().await.unwrap();

    let client = pg.client("postgres").await.unwrap();
    let row = client
        .query_one(
            "SELECT current_user::text, current_setting('server_version_num')::int, \
             current_setting('password_encryption'), inet_server_addr()::text",
            &[],
        )
        .await
        .unwrap();

    assert_eq!(row.get::<_, String>(0), "postgres");
    let version: i32 = row.get(1);
    assert!(
        (150_000..160_000).contains(&version),
        "PostgreSQL 15, got {version}"
    );
    assert_eq!(row.get::<_, String>(2), "scram-sha-256");
    assert_eq!(row.get::<_, String>(3), "127.0.0.1/32");
    assert_eq!(pg.host(), "127.0.0.1");
    assert_eq!(pg.superuser(), "postgres");
    assert!(pg.superuser_password().len() >= 32);
    let wrong = connect_as(&pg, "postgres", "postgres", "not-the-password").await;
    assert!(wrong.is_err(), "a wrong password must be refused");
}

#[tokio::test]
async fn created_database_is_owned_by_a_role_that_logs_in_with_its_password() {
    let pg = ThrowawayPostgres::start().await.unwrap();
    let password = r#"it's a "quoted" \ password"#;

    pg.create_database("billing app", "billing owner", password)
        .await
        .unwrap();

    let client = connect_as(&pg, "billing app", "billing owner", password)
        .await
        .unwrap();
    client
        .batch_execute("CREATE TABLE invoices (id int); INSERT INTO invoices VALUES (1)")
        .await
        .unwrap();
    let row = client
        .query_one(
            "SELECT current_user::text, current_database()::text, \
             (SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "billing owner");
    assert_eq!(row.get::<_, String>(1), "billing app");
    assert_eq!(row.get::<_, String>(2), "billing owner");
    assert!(
        connect_as(&pg, "billing app", "billing owner", "wrong")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn creating_a_database_again_is_idempotent_and_resets_the_password() {
    let pg = ThrowawayPostgres::start().await.unwrap();
    pg.create_database("app", "app", "first").await.unwrap();

    pg.create_database("app", "app", "second").await.unwrap();

    assert!(connect_as(&pg, "app", "app", "second").await.is_ok());
    assert!(connect_as(&pg, "app", "app", "first").await.is_err());
}

#[tokio::test]
async fn data_survives_stop_fast_and_start_again_on_the_same_port() {
    let pg = ThrowawayPostgres::start().await.unwrap();
    let port = pg.port();
    let client = pg.client("postgres").await.unwrap();
    client
        .batch_execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')")
        .await
        .unwrap();

    pg.stop_fast().await.unwrap();

    assert!(client.is_closed() || client.simple_query("SELECT 1").await.is_err());
    assert!(
        pg.client("postgres").await.is_err(),
        "stopped server refuses connections"
    );

    pg.start_again().await.unwrap();

    assert_eq!(pg.port(), port);
    let client = pg.client("postgres").await.unwrap();
    let row = client.query_one("SELECT v FROM kept", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "still here");
}

#[tokio::test]
async fn drop_stops_the_server_and_removes_the_data_dir() {
    let pg = ThrowawayPostgres::start().await.unwrap();
    let data_dir = pg.data_dir().to_path_buf();
    let config = pg.config("postgres");
    assert!(data_dir.join("PG_VERSION").is_file());

    drop(pg);

    assert!(!data_dir.exists(), "{} should be gone", data_dir.display());
    let connect = tokio::time::timeout(
        Duration::from_secs(10),
        config.connect(tokio_postgres::NoTls),
    )
    .await
    .expect("connect attempt finishes");
    assert!(connect.is_err(), "dropped server refuses connections");
}

#[tokio::test]
async fn shutdown_stops_the_server_and_removes_the_data_dir() {
    let pg = ThrowawayPostgres::start().await.unwrap();
    let data_dir = pg.data_dir().to_path_buf();
    let config = pg.config("postgres");

    pg.shutdown().await.unwrap();

    assert!(!data_dir.exists());
    assert!(config.connect(tokio_postgres::NoTls).await.is_err());
}

#[tokio::test]
async fn two_clusters_run_side_by_side_on_different_ports() {
    let (a, b) = tokio::join!(ThrowawayPostgres::start(), ThrowawayPostgres::start());
    let (a, b) = (a.unwrap(), b.unwrap());

    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());
    assert_ne!(a.superuser_password(), b.superuser_password());
    a.client("postgres").await.unwrap();
    b.client("postgres").await.unwrap();
}

#[tokio::test]
async fn errors_say_what_failed_without_the_password() {
    let pg = ThrowawayPostgres::start().await.unwrap();
    let role_password = "role-secret-4711";

    let connect = pg.client("no_such_database").await.unwrap_err();
    let create = pg
        .create_database("app", "", role_password)
        .await
        .unwrap_err();

    let connect = format!("{connect} {connect:?}");
    assert!(connect.contains(&pg.port().to_string()), "{connect}");
    assert!(!connect.contains(pg.superuser_password()), "{connect}");
    let create = format!("{create} {create:?}");
    assert!(create.contains("role"), "{create}");
    assert!(!create.contains(role_password), "{create}");
    assert!(!create.contains(pg.superuser_password()), "{create}");
}

#[tokio::test]
async fn debug_output_hides_the_password() {
    let pg = ThrowawayPostgres::start().await.unwrap();

    let debug = format!("{pg:?}");

    assert!(!debug.contains(pg.superuser_password()), "{debug}");
    assert!(debug.contains(&pg.port().to_string()));
}

#[test]
fn a_missing_binary_names_the_path_and_the_package_to_install() {
    let error = check_binaries(Path::new("/nonexistent/pg/bin")).unwrap_err();

    let message = error.to_string();
    assert!(message.contains("/nonexistent/pg/bin/initdb"), "{message}");
    assert!(message.contains("postgresql-15"), "{message}");
    assert!(message.contains(PG_BIN_ENV), "{message}");
}

#[test]
fn postgres_user_is_read_from_passwd_lines() {
    let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                  postgresql:x:7:7::/:/bin/false\n\
                  postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n";

    assert_eq!(
        os_user_from_passwd(passwd, "postgres"),
        Some(OsUser { uid: 101, gid: 104 })
    );
    assert_eq!(os_user_from_passwd(passwd, "nobody"), None);
}

#[test]
fn effective_uid_is_the_second_field_of_the_uid_line() {
    let status = "Name:\tcargo\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";

    assert_eq!(effective_uid_from_proc_status(status), Some(0));
    assert_eq!(effective_uid_from_proc_status("Name:\tx\n"), None);
}

#[test]
fn quoting_keeps_identifiers_literals_and_shell_words_intact() {
    assert_eq!(quote_identifier(r#"a"b"#), r#""a""b""#);
    assert_eq!(quote_literal("it's"), "'it''s'");
    assert_eq!(shell_quote("/tmp/o'k dir"), r"'/tmp/o'\''k dir'");
}
