//! Kubernetes label selectors, evaluated against pod labels the way the API server
//! does, so that the operator picks the same pooler pods `kubectl get -l` would.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A selector that cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// An operator other than In, NotIn, Exists, DoesNotExist.
    #[error(
        "label selector operator {operator:?} on key {key:?} is not one of In, NotIn, Exists, DoesNotExist"
    )]
    UnknownOperator { key: String, operator: String },
    /// In or NotIn without values, or Exists/DoesNotExist with values.
    #[error("label selector requirement on key {key:?}: {problem}")]
    BadValues { key: String, problem: &'static str },
    /// A `key=value,key2!=value` string that does not parse.
    #[error("label selector {0:?} is not of the form key=value,key!=value,key")]
    Unparsable(String),
}

impl SelectorError {
    /// Short label for metrics and condition reasons.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SelectorError::UnknownOperator { .. } => "unknown_operator",
            SelectorError::BadValues { .. } => "bad_values",
            SelectorError::Unparsable(_) => "unparsable",
        }
    }
}

/// Whether `selector` selects an object with `labels`. An empty selector selects
/// everything, as in Kubernetes.
pub fn matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, SelectorError> {
    let mut all = true;
    for (key, value) in selector.match_labels.iter().flatten() {
        all &= labels.get(key) == Some(value);
    }
    for requirement in selector.match_expressions.iter().flatten() {
        let key = &requirement.key;
        let values = requirement.values.as_deref().unwrap_or_default();
        let present = labels.get(key);
        let ok = match requirement.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(SelectorError::BadValues {
                    key: key.clone(),
                    problem: "In and NotIn need at least one value",
                });
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(SelectorError::BadValues {
                    key: key.clone(),
                    problem: "Exists and DoesNotExist take no values",
                });
            }
            "In" => present.is_some_and(|v| values.contains(v)),
            "NotIn" => present.is_none_or(|v| !values.contains(v)),
            "Exists" => present.is_some(),
            "DoesNotExist" => present.is_none(),
            other => {
                return Err(SelectorError::UnknownOperator {
                    key: key.clone(),
                    operator: other.to_string(),
                });
            }
        };
        all &= ok;
    }
    Ok(all)
}

/// Whether a selector selects everything (absent or empty).
pub fn is_everything(selector: Option<&LabelSelector>) -> bool {
    selector.is_none_or(|s| {
        s.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
    })
}

/// Parses the `--pooler-selector` flag syntax: `key=value`, `key==value`,
/// `key!=value`, `key` and `!key`, comma separated.
pub fn parse(text: &str) -> Result<LabelSelector, SelectorError> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    let mut match_labels = BTreeMap::new();
    let mut match_expressions = Vec::new();
    let valid_key = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    };
    for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let requirement =
            |key: &str, operator: &str, values: Option<Vec<String>>| LabelSelectorRequirement {
                key: key.to_string(),
                operator: operator.to_string(),
                values,
            };
        if let Some((key, value)) = term.split_once("!=") {
            let (key, value) = (key.trim(), value.trim());
            if !valid_key(key) {
                return Err(SelectorError::Unparsable(text.to_string()));
            }
            match_expressions.push(requirement(key, "NotIn", Some(vec![value.to_string()])));
        } else if let Some((key, value)) = term.split_once('=') {
            let key = key.trim();
            let value = value.trim_start_matches('=').trim();
            if !valid_key(key) {
                return Err(SelectorError::Unparsable(text.to_string()));
            }
            match_labels.insert(key.to_string(), value.to_string());
        } else if let Some(key) = term.strip_prefix('!') {
            if !valid_key(key.trim()) {
                return Err(SelectorError::Unparsable(text.to_string()));
            }
            match_expressions.push(requirement(key.trim(), "DoesNotExist", None));
        } else {
            if !valid_key(term) {
                return Err(SelectorError::Unparsable(text.to_string()));
            }
            match_expressions.push(requirement(term, "Exists", None));
        }
    }
    Ok(LabelSelector {
        match_labels: (!match_labels.is_empty()).then_some(match_labels),
        match_expressions: (!match_expressions.is_empty()).then_some(match_expressions),
    })
}

/// The selector in the `key=value,key!=value` syntax the API server's
/// `labelSelector` query parameter takes.
pub fn to_query(selector: &LabelSelector) -> String {
    let mut terms: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for r in selector.match_expressions.iter().flatten() {
        let values = r.values.as_deref().unwrap_or_default().join(",");
        terms.push(match r.operator.as_str() {
            "In" => format!("{} in ({values})", r.key),
            "NotIn" => format!("{} notin ({values})", r.key),
            "Exists" => r.key.clone(),
            _ => format!("!{}", r.key),
        });
    }
    terms.join(",")
}

#[cfg(test)]
mod tests;
