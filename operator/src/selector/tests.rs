use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn expr(key: &str, operator: &str, values: &[&str]) -> LabelSelector {
    LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }]),
    }
}

#[test]
fn empty_selector_selects_everything() {
    assert!(matches(&LabelSelector::default(), &labels(&[])).unwrap());
    assert!(is_everything(None));
    assert!(is_everything(Some(&LabelSelector::default())));
}

#[test]
fn match_labels_require_every_pair() {
    let s = parse("app=pooler,tier=gold").unwrap();
    assert!(
        matches(
            &s,
            &labels(&[("app", "pooler"), ("tier", "gold"), ("x", "y")])
        )
        .unwrap()
    );
    assert!(!matches(&s, &labels(&[("app", "pooler")])).unwrap());
}

#[test]
fn expressions_follow_kubernetes_semantics() {
    let l = labels(&[("tier", "gold")]);
    assert!(matches(&expr("tier", "In", &["gold", "silver"]), &l).unwrap());
    assert!(!matches(&expr("tier", "NotIn", &["gold"]), &l).unwrap());
    assert!(matches(&expr("zone", "NotIn", &["a"]), &l).unwrap());
    assert!(matches(&expr("tier", "Exists", &[]), &l).unwrap());
    assert!(matches(&expr("zone", "DoesNotExist", &[]), &l).unwrap());
}

#[test]
fn malformed_requirements_are_errors() {
    assert!(matches!(
        matches(&expr("tier", "Like", &["g"]), &labels(&[])),
        Err(SelectorError::UnknownOperator { .. })
    ));
    assert!(matches!(
        matches(&expr("tier", "In", &[]), &labels(&[])),
        Err(SelectorError::BadValues { .. })
    ));
}

#[test]
fn flag_syntax_parses_and_round_trips_to_a_query() {
    let s = parse("app.kubernetes.io/name=teresa-pooler, tier!=bronze, canary, !legacy").unwrap();
    assert_eq!(
        to_query(&s),
        "app.kubernetes.io/name=teresa-pooler,tier notin (bronze),canary,!legacy"
    );
    assert!(parse("=x").is_err());
}
