use super::override_args;

#[test]
fn overrides_replace_the_charts_flags_in_place_and_missing_ones_are_appended() {
    let chart = ["run", "--admin-port=50053", "--lease-name=teresa-operator"].map(String::from);
    let args = override_args(
        &chart,
        &[
            ("--admin-port", "41000".to_string()),
            ("--deletion-timeout-seconds", "10".to_string()),
        ],
    );
    assert_eq!(
        args,
        [
            "run",
            "--admin-port=41000",
            "--lease-name=teresa-operator",
            "--deletion-timeout-seconds=10"
        ]
    );
}
