//! `crds/tenantpool.yaml` (what the chart and `kubectl apply` use) must be exactly
//! what `teresa-operator crd` prints from the Rust types.

#[test]
fn committed_crd_matches_the_rust_types() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/tenantpool.yaml"
    ))
    .expect("crds/tenantpool.yaml exists");
    let generated = teresa_operator::crd::crd_yaml().expect("CRD renders");
    assert!(
        committed == generated,
        "crds/tenantpool.yaml is stale: run `cargo run -p teresa-operator -- crd > crds/tenantpool.yaml`"
    );
}

#[test]
fn crd_subcommand_prints_the_committed_file() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_teresa-operator"))
        .arg("crd")
        .output()
        .expect("teresa-operator runs");
    assert!(output.status.success());
    let committed = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/tenantpool.yaml"
    ))
    .unwrap();
    assert!(
        output.stdout == committed,
        "`teresa-operator crd` differs from crds/tenantpool.yaml"
    );
}
