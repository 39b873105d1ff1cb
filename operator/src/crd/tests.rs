use super::*;

fn schema_yaml() -> String {
    crd_yaml().expect("CRD renders")
}

#[test]
fn crd_has_the_contract_names() {
    let crd = TenantPool::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("tenantpools.teresa.dev"));
    assert_eq!(crd.spec.group, "teresa.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names, Some(vec!["tp".to_string()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let columns: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Tenant", "Max", "Synced", "Ready", "Age"]);
}

#[test]
fn crd_carries_the_cel_rules_and_duration_pattern() {
    let yaml = schema_yaml();
    for rule in [
        "self.minConnections <= self.maxConnections",
        "duration(self.defaultTtl) <= duration(self.maxTtl)",
        "self == oldSelf",
        "oldSelf.metadata.name",
    ] {
        assert!(yaml.contains(rule), "missing rule {rule}");
    }
    assert!(yaml.contains(DURATION_PATTERN));
}

#[test]
fn credentials_secret_has_no_namespace_field() {
    let crd = serde_json::to_value(TenantPool::crd()).unwrap();
    let creds = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["database"]["properties"]["credentialsSecret"]["properties"];
    let mut keys: Vec<&String> = creds.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["name", "passwordKey", "usernameKey"]);
}

#[test]
fn every_spec_field_documents_its_default_or_requirement() {
    let crd = serde_json::to_value(TenantPool::crd()).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    fn walk(path: &str, node: &serde_json::Value, missing: &mut Vec<String>) {
        let Some(props) = node.get("properties").and_then(|p| p.as_object()) else {
            return;
        };
        for (name, child) in props {
            let path = format!("{path}.{name}");
            let description = child
                .get("description")
                .and_then(|d| d.as_str())
                .unwrap_or("");
            let documented = description.contains("Default")
                || description.contains("Required")
                || description.contains("Applies live")
                || description.contains("apply live")
                || description.contains("Immutable");
            // matchLabels/matchExpressions come documented from Kubernetes itself.
            if !documented && !path.contains("poolerSelector.") {
                missing.push(path.clone());
            }
            walk(&path, child, missing);
        }
    }
    let mut missing = Vec::new();
    walk("spec", spec, &mut missing);
    assert!(missing.is_empty(), "undocumented fields: {missing:?}");
}

#[test]
fn defaults_are_the_original_projects() {
    let spec: TenantPoolSpec = serde_json::from_value(serde_json::json!({
        "database": {"host": "db", "dbname": "app", "credentialsSecret": {"name": "creds"}}
    }))
    .unwrap();
    assert_eq!(spec.database.port, 5432);
    assert_eq!(spec.database.credentials_secret.username_key, "username");
    assert_eq!(spec.database.credentials_secret.password_key, "password");
    assert_eq!(spec.pool.max_connections, 20);
    assert_eq!(spec.pool.min_connections, 5);
    assert_eq!(spec.pool.max_lifetime, "30m");
    assert_eq!(spec.pool.max_idle_time, "5m");
    assert_eq!(spec.pool.acquire_timeout, "5s");
    assert_eq!(spec.pool.max_waiting, 128);
    assert_eq!(spec.leases.default_ttl, "60s");
    assert_eq!(spec.leases.max_ttl, "1h");
    assert_eq!(spec.leases.max_per_client, 0);
}

#[test]
fn tenant_id_defaults_to_the_resource_name() {
    let spec: TenantPoolSpec = serde_json::from_value(serde_json::json!({
        "database": {"host": "db", "dbname": "app", "credentialsSecret": {"name": "creds"}}
    }))
    .unwrap();
    let mut tp = TenantPool::new("orders", spec);
    assert_eq!(tp.tenant_id(), "orders");
    tp.spec.tenant_id = Some("orders-eu".into());
    assert_eq!(tp.tenant_id(), "orders-eu");
}

#[test]
fn descriptions_have_no_line_breaks_inside_paragraphs_for_kubectl_explain() {
    fn walk(value: &serde_yaml::Value, found: &mut Vec<String>) {
        match value {
            serde_yaml::Value::Mapping(map) => {
                for (key, value) in map {
                    match value {
                        serde_yaml::Value::String(text) if key.as_str() == Some("description") => {
                            found.push(text.clone())
                        }
                        other => walk(other, found),
                    }
                }
            }
            serde_yaml::Value::Sequence(items) => items.iter().for_each(|v| walk(v, found)),
            _ => {}
        }
    }
    let crd: serde_yaml::Value = serde_yaml::from_str(&schema_yaml()).unwrap();
    let mut descriptions = Vec::new();
    walk(&crd, &mut descriptions);
    assert!(descriptions.len() > 20, "{descriptions:?}");
    for text in &descriptions {
        assert!(
            !text.replace("\n\n", "").contains('\n'),
            "a hard line break inside a paragraph: {text:?}"
        );
    }
    assert!(
        descriptions.iter().any(|d| d
            .contains("Client certificate identities allowed to lease this tenant")
            && d.contains("(one or more whole path segments)")),
        "the allowedClients description reads as one paragraph"
    );
}
